"""The goodput search of one candidate: bracket and narrow the highest rate meeting the SLO."""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from simdisagg.config import RunConfig, SLOConfig
from simdisagg.plan.candidates import Candidate
from simdisagg.plan.probe import _store_for, passes_target, run_probe
from simdisagg.plan.spec import SearchSettings
from simdisagg.trace import Trace, load_trace


@dataclass(slots=True)
class GoodputSearch:
    """Outcome of :func:`find_goodput`: the highest passing rate scale ``lo`` (0 when even the
    lowest failed), the lowest failing one ``hi`` (inf when even the highest passed), and every
    probe in the order it ran."""

    lo: float
    hi: float
    probes: list[dict[str, Any]]

    @property
    def at_floor(self) -> bool:
        """Even the lowest rate searched failed."""
        return self.lo == 0.0

    @property
    def at_ceiling(self) -> bool:
        """Even the highest rate searched passed."""
        return math.isinf(self.hi)


def _log_odds(attainment: float) -> float:
    a = min(max(attainment, 1e-9), 1.0 - 1e-9)
    return math.log(a / (1.0 - a))


def find_goodput(
    probe: Callable[[float], dict[str, Any]], target: float, start: float, settings: SearchSettings
) -> GoodputSearch:
    """Highest rate scale with ``probe(s)['attainment'] >= target``: bracket geometrically from
    ``start`` (clamped to the search range), then narrow the bracket in log space to
    ``rel_tol``.

    Narrowing halves the bracket in log rate until it spans at most 25 % and its failing end
    is near the target (attainment within three times the allowed miss rate: a far end says
    little, as on a cliff). Then attainment falls smoothly with the rate (the miss fraction
    grows about as a power of the load), so the crossing is predicted from the line through
    the two ends' attainments as log-odds against log rate, and the next two probes go just
    below and just above it: when the prediction holds, they close the bracket to
    ``rel_tol`` at once. Each probe counts as a step of ``max_bisect_steps``.

    When the first probe fails, the search steps down; after a second failure far from the
    target (or a third), the lowest rate is probed: a candidate that misses the SLO even there
    has goodput 0 after three or four simulations instead of a long geometric descent."""
    lo_lim, hi_lim, f = settings.min_rate_scale, settings.max_rate_scale, settings.bracket_factor
    tol = settings.rel_tol
    probes: list[dict[str, Any]] = []
    attainment: dict[float, float] = {}

    def passes(s: float) -> bool:
        p = probe(s)
        probes.append(p)
        attainment[s] = p["attainment"]
        return passes_target(p["attainment"], target)

    s = min(max(start, lo_lim), hi_lim)
    lo, hi = 0.0, math.inf
    if passes(s):
        lo = s
        while math.isinf(hi) and lo < hi_lim:
            s = min(lo * f, hi_lim)
            if passes(s):
                lo = s
            else:
                hi = s
        if math.isinf(hi):
            return GoodputSearch(lo, hi, probes)
    else:
        hi = s
        failures, floor_probed = 1, False
        clearly_failing = target - 2.0 * (1.0 - target)
        while lo == 0.0 and hi > lo_lim:
            if not floor_probed and (failures >= 3 or (failures == 2 and attainment[hi] < clearly_failing)):
                floor_probed = True
                if not passes(lo_lim):
                    return GoodputSearch(0.0, lo_lim, probes)
                if hi / lo_lim - 1.0 <= tol:
                    lo = lo_lim
                    break
            s = max(hi / f, lo_lim)
            if passes(s):
                lo = s
            else:
                hi = s
                failures += 1
        if lo == 0.0:
            return GoodputSearch(0.0, hi, probes)
    # Narrow: halve the bracket (in log rate) until it is short and its failing end is near
    # the target, then predict the crossing and probe just either side of it.
    near = target - 3.0 * (1.0 - target)
    half = math.sqrt(1.0 + 0.9 * tol)
    pending: list[float] = []
    steps = 0
    while steps < settings.max_bisect_steps and hi / lo - 1.0 > tol:
        pending = [x for x in pending if lo < x < hi]
        if not pending:
            if hi / lo <= 1.25 and attainment[hi] >= near:
                odds_lo, odds_hi = _log_odds(attainment[lo]), _log_odds(attainment[hi])
                share = 0.5
                if odds_lo > odds_hi:
                    share = min(max((odds_lo - _log_odds(target)) / (odds_lo - odds_hi), 0.05), 0.95)
                crossing = math.exp(math.log(lo) + share * (math.log(hi) - math.log(lo)))
                pending = [x for x in (crossing / half, crossing * half) if lo < x < hi]
            if not pending:
                pending = [math.sqrt(lo * hi)]
        mid = pending.pop(0)
        steps += 1
        if passes(mid):
            lo = mid
        else:
            hi = mid
    return GoodputSearch(lo, hi, probes)


