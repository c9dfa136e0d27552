"""The router: picks the prefill instance of each request and the decode instance after it.

Prefill policies (``RouterConfig.prefill_policy``):

``round_robin``               instances in turn.
``least_outstanding_tokens``  the fewest prompt tokens queued or in service (ties: lowest index).
``random``                    uniformly at random from the ``router`` stream.
``shared_queue``              no choice at arrival: every prefill instance pulls from one
                              central queue when it is free.
``kv_aware``                  minimise ``w * (prompt tokens not cached on k) + tokens queued on k``,
                              where ``w`` is ``kv_overlap_weight``: prefix-overlap credit traded
                              against load, as the KV routers of current serving stacks do.
``session_affinity``          a session's requests go where its first request went (chosen by
                              least outstanding tokens); requests without a session likewise.

Decode policies (``RouterConfig.decode_policy``):

``least_loaded``      the smallest fraction of KV memory reserved or asked for (ties: fewest
                      requests in the batch, then lowest index).
``kv_aware``          minimise ``w * (context tokens not held on k) + KV tokens reserved on k``.
``session_affinity``  a session returns to the decode instance of its previous request.

Tenants (``RunConfig.tenants``): :class:`TenantAdmission` holds each tenant to its quotas
when its requests reach the router (before any instance is chosen), and
:class:`PriorityOrder` is the order of the queues (prefill queues; the waiting prompts of
aggregated instances) when tenants have different priorities.

The instances offered are those that take work now (state ``serving``): a starting, draining
or failed instance is never picked. An instance's ``index`` names it in prefix-cache lookups;
a session whose instance has left the pool is placed again.
"""

from __future__ import annotations

import heapq
import math
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np
import simpy

from simdisagg.config import RouterConfig, TenantConfig
from simdisagg.errors import TraceError
from simdisagg.sim.clock import call_later
from simdisagg.sim.prefill import PrefixLookup
from simdisagg.trace import Trace


class Router:
    """Chooses instances by policy name, from the load figures the instances expose."""

    def __init__(self, cfg: RouterConfig, rng: np.random.Generator, session_index: np.ndarray) -> None:
        self.prefill_policy = cfg.prefill_policy
        self.decode_policy = cfg.decode_policy
        self.weight = cfg.kv_overlap_weight
        self._rng = rng
        self._session = session_index
        self._next = 0
        self._prefill_of_session: dict[int, Any] = {}
        self._decode_of_session: dict[int, Any] = {}

    @staticmethod
    def _least_outstanding(instances: Sequence[Any]) -> int:
        best, best_load = 0, instances[0].outstanding_tokens
        for k in range(1, len(instances)):
            load = instances[k].outstanding_tokens
            if load < best_load:
                best, best_load = k, load
        return best

    def pick_prefill(self, instances: Sequence[Any], i: int, prefix: PrefixLookup) -> int:
        """Index of the instance that prefills request ``i``."""
        policy = self.prefill_policy
        n = len(instances)
        if policy == "least_outstanding_tokens":
            return self._least_outstanding(instances)
        if policy == "round_robin":
            k = self._next % n
            self._next += 1
            return k
        if policy == "random":
            return int(self._rng.integers(n))
        if policy == "kv_aware":
            w = self.weight
            best, best_cost = 0, None
            for k in range(n):
                cost = w * -prefix.cached_tokens(instances[k].index, i) + instances[k].outstanding_tokens
                if best_cost is None or cost < best_cost:
                    best, best_cost = k, cost
            return best
        if policy == "session_affinity":
            s = int(self._session[i])
            if s >= 0 and s in self._prefill_of_session:
                k = self._position(instances, self._prefill_of_session[s])
                if k is not None:
                    return k
            k = self._least_outstanding(instances)
            if s >= 0:
                self._prefill_of_session[s] = instances[k]
            return k
        raise ValueError(f"unknown prefill policy {policy!r}")

    def pick_decode(self, instances: Sequence[Any], i: int, held: PrefixLookup) -> int:
        """Index of the decode instance for request ``i``."""
        policy = self.decode_policy
        if policy == "session_affinity":
            s = int(self._session[i])
            if s >= 0 and s in self._decode_of_session:
                k = self._position(instances, self._decode_of_session[s])
                if k is not None:
                    return k
            k = self._least_loaded(instances)
            if s >= 0:
                self._decode_of_session[s] = instances[k]
            return k
        if policy == "kv_aware":
            w = self.weight
            best, best_cost = 0, None
            for k in range(len(instances)):
                cost = w * -held.cached_tokens(instances[k].index, i) + instances[k].reserved_tokens
                if best_cost is None or cost < best_cost:
                    best, best_cost = k, cost
            return best
        return self._least_loaded(instances)

    @staticmethod
    def _position(instances: Sequence[Any], inst: Any) -> int | None:
        """Where ``inst`` is among the instances offered (``None``: it no longer serves)."""
        k = inst.index
        if k < len(instances) and instances[k] is inst:
            return k  # a fixed cluster: position and index agree
        for k, other in enumerate(instances):
            if other is inst:
                return k
        return None

    @staticmethod
    def _least_loaded(instances: Sequence[Any]) -> int:
        best = instances[0]
        best_k, best_load, best_batch = 0, best.load(), best.batch_size
        for k in range(1, len(instances)):
            inst = instances[k]
            load = inst.load()
            if load < best_load or (load == best_load and inst.batch_size < best_batch):
                best_k, best_load, best_batch = k, load, inst.batch_size
        return best_k


