"""``simdisagg trace``: convert public traces, generate synthetic ones, and describe them.

Thin typer commands (parse → check → call → print); the work is in :mod:`simdisagg.importers`,
:mod:`simdisagg.generate` and :mod:`simdisagg.tracestats`. Every option and path is checked
before any work, including options that apply only to some formats. Errors are raised as
:class:`~simdisagg.errors.SimdisaggError` subclasses; each command is :func:`guarded`, so they
end as a one-line message and exit status 1.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape

from simdisagg.cli.common import guarded, make_app
from simdisagg.errors import ConfigError
from simdisagg.trace import Trace, write_jsonl

trace_app = make_app(
    "trace", "Convert public traces to the native JSONL format, generate synthetic traces, show statistics."
)

_console = Console()

#: Formats whose requests come in agent sessions (their sessions start as a Poisson process).
AGENTIC_FORMATS = ("kvct", "kvct-csv", "tracelab")
#: Most requests or sessions one ``trace generate`` makes.
MAX_GENERATED = 100_000_000


def _check_agentic_options(fmt: str, source: str, **given: Any) -> None:
    """Options of the agentic formats are refused, not ignored, for a trace of another format."""
    if fmt in AGENTIC_FORMATS:
        return
    for flag, value in given.items():
        if value is not None:
            raise ConfigError(
                f"{flag} applies to agentic session traces ({', '.join(AGENTIC_FORMATS)}), and {source} is {fmt}"
            )


#: The flag of each import option, for messages.
_FLAGS = {"format": "--format", "zero_output": "--zero-output", "session_arrival": "--session-arrival",
          "sessions_per_s": "--session-rate", "seed": "--seed", "hash_block_tokens": "--hash-block-tokens"}  # fmt: skip


def _check_seed(value: int) -> None:
    if not 0 <= value < 2**63:
        raise ConfigError(f"--seed: must be between 0 and 2**63 - 1, got {value}")


def _summary_line(trace: Trace) -> str:
    sessions = len(set(trace.session_index[trace.session_index >= 0].tolist()))
    closed = int(trace.closed_loop.sum())
    return (
        f"{len(trace):,} requests, {sessions:,} sessions, {closed:,} closed-loop; "
        f"{int(trace.input_tokens.sum()):,} input / {int(trace.output_tokens.sum()):,} output tokens"
    )


@trace_app.command(
    "convert",
    epilog="Example: simdisagg trace convert AzureLLMInferenceTrace_conv.csv azure-conv.jsonl",
)
@guarded
def convert(
    source: Annotated[str, typer.Argument(help="trace file, folder or glob (kv-cache-tester sessions)")],
    out: Annotated[Path, typer.Argument(help="native JSONL file to write")],
    format: Annotated[
        str, typer.Option("--format", help="auto, native, azure, burstgpt, kvct, kvct-csv or tracelab")
    ] = "auto",
    session_rate: Annotated[
        float | None, typer.Option("--session-rate", help="agentic sessions per second, Poisson starts (default: 0.05)")
    ] = None,
    session_arrival: Annotated[
        str | None, typer.Option("--session-arrival", help="poisson or recorded, agentic formats (default: poisson)")
    ] = None,
    seed: Annotated[int, typer.Option("--seed", help="seed of the session arrival process")] = 0,
    zero_output: Annotated[
        str | None, typer.Option("--zero-output", help="error, skip or one (default depends on the format)")
    ] = None,
    model: Annotated[
        str | None, typer.Option("--model", help="keep only this BurstGPT model (default: none, every model)")
    ] = None,
    hash_block_tokens: Annotated[
        int | None,
        typer.Option("--hash-block-tokens", help="tokens per hash block (default: the header's, else 512)"),
    ] = None,
) -> None:
    """Convert a trace to native JSONL (written atomically) and say what was skipped or changed."""
    from simdisagg.importers import (
        DEFAULT_SESSIONS_PER_S,
        check_import_options,
        detect_format,
        import_trace,
    )
    from simdisagg.inputs import check_output_file

    check_import_options(
        format=format, zero_output=zero_output, session_arrival=session_arrival, sessions_per_s=session_rate,
        seed=seed, hash_block_tokens=hash_block_tokens, names=_FLAGS,
    )  # fmt: skip
    if session_arrival == "recorded" and session_rate is not None:
        raise ConfigError("--session-rate sets the Poisson session starts, and --session-arrival recorded has none")
    fmt = detect_format(source) if format == "auto" else format
    _check_agentic_options(fmt, source, **{"--session-rate": session_rate, "--session-arrival": session_arrival})
    if model is not None and fmt != "burstgpt":
        raise ConfigError(f"--model filters BurstGPT traces only, and {source} is {fmt}")
    check_output_file(out, "OUT", inputs=[source] if Path(source).exists() else [])
    result = import_trace(
        source,
        format=format,
        hash_block_tokens=hash_block_tokens,
        zero_output=zero_output,  # type: ignore[arg-type]
        model=model,
        session_arrival=session_arrival,  # type: ignore[arg-type]
        sessions_per_s=DEFAULT_SESSIONS_PER_S if session_rate is None else session_rate,
        seed=seed,
    )
    header: dict[str, Any] = {"converted_from": str(source), "source_format": result.format}
    if result.notes or result.changes:
        header["import_notes"] = list(result.notes) + list(result.changes)
    write_jsonl(result.trace, out, header=header)
    _console.print(f"wrote {out} ({result.format}): {_summary_line(result.trace)}", markup=False, highlight=False)
    for note in result.notes:
        _console.print(f"  {note}", markup=False, highlight=False)
    for change in result.changes:
        _console.print(f"  [yellow]{escape(change)}[/yellow]")
    if not result.changes:
        _console.print("  nothing skipped or changed")


def _jsonable(obj: Any) -> Any:
    """NaN and infinities become null so the output is strict JSON."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_jsonable(v) for v in obj]
    return obj


