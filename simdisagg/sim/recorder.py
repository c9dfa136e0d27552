"""Columnar recording of what happened: one row per request, decode runs, time integrals.

Nothing here holds a Python object per request or per token. Each request is an index into
preallocated numpy columns; decode steps go into a :class:`StepLog` (a record per run of
steps between two batch changes, weighted by the batch size, whose durations the cost model
gives again when asked; exact up to a few million steps, then a fine log-bucketed histogram,
so its memory stays bounded however long the simulated span); levels such as KV blocks in use are kept as running time integrals
(salabim-style level monitors), so nothing is sampled on a timer.
"""

from __future__ import annotations

import math
from array import array
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from simdisagg.sim.timeseries import TimeSeries

STATUS_UNFINISHED = 0
STATUS_COMPLETED = 1
STATUS_REJECTED = 2
STATUS_NAMES = {STATUS_UNFINISHED: "unfinished", STATUS_COMPLETED: "completed", STATUS_REJECTED: "rejected"}

#: Timestamp columns (seconds of simulated time; NaN = did not happen).
TIME_COLUMNS = (
    "arrival_at",
    "prefill_enqueued_at",
    "prefill_start_at",
    "first_token_at",
    "decode_admit_at",
    "kv_send_start_at",
    "kv_send_end_at",
    "decode_start_at",
    "decode_first_token_at",
    "completed_at",
)


class GrowableArray:
    """An append-only numpy array that doubles its capacity (amortised O(1) appends)."""

    def __init__(self, dtype: type | np.dtype, capacity: int = 1024) -> None:
        self._data = np.empty(capacity, dtype=dtype)
        self._n = 0

    def extend(self, values: np.ndarray | float | int, count: int | None = None) -> None:
        """Append an array, or ``count`` copies of a scalar."""
        k = len(values) if count is None else count  # type: ignore[arg-type]
        need = self._n + k
        if need > len(self._data):
            new = np.empty(max(need, 2 * len(self._data)), dtype=self._data.dtype)
            new[: self._n] = self._data[: self._n]
            self._data = new
        self._data[self._n : need] = values
        self._n = need

    def view(self) -> np.ndarray:
        """The appended values (a view; copy before appending more)."""
        return self._data[: self._n]

    def __len__(self) -> int:
        return self._n


class _Histogram:
    """Weights and weighted value sums in buckets ``2**-mantissa_bits`` wide relative to their
    value (the top bits of the float, as in HdrHistogram), over a dense range of bucket keys
    that grows to the durations seen."""

    #: Durations are binned within this range (a bucket outside it would only waste memory;
    #: the sums stay exact, so the mean is unaffected).
    FLOOR_S = 1e-9
    CEILING_S = 1e6

    def __init__(self, mantissa_bits: int) -> None:
        self.shift = 52 - mantissa_bits
        self.key0 = 0
        self.w = np.zeros(0)
        self.vw = np.zeros(0)

    def copy(self) -> _Histogram:
        """An independent copy."""
        out = _Histogram(52 - self.shift)
        out.key0, out.w, out.vw = self.key0, self.w.copy(), self.vw.copy()
        return out

    def add(self, values: np.ndarray, weights: np.ndarray) -> None:
        """Add entries (weights may be negative where the same value was added before)."""
        if len(values) == 0:
            return
        values = np.asarray(values, dtype=np.float64)
        keys = np.clip(values, self.FLOOR_S, self.CEILING_S).view(np.int64) >> self.shift
        lo, hi = int(keys.min()), int(keys.max())
        if len(self.w) == 0:
            self.key0, self.w, self.vw = lo, np.zeros(hi - lo + 1), np.zeros(hi - lo + 1)
        old_lo, old_hi = self.key0, self.key0 + len(self.w) - 1
        if lo < old_lo or hi > old_hi:
            new_lo, new_hi = min(lo, old_lo), max(hi, old_hi)
            grown_w, grown_vw = np.zeros(new_hi - new_lo + 1), np.zeros(new_hi - new_lo + 1)
            at = old_lo - new_lo
            grown_w[at : at + len(self.w)] = self.w
            grown_vw[at : at + len(self.w)] = self.vw
            self.key0, self.w, self.vw = new_lo, grown_w, grown_vw
        w = np.asarray(weights, dtype=np.float64)
        rel = keys - self.key0
        self.w += np.bincount(rel, weights=w, minlength=len(self.w))
        self.vw += np.bincount(rel, weights=w * values, minlength=len(self.w))

    def entries(self) -> tuple[np.ndarray, np.ndarray]:
        """One entry per non-empty bucket: its weighted mean value and its total weight."""
        nonempty = np.flatnonzero(self.w > 0.5)
        mean = self.vw[nonempty] / self.w[nonempty]
        # A bucket's mean lies in the bucket; clamp against rounding so the order holds.
        lower = ((nonempty + self.key0) << self.shift).view(np.float64)
        upper = ((nonempty + self.key0 + 1) << self.shift).view(np.float64)
        return np.clip(mean, lower, upper), np.rint(self.w[nonempty]).astype(np.int64)