# -- tenants: admission against quotas, and priority order in the queues ---------------------


class PriorityOrder:
    """A queue of requests in priority order (higher first), then arrival order, then the
    order they were put in: the interface of the deques the instances queue in (``append``,
    ``popleft``, ``[0]``, ``len``), so a queue takes either. O(log n) per operation."""

    __slots__ = ("_arrival_at", "_heap", "_priority", "_seq")

    def __init__(self, priority: Sequence[int], arrival_at: np.ndarray) -> None:
        self._priority, self._arrival_at = priority, arrival_at
        self._heap: list[tuple[int, float, int, int]] = []
        self._seq = 0

    def append(self, i: int) -> None:
        """Queue request ``i``."""
        heapq.heappush(self._heap, (-self._priority[i], float(self._arrival_at[i]), self._seq, i))
        self._seq += 1

    def popleft(self) -> int:
        """Remove and return the first request."""
        return heapq.heappop(self._heap)[3]

    def __getitem__(self, k: int) -> int:
        if k != 0:
            raise IndexError("a priority queue shows its first request only")
        return self._heap[0][3]

    def __len__(self) -> int:
        return len(self._heap)

    def __iter__(self) -> Iterator[int]:
        return (entry[3] for entry in sorted(self._heap))


def tenant_indices(tenants: Sequence[TenantConfig], trace: Trace) -> np.ndarray:
    """Per request of ``trace``, the index of its tenant in ``tenants`` (-1: it names none).

    When ``tenants`` lists any, every tenant the trace names must be listed: a name that is
    not (a typo, most often) would otherwise run with no quota. Raises :class:`TraceError`
    naming the trace's first line with such a tenant."""
    n = len(trace)
    if not trace.has_tenants:
        return np.full(n, -1, dtype=np.int64)
    if not tenants:
        return trace.tenant_index.copy()
    position = {t.name: k for k, t in enumerate(tenants)}
    mapping = np.array([position.get(name, -2) for name in trace.tenant_names], dtype=np.int64)
    index = np.where(trace.tenant_index >= 0, mapping[np.maximum(trace.tenant_index, 0)], -1)
    unknown = np.flatnonzero(index == -2)
    if len(unknown):
        i = int(unknown[0])
        line = int(trace.line_numbers[i]) if len(trace.line_numbers) else None
        listed = ", ".join(repr(t.name) for t in tenants)
        raise TraceError(
            trace.source, line, "tenant",
            f"tenant {trace.tenant_of(i)!r} is not in the config's tenants ({listed}); list it there "
            f"({len(unknown)} requests name unlisted tenants)",
        )  # fmt: skip
    return index


