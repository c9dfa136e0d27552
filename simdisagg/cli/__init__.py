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
import warnings
from pathlib import Path
from typing import Annotated, Any

import typer

from simdisagg.cli.calibrate import calibrate_app, fit_command
from simdisagg.cli.common import (
    FLAGS,
    ConfigOpt,
    DecodeOpt,
    FrameworkOpt,
    GpuOpt,
    KvCacheOpt,
    LinkOpt,
    ModelOpt,
    ModeOpt,
    PrefillOpt,
    ProfilesOpt,
    ProgressDisplay,
    RateOpt,
    RouterOpt,
    SeedOpt,
    SloTpotOpt,
    SloTtftOpt,
    TpOpt,
    VersionOpt,
    WeightsOpt,
    build_overrides,
    check_input_file,
    command_line,
    guarded,
    make_app,
    parse_duration_s,
    setting_lines,
)
from simdisagg.cli.plan import plan_command
from simdisagg.cli.trace import trace_app
from simdisagg.cli.validate import validate_command
from simdisagg.errors import ConfigError

__all__ = ["app", "build_overrides", "main", "parse_duration_s"]

app = make_app(
    "simdisagg",
    "Simulate disaggregated (prefill/decode) LLM serving on a request trace, and plan its capacity.",
)


@app.callback()
def _root(version: VersionOpt = False) -> None:
    """Simulate disaggregated (prefill/decode) LLM serving on a request trace, and plan its capacity."""


#: Files ``run --plots`` writes.
PLOT_FILES = ("latency_cdf.png", "timeline.png", "timeseries.png")


