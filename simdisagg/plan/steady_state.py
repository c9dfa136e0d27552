"""Steady state of one run: a long enough window, the warm-up left out, no growing backlog.

A finite trace can meet the SLO at a rate the cluster cannot sustain: its requests arrive in
a few seconds and sit in queues and KV memory until the run ends, and the run stops before
the queues grow long enough to break the SLO. A rate counts as sustained only when the run
shows a steady state, judged from the run itself (times in simulated seconds, ``a_r`` and
``c_r`` a request's arrival and completion):

* **Window.** The arrival window ``[t0, t1]`` runs from the first to the last arrival. Its
  first ``warmup_fraction`` is the warm-up: requests arriving then are left out of every
  figure (the *measured* requests are the others).
* **Long enough.** ``t1 − t0`` is at least ``window_lifetimes`` times the p99 end-to-end
  latency ``L`` of the measured requests, and at least ``min_requests`` are measured. A
  window that is too short is extended by the caller and run again; a window that never gets
  long enough (``L`` grows with it) is itself a backlog.
* **No growing backlog.** The second half ``[tm, t1]`` is cut into ``bins`` equal batches. In
  each, the time-average of the requests in flight (arrived, neither completed nor rejected)
  and the mean time the requests arriving then waited in queues (:func:`queueing_delay_s`).
  The backlog grows when the least-squares trend of the waits rises by more than
  ``max_growth`` seconds per second at a t statistic of ``significance``, and the in-flight
  count rises with them (t of at least ``significance − 1``; batch means). Waits, not the
  in-flight count alone, decide: under a rising arrival rate a stable cluster holds more
  requests in flight, but they do not wait longer. The in-flight trend is the arrival rate
  minus the completion rate: the *backlog growth rate* a diagnosis quotes, with the
  completion/arrival ratio over the second half.
* **Where it grows.** The same trend for each queue (prompts waiting for prefill, requests
  waiting for a decode slot and KV memory, transfers waiting for a link) and for the KV
  memory held by the decode (or aggregated) pool, as a share of its capacity.

Pure functions of a :class:`~simdisagg.sim.recorder.RunResult`: no SimPy, no I/O.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from simdisagg.plan.spec import SteadyStateSettings
from simdisagg.sim.recorder import STATUS_COMPLETED, STATUS_REJECTED, RunResult

#: Queues whose growth a diagnosis names, with the interval a request spends in each.
STAGES = {
    "prefill_queue": ("prefill_enqueued_at", "prefill_start_at"),
    "decode_slot_wait": ("first_token_at", "decode_admit_at"),
    "link_queue": ("decode_admit_at", "kv_send_start_at"),
}
STAGE_NAMES = {
    "prefill_queue": "prompts waiting for prefill",
    "decode_slot_wait": "requests waiting for a decode slot and KV memory",
    "link_queue": "KV transfers waiting for a link",
    "kv": "KV memory held by the decode pool",
}


@dataclass(frozen=True, slots=True)
class Trend:
    """A least-squares line through batch means: slope (units per second) and its t statistic."""

    slope: float
    t: float

    def rising(self, threshold: float, significance: float) -> bool:
        """Whether the slope is above ``threshold`` and significantly positive."""
        return self.slope > threshold and self.t >= significance


def trend(centres_s: np.ndarray, means: np.ndarray) -> Trend:
    """The OLS slope of ``means`` against ``centres_s`` (NaN means left out) and its t
    statistic from the residuals (infinite for a perfect line, 0 with fewer than 3 points)."""
    ok = ~np.isnan(means)
    x, y = centres_s[ok], means[ok]
    if len(x) < 3:
        return Trend(0.0, 0.0)
    dx = x - x.mean()
    sxx = float((dx * dx).sum())
    slope = float((dx * (y - y.mean())).sum() / sxx)
    resid = y - y.mean() - slope * dx
    s2 = float((resid * resid).sum()) / (len(x) - 2)
    if s2 <= 1e-24 * max(float((y * y).mean()), 1e-300):
        return Trend(slope, math.inf if slope > 0 else (-math.inf if slope < 0 else 0.0))
    return Trend(slope, slope / math.sqrt(s2 / sxx))


def interval_bin_means(
    start: np.ndarray, end: np.ndarray, edges: np.ndarray, weights: np.ndarray | None = None
) -> np.ndarray:
    """Per bin ``[edges[b], edges[b+1])``: the time-average number (or weight) of intervals
    ``[start, end)`` covering it. A NaN start is no interval; a NaN end has not ended."""
    ok = ~np.isnan(start)
    s = start[ok]
    e = np.where(np.isnan(end[ok]), np.inf, end[ok])
    w = None if weights is None else weights[ok].astype(np.float64)
    out = np.empty(len(edges) - 1)
    for b in range(len(edges) - 1):
        lo, hi = float(edges[b]), float(edges[b + 1])
        overlap = np.clip(np.minimum(e, hi) - np.maximum(s, lo), 0.0, None)
        out[b] = float(overlap.sum() if w is None else (overlap * w).sum()) / (hi - lo)
    return out


@dataclass(slots=True)
class SteadyState:
    """What :func:`analyse` found in one run (seconds, requests per second)."""

    window_s: float
    warmup_s: float
    measured: int
    lifetime_p99_s: float
    long_enough: bool
    arrival_rate_rps: float  # over the second half
    growth_rps: float  # in-flight trend over the second half: arrivals − completions
    growth_t: float
    latency_growth: float  # queueing-delay trend, seconds per second of arrivals
    latency_growth_t: float
    completion_ratio: float  # completions / arrivals over the second half
    stage_growth_rps: dict[str, float] = field(default_factory=dict)
    kv_growth_per_s: float = math.nan  # share of the pool's KV capacity per second
    growing: bool = False

    @property
    def steady(self) -> bool:
        """Long enough and no growing backlog."""
        return self.long_enough and not self.growing

    def to_dict(self) -> dict[str, Any]:
        """Plain data (JSON friendly)."""
        return asdict(self)

    def growth_text(self) -> str:
        """One clause stating the backlog growth: its rate and where it grows."""
        where = ""
        stages = {k: v for k, v in self.stage_growth_rps.items() if v > 0}
        if stages:
            top = max(stages, key=lambda k: stages[k])
            where = f", mostly {STAGE_NAMES[top]} (+{stages[top]:.3g}/s)"
        return (
            f"backlog grows {self.growth_rps:.3g} req/s over the second half of the window "
            f"({self.growth_rps / max(self.arrival_rate_rps, 1e-12):.1%} of arrivals; completions "
            f"{self.completion_ratio:.0%} of arrivals; waits rise {self.latency_growth:.3g} s per s){where}"
        )


def queueing_delay_s(result: RunResult, end_at: float) -> np.ndarray:
    """Per request, the time it waited in queues (for prefill, for a decode slot and KV memory,
    for a link, to join a batch); a wait still open at ``end_at`` counts up to then. Service
    times vary with the request; waits are what a backlog lengthens."""
    t = result.recorder.times
    total = np.zeros(len(result.output_tokens))
    stages = [("prefill_enqueued_at", "prefill_start_at")]
    if result.mode != "aggregated":
        stages += [("first_token_at", "decode_admit_at"), ("decode_admit_at", "kv_send_start_at"),
                   ("kv_send_end_at", "decode_start_at")]
    handed_over = (result.recorder.prefill_instance >= 0) & (result.output_tokens > 1)
    for a, b in stages:
        # Only requests handed from the prefill pool to a decode pool wait after prefill.
        start = t[a] if a == "prefill_enqueued_at" else np.where(handed_over, t[a], np.nan)
        end = t[b]
        wait = np.where(np.isnan(end), end_at - start, end - start)
        total += np.where(np.isnan(wait), 0.0, wait)
    return total


def measured_from_at(window_start_at: float, window_end_at: float, settings: SteadyStateSettings) -> float:
    """The end of the warm-up: arrivals before it are left out."""
    return window_start_at + settings.warmup_fraction * (window_end_at - window_start_at)


def analyse(
    result: RunResult, settings: SteadyStateSettings, *, window_lifetimes: float, min_requests: int,
    kv_capacity_tokens: float | None = None,
) -> SteadyState:
    """Judge one completed run (see the module docstring). ``window_lifetimes`` and
    ``min_requests`` set how long the window must be (screening runs ask less than
    confirming ones); ``kv_capacity_tokens`` of the decode (or aggregated) pool, when known,
    gives the KV trend as a share of capacity."""
    rec = result.recorder
    t = rec.times
    arrival, done_at = t["arrival_at"], t["completed_at"]
    status = rec.status
    arrived = ~np.isnan(arrival)
    t0, t1 = float(arrival[arrived].min()), float(arrival[arrived].max())
    window = t1 - t0
    warm_end = measured_from_at(t0, t1, settings)
    measured = arrived & (arrival >= warm_end)
    end_at = max(rec.end_at, t1)
    e2e = np.where(status == STATUS_COMPLETED, done_at - arrival, end_at - arrival)
    e2e_measured = e2e[measured & (status != STATUS_REJECTED)]
    lifetime = float(np.percentile(e2e_measured, 99)) if len(e2e_measured) else math.inf
    long_enough = window >= window_lifetimes * lifetime and int(measured.sum()) >= min_requests

    mid = t0 + 0.5 * window
    edges = np.linspace(mid, t1, settings.bins + 1)
    centres = 0.5 * (edges[1:] + edges[:-1])
    live = arrived & (status != STATUS_REJECTED)
    in_flight = interval_bin_means(np.where(live, arrival, np.nan), done_at, edges)
    growth = trend(centres, in_flight)
    second = live & (arrival >= mid)
    which = np.clip(np.searchsorted(edges, arrival[second], side="right") - 1, 0, settings.bins - 1)
    sums = np.bincount(which, weights=queueing_delay_s(result, end_at)[second], minlength=settings.bins)
    counts = np.bincount(which, minlength=settings.bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        latency = trend(centres, np.where(counts > 0, sums / np.maximum(counts, 1), np.nan))
    half = max(t1 - mid, 1e-12)
    arrivals_2 = int(((arrival >= mid) & arrived).sum())
    completions_2 = int(((done_at >= mid) & (done_at <= t1)).sum())
    rate = arrivals_2 / half

    stages: dict[str, float] = {}
    multi = result.output_tokens > 1
    remote = rec.prefill_instance >= 0
    for name, (a, b) in STAGES.items():
        start = t[a]
        if name != "prefill_queue":
            if result.mode == "aggregated":
                continue
            start = np.where(multi & remote, start, np.nan)
        stages[name] = trend(centres, interval_bin_means(start, t[b], edges)).slope
    kv_growth = math.nan
    if kv_capacity_tokens:
        admit = t["prefill_start_at"] if result.mode == "aggregated" else np.where(remote, t["decode_admit_at"], np.nan)
        tokens = (result.input_tokens + result.output_tokens).astype(np.float64)
        kv = interval_bin_means(admit, done_at, edges, tokens) / kv_capacity_tokens
        kv_growth = trend(centres, kv).slope
    # Waits that keep rising are the backlog (a stable cluster under a rising arrival rate
    # holds more requests in flight, but they do not wait longer); the in-flight count must
    # rise with them.
    growing = (
        latency.rising(settings.max_growth, settings.significance)
        and growth.rising(0.0, settings.significance - 1.0)
    )
    return SteadyState(
        window_s=window,
        warmup_s=warm_end - t0,
        measured=int(measured.sum()),
        lifetime_p99_s=lifetime,
        long_enough=bool(long_enough),
        arrival_rate_rps=rate,
        growth_rps=growth.slope,
        growth_t=growth.t,
        latency_growth=latency.slope,
        latency_growth_t=latency.t,
        completion_ratio=completions_2 / max(arrivals_2, 1),
        stage_growth_rps=stages,
        kv_growth_per_s=kv_growth,
        growing=bool(growing),
    )
