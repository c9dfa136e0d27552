"""Sensitivity of the answer to the cost model's error: the top candidates re-run with step
times scaled by ``1 ± error`` (the error given, or a fitted model's held-out p95 error)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from simdisagg.plan.candidates import _dedupe

if TYPE_CHECKING:
    from simdisagg.plan.planner import Planner, PlanResult


def sensitivity_study(planner: Planner, result: PlanResult) -> None:
    """Re-run the top ``sensitivity_top`` splits and the best aggregated baseline with step
    times scaled by ``1 ± error``; fill ``result.sensitivity`` and its summary lines."""
    spec = planner.spec
    error = spec.cost_error
    source = "--cost-error"
    if error is None:
        found = [
            planner.screener.cost_error(g, par)
            for g in _dedupe(spec.prefill_gpus + spec.decode_gpus)
            for par in _dedupe(spec.pool_parallelisms("prefill") + spec.pool_parallelisms("decode"))
        ]
        known = [e for e in found if e is not None]
        if known:
            error, source = max(known), "the fitted cost model's held-out p95 error"
    if error is None:
        result.notes.append(
            "Sensitivity skipped: the cost model reports no held-out error (the roofline model has none); "
            "pass --cost-error 0.1 to re-run the top candidates with step times ±10 %."
        )
        return
    if error == 0 or not result.rows:
        return
    evaluated = planner.sweep_results
    top = [r for r in result.rows if r["status"] == "evaluated" and r["mode"] == "disaggregated"
           and r["goodput_rps"] > 0][: spec.sensitivity_top]
    agg = result.best_of("aggregated")
    chosen = [r["label"] for r in top] + ([agg["label"]] if agg else [])
    factors = (1.0 - error, 1.0 + error)
    jobs, where = [], []
    for label in chosen:
        cand, res = evaluated[label]
        nominal = res["goodput_rate_scale"]
        for f in factors:
            jobs.append(planner.job("sensitivity", planner.load.fingerprint, cand,
                                    planner.search_dict(nominal / f, None, f)))
            where.append((label, f))
    out = planner.execute(jobs)
    rate = planner.load.base_rate_rps
    by: dict[str, dict[float, float]] = {}
    for (label, f), res in zip(where, out, strict=True):
        by.setdefault(label, {})[f] = res["goodput_rate_scale"] * rate
    rows = []
    for label in chosen:
        cand, res = evaluated[label]
        rows.append({
            "label": cand.label, "mode": cand.mode, "ratio": cand.ratio, "goodput_rps": res["goodput_rate_scale"] * rate,
            **{f"goodput_rps_x{f:g}": by[label][f] for f in factors},
        })
    result.sensitivity = rows
    lines = [(f"Step times scaled by ±{error:.0%} ({source}), top {len(top)} splits"
              f"{' and the best aggregated baseline' if agg else ''} re-run:")]

    def best_by(key: str) -> dict[str, Any]:
        return max(rows, key=lambda r: planner.metric(evaluated[r["label"]][0], float(r[key])))

    nominal_best = best_by("goodput_rps")
    for f in factors:
        key = f"goodput_rps_x{f:g}"
        best = best_by(key)
        shift = "unchanged" if best["label"] == nominal_best["label"] else f"shifts from {nominal_best['ratio']}"
        lines.append(
            f"  steps {'slower' if f > 1 else 'faster'} (x{f:.3g}): best {best['ratio']} "
            f"({evaluated[best['label']][0].family}) at {best[key]:.3g} req/s — {shift}"
        )
    result.sensitivity_summary = lines
