"""Columnar recording of what happened: one row per request, decode runs, time integrals.

Nothing here holds a Python object per request or per token. Each request is an index into
preallocated numpy columns; decode step durations go into a growable flat buffer (one float
per *step*, shared by every request in the batch, with the batch size as its weight); levels
such as KV blocks in use are kept as running time integrals (salabim-style level monitors),
so nothing is sampled on a timer.
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
        self.step_s = GrowableArray(np.float64)
        self.step_weight = GrowableArray(np.int32)
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
        self.step_s.extend(durations_s)
        self.step_weight.extend(batch_size, count=len(durations_s))


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