def evaluate_candidate(
    trace: Trace | str | Path,
    candidate: dict[str, Any],
    slo: dict[str, Any],
    base: dict[str, Any],
    search: dict[str, Any],
    profiles_dir: str | None = None,
) -> dict[str, Any]:
    """Find one candidate's goodput on a trace by simulation (picklable; runs in any worker).

    ``search`` holds :class:`SearchSettings` fields plus ``start_rate_scale`` (where the bracket
    starts), ``cost_scale`` (step times multiplied by it) and ``extra_rates`` (rate scales to
    probe as well, e.g. a deployment load). Returns plain data: the goodput rate scale, the
    probes at the goodput rate (``pass``) and just above it (``fail``), every probe sorted by
    rate, and how many simulations it took."""
    wall0 = time.perf_counter()
    tr = trace if isinstance(trace, Trace) else load_trace(trace)
    store = _store_for(profiles_dir)
    slo_cfg = SLOConfig.model_validate(slo)
    base_cfg = RunConfig.model_validate({**base, "slo": slo})
    cand = Candidate.from_dict(candidate)
    cfg = cand.run_config(base_cfg)
    opts = dict(search)
    start = float(opts.pop("start_rate_scale", 1.0))
    cost_scale = float(opts.pop("cost_scale", 1.0))
    extra = [float(x) for x in opts.pop("extra_rates", [])]
    settings = SearchSettings.model_validate(opts)
    seen: dict[float, dict[str, Any]] = {}

    runs = 0

    def probe(s: float, stop_when_failed: bool = True) -> dict[str, Any]:
        # A failing run may stop as soon as it cannot pass; a probe whose other figures are
        # reported (the first failing rate, extra rates) is run to the end.
        nonlocal runs
        if s not in seen or (not stop_when_failed and seen[s]["stopped_early"]):
            seen[s] = run_probe(cfg, tr, slo_cfg, s, store, cost_scale, stop_when_failed)
            runs += 1
        return seen[s]

    found = find_goodput(probe, slo_cfg.attainment, start, settings)
    if not math.isinf(found.hi):
        probe(found.hi, stop_when_failed=False)
    extra_probes = [probe(s, stop_when_failed=False) for s in extra]
    by_rate = {p["rate_scale"]: seen[p["rate_scale"]] for p in found.probes}
    return {
        "candidate": cand.to_dict(),
        "goodput_rate_scale": found.lo,
        "fail_rate_scale": found.hi,
        "at_floor": found.at_floor,
        "at_ceiling": found.at_ceiling,
        "pass": by_rate.get(found.lo),
        "fail": by_rate.get(found.hi),
        "extra": extra_probes,
        "probes": sorted(seen.values(), key=lambda p: p["rate_scale"]),
        "simulations": runs,
        "stopped_early": int(sum(p["stopped_early"] for p in seen.values())),
        "cost_scale": cost_scale,
        "wall_s": time.perf_counter() - wall0,
    }
