"""What every ``simdisagg`` command shares: the app and its error handling, duration parsing,
the common options and the dotted config keys they set.

The command modules (:mod:`simdisagg.cli` and its ``plan``, ``trace`` and ``calibrate``
modules) import from here and never from each other, so the package has no import circle.

Errors reach the user as one line and an exit status, whatever raised them: a usage error
(``--prefill abc``) by :class:`SimdisaggGroup`, anything from a command's body by
:func:`guarded` through :func:`simdisagg.errors.describe`. SIGTERM is handled like Ctrl-C.
A traceback is shown only with ``SIMDISAGG_DEBUG=1``.
"""

from __future__ import annotations

import functools
import math
import os
import re
import signal
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from typer.core import TyperGroup

from simdisagg.errors import ConfigError, Interrupted, describe

# Typer vendors click (``typer._click``) from 0.2x on, and raises that copy's exceptions even
# when the real click is installed beside it (Ray pulls it in): take typer's own copy first.
try:
    from typer import _click  # type: ignore[attr-defined,unused-ignore]
except ImportError:  # pragma: no cover - depends on the typer release
    import click as _click  # type: ignore[no-redef,unused-ignore]

_T = TypeVar("_T")
_F = TypeVar("_F", bound=Callable[..., Any])


def _debug() -> bool:
    return os.environ.get("SIMDISAGG_DEBUG") == "1"


def _report(exc: BaseException) -> int:
    message, status = describe(exc)
    typer.echo(message, err=True)
    return status


def _run_guarded(fn: Callable[[], _T]) -> _T:
    """Run ``fn``; any error becomes one line on stderr and ``typer.Exit`` with its status."""
    try:
        return fn()
    except (typer.Exit, typer.Abort, _click.ClickException):
        raise
    except KeyboardInterrupt as exc:
        raise typer.Exit(_report(exc)) from None
    except Exception as exc:
        if _debug():
            raise
        raise typer.Exit(_report(exc)) from None


def guarded(command: _F) -> _F:
    """A command whose errors become one line and an exit status (see :func:`_run_guarded`)."""

    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        return _run_guarded(lambda: command(*args, **kwargs))

    return wrapper  # type: ignore[return-value]


@contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """While inside, SIGTERM stops the run the way Ctrl-C does (the same cleanup, exit 143)."""
    if sys.platform == "win32" or not _is_main_thread():
        yield
        return

    def handler(signum: int, frame: Any) -> None:
        raise Interrupted("SIGTERM")

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _is_main_thread() -> bool:
    import threading

    return threading.current_thread() is threading.main_thread()


def _usage_line(exc: Any) -> str:
    text = " ".join(exc.format_message().split())
    ctx = getattr(exc, "ctx", None)
    where = f" (see '{ctx.command_path} --help')" if ctx is not None else ""
    return f"error: {text}{where}"


class SimdisaggGroup(TyperGroup):
    """The root command group: usage errors in one line, SIGTERM like Ctrl-C."""

    def main(  # type: ignore[override]
        self,
        args: Any = None,
        prog_name: str | None = None,
        complete_var: str | None = None,
        standalone_mode: bool = True,
        **extra: Any,
    ) -> Any:
        """Run the command line; in standalone mode every error ends in one line and an exit."""
        call = {"args": args, "prog_name": prog_name, "complete_var": complete_var, **extra}
        if not standalone_mode:
            return super().main(standalone_mode=False, **call)
        with sigterm_as_interrupt():
            try:
                status = super().main(standalone_mode=False, **call)
            except _click.ClickException as exc:
                if type(exc).__name__ == "NoArgsIsHelpError":  # the help text, as asked
                    exc.show()
                else:
                    typer.echo(_usage_line(exc), err=True)
                sys.exit(exc.exit_code)
            except typer.Abort:
                typer.echo("interrupted", err=True)
                sys.exit(130)
            except (KeyboardInterrupt, Exception) as exc:
                if _debug() and not isinstance(exc, KeyboardInterrupt):
                    raise
                sys.exit(_report(exc))
        sys.exit(status if isinstance(status, int) else 0)


