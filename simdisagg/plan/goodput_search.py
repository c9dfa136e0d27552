"""The goodput search of one candidate: the highest rate it sustains within the SLO.

Two stages, so that the search stays fast while its answer is a steady-state one
(:mod:`simdisagg.plan.probe`):

1. **Screen** (:func:`find_goodput` over short windows): bracket geometrically from a start
   rate, then narrow in log space to ``rel_tol``. A probe failing on a growing backlog says
   what the cluster completed meanwhile, and the next probes go there.
2. **Confirm** (:func:`confirm_goodput` over the long window): probe both ends of the
   screened bracket again; when the long window overturns an end (a backlog that a short
   window hides), search on from there with long-window probes only. The goodput is the
   highest rate that passed on the long window, and the rate above it failed there.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from simdisagg.config import RunConfig, SLOConfig
from simdisagg.importers import load_trace
from simdisagg.plan.candidates import Candidate
from simdisagg.plan.probe import _store_for, passes_target, run_probe
from simdisagg.plan.spec import SearchSettings
from simdisagg.plan.workload import plan_window
from simdisagg.trace import Trace

Probe = Callable[[float], dict[str, Any]]


@dataclass(slots=True)
class GoodputSearch:
    """Outcome of a search: the highest passing rate scale ``lo`` (0 when even the lowest
    failed), the lowest failing one ``hi`` (inf when even the highest passed), and every
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


def probe_passed(p: dict[str, Any], target: float) -> bool:
    """A probe's verdict: its ``passed`` flag (steady-state probes), else its attainment."""
    return bool(p["passed"]) if "passed" in p else passes_target(p["attainment"], target)


class _Tracker:
    """The probes of one search, their verdicts, attainments and capacity hints by rate."""

    def __init__(self, probe: Probe, target: float) -> None:
        self.probe, self.target = probe, target
        self.probes: list[dict[str, Any]] = []
        self.attainment: dict[float, float] = {}
        self.hint: dict[float, float] = {}

    def passes(self, s: float) -> bool:
        p = self.probe(s)
        self.probes.append(p)
        self.attainment[s] = p["attainment"]
        if p.get("sustainable_rate_scale"):
            self.hint[s] = float(p["sustainable_rate_scale"])
        return probe_passed(p, self.target)

    def below(self, hi: float, default: float) -> float:
        """Where to probe next under a failing ``hi``: just under the rate the cluster kept
        up with at ``hi`` (when its backlog grew), else ``default``."""
        h = self.hint.get(hi)
        return h * 0.98 if h is not None and h < hi else default


def _narrow(track: _Tracker, lo: float, hi: float, settings: SearchSettings, max_steps: int) -> tuple[float, float]:
    """Narrow a bracket (``lo`` passed, ``hi`` failed) in log rate until ``hi/lo − 1 <= rel_tol``
    or ``max_steps`` probes. Halves it until it is short and its failing end is near the
    target, then predicts the crossing and probes just either side of it: from the backlog
    of the failing end (the rate the cluster completed) when it failed on one, else from the
    line through the two ends' attainments as log-odds against log rate."""
    target, tol = track.target, settings.rel_tol
    near = target - 3.0 * (1.0 - target)
    half = math.sqrt(1.0 + 0.9 * tol)
    pending: list[float] = []
    steps = 0
    while steps < max_steps and hi / lo - 1.0 > tol:
        pending = [x for x in pending if lo < x < hi]
        if not pending:
            crossing = None
            hint = track.hint.get(hi)
            if hint is not None and lo < hint < hi:
                crossing = hint
            elif hi / lo <= 1.25 and near <= track.attainment[hi] < target:
                odds_lo, odds_hi = _log_odds(track.attainment[lo]), _log_odds(track.attainment[hi])
                share = 0.5
                if odds_lo > odds_hi:
                    share = min(max((odds_lo - _log_odds(target)) / (odds_lo - odds_hi), 0.05), 0.95)
                crossing = math.exp(math.log(lo) + share * (math.log(hi) - math.log(lo)))
            if crossing is not None:
                pending = [x for x in (crossing / half, crossing * half) if lo < x < hi]
            if not pending:
                pending = [math.sqrt(lo * hi)]
        mid = pending.pop(0)
        steps += 1
        if track.passes(mid):
            lo = mid
        else:
            hi = mid
    return lo, hi


