"""The ``simdisagg`` command line: thin typer commands over the package API.

Each command parses its options, resolves one :class:`~simdisagg.config.RunConfig`, calls the
package, and prints or writes. Errors a user can fix go through :func:`_run_guarded`: one line
naming file, line and field, exit status 1 (a traceback only with ``SIMDISAGG_DEBUG=1``).
"""

from __future__ import annotations

import os
import re
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer

from simdisagg.errors import ConfigError, SimdisaggError

app = typer.Typer(
    name="simdisagg",
    help="Simulate disaggregated (prefill/decode) LLM serving on a request trace, and plan its capacity.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

_T = TypeVar("_T")


def _run_guarded(fn: Callable[[], _T]) -> _T:
    try:
        return fn()
    except SimdisaggError as exc:
        if os.environ.get("SIMDISAGG_DEBUG") == "1":
            raise
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from None
    except KeyboardInterrupt:
        typer.echo("interrupted", err=True)
        raise typer.Exit(130) from None


_DURATION = re.compile(r"^\s*([0-9]*\.?[0-9]+(?:e[-+]?\d+)?)\s*(ms|s|us)?\s*$", re.IGNORECASE)


def parse_duration_s(text: str | None, flag: str) -> float | None:
    """``500ms``, ``0.5s`` or ``0.5`` (seconds) → seconds."""
    if text is None:
        return None
    m = _DURATION.match(text)
    if not m:
        raise ConfigError(f"{flag}: '{text}' is not a duration (e.g. 500ms, 0.5s)")
    value = float(m.group(1))
    unit = (m.group(2) or "s").lower()
    return value / 1000.0 if unit == "ms" else value / 1e6 if unit == "us" else value


ConfigOpt = Annotated[Path | None, typer.Option("--config", "-c", help="cluster config (YAML or JSON)")]
PrefillOpt = Annotated[int | None, typer.Option("--prefill", help="prefill instances")]
DecodeOpt = Annotated[int | None, typer.Option("--decode", help="decode instances")]
GpuOpt = Annotated[str | None, typer.Option("--gpu", help="GPU profile of both pools, e.g. h100-sxm")]
ModelOpt = Annotated[str | None, typer.Option("--model", help="model shape, e.g. llama-3.1-8b")]
TpOpt = Annotated[int | None, typer.Option("--tp", help="tensor-parallel GPUs per instance (both pools)")]
LinkOpt = Annotated[str | None, typer.Option("--link", help="KV link preset, e.g. ib-ndr-400")]
ModeOpt = Annotated[str | None, typer.Option("--mode", help="disaggregated | aggregated")]
SeedOpt = Annotated[int | None, typer.Option("--seed", help="random seed (default 0)")]
RateOpt = Annotated[float | None, typer.Option("--rate-scale", help="replay open-loop arrivals X times faster")]
SloTtftOpt = Annotated[str | None, typer.Option("--slo-ttft", help="TTFT target, e.g. 500ms")]
SloTpotOpt = Annotated[str | None, typer.Option("--slo-tpot", help="TPOT target, e.g. 50ms")]
ProfilesOpt = Annotated[Path | None, typer.Option("--profiles-dir", help="folder of hardware profiles")]
WeightsOpt = Annotated[str | None, typer.Option("--weights", help="weight precision: bf16, fp8, fp8_block, fp4")]
KvCacheOpt = Annotated[str | None, typer.Option("--kv-cache", help="KV-cache precision: bf16, fp8")]
FrameworkOpt = Annotated[
    str | None, typer.Option("--framework", help="serving framework of the measured profile: vllm, sglang, trtllm")
]


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
    weights: str | None = None,
    kv_cache: str | None = None,
    framework: str | None = None,
) -> dict[str, Any]:
    """Dotted config keys for the common CLI flags (``None`` = keep the file's value)."""
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
        "precision.weights": weights,
        "precision.kv_cache": kv_cache,
        "framework": framework,
    }


