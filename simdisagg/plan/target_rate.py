"""The question turned around: the fewest GPUs, or the lowest price per hour, that sustain a
target rate within the SLO.

Every check is :func:`~simdisagg.plan.goodput_search.check_rate`: a screening probe at the
target rate, then a confirming one on the long window, each at steady state. A candidate whose
analytic bound (:mod:`~simdisagg.plan.screening`) is below the target cannot sustain it and is
not simulated.

**Fewest GPUs.** A *level* is the set of candidates using exactly ``n`` GPUs (every split of
every family and the aggregated baselines; a TP-2 family has none at odd ``n``). A level
passes when any of its candidates sustains the target. The search starts at the GPU count the
analytic bounds allow at best, steps up (doubling the step while levels fail) until a level
passes, then halves back to the smallest passing count ``n*``, assuming that more GPUs never
sustain less (one more instance in the pool that limits). Every candidate of level ``n* − 1``
has been checked and fails: that is the evidence that ``n*`` is the fewest.

**Lowest price.** With a budget per hour, every cluster within it (each family's instance
counts of both pools, and every aggregated count) is ordered by price; those whose bound
reaches the target are checked cheapest first, in batches as wide as the workers, until one
passes. Every cheaper cluster was checked and failed, or cannot reach the target by its
bound.

Afterwards the planner sweeps the answer's budget as usual, so each candidate there has its
goodput and per-candidate figures; the answer is the candidate that sustains the target with
the most headroom.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

from simdisagg.errors import ConfigError
from simdisagg.plan.candidates import (
    MAX_CANDIDATES,
    Candidate,
    _dedupe,
    budget_unit,
    enumerate_candidates,
    make_candidate,
)

if TYPE_CHECKING:
    from simdisagg.plan.planner import Planner, PlanResult


def _level(planner: Planner, gpus: int) -> list[Candidate]:
    """The candidates that use exactly ``gpus`` GPUs."""
    spec = planner.spec.model_copy(update={"gpus": gpus, "budget_per_hour_usd": None})
    try:
        return [c for c in enumerate_candidates(spec, planner.store) if c.gpus == gpus]
    except ConfigError:
        return []


def _check(planner: Planner, cands: list[Candidate], rate_scale: float) -> tuple[dict[str, bool], list[str]]:
    """Check each candidate at the target (those whose bound reaches it); return verdicts by
    label (``False`` without a simulation for the others) and the labels of those simulated."""
    verdicts: dict[str, bool] = {}
    viable = []
    for c in cands:
        screen = planner.screener.screen(c, planner.spec.search)
        if screen.reason is not None or screen.rate_bound < rate_scale:
            verdicts[c.label] = False
        else:
            viable.append((c, screen))
    jobs = [planner.job("target", planner.load.fingerprint, c,
                        planner.search_dict(rate_scale, screen, task="sustains", rate_scale=rate_scale))
            for c, screen in viable]
    for (c, _), res in zip(viable, planner.execute(jobs), strict=True):
        verdicts[c.label] = bool(res["passed"])
    return verdicts, [c.label for c, _ in viable]


def _fewest_gpus(planner: Planner, rate_scale: float, target: dict[str, Any]) -> None:
    spec = planner.spec
    cap = spec.gpus or spec.max_gpus
    # Where the bounds allow it at best: the largest bound per GPU among the candidates of a
    # small reference budget (bounds grow about linearly with the GPUs).
    widest = max(par.gpus for pool in ("prefill", "decode") for par in spec.pool_parallelisms(pool))
    ref = min(cap, max(2, 2 * widest))
    per_gpu = 0.0
    for n in range(1, ref + 1):
        for c in _level(planner, n):
            s = planner.screener.screen(c, spec.search)
            if s.reason is None:
                per_gpu = max(per_gpu, s.rate_bound / c.gpus)
    if per_gpu <= 0:
        return
    levels: dict[int, dict[str, Any]] = {}

    def passes(n: int) -> bool:
        if n not in levels:
            cands = _level(planner, n)
            verdicts, simulated = _check(planner, cands, rate_scale) if cands else ({}, [])
            levels[n] = {"gpus": n, "candidates": len(cands), "simulated": len(simulated),
                         "passed": [label for label, ok in verdicts.items() if ok]}
            target["sustains"].update(verdicts)
        return bool(levels[n]["passed"])

    n = min(cap, max(1, math.floor(rate_scale / per_gpu)))
    lo, hi = n - 1, None  # lo: the largest count known to fail (0: none fails)
    step = 1
    while hi is None:
        if passes(n):
            hi = n
        else:
            lo = n
            if n >= cap:
                break
            n = min(cap, n + step)
            step *= 2
    if hi is None:
        target["levels"] = [levels[k] for k in sorted(levels)]
        return
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if passes(mid):
            hi = mid
        else:
            lo = mid
    # The evidence: every candidate one GPU fewer was checked (or bounded) and fails. (The
    # start came from the bounds and was not itself checked below: walk down if it was high.)
    while hi > 1 and passes(hi - 1):
        hi -= 1
    target["levels"] = [levels[k] for k in sorted(levels)]
    target["gpus"] = hi
    below = levels.get(hi - 1)
    if below is not None:
        target["below"] = below


def _cheapest(planner: Planner, rate_scale: float, target: dict[str, Any]) -> None:
    spec = planner.spec
    budget = float(spec.budget_per_hour_usd or 0.0)
    store = planner.store
    for gpu in _dedupe(spec.prefill_gpus + spec.decode_gpus):
        budget_unit(spec, store, gpu)  # a device without a public price is refused here
    cands: list[Candidate] = []
    for gp in _dedupe(spec.prefill_gpus):
        for gd in _dedupe(spec.decode_gpus):
            for par_p in spec.pool_parallelisms("prefill"):
                for par_d in spec.pool_parallelisms("decode"):
                    for batch in _dedupe(spec.max_batch_sizes):
                        for link in _dedupe(spec.links):
                            p = 1
                            while True:
                                base = make_candidate("disaggregated", p, par_p, gp, 1, par_d, gd, batch, link)
                                if not base.price_per_hour_usd(store) <= budget + 1e-9:
                                    break
                                d = 1
                                while True:
                                    c = make_candidate("disaggregated", p, par_p, gp, d, par_d, gd, batch, link)
                                    if not c.price_per_hour_usd(store) <= budget + 1e-9:
                                        break
                                    cands.append(c)
                                    d += 1
                                p += 1
    if spec.aggregated:
        for gpu in _dedupe(spec.prefill_gpus + spec.decode_gpus):
            for par in spec.pool_parallelisms("decode"):
                for batch in _dedupe(spec.max_batch_sizes):
                    k = 1
                    while True:
                        c = make_candidate("aggregated", 0, par, gpu, k, par, gpu, batch)
                        if not c.price_per_hour_usd(store) <= budget + 1e-9:
                            break
                        cands += [c, make_candidate("aggregated", 0, par, gpu, k, par, gpu, batch, None, True)]
                        k += 1
    if len(cands) > MAX_CANDIDATES:
        raise ConfigError(f"the budget holds more than {MAX_CANDIDATES} clusters; lower --budget-per-hour or "
                          "narrow the --tp/--max-batch/--link/GPU lists")
    cands.sort(key=lambda c: (c.price_per_hour_usd(store), c.gpus, c.label))
    batch_size = max(1, planner.runner.workers if planner.runner is not None else 1)
    checked: list[dict[str, Any]] = []
    k = 0
    while k < len(cands):
        group = cands[k:k + batch_size]
        verdicts, simulated = _check(planner, group, rate_scale)
        target["sustains"].update(verdicts)
        checked += [{"label": c.label, "price_per_hour_usd": c.price_per_hour_usd(store),
                     "simulated": c.label in simulated, "sustains": verdicts[c.label]} for c in group]
        winner = next((c for c in group if verdicts[c.label]), None)
        if winner is not None:
            target["price_per_hour_usd"] = winner.price_per_hour_usd(store)
            target["gpus"] = winner.gpus
            break
        k += batch_size
    target["checked"] = checked


def find_target_budget(planner: Planner) -> dict[str, Any]:
    """Find the budget of a target-rate plan (see the module docstring). Returns the target in
    requests per second, the objective, the answer's GPU count or price (``answer`` is the
    first candidate found to sustain it, or ``None``), the verdicts of every candidate
    checked (``sustains``) and the budgets checked on the way."""
    spec = planner.spec
    rate_rps = spec.target_rps(planner.load.base_rate_rps)
    rate_scale = rate_rps / planner.load.base_rate_rps
    objective = "cost" if spec.budget_per_hour_usd is not None else "gpus"
    target: dict[str, Any] = {"target_rate_rps": rate_rps, "target_rate_scale": rate_scale, "objective": objective,
                              "answer": None, "gpus": None, "price_per_hour_usd": None, "sustains": {}}
    if objective == "gpus":
        _fewest_gpus(planner, rate_scale, target)
    else:
        _cheapest(planner, rate_scale, target)
    if target["gpus"] is not None:
        target["answer"] = "pending"  # the sweep of the answer's budget picks the candidate
    return target


def target_verdict(planner: Planner, result: PlanResult) -> tuple[str, str]:
    """Choose the answer among the candidates of the swept budget that sustain the target
    (the most headroom: the highest goodput), and state it with its evidence."""
    target = result.target
    assert target is not None
    rate = target["target_rate_rps"]
    cap = planner.spec.gpus or planner.spec.max_gpus
    if target["answer"] is None:
        where = (f"within {cap} GPUs" if target["objective"] == "gpus"
                 else f"within ${planner.spec.budget_per_hour_usd:g}/h")
        return (f"No cluster {where} sustains {rate:.3g} req/s within the SLO.", "")
    ok = [r for r in result.rows if r["status"] == "evaluated" and target["sustains"].get(r["label"])
          and (target["objective"] != "gpus" or r["gpus"] == target["gpus"])]
    if target["objective"] == "cost":
        ok = [r for r in ok if abs(r["price_per_hour_usd"] - target["price_per_hour_usd"]) < 1e-9] or ok
    if not ok:  # the sweep pruned the candidates checked at the target: take one whose goodput reaches it
        ok = [r for r in result.rows if r["status"] == "evaluated" and (r["goodput_rps"] or 0.0) >= rate]
    best = max(ok, key=lambda r: r["goodput_rps"] or 0.0) if ok else None
    if best is None:
        target["answer"] = None
        return (f"No candidate of the budget found sustains {rate:.3g} req/s within the SLO.", "")
    target["answer"] = best["label"]
    name = planner.namer(result)(best)
    head = (f"{best['gpus']} GPUs" if target["objective"] == "gpus" else
            f"${best['price_per_hour_usd']:.4g}/h ({best['gpus']} GPUs)")
    what = "Fewest GPUs" if target["objective"] == "gpus" else "Lowest price per hour"
    text = (f"{what} that sustain {rate:.3g} req/s within the SLO: {head}, as {name} "
            f"(goodput {best['goodput_rps']:.3g} req/s, {best['price_per_hour_usd']:.4g} $/h).")
    below = target.get("below")
    if below is not None:
        bounded = below["candidates"] - below["simulated"]
        text += (f" With {below['gpus']} GPUs none of the {below['candidates']} candidates does "
                 f"({below['simulated']} simulated at the target, {bounded} below it by their analytic bound).")
    elif target["objective"] == "cost":
        cheaper = [c for c in target.get("checked", []) if c["price_per_hour_usd"] < best["price_per_hour_usd"] - 1e-9]
        text += (f" All {len(cheaper)} cheaper clusters within the budget fail "
                 f"({sum(c['simulated'] for c in cheaper)} simulated, the others below the rate by their bound).")
    return text, f"{name}: {best['why']}"