def find_goodput(probe: Probe, target: float, start: float, settings: SearchSettings) -> GoodputSearch:
    """Highest rate scale whose probe passes (``passed``, or ``attainment >= target``):
    bracket geometrically from ``start`` (clamped to the search range), then narrow the
    bracket in log space to ``rel_tol`` (:func:`_narrow`; each probe counts as a step of
    ``max_bisect_steps``).

    When the first probe fails, the search steps down (straight under the rate the cluster
    kept up with, when the failure was a growing backlog); after a second failure far from the
    target (or a third), the lowest rate is probed: a candidate that misses the SLO even there
    has goodput 0 after three or four simulations instead of a long geometric descent."""
    lo_lim, hi_lim, f = settings.min_rate_scale, settings.max_rate_scale, settings.bracket_factor
    tol = settings.rel_tol
    track = _Tracker(probe, target)
    s = min(max(start, lo_lim), hi_lim)
    lo, hi = 0.0, math.inf
    if track.passes(s):
        lo = s
        while math.isinf(hi) and lo < hi_lim:
            s = min(lo * f, hi_lim)
            if track.passes(s):
                lo = s
            else:
                hi = s
        if math.isinf(hi):
            return GoodputSearch(lo, hi, track.probes)
    else:
        hi = s
        failures, floor_probed = 1, False
        clearly_failing = target - 2.0 * (1.0 - target)
        while lo == 0.0 and hi > lo_lim:
            if not floor_probed and (failures >= 3 or (failures == 2 and track.attainment[hi] < clearly_failing)):
                floor_probed = True
                if not track.passes(lo_lim):
                    return GoodputSearch(0.0, lo_lim, track.probes)
                if hi / lo_lim - 1.0 <= tol:
                    lo = lo_lim
                    break
            s = max(track.below(hi, hi / f), lo_lim)
            if track.passes(s):
                lo = s
            else:
                hi = s
                failures += 1
        if lo == 0.0:
            return GoodputSearch(0.0, hi, track.probes)
    lo, hi = _narrow(track, lo, hi, settings, settings.max_bisect_steps)
    return GoodputSearch(lo, hi, track.probes)


def confirm_goodput(probe: Probe, screened: GoodputSearch, target: float, settings: SearchSettings) -> GoodputSearch:
    """Confirm a screened bracket with long-window probes (see the module docstring).

    Both ends are probed again. If the passing end fails, the search steps down from it
    (under the rate the cluster kept up with, or by ``1 + 4·rel_tol``, squared at each
    further failure) until a rate passes; if the failing end passes, it steps up the same way
    until one fails. The bracket is then narrowed with at most ``max_confirm_probes`` probes
    (a bracket still wider than ``rel_tol`` keeps its passing end). A candidate that passed
    nothing on the short window has goodput 0 without a long run."""
    if screened.at_floor:
        return GoodputSearch(0.0, screened.hi, [])
    lo_lim, hi_lim, tol = settings.min_rate_scale, settings.max_rate_scale, settings.rel_tol
    track = _Tracker(probe, target)
    lo, hi = 0.0, math.inf
    if track.passes(screened.lo):
        lo = screened.lo
        if not screened.at_ceiling:
            if track.passes(screened.hi):
                lo = screened.hi
            else:
                hi = screened.hi
        step = 1.0 + 4.0 * tol
        while math.isinf(hi) and lo < hi_lim and not screened.at_ceiling:
            s = min(lo * step, hi_lim)
            if track.passes(s):
                lo = s
                step *= step
            else:
                hi = s
        if math.isinf(hi):
            return GoodputSearch(lo, hi, track.probes)
    else:
        hi = screened.lo
        step = 1.0 + 4.0 * tol
        while lo == 0.0:
            s = max(track.below(hi, hi / step), lo_lim)
            if track.passes(s):
                lo = s
            elif s <= lo_lim:
                return GoodputSearch(0.0, lo_lim, track.probes)
            else:
                hi = s
                step *= step
    lo, hi = _narrow(track, lo, hi, settings, settings.max_confirm_probes)
    return GoodputSearch(lo, hi, track.probes)