def _parse_params(items: list[str] | None) -> dict[str, str]:
    params: dict[str, str] = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--param expects key=value, got '{item}'")
        if key.strip() in params:
            raise ConfigError(f"--param {key.strip()} is given twice")
        try:
            number = float(value)
        except ValueError:
            number = 0.0
        if not math.isfinite(number):
            raise ConfigError(f"--param {key.strip()}={value.strip()}: must be a finite number")
        params[key.strip()] = value.strip()
    return params


def _parse_tenants(text: str | None) -> dict[str, float]:
    """``a=0.7,b=0.3`` → tenant weights (positive, finite, each name once)."""
    if text is None:
        return {}
    weights: dict[str, float] = {}
    for item in text.split(","):
        name, sep, value = item.partition("=")
        name = name.strip()
        if not sep or not name:
            raise ConfigError(f"--tenants: '{item.strip()}' is not NAME=WEIGHT, e.g. a=0.7,b=0.3")
        if name in weights:
            raise ConfigError(f"--tenants: tenant '{name}' is given twice")
        try:
            weight = float(value)
        except ValueError:
            raise ConfigError(f"--tenants: the weight of '{name}' is not a number: '{value.strip()}'") from None
        if not (math.isfinite(weight) and weight > 0):
            raise ConfigError(f"--tenants: the weight of '{name}' must be positive and finite, got {value.strip()}")
        weights[name] = weight
    return weights


