"""Traffic shifts: one fixed prefill:decode ratio against re-splitting for each window of time.

The trace is cut into ``k`` consecutive windows of equal recorded duration
(:func:`split_windows`). In each window the sustainable goodput of every split of the fixed
ratio's family (same GPUs, TP, batch limit and link) is searched on that window's traffic
alone, and the best split of the window found; the fixed ratio (the best split on the whole
trace, or ``--ratio``) is searched there too, and probed at the load it was sized for.

**GPU-hours stranded by the fixed ratio.** In window ``w`` of recorded duration ``D_w`` the
fixed ratio's ``N`` GPUs sustain ``G_fixed`` where the best split of the same ``N`` GPUs
sustains ``G_best``: to carry what re-splitting carries, the fixed ratio needs
``N · G_best / G_fixed`` GPUs, so a fraction ``1 − G_fixed / G_best`` of its GPU time does no
useful work. Stranded GPU-hours ``= Σ_w N · D_w · (1 − G_fixed,w / G_best,w)``, also given as
a share of the ``N · Σ_w D_w`` GPU-hours the fixed ratio runs.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import numpy as np

from simdisagg.errors import ConfigError
from simdisagg.plan.candidates import Candidate, enumerate_candidates, make_candidate
from simdisagg.plan.diagnosis import diagnose, pool_figures
from simdisagg.plan.screening import Screener
from simdisagg.plan.workload import trace_fingerprint, trace_load
from simdisagg.trace import Trace

if TYPE_CHECKING:
    from simdisagg.plan.planner import Planner, PlanResult


def split_windows(trace: Trace, k: int) -> list[tuple[float, float, Trace | None]]:
    """``k`` consecutive equal-duration windows of a trace by recorded arrival time, each as a
    trace of its own whose timestamps start at the window's start (``None`` if empty)."""
    ts = trace.timestamp_s
    t0, t1 = float(ts.min()), float(ts.max())
    edges = np.linspace(t0, t1, k + 1)
    which = np.clip(np.searchsorted(edges, ts, side="right") - 1, 0, k - 1)
    out: list[tuple[float, float, Trace | None]] = []
    for w in range(k):
        idx = np.flatnonzero(which == w)
        if len(idx) == 0:
            out.append((float(edges[w]), float(edges[w + 1]), None))
            continue
        sub = trace.subset(idx)
        sub.timestamp_s = sub.timestamp_s - edges[w]
        sub.source = f"{trace.source}[window {w + 1}/{k}]"
        out.append((float(edges[w]), float(edges[w + 1]), sub))
    return out


def _fixed_ratio(planner: Planner, result: PlanResult) -> Candidate | None:
    spec = planner.spec
    best = result.best_of("disaggregated")
    proto: Candidate | None
    if best is not None:
        proto = planner.sweep_results[best["label"]][0]
    else:
        proto = next((c for c, _ in planner.sweep_results.values() if not c.aggregated), None)
    if proto is None:
        return None
    if spec.window_ratio is not None:
        proto = make_candidate(
            "disaggregated", spec.window_ratio[0], proto.prefill_parallelism, proto.prefill_gpu,
            spec.window_ratio[1], proto.decode_parallelism, proto.decode_gpu, proto.max_batch_size, proto.link,
        )
    return proto