def slo_lifetime_s(trace: Trace, slo: SLOConfig) -> float:
    """The p99 over the trace's requests of the longest end-to-end latency a request may have
    and still meet the SLO (TTFT target + TPOT target × (output tokens − 1))."""
    life = slo.ttft_s + slo.tpot_s * np.maximum(trace.output_tokens - 1, 0)
    return float(np.percentile(life, 99))


#: Keys of a job's ``search`` that are not :class:`SearchSettings` fields.
_JOB_OPTIONS = ("start_rate_scale", "cost_scale", "extra_rates", "lifetime_hint_s", "rate_scale")


@dataclass(slots=True)
class _Job:
    """A unit of work's inputs, resolved: the trace, the candidate's run config, the SLO, the
    search settings and the options beside them (``_JOB_OPTIONS``)."""

    trace: Trace
    store: Any
    slo: SLOConfig
    candidate: Candidate
    cfg: RunConfig
    settings: SearchSettings
    options: dict[str, Any]
    cost_scale: float
    lifetime_hint_s: float

    @classmethod
    def of(
        cls, trace: Trace | str | Path, candidate: dict[str, Any], slo: dict[str, Any], base: dict[str, Any],
        search: dict[str, Any], profiles_dir: str | None,
    ) -> _Job:
        """Resolve the arguments every unit of work takes (see :func:`evaluate_candidate`)."""
        tr = trace if isinstance(trace, Trace) else load_trace(trace)
        slo_cfg = SLOConfig.model_validate(slo)
        cand = Candidate.from_dict(candidate)
        options = {k: search[k] for k in _JOB_OPTIONS if k in search}
        settings = SearchSettings.model_validate({k: v for k, v in search.items() if k not in _JOB_OPTIONS})
        hint = options.get("lifetime_hint_s")
        return cls(
            trace=tr, store=_store_for(profiles_dir), slo=slo_cfg, candidate=cand,
            cfg=cand.run_config(RunConfig.model_validate({**base, "slo": slo})), settings=settings, options=options,
            cost_scale=float(options.get("cost_scale", 1.0)),
            lifetime_hint_s=float(hint) if hint else slo_lifetime_s(tr, slo_cfg),
        )


def evaluate_candidate(
    trace: Trace | str | Path,
    candidate: dict[str, Any],
    slo: dict[str, Any],
    base: dict[str, Any],
    search: dict[str, Any],
    profiles_dir: str | None = None,
) -> dict[str, Any]:
    """Find one candidate's sustainable goodput on a trace by simulation (picklable; runs in
    any worker).

    ``search`` holds :class:`SearchSettings` fields plus ``start_rate_scale`` (where the bracket
    starts), ``cost_scale`` (step times multiplied by it), ``extra_rates`` (rate scales to
    probe on the long window as well, e.g. a deployment load) and ``lifetime_hint_s`` (a
    guess of the p99 end-to-end latency near the goodput, which sizes the first run window;
    default: the longest a request meeting the SLO may take, :func:`slo_lifetime_s`). Returns
    plain data: the goodput rate scale, the long-window probes at the goodput rate (``pass``)
    and just above it (``fail``, run to the end), every probe sorted by rate (screening ones
    in ``screen_probes``), and how many simulations it took."""
    wall0 = time.perf_counter()
    job = _Job.of(trace, candidate, slo, base, search, profiles_dir)
    tr, store, slo_cfg, cand, cfg, cost_scale, settings = (
        job.trace, job.store, job.slo, job.candidate, job.cfg, job.cost_scale, job.settings
    )
    start = float(job.options.get("start_rate_scale", 1.0))
    extra = [float(x) for x in job.options.get("extra_rates", [])]
    steady = settings.steady
    lifetime = job.lifetime_hint_s
    seen: dict[tuple[str, float], dict[str, Any]] = {}
    windows: dict[tuple[int, int], Trace] = {}
    runs = 0

    def probe(kind: str, s: float, stop_when_failed: bool = True) -> dict[str, Any]:
        # A failing run may stop as soon as it cannot pass; a probe whose other figures are
        # reported (the first failing rate, extra rates) is run to the end.
        nonlocal runs, lifetime
        if kind == "screen" and long_trace(s):
            kind = "confirm"  # the trace is the long window itself: no shorter window to screen on
        key = (kind, s)
        if key not in seen or (not stop_when_failed and seen[key]["stopped_early"]):
            p = run_probe(cfg, tr, slo_cfg, s, store, steady, kind=kind,  # type: ignore[arg-type]
                          lifetime_hint_s=lifetime, cost_scale=cost_scale,
                          stop_when_failed=stop_when_failed, windows=windows)
            runs += int(p["runs"])
            if p["passed"]:
                # The next window is sized from the lifetimes seen where the cluster keeps up.
                lifetime = float(p["lifetime_p99_s"])
            seen[key] = p
        return seen[key]

    def long_trace(s: float) -> bool:
        need = math.ceil(steady.min_requests / (1.0 - steady.warmup_fraction))
        window = plan_window(tr, s, steady.window_lifetimes * lifetime, need, False, steady.max_requests)
        return window.copies == 1

    screened = find_goodput(lambda s: probe("screen", s), slo_cfg.attainment, start, settings)
    found = confirm_goodput(lambda s: probe("confirm", s), screened, slo_cfg.attainment, settings)
    fail = None
    if not math.isinf(found.hi):
        # The first failing rate's figures explain the bottleneck: run it to the end.
        fail = probe("screen" if found.at_floor else "confirm", found.hi, stop_when_failed=False)
    extra_probes = [probe("confirm", s, stop_when_failed=False) for s in extra]
    passed = seen.get(("confirm", found.lo))
    return {
        "candidate": cand.to_dict(),
        "goodput_rate_scale": found.lo,
        "fail_rate_scale": found.hi,
        "at_floor": found.at_floor,
        "at_ceiling": found.at_ceiling,
        "pass": passed,
        "fail": fail,
        "extra": extra_probes,
        "probes": sorted((p for (k, _), p in seen.items() if k == "confirm"), key=lambda p: p["rate_scale"]),
        "screen_probes": sorted((p for (k, _), p in seen.items() if k == "screen"), key=lambda p: p["rate_scale"]),
        "simulations": runs,
        "stopped_early": int(sum(p["stopped_early"] for p in seen.values())),
        "cost_scale": cost_scale,
        "wall_s": time.perf_counter() - wall0,
    }


