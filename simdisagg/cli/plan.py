"""``simdisagg plan``: search the prefill:decode split (and the aggregated baseline) of a GPU
budget by simulation, or the fewest GPUs (lowest $/h) that sustain a target rate, and write the
ranked table, a CSV of every candidate, plots, and the best candidate's config with the
``simdisagg run`` command that repeats it.

Thin by design: parse options → :class:`~simdisagg.plan.PlanSpec` → :func:`simdisagg.plan.plan`
→ print and write. Registered by :mod:`simdisagg.cli` as ``simdisagg plan``.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Annotated, Any, Literal, cast

import typer

from simdisagg.errors import ConfigError

# The shared options are spelled here rather than imported: simdisagg.cli imports this module
# while it is itself being imported, and the command must not depend on that order.
ConfigOpt = Annotated[Path | None, typer.Option("--config", "-c", help="base cluster config (default: none)")]
ModelOpt = Annotated[str | None, typer.Option("--model", help="model shape (default: the config's, else llama-3.1-8b)")]
SeedOpt = Annotated[int | None, typer.Option("--seed", help="random seed (default 0)")]
SloTtftOpt = Annotated[str | None, typer.Option("--slo-ttft", help="TTFT target, e.g. 500ms (default 2s)")]
SloTpotOpt = Annotated[str | None, typer.Option("--slo-tpot", help="TPOT target, e.g. 50ms (default 100ms)")]
ProfilesOpt = Annotated[Path | None, typer.Option("--profiles-dir", help="folder of hardware profiles (default: none)")]


def _names(text: str | None, flag: str) -> tuple[str, ...] | None:
    if text is None:
        return None
    items = tuple(x.strip() for x in text.split(",") if x.strip())
    if not items:
        raise ConfigError(f"{flag}: give one or more comma-separated names")
    return items


def _ints(text: str | None, flag: str) -> tuple[int, ...] | None:
    names = _names(text, flag)
    if names is None:
        return None
    try:
        values = tuple(int(x) for x in names)
    except ValueError:
        raise ConfigError(f"{flag}: '{text}' is not a comma-separated list of integers") from None
    if any(v < 1 for v in values):
        raise ConfigError(f"{flag}: values must be >= 1")
    return values


def _ratio(text: str | None) -> tuple[int, int] | None:
    if text is None:
        return None
    parts = text.upper().replace("P", "").replace("D", "").split(":")
    try:
        p, d = (int(x) for x in parts)
    except ValueError:
        raise ConfigError(f"--ratio: '{text}' is not P:D, e.g. 3:5") from None
    if p < 1 or d < 1:
        raise ConfigError("--ratio: both pools need at least one instance")
    return p, d


#: The flag behind each PlanSpec field, for messages about a value from the command line.
_PLAN_FLAGS = {
    "gpus": "--gpus", "budget_per_hour_usd": "--budget-per-hour", "rel_tol": "--rel-tol",
    "max_rate_scale": "--max-rate-scale", "min_rate_scale": "--max-rate-scale", "cost_error": "--cost-error",
    "sensitivity_top": "--sensitivity-top", "windows": "--windows", "window_ratio": "--ratio", "tps": "--tp",
    "max_batch_sizes": "--max-batch", "prefill_gpus": "--prefill-gpu", "decode_gpus": "--decode-gpu",
    "links": "--link", "prefill_parallelisms": "--prefill-parallelism", "decode_parallelisms": "--decode-parallelism",
}  # fmt: skip


def _option_error(exc: Exception) -> ConfigError:
    """A PlanSpec validation error as one line naming the flag."""
    errors = getattr(exc, "errors", None)
    if errors is None:
        return ConfigError(f"plan options: {exc}")
    err = errors()[0]
    loc = [str(p) for p in err["loc"]]
    flag = next((_PLAN_FLAGS[p] for p in reversed(loc) if p in _PLAN_FLAGS), "plan options")
    return ConfigError(f"{flag}: {err['msg'].removeprefix('Value error, ')}")


def _check_options(
    *, workers: int | None, address: str | None, backend: str, ratio: str | None, windows: int, top: int,
    numbers: dict[str, float | None],
) -> None:  # fmt: skip
    """Options refused before any work: counts out of range, non-finite numbers, and options
    that apply only with another one."""
    if workers is not None and not 1 <= workers <= 4096:
        raise ConfigError(f"--workers: must be between 1 and 4096, got {workers}")
    if address is not None and backend != "ray":
        raise ConfigError("--address names a Ray cluster: it applies only with --backend ray")
    if ratio is not None and windows == 0:
        raise ConfigError("--ratio fixes the split evaluated against --windows K: give --windows too")
    if top < 1:
        raise ConfigError(f"--top: must be >= 1, got {top}")
    for flag, value in numbers.items():
        if value is not None and not math.isfinite(value):
            raise ConfigError(f"{flag}: must be a finite number, got {value}")


def _pool_shape(pool: Any, tp: str | None) -> tuple[str, ...] | None:
    """A base config pool with attention DP or EP keeps its shape when no --tp is given."""
    if tp is None and (pool.dp > 1 or pool.ep > 1):
        return (pool.parallelism.label,)
    return None


def _cost_models(base: Any, profiles_dir: Path | None, spec: Any) -> list[tuple[str, str]]:
    """The cost model of every (GPU, pool parallelism) the plan tries, once every GPU,
    parallelism and link it names is checked (a TP, DP or EP the model cannot be split by, an
    unknown profile: refused before the search, in one line naming the option)."""
    from simdisagg.costmodel.factory import make_cost_model
    from simdisagg.hardware import ProfileStore, check_parallelism
    from simdisagg.plan.candidates import check_plan_prices
    from simdisagg.rng import Streams

    store = ProfileStore(profiles_dir)
    model = base.model_shape(store)
    names = {"prefill": "--prefill-parallelism", "decode": "--decode-parallelism"}
    for pool in ("prefill", "decode"):
        flag = names[pool] if getattr(spec, f"{pool}_parallelisms") is not None else "--tp"
        for par in spec.pool_parallelisms(pool):
            where = f"{flag} {par.label}: tp" if flag != "--tp" else "--tp"
            check_parallelism(model, par.tp, where, dp=par.dp, ep=par.ep)
    for name in spec.links:
        store.link(name)
    check_plan_prices(spec, store)
    shapes = list(dict.fromkeys(
        [(g, par) for g in spec.prefill_gpus for par in spec.pool_parallelisms("prefill")]
        + [(g, par) for g in spec.decode_gpus for par in spec.pool_parallelisms("decode")]
    ))
    return [
        (f"{g} {par.label}", make_cost_model(base.cost, model, store.gpu(g), par.tp, Streams(base.seed), store,
                                             role="plan", framework=base.framework, dp=par.dp, ep=par.ep).label)
        for g, par in shapes
    ]


def _target_rate(text: str | None) -> tuple[float | None, float | None]:
    """``--target-rate``: ``120`` or ``120rps`` (requests/s), or ``2x`` (the trace's rate times 2)."""
    if text is None:
        return None, None
    value = text.strip().lower()
    scale = value.endswith("x")
    number = value[:-1] if scale else value.removesuffix("rps").removesuffix("req/s")
    try:
        rate = float(number)
    except ValueError:
        raise ConfigError(f"--target-rate: '{text}' is not a rate, e.g. 120 (req/s) or 2x (the trace's rate x 2)") from None
    if not rate > 0 or math.isinf(rate):
        raise ConfigError("--target-rate: the rate must be a positive number")
    return (None, rate) if scale else (rate, None)


def _fmt(x: Any, spec: str) -> str:
    if x is None or (isinstance(x, float) and (math.isnan(x) or math.isinf(x))):
        return "-"
    return spec.format(x)


def plan_command(
    trace: Annotated[Path, typer.Argument(help="request trace (native JSONL, Mooncake, Azure CSV, ...)")],
    gpus: Annotated[
        int | None,
        typer.Option("--gpus", help="GPU budget: split this many GPUs (with --target-rate: the most; default: none)"),
    ] = None,
    budget_per_hour: Annotated[
        float | None, typer.Option("--budget-per-hour", help="budget in USD per hour, GPU list prices (default: none)")
    ] = None,
    target_rate: Annotated[
        str | None,
        typer.Option("--target-rate", help="find the fewest GPUs (or lowest $/h) that sustain this rate: "
                                           "req/s (120) or a rate scale (2x) (default: none)"),
    ] = None,
    slo_ttft: SloTtftOpt = None,
    slo_tpot: SloTpotOpt = None,
    attainment: Annotated[
        float | None, typer.Option("--attainment", help="fraction of requests that must meet the SLO (default 0.9)")
    ] = None,
    config: ConfigOpt = None,
    model: ModelOpt = None,
    gpu: Annotated[str | None, typer.Option("--gpu", help="GPU type(s) of both pools (default: the config's)")] = None,
    prefill_gpu: Annotated[
        str | None, typer.Option("--prefill-gpu", help="prefill GPU type(s) (default: --gpu)")
    ] = None,
    decode_gpu: Annotated[str | None, typer.Option("--decode-gpu", help="decode GPU type(s) (default: --gpu)")] = None,
    weights: Annotated[
        str | None, typer.Option("--weights", help="weight precision: bf16, fp8, fp8_block, fp4 (default: the config's)")
    ] = None,
    kv_cache: Annotated[
        str | None, typer.Option("--kv-cache", help="KV-cache precision: bf16, fp8 (default: the config's)")
    ] = None,
    tp: Annotated[str | None, typer.Option("--tp", help="TP degrees to try, e.g. 1,2 (default: the config's)")] = None,
    prefill_parallelism: Annotated[
        str | None,
        typer.Option("--prefill-parallelism", help="prefill instance shapes to try, e.g. tp8,tp2-dp4-ep8 "
                                                   "(MoE: attention DP and EP; default: --tp)"),
    ] = None,
    decode_parallelism: Annotated[
        str | None,
        typer.Option("--decode-parallelism", help="decode (and aggregated) instance shapes to try, e.g. "
                                                  "tp8,tp1-dp8-ep8 (default: --tp)"),
    ] = None,
    max_batch: Annotated[
        str | None, typer.Option("--max-batch", help="decode max batch sizes, e.g. 64,256 (default: the config's)")
    ] = None,
    link: Annotated[str | None, typer.Option("--link", help="KV link presets to try (default: the config's)")] = None,
    aggregated: Annotated[
        bool, typer.Option("--aggregated/--no-aggregated", help="include the aggregated baselines")
    ] = True,
    rank_by: Annotated[
        str, typer.Option("--rank-by", help="goodput | per_gpu | per_dollar | per_kw")
    ] = "goodput",
    cost_error: Annotated[
        float | None,
        typer.Option("--cost-error", help="re-run the top candidates with step times ±this, e.g. 0.1 (default: none)"),
    ] = None,
    sensitivity_top: Annotated[int, typer.Option("--sensitivity-top", help="splits re-run for sensitivity")] = 3,
    windows: Annotated[
        int, typer.Option("--windows", help="evaluate the best ratio against K consecutive trace windows")
    ] = 0,
    ratio: Annotated[
        str | None, typer.Option("--ratio", help="the fixed P:D ratio for --windows (default: the best split)")
    ] = None,
    rel_tol: Annotated[float, typer.Option("--rel-tol", help="goodput search tolerance (relative)")] = 0.02,
    max_rate_scale: Annotated[
        float, typer.Option("--max-rate-scale", help="highest rate scale searched")
    ] = 1e4,
    prune: Annotated[bool, typer.Option("--prune/--no-prune", help="skip dominated candidates")] = True,
    check: Annotated[
        bool,
        typer.Option("--check/--no-check", help="re-run the best candidate on its window 3x longer, at its goodput "
                                                "and 1.25x"),
    ] = True,
    workers: Annotated[int | None, typer.Option("--workers", help="parallel workers (default: CPU count)")] = None,
    backend: Annotated[str, typer.Option("--backend", help="process | ray")] = "process",
    address: Annotated[
        str | None, typer.Option("--address", help="Ray cluster address for --backend ray (default: local)")
    ] = None,
    out: Annotated[
        Path | None, typer.Option("--out", "-o", help="results folder (default plan-<trace name>); resumes there")
    ] = None,
    fresh: Annotated[bool, typer.Option("--fresh", help="discard finished results in --out and start over")] = False,
    plots: Annotated[bool, typer.Option("--plots/--no-plots", help="write PNG figures")] = True,
    top: Annotated[int, typer.Option("--top", help="rows shown in the table")] = 15,
    seed: SeedOpt = None,
    profiles_dir: ProfilesOpt = None,
) -> None:
    """Find the best prefill:decode split of a GPU budget under SLOs by simulating the trace:
    every split (and TP, batch size, GPU type and link you list), plus the aggregated baseline
    with and without chunked prefill; each ranked by goodput, the highest request rate it
    sustains at steady state with the SLO attainment target met. With --target-rate, the fewest
    GPUs (or, with --budget-per-hour, the lowest $/h) that sustain that rate."""

    from simdisagg.cli.common import (
        FLAGS,
        _run_guarded,
        build_overrides,
        check_input_file,
        setting_lines,
    )

    def body() -> None:
        from rich.console import Console

        from simdisagg.config import resolve_config
        from simdisagg.importers import load_trace
        from simdisagg.inputs import check_output_dir
        from simdisagg.plan import PlanSpec, SearchSettings

        if backend not in ("process", "ray"):
            raise ConfigError(f"--backend: '{backend}' is not process or ray")
        if rank_by not in ("goodput", "per_gpu", "per_dollar", "per_kw"):
            raise ConfigError(f"--rank-by: '{rank_by}' is not goodput, per_gpu, per_dollar or per_kw")
        target_rps, target_scale = _target_rate(target_rate)
        if target_rate is not None:
            if gpus is not None and budget_per_hour is not None:
                raise ConfigError("with --target-rate, give at most one of --gpus (a cap) and --budget-per-hour")
        elif (gpus is None) == (budget_per_hour is None):
            raise ConfigError("give exactly one of --gpus N and --budget-per-hour X (or a --target-rate)")
        _check_options(
            workers=workers, address=address, backend=backend, ratio=ratio, windows=windows, top=top,
            numbers={"--budget-per-hour": budget_per_hour, "--attainment": attainment, "--cost-error": cost_error,
                     "--rel-tol": rel_tol, "--max-rate-scale": max_rate_scale},
        )  # fmt: skip
        check_input_file(config, "--config")
        overrides = build_overrides(model=model, seed=seed, slo_ttft=slo_ttft, slo_tpot=slo_tpot, weights=weights,
                                    kv_cache=kv_cache)
        overrides["slo.attainment"] = attainment
        base = resolve_config(config, overrides, FLAGS)
        both = _names(gpu, "--gpu")
        try:
            spec = PlanSpec(
                base=base,
                gpus=gpus,
                budget_per_hour_usd=budget_per_hour,
                prefill_gpus=_names(prefill_gpu, "--prefill-gpu") or both or (base.prefill.gpu,),
                decode_gpus=_names(decode_gpu, "--decode-gpu") or both or (base.decode.gpu,),
                tps=_ints(tp, "--tp") or (base.decode.tp,),
                prefill_parallelisms=_names(prefill_parallelism, "--prefill-parallelism")
                or _pool_shape(base.prefill, tp),
                decode_parallelisms=_names(decode_parallelism, "--decode-parallelism") or _pool_shape(base.decode, tp),
                max_batch_sizes=_ints(max_batch, "--max-batch") or (base.decode.max_batch_size,),
                links=_names(link, "--link") or (base.link.preset,),
                aggregated=aggregated,
                search=SearchSettings(rel_tol=rel_tol, max_rate_scale=max_rate_scale),
                rank_by=rank_by,  # type: ignore[arg-type]
                prune=prune,
                cost_error=cost_error,
                sensitivity_top=sensitivity_top,
                windows=windows,
                window_ratio=_ratio(ratio),
                target_rate_rps=target_rps,
                target_rate_scale=target_scale,
                verify=check,
            )
        except ValueError as exc:  # pydantic's ValidationError is a ValueError
            raise _option_error(exc) from None
        cost_models = _cost_models(base, profiles_dir, spec)
        out_dir = out if out is not None else Path(f"plan-{trace.stem}")
        check_output_dir(out_dir, "--out")
        if fresh and (out_dir / "results.jsonl").exists():
            (out_dir / "results.jsonl").unlink()
        tr = load_trace(trace)
        console = Console()
        for line in [f"trace: {tr!r}"] + setting_lines(spec.base, cost_models):
            console.print(line, markup=False, highlight=False)
        n_workers = workers or os.cpu_count() or 1
        result = _run_with_progress(console, tr, spec, out_dir, profiles_dir, backend, n_workers, address)
        _print(console, result, top)
        _write(console, result, tr, trace, out_dir, plots, profiles_dir)

    _run_guarded(body)


def _run_with_progress(
    console: Any, tr: Any, spec: Any, out_dir: Path, profiles_dir: Path | None, backend: str, workers: int,
    address: str | None,
) -> Any:
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    from simdisagg.plan import ProgressEvent, plan

    with Progress(
        TextColumn("[bold]plan[/bold]"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("candidates ·"),
        TimeElapsedColumn(),
        TextColumn("· left"),
        TimeRemainingColumn(),
        TextColumn("{task.description}", style="dim"),
        console=console,
        transient=False,
    ) as progress:
        task = progress.add_task("", total=None)
        resumed = 0

        def on_progress(ev: ProgressEvent) -> None:
            nonlocal resumed
            resumed += ev.resumed
            note = f" ({resumed} resumed)" if resumed else ""
            progress.update(task, completed=ev.done, total=ev.total, description=ev.description[:60] + note)

        return plan(
            tr, spec, out_dir=out_dir, backend=cast(Literal["process", "ray"], backend), workers=workers, address=address,
            profiles_dir=profiles_dir, on_progress=on_progress,
        )


def _short(row: dict[str, Any]) -> str:
    if row["mode"] == "aggregated":
        return f"agg x{row['decode_count']}" + (" chunked" if row["chunked_prefill"] else "")
    return str(row["ratio"])


def _shape(row: dict[str, Any], pool: str) -> str:
    """``tp8`` or ``tp1-dp8-ep8``: a pool's parallelism in a result row (rows of older plans
    have no dp/ep columns)."""
    from simdisagg.hardware import Parallelism

    return Parallelism(int(row[f"{pool}_tp"]), int(row.get(f"{pool}_dp") or 1), int(row.get(f"{pool}_ep") or 1)).label


def _family(row: dict[str, Any]) -> str:
    pp, dp = _shape(row, "prefill"), _shape(row, "decode")
    if row["mode"] == "aggregated":
        return f"{row['decode_gpu']} {dp} b{row['max_batch_size']}"
    if row["prefill_gpu"] == row["decode_gpu"] and pp == dp:
        hw = f"{row['prefill_gpu']} {pp}"
    else:
        hw = f"P {row['prefill_gpu']} {pp} / D {row['decode_gpu']} {dp}"
    return f"{hw} b{row['max_batch_size']} {row['link']}"


def _title(result: Any) -> str:
    """Trace, model, budget or target, SLO and the trace's rate: what every output is about."""
    spec = result.spec
    slo = spec.slo
    if spec.gpus is not None:
        budget = f"{spec.gpus} GPUs"
    elif spec.budget_per_hour_usd is not None:
        budget = f"${spec.budget_per_hour_usd:g}/h"
    else:
        budget = "GPUs to find"
    if result.target is not None:
        budget = f"target {result.target['target_rate_rps']:.3g} req/s · {budget}"
    return (
        f"{result.trace_label} · {spec.base.model} · {budget} · SLO TTFT {slo.ttft_s * 1e3:g} ms "
        f"({spec.base.metrics.ttft}), TPOT {slo.tpot_s * 1e3:g} ms for {slo.attainment:.0%} of requests · trace rate "
        f"{result.base_rate_rps:.3g} req/s"
    )


def _print(console: Any, result: Any, top: int) -> None:
    from rich.markup import escape
    from rich.table import Table

    fam_d = sorted({_family(r) for r in result.rows if r["mode"] == "disaggregated"})
    fam_a = sorted({_family(r) for r in result.rows if r["mode"] == "aggregated"})
    multi = len(fam_d) > 1 or len(fam_a) > 1
    table = Table(title=escape(_title(result)), title_justify="left")
    columns: list[tuple[str, str]] = [("#", "right"), ("config", "left")]
    if multi:
        columns.append(("hardware", "left"))
    columns += [
        ("GPUs", "right"), ("P share", "right"), ("goodput req/s", "right"), ("/GPU", "right"),
        ("out tok/s /GPU", "right"), ("tok/s /user", "right"), ("$ /M tok", "right"), ("J /tok", "right"),
        ("limit", "left"), ("p90 TTFT ms", "right"), ("p90 TPOT ms", "right"),
    ]
    if result.target is not None:
        columns.append(("sustains target", "left"))
    for col, just in columns:
        table.add_column(col, justify=just)  # type: ignore[arg-type]
    best = result.best
    for r in result.rows[:top]:
        goodput = _fmt(r["goodput_rps"], "{:.3g}")
        if r["status"] != "evaluated":
            goodput = f"pruned ≤{_fmt(r['bound_rps'], '{:.3g}')}" if r["goodput_rps"] is None else "0 (pruned)"
        elif r.get("at_ceiling"):
            goodput = "≥" + goodput
        style = "bold green" if best is not None and r["label"] == best["label"] else None
        cells = [str(r["rank"]), _short(r)]
        if multi:
            cells.append(_family(r))
        cells += [
            str(r["gpus"]), _fmt(r["prefill_fraction"], "{:.0%}"), goodput, _fmt(r["goodput_per_gpu"], "{:.3g}"),
            _fmt(r["output_tok_s_per_gpu"], "{:,.0f}"), _fmt(r["tokens_per_s_per_user"], "{:.1f}"),
            _fmt(r["usd_per_million_output_tokens"], "{:.3g}"), _fmt(r["joules_per_output_token"], "{:.3g}"),
            r["bottleneck"] or "-", _fmt(r["p90_ttft_ms"], "{:.0f}"), _fmt(r["p90_tpot_ms"], "{:.1f}"),
        ]
        if result.target is not None:
            cells.append({True: "yes", False: "no"}.get(r.get("sustains_target"), "-"))
        table.add_row(*cells, style=style)
    console.print(table)
    if not multi:
        hw = [f"disaggregated {fam_d[0]}"] if fam_d else []
        hw += [f"aggregated {fam_a[0]}"] if fam_a else []
        console.print(f"[dim]hardware: {'; '.join(hw)}[/dim]")
    if len(result.rows) > top:
        console.print(f"[dim]{len(result.rows) - top} more candidates in candidates.csv[/dim]")
    if best is not None:
        console.print(f"[bold]Best:[/bold] {escape(_short(best))} on {escape(_family(best))} — "
                      f"{best['goodput_rps']:.3g} req/s sustained within the SLO "
                      f"({best['goodput_per_gpu']:.3g} per GPU, {best['goodput_per_dollar_hour']:.3g} per $/h).")
        console.print(f"[bold]Why:[/bold] {escape(best['why'])}")
    console.print(f"[bold]Verdict:[/bold] {escape(result.verdict)}")
    if result.steady_note:
        console.print(f"[bold]Steady state:[/bold] {escape(result.steady_note)}")
    check = result.verification
    if check is not None:
        target = result.spec.slo.attainment
        console.print(
            f"[bold]Check:[/bold] re-run on that window made 3x longer ({check['copies']} copies, "
            f"{check['requests']:,} requests), as simdisagg run would: SLO attainment "
            f"{check['attainment_at_goodput']:.1%} at the goodput rate, {check['attainment_above']:.1%} at "
            f"{check['factor']:g}x it (target {target:.0%}): "
            + ("the answer holds." if check["holds"] else "[red]the answer does not hold[/red].")
        )
    for line in result.pruned_summary:
        console.print(f"[yellow]pruned:[/yellow] {escape(line)}")
    zero = [
        _short(r) + (f" [{_family(r)}]" if multi else "")
        for r in result.rows if r["status"] == "evaluated" and r["goodput_rps"] == 0
    ]
    if zero:
        console.print(
            f"[yellow]goodput 0:[/yellow] {len(zero)} candidate(s) miss the SLO target even at the lowest rate "
            f"(3-4 simulations each): {escape(', '.join(zero[:8]))}{' ...' if len(zero) > 8 else ''}"
        )
    if result.target is not None:
        _print_target(console, result)
    if result.sensitivity:
        _print_sensitivity(console, result)
    if result.windows:
        _print_windows(console, result)
    for note in result.notes:
        console.print(f"[yellow]note:[/yellow] {escape(note)}")
    console.print(
        f"[dim]{result.evaluations} evaluations ({result.resumed} resumed from the results file), "
        f"{result.simulations} simulations run now.[/dim]"
    )


def _print_target(console: Any, result: Any) -> None:
    target = result.target
    if target["objective"] == "gpus":
        steps = ", ".join(
            f"{lv['gpus']} GPUs: {'sustained by ' + str(len(lv['passed'])) if lv['passed'] else 'none sustains'} "
            f"({lv['simulated']} of {lv['candidates']} candidates simulated)"
            for lv in target.get("levels", [])
        )
        if steps:
            console.print(f"[dim]target search: {steps}[/dim]", markup=True)
    else:
        checked = target.get("checked", [])
        console.print(f"[dim]target search: {len(checked)} clusters checked cheapest first, "
                      f"{sum(c['simulated'] for c in checked)} simulated[/dim]")


def _print_sensitivity(console: Any, result: Any) -> None:
    from rich.table import Table

    rows = result.sensitivity
    factors = [k for k in rows[0] if k.startswith("goodput_rps_x")]
    table = Table(title="sensitivity to the cost model's error (goodput req/s)", title_justify="left")
    table.add_column("config")
    table.add_column("nominal", justify="right")
    for k in factors:
        # The key keeps the factor exactly (%g); the column shows it to three digits.
        table.add_column(f"steps x{float(k.removeprefix('goodput_rps_x')):.3g}", justify="right")
    for r in rows:
        name = r["ratio"] if r["mode"] == "disaggregated" else r["label"]
        table.add_row(name, f"{r['goodput_rps']:.3g}", *[f"{r[k]:.3g}" for k in factors])
    console.print(table)
    for line in result.sensitivity_summary:
        console.print(line, markup=False)


def _print_windows(console: Any, result: Any) -> None:
    from rich.table import Table

    table = Table(title="fixed ratio against trace windows, each re-split", title_justify="left")
    for col in ("window", "time (s)", "req/s", "in/out tokens", "best split", "its goodput", "fixed goodput",
                "fixed / best", "GPU-h stranded", "attainment at deployed load", "limiting pool",
                "prefill saturated", "decode saturated"):
        table.add_column(col, justify="right")
    for w in result.windows:
        if "goodput_rps" not in w:
            table.add_row(str(w["window"]), f"{w['start_s']:.0f}–{w['end_s']:.0f}", "-", "-", "-", "-", "-", "-", "-",
                          "-", w.get("note", "-"), "-", "-")
            continue
        table.add_row(
            str(w["window"]), f"{w['start_s']:.0f}–{w['end_s']:.0f}", f"{w['rate_rps']:.3g}",
            f"{w['mean_input_tokens']:.0f}/{w['mean_output_tokens']:.0f}", w["best_split"],
            f"{w['best_goodput_rps']:.3g}", f"{w['goodput_rps']:.3g}", _fmt(w["fixed_share_of_best"], "{:.0%}"),
            _fmt(w["stranded_gpu_hours"], "{:.3g}"), _fmt(w["attainment_at_deployed_load"], "{:.0%}"),
            w["limiting_pool"], _fmt(w["prefill_saturated"], "{:.0%}"), _fmt(w["decode_saturated"], "{:.0%}"),
        )
    console.print(table)
    for line in result.windows_summary:
        console.print(line, markup=False)


def _write(
    console: Any, result: Any, tr: Any, trace_path: Path, out_dir: Path, plots: bool, profiles_dir: Path | None
) -> None:
    import pandas as pd

    from simdisagg.output import atomic_write, atomic_write_json

    out_dir.mkdir(parents=True, exist_ok=True)
    frame = result.frame()
    atomic_write(out_dir / "candidates.csv", lambda p: frame.to_csv(p, index=False))
    written = ["results.jsonl", "candidates.csv", "plan.json"]
    if result.sensitivity:
        sens = pd.DataFrame(result.sensitivity)
        atomic_write(out_dir / "sensitivity.csv", lambda p: sens.to_csv(p, index=False))
        written.append("sensitivity.csv")
    if result.windows:
        win = pd.DataFrame(result.windows)
        atomic_write(out_dir / "windows.csv", lambda p: win.to_csv(p, index=False))
        written.append("windows.csv")
    atomic_write_json(out_dir / "plan.json", result.record())
    command, files = _write_best(result, tr, trace_path, out_dir, profiles_dir)
    written += files
    if plots:
        written += _plots(result, tr, out_dir, profiles_dir)
    console.print(f"wrote {out_dir}/: {', '.join(written)}")
    if command:
        console.print(f"[bold]Repeat the best candidate at its goodput rate:[/bold] {command}", markup=True,
                      soft_wrap=True)


def _write_best(
    result: Any, tr: Any, trace_path: Path, out_dir: Path, profiles_dir: Path | None
) -> tuple[str, list[str]]:
    """Write the best candidate's run config (``best-config.json``, which ``simdisagg run --config``
    takes) and, when its goodput was confirmed on the trace tiled, that window
    (``best-trace.jsonl``); return the ``simdisagg run`` command that repeats it and the files."""
    import shlex

    from simdisagg.output import atomic_write, atomic_write_json
    from simdisagg.plan.planner import row_window_trace
    from simdisagg.trace import write_jsonl

    cfg = result.best_config()
    if cfg is None:
        return "", []
    best = result.best
    atomic_write_json(out_dir / "best-config.json", cfg.model_dump(mode="json"))
    files = ["best-config.json"]
    replay = trace_path
    if int(best.get("window_copies") or 1) > 1:
        window = row_window_trace(tr, best)
        replay = out_dir / "best-trace.jsonl"
        atomic_write(replay, lambda p: write_jsonl(window, p))
        files.append("best-trace.jsonl")
    words = ["simdisagg", "run", str(replay), "--config", str(out_dir / "best-config.json")]
    if profiles_dir is not None:
        words += ["--profiles-dir", str(profiles_dir)]
    return shlex.join(words), files


def _plots(result: Any, tr: Any, out_dir: Path, profiles_dir: Path | None) -> list[str]:
    from simdisagg import plots
    from simdisagg.hardware import ProfileStore
    from simdisagg.plan import latency_samples

    spec = result.spec
    title = _title(result)
    target = None if result.target is None else result.target["target_rate_rps"]
    names = []
    plots.goodput_vs_prefill_fraction(result.rows, out_dir / "goodput_vs_prefill_fraction.png", title=title,
                                      target_rps=target)
    names.append("goodput_vs_prefill_fraction.png")
    if result.probes:
        plots.pareto(result.probes, out_dir / "pareto.png", title=title)
        names.append("pareto.png")
    store = ProfileStore(profiles_dir)
    samples = {}
    for mode in ("disaggregated", "aggregated"):
        row = result.best_of(mode)
        if row is not None:
            name = f"{row['label']} @ {row['goodput_rps']:.3g} req/s"
            samples[name] = latency_samples(tr, row, spec, store)
    if samples:
        plots.latency_cdfs(samples, out_dir / "latency_cdf.png", spec.slo.ttft_s, spec.slo.tpot_s, title=title)
        names.append("latency_cdf.png")
    if result.windows:
        plots.window_bars(result.windows, out_dir / "windows.png", title=title)
        names.append("windows.png")
    return names