@app.command(
    epilog="Example: simdisagg run traces/mooncake-conversation-5min.jsonl --prefill 2 --decode 2 "
    "--slo-ttft 2s --slo-tpot 100ms --out results"
)
@guarded
def run(
    trace: Annotated[Path, typer.Argument(help="Request trace (native JSONL, Mooncake, Azure or BurstGPT CSV, ...).")],
    config: ConfigOpt = None,
    prefill: PrefillOpt = None,
    decode: DecodeOpt = None,
    gpu: GpuOpt = None,
    model: ModelOpt = None,
    tp: TpOpt = None,
    link: LinkOpt = None,
    mode: ModeOpt = None,
    router: RouterOpt = None,
    seed: SeedOpt = None,
    rate_scale: RateOpt = None,
    slo_ttft: SloTtftOpt = None,
    slo_tpot: SloTpotOpt = None,
    weights: WeightsOpt = None,
    kv_cache: KvCacheOpt = None,
    framework: FrameworkOpt = None,
    chunked_prefill: Annotated[
        bool | None,
        typer.Option("--chunked-prefill/--no-chunked-prefill", help="Aggregated: chunked prefill (default: off)."),
    ] = None,
    compare: Annotated[
        bool, typer.Option("--compare/--no-compare", help="Also run the other serving mode on the same GPUs.")
    ] = True,
    exact_steps: Annotated[
        bool | None,
        typer.Option("--exact-steps", help="One event per decode iteration (reference mode; default: off)."),
    ] = None,
    compare_fixed: Annotated[
        bool,
        typer.Option(
            "--compare-fixed",
            help="With autoscale settings: also run the fixed clusters whose GPU-hours bracket the "
            "autoscaled run's (each pool near its mean count), instead of the other mode.",
        ),
    ] = False,
    out: Annotated[
        Path | None,
        typer.Option(
            "--out", "-o",
            help="Write summary.json, requests.parquet/.csv, timeseries.parquet, config.json and manifest.json "
            "here (default: none).",
        ),  # fmt: skip
    ] = None,
    plots: Annotated[
        Path | None,
        typer.Option(
            "--plots", help="Write latency CDFs, per-pool utilisation, queue and KV over time, and the per-window "
            "time series (timeseries.png) here (default: none)."
        ),
    ] = None,
    profiles_dir: ProfilesOpt = None,
) -> None:
    """Replay a trace on a cluster and print TTFT, TPOT, ITL, throughput, SLO attainment and
    utilisation, side by side with the other serving mode on the same GPUs."""
    from rich.console import Console
    from rich.markup import escape

    from simdisagg.api import column_name, plan_runs, run_planned
    from simdisagg.config import resolve_config
    from simdisagg.hardware import ProfileStore
    from simdisagg.importers import TraceImportWarning, load_trace
    from simdisagg.inputs import check_output_dir
    from simdisagg.output import summary_table, tenant_table

    # Everything is checked before the first simulated event: options, config, profiles, the
    # clusters of both columns, the output folders, then the trace.
    check_input_file(config, "--config")
    overrides = build_overrides(
        prefill=prefill, decode=decode, gpu=gpu, model=model, tp=tp, link=link, mode=mode, seed=seed,
        rate_scale=rate_scale, slo_ttft=slo_ttft, slo_tpot=slo_tpot, chunked_prefill=chunked_prefill,
        exact_steps=exact_steps, router=router, weights=weights, kv_cache=kv_cache, framework=framework,
    )  # fmt: skip
    store = ProfileStore(profiles_dir)
    cfg = resolve_config(config, overrides, FLAGS, store)
    if chunked_prefill is not None and cfg.mode == "disaggregated" and not compare:
        raise ConfigError("--chunked-prefill applies to aggregated serving, and --no-compare leaves no aggregated run")
    if out is not None:
        check_output_dir(out, "--out")
    if plots is not None:
        check_output_dir(plots, "--plots")
    if compare_fixed and cfg.autoscale is None:
        raise ConfigError("--compare-fixed: the config has no autoscale settings, so there is nothing to compare")
    plan = plan_runs(cfg, store, compare=compare and not compare_fixed)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", TraceImportWarning)
        tr = load_trace(trace)
    console = Console()
    cost = [
        (column_name(c), ", ".join(dict.fromkeys(labels.values())))
        for c, labels in zip(plan.configs, plan.cost_labels, strict=True)
    ]
    for line in [f"trace: {tr!r}"] + setting_lines(cfg, cost):
        console.print(line, markup=False, highlight=False)
    for w in caught:
        console.print(f"note: {w.message}", markup=False, highlight=False)
    window = cfg.model_shape(store).context_window_tokens
    if window is not None:
        over = int(((tr.input_tokens + tr.output_tokens) > window).sum())
        if over:
            console.print(
                f"note: {over:,} requests need more than {cfg.model}'s context window of {window:,} tokens "
                "and will be rejected, as a serving engine would (a longer-context model serves them)",
                markup=False, highlight=False,
            )  # fmt: skip
    progress = ProgressDisplay(Console(stderr=True))
    try:
        if compare_fixed:
            from simdisagg.dynamic import compare_fixed as run_compare_fixed

            runs = run_compare_fixed(tr, cfg, store, str(trace), progress)
        else:
            runs = run_planned(tr, plan, store, str(trace), progress)
    finally:
        progress.close()
    main_run = runs[0]
    title = f"{main_run.trace_label} · {cfg.model} · {main_run.summary['gpus']} GPUs"
    console.print(summary_table({r.column: r.summary for r in runs}, title))
    for r in runs:
        if r.summary.get("tenants"):
            console.print(tenant_table(r.summary, f"per tenant · {r.column} (ms; goodput req/s)"))
    for r in runs:
        for note in r.notes:
            console.print(f"[yellow]note:[/yellow] {escape(note)}")
    if compare_fixed:
        from simdisagg.dynamic import verdict

        console.print(verdict(runs), markup=False, highlight=False)
    elif len(runs) > 1:
        console.print(runs[0].verdict_against(runs[1]), markup=False, highlight=False)
    _write_outputs(console, runs, out, plots, str(trace))