class StepLog:
    """Decode step durations, each weighted by the tokens it produced (its batch size).

    The inter-token latency distribution is built from it. A fast-forwarded run of decode
    steps is logged as one record (cost model, batch size, starting context, steps): its step
    durations follow from the cost model, which is pure, so they are recomputed when the
    distribution is asked for (in bulk, by ``decode_times_bulk_s`` where the model has it) and
    logging costs the same for a run of one step or of a thousand. Durations that no record
    reproduces (mixed prefill-and-decode iterations, gaps stretched by a stall) are logged as
    they are.

    Up to ``exact_limit`` entries, the distribution is exact. Past that, it is folded into a
    histogram whose buckets are ``2**-mantissa_bits`` wide relative to their value and that
    keeps each bucket's weighted sum of values: a bucket reports its weighted mean, so a
    percentile is off by less than a bucket's width (6e-5 relative by default) and the mean
    stays exact up to rounding, while memory stays bounded by the range of durations seen (a
    week of traffic is billions of steps).

    Weights may be negative for a value that was also logged with a positive weight (to
    replace a step's duration by a longer gap); the totals per value never go below zero.
    """

    def __init__(self, exact_limit: int = 1 << 21, mantissa_bits: int = 14) -> None:
        if exact_limit < 1 or not 1 <= mantissa_bits <= 52:
            raise ValueError("exact_limit must be >= 1 and mantissa_bits in 1..52")
        self.exact_limit = exact_limit
        self.mantissa_bits = mantissa_bits
        self._values = GrowableArray(np.float64)
        self._weights = GrowableArray(np.int64)
        self._folded: _Histogram | None = None  # explicit entries past the limit
        self._costs: list[Any] = []
        self._cost_keys: dict[int, int] = {}
        # Run records, flat: cost key, batch size, starting total context, steps.
        self._runs = array("q")
        self.entries = 0  # steps and entries ever logged
        # Per-window reading (:meth:`steps_between`): the entries logged as they are (kept
        # apart, since the main buffer may fold them), and the first run record to read.
        # Off (None) until a time series asks for it.
        self._window_values: GrowableArray | None = None
        self._window_weights: GrowableArray | None = None
        self._window_runs_from = 0

    @property
    def exact(self) -> bool:
        """True while the distribution holds every entry as it is (exact percentiles)."""
        return self._folded is None and self.entries <= self.exact_limit

    def cost_key(self, cost: Any) -> int:
        """The key under which runs of ``cost`` (a cost model) are logged."""
        key = self._cost_keys.get(id(cost))
        if key is None:
            key = self._cost_keys[id(cost)] = len(self._costs)
            self._costs.append(cost)
        return key

    def add_run(self, cost_key: int, batch_size: int, context_tokens: int, steps: int) -> None:
        """Log ``steps`` decode steps of an unchanged batch: step ``j`` has total context
        ``context_tokens + j * batch_size`` and produced ``batch_size`` tokens."""
        self._runs.extend((cost_key, batch_size, context_tokens, steps))
        self.entries += steps

    def add(self, durations_s: np.ndarray | list[float], weight: int) -> None:
        """Log steps that each produced ``weight`` tokens."""
        self._values.extend(durations_s)
        self._weights.extend(weight, count=len(durations_s))
        if self._window_values is not None:
            self._window_values.extend(durations_s)
            self._window_weights.extend(weight, count=len(durations_s))  # type: ignore[union-attr]
        self._after_add(len(durations_s))

    def add_weighted(self, durations_s: np.ndarray, weights: np.ndarray) -> None:
        """Log durations with a weight each (weights may be negative, see the class)."""
        self._values.extend(durations_s)
        self._weights.extend(weights)
        if self._window_values is not None:
            self._window_values.extend(durations_s)
            self._window_weights.extend(weights)  # type: ignore[union-attr]
        self._after_add(len(durations_s))

    def track_windows(self) -> None:
        """From now on, keep the entries logged as they are (beside the main buffer, which
        folds them past its limit) so that :meth:`steps_between` can read any stretch of the
        log. Runs of steps are always kept; entries are few (one per mixed iteration or
        stall), so this costs memory in proportion to them, not to the decode steps."""
        self._window_values = GrowableArray(np.float64, 256)
        self._window_weights = GrowableArray(np.int64, 256)
        self._window_runs_from = len(self._runs) // 4

    def mark(self) -> tuple[int, int]:
        """The position reached in the log (runs logged, entries kept since
        :meth:`track_windows`): two marks delimit a stretch for :meth:`steps_between`."""
        return len(self._runs) // 4 - self._window_runs_from, len(self._window_values or ())

    def steps_between(self, start: tuple[int, int], end: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
        """The step durations and weights logged between two :meth:`mark` positions: the runs
        of steps that ended in between, recomputed from the cost model, and the entries logged
        as they are. The log is unchanged."""
        if self._window_values is None or self._window_weights is None:
            raise RuntimeError("steps_between() needs track_windows() first")
        base = self._window_runs_from
        runs = np.frombuffer(self._runs, dtype=np.int64).reshape(-1, 4)[base + start[0] : base + end[0]]
        parts_v = [self._window_values.view()[start[1] : end[1]]]
        parts_w = [self._window_weights.view()[start[1] : end[1]]]
        for key, cost in enumerate(self._costs):
            mine = runs[runs[:, 0] == key]
            if len(mine):
                values, weights = _run_step_times(cost, mine)
                parts_v.append(values)
                parts_w.append(weights)
        return np.concatenate(parts_v), np.concatenate(parts_w)

    def _after_add(self, count: int) -> None:
        self.entries += count
        if len(self._values) >= self.exact_limit:
            if self._folded is None:
                self._folded = _Histogram(self.mantissa_bits)
            self._folded.add(self._values.view(), self._weights.view())
            self._values = GrowableArray(np.float64)
            self._weights = GrowableArray(np.int64)

    def _run_chunks(self) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """The logged runs' step durations and weights, in chunks of about ``exact_limit``."""
        runs = np.frombuffer(self._runs, dtype=np.int64).reshape(-1, 4)
        for key, cost in enumerate(self._costs):
            mine = runs[runs[:, 0] == key]
            if len(mine) == 0:
                continue
            ends = np.cumsum(mine[:, 3])
            start = 0
            while start < len(mine):
                stop = int(np.searchsorted(ends, ends[start] - mine[start, 3] + self.exact_limit, side="right"))
                stop = max(stop, start + 1)
                yield _run_step_times(cost, mine[start:stop])
                start = stop

    def distribution(
        self, extra_values: np.ndarray | None = None, extra_weights: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """The logged multiset, plus optional extra entries, as ``(values, weights)``.

        While exact, the entries themselves (runs first, by cost model, then the others); past
        the limit, one entry per non-empty bucket at its weighted mean value. Does not change
        the log."""
        values, weights = self._values.view(), self._weights.view()
        if extra_values is not None and extra_weights is not None:
            values = np.concatenate([values, extra_values])
            weights = np.concatenate([weights, np.asarray(extra_weights, dtype=np.int64)])
        n_extra = 0 if extra_values is None else len(extra_values)
        if self._folded is None and self.entries + n_extra <= self.exact_limit:
            parts = list(self._run_chunks())
            return (
                np.concatenate([p[0] for p in parts] + [values]),
                np.concatenate([p[1] for p in parts] + [weights]),
            )
        hist = self._folded.copy() if self._folded is not None else _Histogram(self.mantissa_bits)
        for chunk_values, chunk_weights in self._run_chunks():
            hist.add(chunk_values, chunk_weights)
        hist.add(values, weights)
        return hist.entries()

    def __len__(self) -> int:
        return self.entries


def _run_step_times(cost: Any, runs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Step durations and weights of run records ``[key, batch, context, steps]`` of one cost
    model: element by element what ``cost.decode_run_times_s`` gave during the run."""
    batch, context, steps = runs[:, 1], runs[:, 2], runs[:, 3]
    weights = np.repeat(batch, steps)
    bulk = getattr(cost, "decode_times_bulk_s", None)
    if bulk is None:
        values = np.concatenate(
            [cost.decode_run_times_s(int(b), int(c), int(n)) for b, c, n in zip(batch, context, steps, strict=True)]
        )
        return values, weights
    first = np.cumsum(steps) - steps
    j = (np.arange(int(steps.sum())) - np.repeat(first, steps)).astype(np.float64)
    b = weights.astype(np.float64)
    ctx = np.repeat(context.astype(np.float64), steps) + b * j
    return bulk(b, ctx), weights


@dataclass(slots=True, eq=False)
class LevelIntegral:
    """Time integral, peak and capacity of a level (e.g. KV blocks in use on one instance)."""

    capacity: float
    level: float = 0.0
    peak: float = 0.0
    integral: float = 0.0
    last_at: float = 0.0

    def change(self, now: float, delta: float) -> None:
        """Move the level by ``delta`` at time ``now``."""
        self.integral += self.level * (now - self.last_at)
        self.last_at = now
        self.level += delta
        if self.level > self.peak:
            self.peak = self.level
            # Conservation: a pool never holds more KV than it has (checked on every change).
            if self.level > self.capacity:
                raise AssertionError(f"KV level {self.level} exceeds capacity {self.capacity}")

    def close(self, now: float) -> None:
        """Account the level up to ``now`` (end of the run)."""
        self.integral += self.level * (now - self.last_at)
        self.last_at = now


    def integral_at(self, now: float) -> float:
        """The time integral up to ``now`` (at or after the last change), without closing it."""
        return self.integral + self.level * (now - self.last_at)


@dataclass(slots=True, eq=False)
class TimeShare:
    """Time during which a condition holds (e.g. an instance is saturated), accumulated at
    each switch: no sampling, and a call that does not switch costs one comparison."""

    on: bool = False
    since_at: float = 0.0
    total_s: float = 0.0

    def set(self, now: float, on: bool) -> None:
        """The condition holds (or not) from ``now`` on."""
        if on != self.on:
            if self.on:
                self.total_s += now - self.since_at
            self.on = on
            self.since_at = now

    def total_at(self, now: float) -> float:
        """Seconds the condition held up to ``now``."""
        return self.total_s + (now - self.since_at if self.on else 0.0)


@dataclass(slots=True, eq=False)
class InstanceStats:
    """Per-instance counters: busy time (a batch running), iterations, KV level, batch
    occupancy and the time the instance was saturated.

    *Batch occupancy* is what fills the instance's batch against what fits: for decode and
    aggregated instances the requests decoding (``batch``, out of ``max_batch_size``); for
    prefill instances the prompt tokens of each iteration out of the token budget, times the
    iteration's duration (``prefill_token_share_s``). *Saturated*: work waits at the instance
    that it cannot start now (prefill: prompts in its queue; decode: requests waiting for KV
    memory or a batch slot; aggregated: prompts left waiting after a boundary's admissions).
    ``saturated`` may be shared by the instances of one shared queue."""

    pool: str
    index: int
    gpus: int
    kv: LevelIntegral
    batch: LevelIntegral = field(default_factory=lambda: LevelIntegral(math.inf))
    saturated: TimeShare = field(default_factory=TimeShare)
    prefill_token_share_s: float = 0.0
    busy_s: float = 0.0
    #: An iteration's time is added to ``busy_s`` when it starts (prefill, aggregated prefill
    #: iterations): the instant up to which ``busy_s`` already counts (time series subtract
    #: the part after their sample).
    busy_counted_until_at: float = 0.0
    #: The token share of that prefill iteration (its ``prefill_token_share_s`` is counted
    #: ahead likewise).
    iteration_token_share: float = 0.0
    iterations: int = 0
    events: int = 0

    def counters_at(self, now: float) -> tuple[float, float, float, float, float]:
        """``(busy_s, kv block-seconds, batch request-seconds, prefill token-share seconds,
        saturated seconds)`` up to ``now``: differences of two give an interval's figures."""
        return (
            self.busy_s,
            self.kv.integral_at(now),
            self.batch.integral_at(now),
            self.prefill_token_share_s,
            self.saturated.total_at(now),
        )


class Recorder:
    """Per-request columns plus per-instance and per-link counters for one run."""

    def __init__(self, n_requests: int) -> None:
        self.n = n_requests
        self.times: dict[str, np.ndarray] = {name: np.full(n_requests, math.nan) for name in TIME_COLUMNS}
        self.prefill_instance = np.full(n_requests, -1, dtype=np.int32)
        self.decode_instance = np.full(n_requests, -1, dtype=np.int32)
        self.cached_tokens = np.zeros(n_requests, dtype=np.int64)
        self.kv_bytes_sent = np.zeros(n_requests, dtype=np.int64)
        self.status = np.zeros(n_requests, dtype=np.int8)
        self.reject_reason: dict[int, str] = {}
        # Decode (and aggregated) steps, each weighted by the tokens it produced (batch size).
        self.steps = StepLog()
        # The first decode step of each request (its duration; replaced by the real first gap
        # in the inter-token latency distribution).
        self.first_step_s = np.full(n_requests, math.nan)
        self.instances: list[InstanceStats] = []
        self.link_busy_s: list[float] = []
        self.link_bytes: list[float] = []
        self.end_at = 0.0
        # Service time of each request alone on an idle cluster (closed-loop traces only).
        self.unloaded_s: np.ndarray | None = None
        # Instance counters at the ends of a measurement window: (time, one tuple per instance
        # from InstanceStats.counters_at), taken at open-loop arrivals (see simulate()).
        self.snapshots: list[tuple[float, list[tuple[float, float, float, float, float]]]] = []
        # Samples at the window boundaries (simdisagg.sim.timeseries), when the run kept them.
        self.timeseries: TimeSeries | None = None

    def snapshot(self, now: float) -> None:
        """Record every instance's counters as of ``now``."""
        self.snapshots.append((now, [x.counters_at(now) for x in self.instances]))

    def reject(self, i: int, reason: str) -> None:
        """Mark request ``i`` as rejected with a reason (it will never be served)."""
        self.status[i] = STATUS_REJECTED
        self.reject_reason[i] = reason


@dataclass(slots=True)
class TenantColumns:
    """The tenants of a run: names (the config's, in its order, or the trace's when the
    config lists none), each request's tenant (index into the names, -1: none), each
    tenant's priority and SLO (``None``: the run's), and when each request passed the quota
    gate at the router (NaN: never)."""

    names: list[str]
    index: np.ndarray
    priority: list[int]
    slos: list[Any]
    admitted_at: np.ndarray
    #: Most requests each tenant had in flight at once, and its requests rejected over a
    #: quota (``over_quota: reject``); empty when no tenant has a quota.
    peak_in_flight: list[int] = field(default_factory=list)
    rejected_over_quota: list[int] = field(default_factory=list)


@dataclass(slots=True)
class RunResult:
    """Everything a run produced, in columns; :mod:`simdisagg.metrics` summarises it."""

    request_ids: list[str]
    input_tokens: np.ndarray
    output_tokens: np.ndarray
    session_index: np.ndarray
    recorder: Recorder
    cost_label: str
    gpus: int
    mode: str
    events: int
    wall_s: float
    meta: dict[str, object] = field(default_factory=dict)
    wait_offsets: np.ndarray | None = None
    wait_indices: np.ndarray | None = None
    tool_wait_s: np.ndarray | None = None
    #: ``metrics.ttft`` of the run's config: when a request's first token counts as received.
    ttft_definition: str = "client"
    #: The run's tenants (``None``: neither the trace nor the config names any).
    tenants: TenantColumns | None = None