def _version(value: bool) -> None:
    if value:
        from simdisagg._version import __version__

        typer.echo(f"simdisagg {__version__}")
        raise typer.Exit(0)


VersionOpt = Annotated[
    bool,
    typer.Option("--version", callback=_version, is_eager=True, help="Print the version and exit."),
]


def make_app(name: str, help: str) -> typer.Typer:
    """A typer app with the shared settings: ``-h`` and ``--help``, no shell completion, our
    error handling."""
    return typer.Typer(
        name=name,
        help=help,
        cls=SimdisaggGroup,
        no_args_is_help=True,
        add_completion=False,
        pretty_exceptions_enable=False,
        context_settings={"help_option_names": ["-h", "--help"]},
    )


# -- durations ---------------------------------------------------------------------------------

_DURATION = re.compile(r"^\s*([0-9]*\.?[0-9]+(?:e[-+]?\d+)?)\s*([a-zµ]*)\s*$", re.IGNORECASE)
_UNITS_S = {"us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "min": 60.0, "h": 3600.0}


def command_line() -> str:
    """The command being run, as a user would type it (``simdisagg ...``, whatever entry point
    started it), for the records an output keeps."""
    import shlex

    return shlex.join(["simdisagg", *sys.argv[1:]])


def parse_duration_s(text: str | None, flag: str) -> float | None:
    """A duration with its unit (``500ms``, ``0.5s``, ``2min``) → seconds.

    A bare number is refused: ``--slo-ttft 2000`` has been read as 2000 seconds by one tool
    and 2000 milliseconds by another, so the unit must be said."""
    if text is None:
        return None
    m = _DURATION.match(text)
    if not m:
        raise ConfigError(f"{flag}: '{text}' is not a duration; give a number and a unit, e.g. 500ms or 0.5s")
    value, unit = float(m.group(1)), m.group(2).lower()
    if not unit:
        raise ConfigError(f"{flag}: '{text}' has no unit; add a unit: {m.group(1)}ms or {value / 1000:g}s")
    if unit not in _UNITS_S:
        raise ConfigError(f"{flag}: unknown unit '{m.group(2)}' in '{text}'; use us, ms, s, min or h")
    seconds = value * _UNITS_S[unit]
    if not math.isfinite(seconds) or seconds <= 0:
        raise ConfigError(f"{flag}: '{text}' must be a positive, finite duration")
    return seconds


def format_duration(seconds: float) -> str:
    """A duration as the shortest natural text: ``500 ms``, ``2 s``, ``2.5 min``."""
    if seconds < 1.0:
        return f"{seconds * 1e3:g} ms"
    if seconds < 120.0:
        return f"{seconds:g} s"
    return f"{seconds / 60.0:g} min"


# -- the common options ------------------------------------------------------------------------

ConfigOpt = Annotated[
    Path | None,
    typer.Option("--config", "-c", help="Cluster config (YAML or JSON); flags override it (default: none)."),
]
PrefillOpt = Annotated[int | None, typer.Option("--prefill", help="Prefill instances (default: 1).")]
DecodeOpt = Annotated[int | None, typer.Option("--decode", help="Decode instances (default: 1).")]
GpuOpt = Annotated[str | None, typer.Option("--gpu", help="GPU profile of both pools (default: h100-sxm).")]
ModelOpt = Annotated[str | None, typer.Option("--model", help="Model profile (default: llama-3.1-8b).")]
TpOpt = Annotated[int | None, typer.Option("--tp", help="Tensor-parallel GPUs per instance, both pools (default: 1).")]
LinkOpt = Annotated[str | None, typer.Option("--link", help="KV link preset (default: ib-ndr-400).")]
ModeOpt = Annotated[
    str | None, typer.Option("--mode", help="disaggregated or aggregated (default: disaggregated).")
]
RouterOpt = Annotated[
    str | None,
    typer.Option(
        "--router",
        help="Prefill routing policy, or PREFILL/DECODE for both: round_robin, least_outstanding_tokens, random, "
        "shared_queue, kv_aware, session_affinity / least_loaded, kv_aware, session_affinity "
        "(default: least_outstanding_tokens/least_loaded).",
    ),
]
SeedOpt = Annotated[int | None, typer.Option("--seed", help="Random seed (default: 0).")]
WeightsOpt = Annotated[
    str | None, typer.Option("--weights", help="Weight precision: bf16, fp8, fp8_block, fp4 (default: bf16).")
]
KvCacheOpt = Annotated[str | None, typer.Option("--kv-cache", help="KV-cache precision: bf16, fp8 (default: bf16).")]
FrameworkOpt = Annotated[
    str | None,
    typer.Option("--framework", help="Serving framework of the measured profile: vllm, sglang, trtllm (default: vllm)."),
]
RateOpt = Annotated[
    float | None, typer.Option("--rate-scale", help="Replay open-loop arrivals this many times faster (default: 1).")
]
SloTtftOpt = Annotated[
    str | None, typer.Option("--slo-ttft", help="TTFT target with its unit, e.g. 500ms (default: 2s).")
]
SloTpotOpt = Annotated[
    str | None, typer.Option("--slo-tpot", help="TPOT target with its unit, e.g. 50ms (default: 100ms).")
]
ProfilesOpt = Annotated[
    Path | None,
    typer.Option("--profiles-dir", help="Hardware profiles folder, searched before the shipped ones (default: none)."),
]

#: The flag that sets each dotted config key, for messages about a value from the command line.
FLAGS: dict[str, str] = {
    "prefill.count": "--prefill",
    "decode.count": "--decode",
    "prefill.gpu": "--gpu",
    "decode.gpu": "--gpu",
    "model": "--model",
    "prefill.tp": "--tp",
    "decode.tp": "--tp",
    "link.preset": "--link",
    "mode": "--mode",
    "seed": "--seed",
    "rate_scale": "--rate-scale",
    "slo.ttft_s": "--slo-ttft",
    "slo.tpot_s": "--slo-tpot",
    "slo.attainment": "--attainment",
    "aggregated.chunked_prefill": "--chunked-prefill",
    "exact_steps": "--exact-steps",
    "router.prefill_policy": "--router",
    "router.decode_policy": "--router",
    "precision.weights": "--weights",
    "precision.kv_cache": "--kv-cache",
    "framework": "--framework",
}


def _router(text: str | None) -> tuple[str | None, str | None]:
    if text is None:
        return None, None
    prefill, sep, decode = text.partition("/")
    if not prefill.strip() or (sep and not decode.strip()):
        raise ConfigError(f"--router: '{text}' is not POLICY or PREFILL/DECODE, e.g. kv_aware or kv_aware/kv_aware")
    return prefill.strip(), (decode.strip() if sep else None)


def build_overrides(
    *,
    prefill: int | None = None,
    decode: int | None = None,
    gpu: str | None = None,
    model: str | None = None,
    tp: int | None = None,
    link: str | None = None,
    mode: str | None = None,
    seed: int | None = None,
    rate_scale: float | None = None,
    slo_ttft: str | None = None,
    slo_tpot: str | None = None,
    chunked_prefill: bool | None = None,
    exact_steps: bool | None = None,
    router: str | None = None,
    weights: str | None = None,
    kv_cache: str | None = None,
    framework: str | None = None,
) -> dict[str, Any]:
    """Dotted config keys for the common CLI flags (``None`` = keep the file's value)."""
    prefill_policy, decode_policy = _router(router)
    return {
        "prefill.count": prefill,
        "decode.count": decode,
        "prefill.gpu": gpu,
        "decode.gpu": gpu,
        "model": model,
        "prefill.tp": tp,
        "decode.tp": tp,
        "link.preset": link,
        "mode": mode,
        "seed": seed,
        "rate_scale": rate_scale,
        "slo.ttft_s": parse_duration_s(slo_ttft, "--slo-ttft"),
        "slo.tpot_s": parse_duration_s(slo_tpot, "--slo-tpot"),
        "aggregated.chunked_prefill": chunked_prefill,
        "exact_steps": exact_steps,
        "router.prefill_policy": prefill_policy,
        "router.decode_policy": decode_policy,
        "precision.weights": weights,
        "precision.kv_cache": kv_cache,
        "framework": framework,
    }


def check_input_file(path: Path | None, flag: str) -> None:
    """A file the command will read must exist and not be a folder (checked before any work)."""
    if path is None:
        return
    if not path.exists():
        raise ConfigError(f"{flag} {path}: no such file")
    if path.is_dir():
        raise ConfigError(f"{flag} {path}: is a folder, not a file")


# -- what a run or plan says before it starts ----------------------------------------------------


def setting_lines(cfg: Any, cost_models: list[tuple[str, str]], *, policies: bool = True) -> list[str]:
    """The settings a run or plan uses, said before it starts: model and precision, framework,
    SLO, link, router and cost model (``cost_models``: ``(column, label)`` pairs)."""
    slo = cfg.slo
    lines = [
        f"model: {cfg.model} ({cfg.precision.weights} weights, {cfg.precision.kv_cache} KV cache) · "
        f"framework: {cfg.framework}",
        f"SLO: TTFT <= {format_duration(slo.ttft_s)} and TPOT <= {format_duration(slo.tpot_s)} "
        f"(target: {slo.attainment:.0%} of requests)",
    ]
    if policies:
        lines.append(
            f"link: {cfg.link.preset} ({cfg.link.sharing}"
            + (f", bandwidth x{cfg.link.bandwidth_scale:g}" if cfg.link.bandwidth_scale != 1.0 else "")
            + f") · router: {cfg.router.prefill_policy} (prefill) / {cfg.router.decode_policy} (decode)"
            + (f", conditional below {cfg.router.conditional_prefill_tokens} tokens"
               if cfg.router.conditional_prefill_tokens else "")
        )
    if cfg.decode.speculative is not None:
        from simdisagg.sim.speculative import describe

        lines.append(f"speculative decoding (decode and aggregated pools): {describe(cfg.decode.speculative)}")
    labels = list(dict.fromkeys(label for _, label in cost_models))
    if len(labels) == 1:
        lines.append(f"cost model: {labels[0]}" + _assumed(labels[0]))
    else:
        lines.append("cost model: " + "; ".join(f"{col}: {label}{_assumed(label)}" for col, label in cost_models))
    return lines


def _assumed(label: str) -> str:
    return " (assumed efficiencies, not measured)" if "roofline" in label else ""


class ProgressDisplay:
    """A progress bar for simulations longer than ``delay_s`` of wall time: requests finished,
    simulated time reached and the time left, one bar per run. Shown only on a terminal."""

    def __init__(self, console: Any, delay_s: float = 2.0) -> None:
        import time

        self.console, self.delay_s = console, delay_s
        self._clock = time.perf_counter
        self._started = self._clock()
        self._progress: Any = None
        self._tasks: dict[str, Any] = {}

    def __call__(self, column: str, now_s: float, finished: int, total: int) -> None:
        """Called by the simulation (see :func:`simdisagg.api.run_and_summarize`)."""
        if self._progress is None:
            if not self.console.is_terminal or self._clock() - self._started < self.delay_s:
                return
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                Progress,
                TextColumn,
                TimeRemainingColumn,
            )

            self._progress = Progress(
                TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                TextColumn("requests · simulated {task.fields[simulated]} ·"), TimeRemainingColumn(),
                TextColumn("left"), console=self.console, transient=True,
            )  # fmt: skip
            self._progress.start()
        task = self._tasks.get(column)
        if task is None:
            from rich.markup import escape

            task = self._tasks[column] = self._progress.add_task(escape(column), total=total, simulated="0 s")
        self._progress.update(task, completed=finished, total=total, simulated=f"{now_s:,.0f} s")

    def close(self) -> None:
        """Remove the bar (it is transient), before the results are printed."""
        if self._progress is not None:
            self._progress.stop()
            self._progress = None