@app.command()
def run(
    trace: Annotated[Path, typer.Argument(help="request trace (native JSONL, Mooncake, Azure CSV, ...)")],
    config: ConfigOpt = None,
    prefill: PrefillOpt = None,
    decode: DecodeOpt = None,
    gpu: GpuOpt = None,
    model: ModelOpt = None,
    tp: TpOpt = None,
    link: LinkOpt = None,
    mode: ModeOpt = None,
    seed: SeedOpt = None,
    rate_scale: RateOpt = None,
    slo_ttft: SloTtftOpt = None,
    slo_tpot: SloTpotOpt = None,
    weights: WeightsOpt = None,
    kv_cache: KvCacheOpt = None,
    framework: FrameworkOpt = None,
    chunked_prefill: Annotated[
        bool | None, typer.Option("--chunked-prefill/--no-chunked-prefill", help="aggregated: chunked prefill")
    ] = None,
    compare: Annotated[
        bool, typer.Option("--compare/--no-compare", help="also run the other mode on the same GPUs")
    ] = True,
    exact_steps: Annotated[
        bool | None, typer.Option("--exact-steps", help="one event per decode iteration (reference mode)")
    ] = None,
    out: Annotated[Path | None, typer.Option("--out", "-o", help="write summary.json, requests.* and config.json here")] = None,
    profiles_dir: ProfilesOpt = None,
) -> None:
    """Replay a trace on a cluster and print TTFT, TPOT, ITL, throughput, SLO attainment and
    utilisation, side by side with the other serving mode on the same GPUs."""

    def body() -> None:
        from rich.console import Console

        from simdisagg.api import run_and_summarize
        from simdisagg.config import resolve_config
        from simdisagg.output import summary_table, write_results

        overrides = build_overrides(
            prefill=prefill, decode=decode, gpu=gpu, model=model, tp=tp, link=link, mode=mode, seed=seed,
            rate_scale=rate_scale, slo_ttft=slo_ttft, slo_tpot=slo_tpot, chunked_prefill=chunked_prefill,
            exact_steps=exact_steps, weights=weights, kv_cache=kv_cache, framework=framework,
        )
        cfg = resolve_config(config, overrides)
        runs = run_and_summarize(trace, cfg, compare=compare, profiles_dir=profiles_dir)
        console = Console()
        main = runs[0]
        title = (
            f"{main.trace_label} · {cfg.model} ({cfg.precision.weights} weights, {cfg.precision.kv_cache} KV) · "
            f"{main.summary['gpus']} GPUs · {cfg.framework} · cost model: {main.summary['cost_model']}"
        )
        console.print(summary_table({r.column: r.summary for r in runs}, title))
        for note in main.notes:
            console.print(f"[yellow]note:[/yellow] {note}")
        if len(runs) > 1:
            console.print(runs[0].verdict_against(runs[1]))
        if out is not None:
            for k, r in enumerate(runs):
                write_results(out, r.summary, r.frame(), r.config_record(), prefix="" if k == 0 else "baseline_")
            console.print(f"wrote {out}/summary.json, requests.parquet, requests.csv, config.json")

    _run_guarded(body)


@app.command()
def profiles(profiles_dir: ProfilesOpt = None) -> None:
    """List the GPU, link and model profiles that are available."""

    def body() -> None:
        from rich.console import Console
        from rich.table import Table

        from simdisagg.hardware import ProfileStore

        store = ProfileStore(profiles_dir)
        table = Table(title="hardware profiles")
        for col in ("kind", "name", "provenance", "summary"):
            table.add_column(col)
        for name in store.names("gpus"):
            g = store.gpu(name)
            table.add_row(
                "gpu", name, g.provenance,
                f"{g.dense_bf16_flops_per_s.value / 1e12:.0f} TFLOP/s, {g.hbm_bandwidth_bytes_per_s.value / 1e12:.2f} TB/s, "
                f"{g.hbm_capacity_bytes.value / 1e9:.0f} GB, ${g.price_per_hour_usd.value:.2f}/h",
            )
        for name in store.names("links"):
            lk = store.link(name)
            table.add_row(
                "link", name, lk.provenance,
                f"{lk.bandwidth_bytes_per_s.value / 1e9:.1f} GB/s, {lk.latency_s.value * 1e6:.1f} us",
            )
        for name in store.names("models"):
            m = store.model(name)
            table.add_row(
                "model", name, m.provenance,
                f"{m.total_params / 1e9:.1f} B params, {m.kv_bytes_per_token / 1024:.0f} KiB KV/token",
            )
        Console().print(table)

    _run_guarded(body)


from simdisagg.cli_calibrate import calibrate_app, fit_command  # noqa: E402
from simdisagg.cli_plan import plan_command  # noqa: E402
from simdisagg.cli_trace import trace_app  # noqa: E402
from simdisagg.cli_validate import validate_command  # noqa: E402

app.add_typer(trace_app, name="trace", help="Convert, generate and describe traces.")
app.add_typer(calibrate_app, name="calibrate")
app.command("fit")(fit_command)
app.command("plan")(plan_command)
app.command("validate")(validate_command)


def main() -> None:  # pragma: no cover - console entry
    """Entry point of ``python -m simdisagg``."""
    app(prog_name="simdisagg")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