class TenantAdmission:
    """Per-tenant quotas, enforced when a request reaches the router.

    A tenant's requests in flight (admitted, not yet completed or rejected) stay at or below
    ``max_in_flight``; its admitted tokens (prompt plus answer) come out of a token bucket
    that refills at ``max_tokens_per_s`` up to ``burst_tokens`` (default: one second's
    worth). A request is admitted when both allow it; a request larger than the bucket is
    admitted when the bucket is full, and the bucket goes below zero by the difference (the
    tenant pays it back before its next admission). Over quota, ``over_quota: reject``
    rejects the request with the reason; ``queue`` holds it at the router, the tenant's
    requests in arrival order, until a finish or the refill lets it in (an exact wake-up, no
    polling).

    ``admit(i)`` sends an admitted request on; ``reject(i, reason)`` rejects one. The owner
    calls :meth:`finished` when an admitted request completes or is rejected."""

    def __init__(
        self,
        env: simpy.Environment,
        tenants: Sequence[TenantConfig],
        tenant_of: np.ndarray,
        request_tokens: Sequence[int],
        admit: Callable[[int], None],
        reject: Callable[[int, str], None],
    ) -> None:
        self.env = env
        self.tenants = list(tenants)
        self._tenant_of: list[int] = tenant_of.tolist()
        self._tokens = request_tokens
        self._admit_next, self._reject = admit, reject
        m = len(tenants)
        self.limit = [t.max_in_flight if t.max_in_flight is not None else math.inf for t in tenants]
        self.rate = [t.max_tokens_per_s for t in tenants]
        self.burst = [
            (t.burst_tokens if t.burst_tokens is not None else t.max_tokens_per_s) if t.max_tokens_per_s else math.inf
            for t in tenants
        ]
        self.unlimited = [t.max_in_flight is None and t.max_tokens_per_s is None for t in tenants]
        self.rejects = [t.over_quota == "reject" for t in tenants]
        self.in_flight = [0] * m
        self.rejected = [0] * m  # rejected over a quota
        self.peak_in_flight = [0] * m
        self.level = list(self.burst)  # a bucket starts full
        self._level_at = [0.0] * m
        self.waiting: list[deque[int]] = [deque() for _ in range(m)]
        self._wake_pending = [False] * m
        self.admitted_at = np.full(len(self._tenant_of), math.nan)
        self._admitted = bytearray(len(self._tenant_of))

    @property
    def queued(self) -> int:
        """Requests waiting at the router over their tenant's quota."""
        return sum(len(q) for q in self.waiting)

    def offer(self, i: int) -> None:
        """Request ``i`` reaches the router: admit it, queue it or reject it."""
        t = self._tenant_of[i]
        if t < 0 or self.unlimited[t]:
            self._admit(i, t)
            return
        if self.waiting[t]:
            self.waiting[t].append(i)  # behind the tenant's earlier requests
            return
        reason = self._over_quota(t, i)
        if reason is None:
            self._admit(i, t)
        elif self.rejects[t]:
            self.rejected[t] += 1
            self._reject(i, reason)
        else:
            self.waiting[t].append(i)
            self._wake_for_tokens(t, i)

    def finished(self, i: int) -> None:
        """Request ``i`` completed or was rejected: if it was admitted, its tenant has one
        request fewer in flight, which may let a waiting one in."""
        if not self._admitted[i]:
            return
        self._admitted[i] = 0
        t = self._tenant_of[i]
        if t < 0:
            return
        self.in_flight[t] -= 1
        if self.waiting[t]:
            self._drain(t)

    def _admit(self, i: int, t: int) -> None:
        self._admitted[i] = 1
        self.admitted_at[i] = self.env.now
        if t >= 0:
            self.in_flight[t] += 1
            self.peak_in_flight[t] = max(self.peak_in_flight[t], self.in_flight[t])
            if self.rate[t] is not None:
                self.level[t] -= self._tokens[i]
        self._admit_next(i)

    def _refill(self, t: int) -> float:
        now = self.env.now
        rate = self.rate[t]
        assert rate is not None
        self.level[t] = min(self.burst[t], self.level[t] + rate * (now - self._level_at[t]))
        self._level_at[t] = now
        return self.level[t]

    def _needed(self, t: int, i: int) -> float:
        """Tokens the bucket must hold to admit request ``i`` (at most a full bucket)."""
        return min(float(self._tokens[i]), self.burst[t])

    def _over_quota(self, t: int, i: int) -> str | None:
        """Why request ``i`` cannot be admitted now (``None``: it can)."""
        tenant = self.tenants[t]
        if self.in_flight[t] >= self.limit[t]:
            return f"tenant {tenant.name!r} is at its max_in_flight of {tenant.max_in_flight} requests"
        if self.rate[t] is not None:
            level, need = self._refill(t), self._needed(t, i)
            # A relative tolerance: the wake-up time is computed from the same figures, and
            # must not fall a rounding error short of the level it waits for.
            if level < need - 1e-9 * max(need, 1.0):
                return (
                    f"tenant {tenant.name!r} is over its max_tokens_per_s of {tenant.max_tokens_per_s:g}: "
                    f"the request needs {self._tokens[i]} tokens, its bucket holds {max(level, 0.0):.0f}"
                )
        return None

    def _wake_for_tokens(self, t: int, i: int) -> None:
        """When request ``i`` heads tenant ``t``'s queue and waits for tokens only: wake when
        the bucket will hold them."""
        if self._wake_pending[t] or self.rate[t] is None or self.in_flight[t] >= self.limit[t]:
            return
        rate = self.rate[t]
        short = self._needed(t, i) - self.level[t]
        if short > 0:
            self._wake_pending[t] = True
            call_later(self.env, short / rate, self._wake, t)

    def _wake(self, t: int) -> None:
        self._wake_pending[t] = False
        self._drain(t)

    def _drain(self, t: int) -> None:
        queue = self.waiting[t]
        while queue:
            i = queue[0]
            if self._over_quota(t, i) is not None:
                self._wake_for_tokens(t, i)
                return
            queue.popleft()
            self._admit(i, t)