def _write_outputs(console: Any, runs: list[Any], out: Path | None, plots: Path | None, trace_label: str) -> None:
    """Write the result folder and the plots, each as one unit (a manifest written last)."""
    from simdisagg.api import versions
    from simdisagg.output import RUN_FILES, result_files, write_folder

    record = {
        "command": command_line(),
        "trace": trace_label,
        "columns": [r.column for r in runs],
        "versions": versions(),
        "wall_s": {r.column: r.wall_s for r in runs},
    }
    plot_files = _plot_writers(runs) if plots is not None else {}
    same = out is not None and plots is not None and Path(out).resolve() == Path(plots).resolve()
    if out is not None:
        files: dict[str, Any] = {}
        for k, r in enumerate(runs):
            files.update(
                result_files(r.summary, r.frame(), r.config_record(), "" if k == 0 else "baseline_", r.timeseries())
            )
        if same:
            files.update(plot_files)
        write_folder(out, files, record, known=RUN_FILES + (PLOT_FILES if same else ()))
        console.print(f"wrote {out}/: {', '.join(files)}, manifest.json", markup=False, highlight=False)
    if plots is not None and not same:
        write_folder(plots, plot_files, record, known=PLOT_FILES)
        console.print(f"wrote {plots}/: {', '.join(plot_files)}, manifest.json", markup=False, highlight=False)


def _plot_writers(runs: list[Any]) -> dict[str, Any]:
    from simdisagg import plots as figures
    from simdisagg.metrics import request_latencies

    slo = runs[0].cfg.slo
    samples = {r.column: request_latencies(r.result) for r in runs}
    series = [(r.column, r.result, r.cfg) for r in runs]
    return {
        "latency_cdf.png": lambda p: figures.latency_cdfs(
            samples, p, slo.ttft_s, slo.tpot_s, title="latency of every completed request"
        ),
        "timeline.png": lambda p: figures.run_timelines(series, p),
        "timeseries.png": lambda p: figures.timeseries([(r.column, r.timeseries()) for r in runs], p),
    }


@app.command(epilog="Example: simdisagg profiles --profiles-dir my_profiles")
@guarded
def profiles(profiles_dir: ProfilesOpt = None) -> None:
    """List the GPU, link and model profiles that are available."""
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    from simdisagg.hardware import ProfileStore

    store = ProfileStore(profiles_dir)
    table = Table(title="hardware profiles")
    for col in ("kind", "name", "provenance", "summary"):
        table.add_column(col)
    for name in store.names("gpus"):
        g = store.gpu(name)
        table.add_row(
            g.kind, escape(name), g.provenance,
            f"{g.dense_bf16_flops_per_s.value / 1e12:.0f} TFLOP/s, {g.hbm_bandwidth_bytes_per_s.value / 1e12:.2f} TB/s, "
            f"{g.hbm_capacity_bytes.value / 1e9:.0f} GB, "
            + (f"${g.price_per_hour_usd.value:.2f}/h" if g.price_per_hour_usd else "no public price"),
        )  # fmt: skip
    for name in store.names("links"):
        lk = store.link(name)
        table.add_row(
            "link", escape(name), lk.provenance,
            f"{lk.bandwidth_bytes_per_s.value / 1e9:.1f} GB/s, {lk.latency_s.value * 1e6:.1f} us",
        )  # fmt: skip
    for name in store.names("models"):
        m = store.model(name)
        window = f", context {m.context_window_tokens:,}" if m.context_window_tokens else ""
        table.add_row(
            "model", escape(name), m.provenance,
            f"{m.total_params / 1e9:.1f} B params, {m.kv_bytes_per_token / 1024:.0f} KiB KV/token{window}",
        )  # fmt: skip
    Console().print(table)


app.add_typer(trace_app, name="trace", help="Convert, generate and describe traces.")
app.add_typer(calibrate_app, name="calibrate")
app.command("fit", epilog="Example: simdisagg fit hardware_profiles/measured/h100-sxm/llama-3.1-8b-tp1")(
    guarded(fit_command)
)
app.command(
    "plan",
    epilog="Example: simdisagg plan traces/mooncake-conversation-5min.jsonl --gpus 8 --slo-ttft 2s --slo-tpot 100ms",
)(guarded(plan_command))
app.command("validate")(guarded(validate_command))


def main() -> None:  # pragma: no cover - console entry
    """Entry point of ``python -m simdisagg``."""
    app(prog_name="simdisagg")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