@trace_app.command(
    "generate", epilog="Example: simdisagg trace generate --kind agentic --sessions 50 --out agentic.jsonl"
)
@guarded
def generate(
    out: Annotated[Path, typer.Option("--out", help="native JSONL file to write")],
    kind: Annotated[str, typer.Option("--kind", help="agentic, chat, rag or coding")] = "agentic",
    sessions: Annotated[
        int | None, typer.Option("--sessions", help="agentic sessions (default 10)")
    ] = None,
    requests: Annotated[
        int | None,
        typer.Option("--requests", help="open-loop requests (default 1000); agentic: add sessions until this many"),
    ] = None,
    seed: Annotated[int, typer.Option("--seed", help="random seed")] = 0,
    horizon_s: Annotated[
        float | None,
        typer.Option("--horizon-s", help="keep only requests arriving within this many seconds (default: all)"),
    ] = None,
    param: Annotated[
        list[str] | None,
        typer.Option("--param", help="set a generator parameter, key=value, repeatable (default: the fitted ones)"),
    ] = None,
    tenants: Annotated[
        str | None,
        typer.Option(
            "--tenants", help="label requests (agentic: sessions) with tenants drawn with weights, e.g. a=0.7,b=0.3 "
            "(default: no tenant field)",
        ),
    ] = None,
) -> None:
    """Generate a synthetic trace; the parameters used are recorded in the file's header line."""
    from simdisagg.generate import KINDS, generate_trace, make_params
    from simdisagg.inputs import check_output_file

    if kind not in KINDS:
        raise ConfigError(f"unknown --kind '{kind}'; expected one of {', '.join(KINDS)}")
    _check_seed(seed)
    for flag, value in (("--sessions", sessions), ("--requests", requests)):
        if value is not None and not 1 <= value <= MAX_GENERATED:
            raise ConfigError(f"{flag}: must be between 1 and {MAX_GENERATED:,}, got {value}")
    if kind != "agentic" and sessions is not None:
        raise ConfigError(f"--sessions applies to --kind agentic; a {kind} trace is open loop: give --requests")
    if kind == "agentic" and sessions is not None and requests is not None:
        raise ConfigError("give --sessions or --requests, not both")
    if horizon_s is not None and not (0 < horizon_s <= 1e9):
        raise ConfigError(f"--horizon-s: must be above 0 and at most 1e9 seconds, got {horizon_s}")
    params = make_params(kind, _parse_params(param))
    tenant_weights = _parse_tenants(tenants)
    check_output_file(out, "--out")
    trace = generate_trace(
        kind,  # type: ignore[arg-type]  # checked against KINDS above
        num_sessions=sessions,
        num_requests=requests,
        seed=seed,
        horizon_s=horizon_s,
        params=params,
        tenants=tenant_weights,
    )
    header = {
        "generator": {
            "kind": kind,
            "seed": seed,
            "sessions": sessions,
            "requests": requests,
            "horizon_s": horizon_s,
            "params": params.model_dump(mode="json"),
            **({"tenants": tenant_weights} if tenant_weights else {}),
        }
    }
    write_jsonl(trace, out, header=header)
    _console.print(f"wrote {out}: {_summary_line(trace)}", markup=False, highlight=False)


@trace_app.command("stats", epilog="Example: simdisagg trace stats traces/agentic-example.jsonl --json")
@guarded
def stats(
    file: Annotated[str, typer.Argument(help="trace (any supported format)")],
    other: Annotated[str | None, typer.Argument(help="a second trace to show side by side")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="print JSON instead of a table")] = False,
    session_rate: Annotated[
        float | None, typer.Option("--session-rate", help="agentic sessions per second, Poisson starts (default: 0.05)")
    ] = None,
    seed: Annotated[int, typer.Option("--seed", help="seed of the session arrival process")] = 0,
) -> None:
    """Show request counts, lengths, sessions, closed-loop share, prefix reuse and burstiness."""
    from simdisagg.importers import (
        DEFAULT_SESSIONS_PER_S,
        check_import_options,
        detect_format,
        import_trace,
    )
    from simdisagg.tracestats import format_stats_table, trace_stats

    check_import_options(sessions_per_s=session_rate, seed=seed, names=_FLAGS)
    if session_rate is not None:
        formats = {f: detect_format(f) for f in [file] + ([other] if other else [])}
        if not any(fmt in AGENTIC_FORMATS for fmt in formats.values()):
            _check_agentic_options(formats[file], file, **{"--session-rate": session_rate})
    rate = DEFAULT_SESSIONS_PER_S if session_rate is None else session_rate
    results = [import_trace(f, sessions_per_s=rate, seed=seed) for f in [file] + ([other] if other else [])]
    all_stats = [trace_stats(r.trace) for r in results]
    if as_json:
        payload: Any = all_stats[0] if other is None else all_stats
        typer.echo(json.dumps(_jsonable(payload), indent=2))
        return
    _console.print(format_stats_table(all_stats[0], all_stats[1] if other else None))
    for r in results:
        for change in r.changes:
            _console.print(f"[yellow]{escape(f'{r.trace.source}: {change}')}[/yellow]")