def check_rate(
    trace: Trace | str | Path,
    candidate: dict[str, Any],
    slo: dict[str, Any],
    base: dict[str, Any],
    search: dict[str, Any],
    profiles_dir: str | None = None,
) -> dict[str, Any]:
    """Whether one candidate sustains one rate scale (``search["rate_scale"]``) within the SLO:
    a screening probe, then (if it passes) a confirming one on the long window, each at steady
    state (picklable, like :func:`evaluate_candidate`, whose other ``search`` keys it takes)."""
    wall0 = time.perf_counter()
    job = _Job.of(trace, candidate, slo, base, search, profiles_dir)
    rate = float(job.options["rate_scale"])
    windows: dict[tuple[int, int], Trace] = {}
    lifetime = job.lifetime_hint_s
    probes = []
    for kind in ("screen", "confirm"):
        p = run_probe(job.cfg, job.trace, job.slo, rate, job.store, job.settings.steady, kind=kind,  # type: ignore[arg-type]
                      lifetime_hint_s=lifetime, cost_scale=job.cost_scale, stop_when_failed=True, windows=windows)
        probes.append(p)
        if not p["passed"]:
            break
        lifetime = float(p["lifetime_p99_s"])
    last = probes[-1]
    return {
        "candidate": job.candidate.to_dict(),
        "rate_scale": rate,
        "passed": bool(last["passed"]) and last["kind"] == "confirm",
        "reason": last["reason"],
        "probes": probes,
        "simulations": int(sum(p["runs"] for p in probes)),
        "wall_s": time.perf_counter() - wall0,
    }


#: The units of work a :class:`~simdisagg.plan.runner.Runner` runs, by ``search["task"]``.
TASKS: dict[str, Callable[..., dict[str, Any]]] = {"goodput": evaluate_candidate, "sustains": check_rate}


def run_task(
    trace: Trace | str | Path,
    candidate: dict[str, Any],
    slo: dict[str, Any],
    base: dict[str, Any],
    search: dict[str, Any],
    profiles_dir: str | None = None,
) -> dict[str, Any]:
    """Run the task ``search["task"]`` names (default ``goodput``) with the other keys."""
    opts = dict(search)
    task = opts.pop("task", "goodput")
    return TASKS[task](trace, candidate, slo, base, opts, profiles_dir)
