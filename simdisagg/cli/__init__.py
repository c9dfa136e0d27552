"""The ``simdisagg`` command line: thin typer commands over the package API.

Each command parses its options, resolves one :class:`~simdisagg.config.RunConfig`, calls the
package, and prints or writes. Errors a user can fix go through one guard
(:func:`simdisagg.cli.common._run_guarded`): one line naming file, line and field, exit status
1 (a traceback only with ``SIMDISAGG_DEBUG=1``).

The package: this module holds the root app with ``run`` and ``profiles`` and mounts the
others; ``plan``, ``trace`` and ``calibrate`` (``calibrate`` and ``fit``) hold their commands;
``common`` what they share. Imports go one way, from here to those modules and from them to
``common``, never back (``python -m simdisagg`` runs the whole app).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from simdisagg.cli.calibrate import calibrate_command, fit_command
from simdisagg.cli.common import (
    ConfigOpt,
    DecodeOpt,
    GpuOpt,
    LinkOpt,
    ModelOpt,
    ModeOpt,
    PrefillOpt,
    ProfilesOpt,
    RateOpt,
    SeedOpt,
    SloTpotOpt,
    SloTtftOpt,
    TpOpt,
    _run_guarded,
    build_overrides,
    parse_duration_s,
)
from simdisagg.cli.plan import plan_command
from simdisagg.cli.trace import trace_app

__all__ = ["app", "build_overrides", "main", "parse_duration_s"]

app = typer.Typer(
    name="simdisagg",
    help="Simulate disaggregated (prefill/decode) LLM serving on a request trace, and plan its capacity.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


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
            exact_steps=exact_steps,
        )
        cfg = resolve_config(config, overrides)
        runs = run_and_summarize(trace, cfg, compare=compare, profiles_dir=profiles_dir)
        console = Console()
        main = runs[0]
        title = (
            f"{main.trace_label} · {cfg.model} · {main.summary['gpus']} GPUs · "
            f"cost model: {main.summary['cost_model']}"
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


app.add_typer(trace_app, name="trace", help="Convert, generate and describe traces.")
app.command("calibrate")(calibrate_command)
app.command("fit")(fit_command)
app.command("plan")(plan_command)


def main() -> None:  # pragma: no cover - console entry
    """Entry point of ``python -m simdisagg``."""
    app(prog_name="simdisagg")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
