"""Per-window time series of a run: what arrived and finished, how each pool's instances
stood, how full they were, how long the queues were, and the latency percentiles.

Collection costs no events of its own. The run loop (:func:`simdisagg.sim.clock.run`) hands
the collector each window boundary it passes, before the first event at or after it, so a
sample sees the state as it stood through the end of the window; a boundary costs one float
comparison per event and, when crossed, one pass over the instances. What a sample reads:

* each instance's cumulative counters (:meth:`InstanceStats.counters_at`): differences of two
  samples give a window's busy seconds, KV block-seconds and batch request-seconds exactly
  (busy time counted ahead by an iteration under way is taken off, a run of decode steps
  under way is added; likewise for prefill token-share seconds);
* each instance's state, ``getattr(instance, "state", "serving")`` (serving, starting,
  draining, failed: set by pools that scale or fail), and its queue length;
* the decode step log's position (:meth:`StepLog.mark`).

Afterwards (:func:`timeseries_frame`, only when the series is asked for): arrivals,
completions, rejections and TTFT per window from the request columns, so every window count
adds up to the run's totals; and each window's inter-token latency percentiles from the
decode steps logged between its two marks, each step weighted by the tokens it produced (a
run of steps counts in the window where it ends; the first gap after a request's first token
is its first step, as under ``metrics.ttft: client``).

Windows start at the first open-loop arrival and are ``timeseries.window_s`` wide (default:
the span of the open-loop arrivals over :data:`DEFAULT_WINDOWS`); the last one ends at the
run's end. A run that outlasts twice that many windows (it drains long after its last
arrival) merges them in pairs, doubling the width, as often as needed (a set width: past
:data:`MAX_SET_WINDOWS`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from simdisagg.sim.recorder import (
    STATUS_COMPLETED,
    STATUS_REJECTED,
    Recorder,
    RunResult,
)

#: The instance states a sample counts, in this order (instances without a ``state`` serve).
INSTANCE_STATES = ("serving", "starting", "draining", "failed")
#: Windows over the open-loop arrivals' span when ``window_s`` is not set.
DEFAULT_WINDOWS = 200
#: Width of the windows when the open-loop arrivals span no time (one burst), seconds.
FALLBACK_WINDOW_S = 1.0
#: The most windows a run keeps with a width set in the config (they merge in pairs past it).
MAX_SET_WINDOWS = 100_000
#: Percentiles of TTFT and ITL per window.
WINDOW_PERCENTILES = (50.0, 95.0)


def window_width_s(window_s: float | None, first_arrival_at: float, last_arrival_at: float) -> float:
    """The window width: ``window_s`` when set, else the arrivals' span over
    :data:`DEFAULT_WINDOWS` (:data:`FALLBACK_WINDOW_S` when they span no time)."""
    if window_s is not None:
        return float(window_s)
    span = last_arrival_at - first_arrival_at
    return span / DEFAULT_WINDOWS if span > 0 else FALLBACK_WINDOW_S


def _queue_length(pool: str, instances: Sequence[Any]) -> int:
    """Requests waiting at a pool's instances: prompts in prefill queues (a shared queue once),
    requests waiting for KV memory or a batch slot at decode instances, prompts waiting at
    aggregated instances (and prompts a decode instance prefills itself)."""
    if pool == "prefill":
        seen: dict[int, int] = {}
        for inst in instances:
            queue = inst.queue
            seen[id(queue)] = len(queue.items)
        return sum(seen.values())
    total = 0
    for inst in instances:
        total += len(inst.waiting) + len(getattr(inst, "_admit_queue", ()))
    return total


@dataclass(slots=True)
class TimeSeries:
    """Samples at the window boundaries (one row each; a window lies between two rows).

    Per pool, ``counters[pool]`` holds ``(busy_s, kv block-seconds, batch request-seconds,
    prefill token-share seconds)`` summed over every instance the pool ever had (cumulative,
    so differences give a window's figures); ``capacity[pool]`` the active (serving or
    draining) instances' count, KV blocks and batch slots; ``states[pool]`` the instance counts
    by :data:`INSTANCE_STATES`; ``queue[pool]`` the requests waiting there. ``step_marks``
    holds the decode step log's position (:meth:`StepLog.mark`): two give a window's steps."""

    at_s: list[float] = field(default_factory=list)
    counters: dict[str, list[tuple[float, float, float, float]]] = field(default_factory=dict)
    capacity: dict[str, list[tuple[int, float, float]]] = field(default_factory=dict)
    states: dict[str, list[tuple[int, int, int, int]]] = field(default_factory=dict)
    queue: dict[str, list[int]] = field(default_factory=dict)
    router_queue: list[int] = field(default_factory=list)
    step_marks: list[tuple[int, int]] = field(default_factory=list)


class TimeSeriesCollector:
    """Samples a run at its window boundaries, called from the run loop (no events).

    ``pools`` maps each pool's name to its list of instances (the live list: instances a
    pool gains later are seen); ``router_queue`` says how many requests wait at the router
    (over a tenant's quota). When the run reaches ``max_windows`` windows, they merge in
    pairs and the width doubles, so a run that lasts far beyond its arrivals keeps between
    ``max_windows / 2`` and ``max_windows`` of them."""

    def __init__(
        self,
        rec: Recorder,
        pools: Mapping[str, Sequence[Any]],
        start_at: float,
        window_s: float,
        router_queue: Callable[[], int] | None = None,
        max_windows: int = 2 * DEFAULT_WINDOWS,
    ) -> None:
        if max_windows < 2 or max_windows % 2:
            raise ValueError(f"max_windows must be even and at least 2, got {max_windows}")
        if not (window_s > 0 and math.isfinite(window_s)):
            raise ValueError(f"window_s must be positive and finite, got {window_s}")
        self.rec, self.pools = rec, pools
        self.start_at, self.window_s = start_at, window_s
        self.router_queue = router_queue
        self.max_windows = max_windows
        self.series = TimeSeries()
        for name in pools:
            self.series.counters[name] = []
            self.series.capacity[name] = []
            self.series.states[name] = []
            self.series.queue[name] = []
        self._k = 0
        #: The next boundary (the run loop samples before the first event at or after it).
        self.next_at = start_at
        rec.steps.track_windows()

    def sample_until(self, now: float) -> float:
        """Sample every boundary at or before ``now``; return the next one."""
        while self.next_at <= now:
            self._sample(self.next_at)
            if self._k >= self.max_windows and self._k % 2 == 0:
                self._merge_pairs()
            self._k += 1
            # Multiples of the width from the start, so boundaries do not drift by rounding.
            self.next_at = self.start_at + self._k * self.window_s
        return self.next_at

    def _merge_pairs(self) -> None:
        """Merge the windows in pairs (keep every other sample; every figure is cumulative or
        read at a window's end, so the merged windows are exact) and double the width."""
        s = self.series
        for column in (s.at_s, s.router_queue, s.step_marks, *s.counters.values(), *s.capacity.values(),
                       *s.states.values(), *s.queue.values()):  # fmt: skip
            column[:] = column[::2]
        self._k //= 2
        self.window_s *= 2.0

    def finish(self, end_at: float) -> TimeSeries:
        """Sample the run's end (the last window, partial) and return the series."""
        if not self.series.at_s or end_at > self.series.at_s[-1]:
            self._sample(max(end_at, self.start_at))
        return self.series

    def _sample(self, at: float) -> None:
        s = self.series
        s.at_s.append(at)
        by_pool: dict[str, list[float]] = {name: [0.0, 0.0, 0.0, 0.0] for name in self.pools}
        for stats in self.rec.instances:
            acc = by_pool.get(stats.pool)
            if acc is None:
                continue
            acc[0] += stats.busy_s
            acc[1] += stats.kv.integral_at(at)
            acc[2] += stats.batch.integral_at(at)
            acc[3] += stats.prefill_token_share_s
        for name, instances in self.pools.items():
            acc = by_pool[name]
            for inst in instances:
                # Busy time as of ``at``: less what an iteration already counted beyond it,
                # plus a run of decode steps under way (counted when it ends).
                ahead = inst.stats.busy_counted_until_at - at
                if ahead > 0.0:
                    acc[0] -= ahead
                    acc[3] -= ahead * inst.stats.iteration_token_share
                if getattr(inst, "_run_ends", None) is not None and inst._run_steps > 0:
                    acc[0] += at - inst._run_start_at
            s.counters[name].append(tuple(acc))  # type: ignore[arg-type]
            counts = dict.fromkeys(INSTANCE_STATES, 0)
            active, kv_capacity, batch_capacity = 0, 0.0, 0.0
            for inst in instances:
                state = getattr(inst, "state", "serving")
                counts[state] = counts.get(state, 0) + 1
                if state in ("serving", "draining"):
                    active += 1
                    kv_capacity += inst.stats.kv.capacity
                    batch_capacity += inst.stats.batch.capacity
            s.states[name].append(tuple(counts[x] for x in INSTANCE_STATES))  # type: ignore[arg-type]
            s.capacity[name].append((active, kv_capacity, batch_capacity))
            s.queue[name].append(_queue_length(name, instances))
        s.router_queue.append(self.router_queue() if self.router_queue is not None else 0)
        s.step_marks.append(self.rec.steps.mark())


def _per_window(times: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """How many of ``times`` (NaN: never) fall in each window (the last one closed)."""
    t = times[~np.isnan(times)]
    if len(edges) < 2:
        return np.zeros(0, dtype=np.int64)
    return np.histogram(t, bins=edges)[0].astype(np.int64)


def _window_percentiles(times: np.ndarray, values_s: np.ndarray, edges: np.ndarray) -> list[np.ndarray]:
    """Per window, the :data:`WINDOW_PERCENTILES` (ms) of ``values_s`` over the requests whose
    ``times`` fall in it (NaN where none does)."""
    ok = ~np.isnan(times) & ~np.isnan(values_s)
    t, v = times[ok], values_s[ok]
    n = len(edges) - 1
    out = [np.full(n, math.nan) for _ in WINDOW_PERCENTILES]
    if n < 1 or len(t) == 0:
        return out
    # The window of each time, the last one closed as np.histogram has it.
    k = np.clip(np.searchsorted(edges, t, side="right") - 1, 0, n - 1)
    inside = (t >= edges[0]) & (t <= edges[-1])
    order = np.lexsort((v[inside], k[inside]))
    ks, vs = k[inside][order], v[inside][order]
    bounds = np.searchsorted(ks, np.arange(n + 1))
    for w in range(n):
        a, b = bounds[w], bounds[w + 1]
        if b > a:
            pct = np.percentile(vs[a:b], WINDOW_PERCENTILES)
            for j, x in enumerate(pct):
                out[j][w] = x * 1000.0
    return out


def timeseries_frame(result: RunResult) -> Any:
    """One row per window (pandas): its bounds, arrivals, completions, rejections (by arrival),
    TTFT percentiles (requests whose first token came in it) and ITL percentiles (decode steps
    that ended in it), ms; then per pool: instances by state and the requests waiting (at the
    window's end), busy fraction, batch occupancy and KV occupancy (time means over the window,
    over the instances active at its end); ``router_queue_length``: requests waiting at the
    router over a tenant's quota. Empty when the run kept no series."""
    import pandas as pd

    from simdisagg.metrics import first_token_times, weighted_percentiles

    series = result.recorder.timeseries
    if series is None or len(series.at_s) < 2:
        return pd.DataFrame()
    edges = np.asarray(series.at_s, dtype=np.float64)
    width = np.diff(edges)
    rec = result.recorder
    t = rec.times
    done = rec.status == STATUS_COMPLETED
    cols: dict[str, Any] = {
        "window_start_s": edges[:-1],
        "window_end_s": edges[1:],
        "arrivals": _per_window(t["arrival_at"], edges),
        "completions": _per_window(np.where(done, t["completed_at"], np.nan), edges),
        "rejections": _per_window(np.where(rec.status == STATUS_REJECTED, t["arrival_at"], np.nan), edges),
    }
    first = first_token_times(result)
    ttft = np.where(done, first - t["arrival_at"], np.nan)
    for q, values in zip(WINDOW_PERCENTILES, _window_percentiles(np.where(done, first, np.nan), ttft, edges),
                         strict=True):  # fmt: skip
        cols[f"p{q:g}_ttft_ms"] = values
    itl = np.full((len(edges) - 1, len(WINDOW_PERCENTILES)), math.nan)
    steps = result.recorder.steps
    for w in range(len(edges) - 1):
        values, weights = steps.steps_between(series.step_marks[w], series.step_marks[w + 1])
        itl[w] = weighted_percentiles(values, weights, WINDOW_PERCENTILES)
    for j, q in enumerate(WINDOW_PERCENTILES):
        cols[f"p{q:g}_itl_ms"] = itl[:, j] * 1000.0
    with np.errstate(invalid="ignore", divide="ignore"):
        for pool in series.counters:
            counters = np.diff(np.asarray(series.counters[pool], dtype=np.float64), axis=0)
            capacity = np.asarray(series.capacity[pool], dtype=np.float64)[1:]
            states = np.asarray(series.states[pool], dtype=np.int64)[1:]
            for j, state in enumerate(INSTANCE_STATES):
                cols[f"{pool}_{state}"] = states[:, j]
            active = capacity[:, 0]
            cols[f"{pool}_busy_fraction"] = np.where(active > 0, counters[:, 0] / (width * active), math.nan)
            if pool == "prefill":
                cols[f"{pool}_batch_occupancy"] = np.where(active > 0, counters[:, 3] / (width * active), math.nan)
            else:
                cols[f"{pool}_batch_occupancy"] = np.where(
                    capacity[:, 2] > 0, counters[:, 2] / (width * capacity[:, 2]), math.nan
                )
            cols[f"{pool}_kv_occupancy"] = np.where(
                capacity[:, 1] > 0, counters[:, 1] / (width * capacity[:, 1]), math.nan
            )
            cols[f"{pool}_queue_length"] = np.asarray(series.queue[pool][1:], dtype=np.int64)
    cols["router_queue_length"] = np.asarray(series.router_queue[1:], dtype=np.int64)
    return pd.DataFrame(cols)