def window_study(planner: Planner, result: PlanResult) -> None:
    """Fill ``result.windows`` (one row per window) and ``result.windows_summary`` (see the
    module docstring)."""
    spec = planner.spec
    if spec.windows <= 0:
        return
    if result.best_of("disaggregated") is None and spec.window_ratio is None:
        result.notes.append("Windows skipped: no disaggregated split meets the SLO.")
        return
    proto = _fixed_ratio(planner, result)
    if proto is None:
        result.notes.append("Windows skipped: the plan has no disaggregated split.")
        return
    # The fixed ratio's family: every split of its GPUs with the same hardware.
    family_spec = spec.model_copy(update={"gpus": proto.gpus, "budget_per_hour_usd": None, "aggregated": False,
                                          "prefill_gpus": (proto.prefill_gpu,), "decode_gpus": (proto.decode_gpu,),
                                          "prefill_parallelisms": (proto.prefill_parallelism.label,),
                                          "decode_parallelisms": (proto.decode_parallelism.label,),
                                          "max_batch_sizes": (proto.max_batch_size,), "links": (proto.link,)})
    family = [c for c in enumerate_candidates(family_spec, planner.store)
              if c.family == proto.family and c.gpus == proto.gpus]
    if proto not in family:
        family.append(proto)
    # The load the ratio was sized for: its goodput on the whole trace.
    whole = planner.sweep_results.get(proto.label, (proto, None))[1]
    if whole is None:
        screen = planner.screener.screen(proto, spec.search)
        whole = planner.execute([planner.job("sweep", planner.load.fingerprint, proto,
                                             planner.search_dict(planner.start(screen), screen))])[0]
    deploy_rps = whole["goodput_rate_scale"] * planner.load.base_rate_rps

    plans: list[dict[str, Any]] = []
    for k, (t0, t1, sub) in enumerate(planner.window_parts):
        entry: dict[str, Any] = {"window": k + 1, "start_s": t0, "end_s": t1, "requests": 0 if sub is None else len(sub)}
        if sub is not None:
            try:
                load = trace_load(sub, planner.caching)
            except ConfigError:
                load = None
            if load is not None:
                screener = Screener(spec.base, planner.store, load)
                entry.update(trace=sub, load=load, fp=trace_fingerprint(sub),
                             screens={c.label: screener.screen(c, spec.search) for c in family})
        plans.append(entry)

    def jobs_for(entry: dict[str, Any], cands: list[Candidate]) -> list[Any]:
        load, screens = entry["load"], entry["screens"]
        out = []
        for c in cands:
            extra = [deploy_rps / load.base_rate_rps] if c == proto and deploy_rps > 0 else []
            out.append(planner.job("window", entry["fp"], c,
                                   planner.search_dict(planner.start(screens[c.label]), screens[c.label], extra=extra)))
        return out

    def evaluate(pairs: list[tuple[dict[str, Any], Candidate]]) -> None:
        jobs = [job for entry, cand in pairs for job in jobs_for(entry, [cand])]
        for (entry, cand), res in zip(pairs, planner.execute(jobs), strict=True):
            entry["results"][cand.label] = (cand, res)

    live = [e for e in plans if "load" in e]
    # Phase 1: the fixed ratio and the split with the highest bound, in every window.
    first: list[tuple[dict[str, Any], Candidate]] = []
    for e in live:
        e["results"] = {}
        bounds = {c.label: e["screens"][c.label].rate_bound for c in family}
        top = max(family, key=lambda c: bounds[c.label])
        first += [(e, c) for c in dict.fromkeys([proto, top])]
    evaluate(first)
    # Phase 2: the other splits whose bound can beat the window's best so far.
    second: list[tuple[dict[str, Any], Candidate]] = []
    for e in live:
        best_so_far = max(r["goodput_rate_scale"] for _, r in e["results"].values())
        second += [(e, c) for c in family
                   if c.label not in e["results"] and e["screens"][c.label].rate_bound >= best_so_far]
    evaluate(second)

    rows = []
    stranded_h = 0.0
    deployed_h = 0.0
    for e in plans:
        row = {k: e[k] for k in ("window", "start_s", "end_s", "requests")}
        if "load" not in e:
            row["note"] = "too few requests to scale"
            rows.append(row)
            continue
        load, sub = e["load"], e["trace"]
        _, fixed = e["results"][proto.label]
        best_cand, best_res = max(e["results"].values(), key=lambda cr: cr[1]["goodput_rate_scale"])
        g_fixed = fixed["goodput_rate_scale"] * load.base_rate_rps
        g_best = best_res["goodput_rate_scale"] * load.base_rate_rps
        share = g_fixed / g_best if g_best > 0 else math.nan
        hours = (e["end_s"] - e["start_s"]) / 3600.0
        stranded = proto.gpus * hours * (1.0 - share) if g_best > 0 else 0.0
        stranded_h += stranded
        deployed_h += proto.gpus * hours
        bottleneck, why = diagnose(fixed, spec.slo)
        ok = fixed.get("pass") or fixed.get("fail") or {}
        at_deploy = fixed["extra"][0] if fixed["extra"] else None
        row.update(
            rate_rps=load.base_rate_rps,
            mean_input_tokens=float(sub.input_tokens.mean()),
            mean_output_tokens=float(sub.output_tokens.mean()),
            best_split=best_cand.ratio,
            best_goodput_rps=g_best,
            goodput_rps=g_fixed,
            fixed_share_of_best=share,
            stranded_gpu_hours=stranded,
            attainment_at_deployed_load=None if at_deploy is None else at_deploy["attainment"],
            limiting_pool=bottleneck,
            prefill_saturated=ok.get("prefill_saturated_fraction"),
            decode_saturated=ok.get("decode_saturated_fraction"),
            prefill_batch_occupancy=ok.get("prefill_batch_occupancy"),
            decode_batch_occupancy=ok.get("decode_batch_occupancy"),
            decode_kv_occupancy=ok.get("decode_kv_occupancy"),
            figures=f"prefill {pool_figures(ok, 'prefill')}; decode {pool_figures(ok, 'decode')}",
            why=why,
        )
        rows.append(row)
    result.windows = rows
    result.windows_summary = _summary(proto, deploy_rps, rows, stranded_h, deployed_h)


def _summary(proto: Candidate, deploy_rps: float, rows: list[dict[str, Any]], stranded_h: float,
             deployed_h: float) -> list[str]:
    ev = [r for r in rows if "goodput_rps" in r]
    lines = [(f"Fixed ratio {proto.ratio} ({proto.family}), sized for {deploy_rps:.3g} req/s on the whole trace, "
              f"against {len(rows)} consecutive windows, each searched for its own best split:")]
    for r in ev:
        lines.append(
            f"  window {r['window']}: best split {r['best_split']} sustains {r['best_goodput_rps']:.3g} req/s; "
            f"{proto.ratio} {r['goodput_rps']:.3g} req/s ({r['fixed_share_of_best']:.0%}), {r['limiting_pool']}-bound"
        )
    limits = [str(r["limiting_pool"]) for r in ev]
    if len(set(limits)) > 1:
        lines.append(f"  the limiting pool changes across windows ({', '.join(limits)}): a ratio fixed at deployment "
                     "strands capacity in the other pool when the mix moves")
    if deployed_h > 0:
        lines.append(
            f"  GPU-hours stranded by the fixed ratio against re-splitting per window: {stranded_h:.3g} of the "
            f"{deployed_h:.3g} GPU-hours it runs ({stranded_h / deployed_h:.1%})"
        )
    return lines
