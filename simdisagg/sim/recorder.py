"""Columnar recording of what happened: one row per request, decode runs, time integrals.

Nothing here holds a Python object per request or per token. Each request is an index into
preallocated numpy columns; decode step durations go into a :class:`StepLog` (one float per
*step*, shared by every request in the batch, with the batch size as its weight; exact up to a
few million steps, then a fine log-bucketed histogram, so its memory stays bounded however
long the simulated span); levels such as KV blocks in use are kept as running time integrals
(salabim-style level monitors), so nothing is sampled on a timer.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

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


class StepLog:
    """Decode step durations, each weighted by the tokens it produced (its batch size).

    The inter-token latency distribution is built from it. Up to ``exact_limit`` entries are
    kept as they are, so a run of that size has exact percentiles. Past that, the entries are
    folded into a histogram whose buckets are ``2**-mantissa_bits`` wide relative to their
    value (the top bits of the float, as in HdrHistogram) and that keeps each bucket's
    weighted sum of values. A bucket reports its weighted mean value, so a percentile is off
    by less than a bucket's width (6e-5 relative by default) and the mean stays exact up to
    rounding. Memory is then bounded by the range of durations seen, not by the simulated
    span: a week of traffic logs billions of steps.

    Weights may be negative for a value that was also logged with a positive weight (to
    replace a step's duration by a longer gap); the totals per value never go below zero.
    """

    #: Durations are binned within this range (a bucket outside it would only waste memory;
    #: the sums stay exact, so the mean is unaffected).
    FLOOR_S = 1e-9
    CEILING_S = 1e6

    def __init__(self, exact_limit: int = 1 << 21, mantissa_bits: int = 14) -> None:
        if exact_limit < 1 or not 1 <= mantissa_bits <= 52:
            raise ValueError("exact_limit must be >= 1 and mantissa_bits in 1..52")
        self.exact_limit = exact_limit
        self._shift = 52 - mantissa_bits
        self._values = GrowableArray(np.float64)
        self._weights = GrowableArray(np.int64)
        self.entries = 0  # every entry ever logged, folded or not
        # The histogram, once folded: dense arrays over bucket keys [_key0, _key0 + len).
        self._key0 = 0
        self._bucket_w: np.ndarray | None = None
        self._bucket_vw: np.ndarray | None = None

    @property
    def exact(self) -> bool:
        """True while every entry is kept as it is (percentiles are exact)."""
        return self._bucket_w is None

    def add(self, durations_s: np.ndarray, weight: int) -> None:
        """Log steps that each produced ``weight`` tokens."""
        self._values.extend(durations_s)
        self._weights.extend(weight, count=len(durations_s))
        self._after_add(len(durations_s))

    def add_weighted(self, durations_s: np.ndarray, weights: np.ndarray) -> None:
        """Log durations with a weight each (weights may be negative, see the class)."""
        self._values.extend(durations_s)
        self._weights.extend(weights)
        self._after_add(len(durations_s))

    def _after_add(self, count: int) -> None:
        self.entries += count
        if len(self._values) >= self.exact_limit:
            self._fold(self._values.view(), self._weights.view())
            self._values = GrowableArray(np.float64)
            self._weights = GrowableArray(np.int64)

    def _keys(self, values: np.ndarray) -> np.ndarray:
        clipped = np.clip(np.asarray(values, dtype=np.float64), self.FLOOR_S, self.CEILING_S)
        return clipped.view(np.int64) >> self._shift

    def _fold(self, values: np.ndarray, weights: np.ndarray) -> None:
        if len(values) == 0:
            return
        keys = self._keys(values)
        lo, hi = int(keys.min()), int(keys.max())
        if self._bucket_w is None:
            self._key0 = lo
            self._bucket_w = np.zeros(hi - lo + 1)
            self._bucket_vw = np.zeros(hi - lo + 1)
        assert self._bucket_vw is not None
        old_lo, old_hi = self._key0, self._key0 + len(self._bucket_w) - 1
        if lo < old_lo or hi > old_hi:
            new_lo, new_hi = min(lo, old_lo), max(hi, old_hi)
            grown_w, grown_vw = np.zeros(new_hi - new_lo + 1), np.zeros(new_hi - new_lo + 1)
            at = old_lo - new_lo
            grown_w[at : at + len(self._bucket_w)] = self._bucket_w
            grown_vw[at : at + len(self._bucket_w)] = self._bucket_vw
            self._key0, self._bucket_w, self._bucket_vw = new_lo, grown_w, grown_vw
        w = weights.astype(np.float64)
        rel = keys - self._key0
        size = len(self._bucket_w)
        self._bucket_w += np.bincount(rel, weights=w, minlength=size)
        self._bucket_vw += np.bincount(rel, weights=w * values, minlength=size)

    def distribution(
        self, extra_values: np.ndarray | None = None, extra_weights: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """The logged multiset, plus optional extra entries, as ``(values, weights)``.

        While exact, the entries themselves; once folded, one entry per non-empty bucket at
        its weighted mean value (with the extra entries binned alike). Does not change the log.
        """
        values, weights = self._values.view(), self._weights.view()
        if extra_values is not None and extra_weights is not None:
            values = np.concatenate([values, extra_values])
            weights = np.concatenate([weights, extra_weights.astype(np.int64)])
        if self.exact:
            return values, weights
        assert self._bucket_w is not None and self._bucket_vw is not None
        keep_w, keep_vw, keep_key0 = self._bucket_w.copy(), self._bucket_vw.copy(), self._key0
        try:
            self._fold(values, weights)
            w, vw, key0 = self._bucket_w, self._bucket_vw, self._key0
        finally:
            self._bucket_w, self._bucket_vw, self._key0 = keep_w, keep_vw, keep_key0
        assert w is not None and vw is not None
        nonempty = np.flatnonzero(w > 0.5)
        mean = vw[nonempty] / w[nonempty]
        # A bucket's mean lies in the bucket; clamp against rounding so the order holds.
        lower = ((nonempty + key0) << self._shift).view(np.float64)
        upper = ((nonempty + key0 + 1) << self._shift).view(np.float64)
        return np.clip(mean, lower, upper), np.rint(w[nonempty]).astype(np.int64)

    def __len__(self) -> int:
        return self.entries


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


@dataclass(slots=True, eq=False)
class InstanceStats:
    """Per-instance counters: busy time, iterations, and KV level."""

    pool: str
    index: int
    gpus: int
    kv: LevelIntegral
    busy_s: float = 0.0
    iterations: int = 0
    events: int = 0


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
        # Decode (and aggregated) step log: one duration per iteration, weighted by batch size.
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

    def reject(self, i: int, reason: str) -> None:
        """Mark request ``i`` as rejected with a reason (it will never be served)."""
        self.status[i] = STATUS_REJECTED
        self.reject_reason[i] = reason

    def log_steps(self, durations_s: np.ndarray, batch_size: int) -> None:
        """Log decode iterations that each produced one token for ``batch_size`` requests."""
        self.steps.add(durations_s, batch_size)


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
