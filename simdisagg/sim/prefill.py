"""Prefill instances: a queue, batches up to a token budget, the first token at the end.

An instance takes prompts from the head of its queue while their new tokens fit the
iteration's token budget (at least one prompt, however long: a prompt over the budget runs
alone), while the batch has fewer than ``max_prefill_batch_requests`` prompts, and while
their KV fits in the instance's free KV memory. The KV of a prefilled prompt stays on the
instance until its transfer to a decode instance has finished, so a slow link or a full
decode pool pushes back on prefill.

With the ``shared_queue`` policy every instance of the pool pulls from one central queue (as
in serving stacks whose prefill workers pull from a shared queue); otherwise the router
places each request on one instance's own queue.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from typing import Any

import simpy

from simdisagg.costmodel.base import CostModel
from simdisagg.sim.clock import call_later
from simdisagg.sim.recorder import InstanceStats, Recorder, TimeShare
from simdisagg.sim.states import DRAINING, FAILED, SERVING, STOPPED


class PrefixLookup:
    """Interface of a prefix cache as seen by prefill: how many of a prompt's tokens are
    already cached, and the notice that a prompt has been computed. The default caches
    nothing."""

    def cached_tokens(self, instance: int, i: int) -> int:
        """Tokens of request ``i``'s prompt whose KV instance ``instance`` already holds."""
        return 0

    def use(self, instance: int, i: int, defer: bool = False) -> float:
        """Request ``i`` starts prefill on ``instance`` with its cached prefix: touch it, and
        return the seconds needed to load any part held below HBM. With ``defer``, the touch
        may wait for :meth:`settle`."""
        return 0.0

    def settle(self, instance: int, superseded: bool) -> None:
        """The batch on ``instance`` is formed: apply deferred touches, or drop them when the
        batch's insert() will supersede them (a batch of one)."""

    def insert(self, instance: int, i: int, now: float) -> None:
        """Request ``i``'s prompt KV now exists on ``instance``."""


class PrefillQueue:
    """A FIFO of waiting prompts, shared by the instances that pull from it.

    ``saturated`` holds while prompts wait in it: every instance that pulls from it is busy,
    or its KV memory is full. Prompts never wait in it while an instance could start them (a
    push wakes an idle instance at once), so this is the time its instances are saturated."""

    def __init__(self, env: simpy.Environment, items: Any = None) -> None:
        self.env = env
        # FIFO by default; tenants with priorities pass a PriorityOrder (the same interface).
        self.items: deque[int] = deque() if items is None else items
        self.idle: deque[PrefillInstance] = deque()
        self.saturated = TimeShare()

    def push(self, i: int) -> None:
        """Add a prompt and wake an idle instance that can take it."""
        self.items.append(i)
        # Each idle instance gets one try: one that cannot take the work parks itself again.
        for _ in range(len(self.idle)):
            inst = self.idle.popleft()
            inst.waiting_for_work = False
            if inst.try_start():
                break
        self.saturated.set(self.env.now, bool(self.items))


class PrefillInstance:
    """One prefill instance (``tp`` GPUs)."""

    #: Let the prefix cache defer the touches of a batch's cached prefixes to the end of
    #: batch formation, and drop them for a batch of one (see ``PrefixCache.settle``): the
    #: same cache, one path walk fewer per request. False touches at once (the reference).
    defer_touches = True

    def __init__(
        self,
        env: simpy.Environment,
        index: int,
        cost: CostModel,
        queue: PrefillQueue,
        input_tokens: list[int],
        rec: Recorder,
        stats: InstanceStats,
        *,
        max_batched_tokens: int,
        max_batch_requests: int | None,
        kv_capacity_blocks: int,
        kv_block_tokens: int,
        prefix: PrefixLookup,
        on_prefilled: Callable[[PrefillInstance, int], None],
        shared_queue: bool = False,
        state: str = SERVING,
        on_idle: Callable[[PrefillInstance], None] | None = None,
    ) -> None:
        self.env, self.index, self.cost, self.queue = env, index, cost, queue
        self._inp = input_tokens
        self.rec, self.stats = rec, stats
        self.max_batched_tokens = max_batched_tokens
        self.max_batch_requests = max_batch_requests or 1 << 30
        self.kv_capacity_blocks = kv_capacity_blocks
        self.kv_block_tokens = kv_block_tokens
        self.prefix = prefix
        self._on_prefilled = on_prefilled
        self.busy = False
        self.waiting_for_work = False
        self.kv_used_blocks = 0
        self.outstanding_tokens = 0  # prompt tokens queued here or in service (router load)
        self._t_start = rec.times["prefill_start_at"]
        self._t_first = rec.times["first_token_at"]
        #: ``serving``, ``starting`` (cold start), ``draining`` (scale-in: takes no new work)
        #: or ``failed`` (see :mod:`simdisagg.sim.states`); always ``serving`` in a fixed cluster.
        self.state = state
        self.shared_queue = shared_queue
        self._on_idle = on_idle
        self.batch: list[int] = []  # the prompts of the running iteration
        self.holding: set[int] = set()  # prefilled prompts whose KV waits here for its transfer

    def blocks_for(self, i: int) -> int:
        """KV blocks of request ``i``'s prompt."""
        return -(-self._inp[i] // self.kv_block_tokens)

    def enqueue(self, i: int) -> None:
        """Put request ``i`` on this instance's own queue."""
        self.outstanding_tokens += self._inp[i]
        self.queue.push(i)
        if not self.busy:
            self.try_start()

    def try_start(self) -> bool:
        """Start a batch if idle and work fits; return whether one started."""
        if self.busy:
            return False
        if self.state != SERVING and (self.shared_queue or self.state != DRAINING):
            # Starting or failed: no work. Draining: only what is on its own queue already.
            return False
        items = self.queue.items
        if not items:
            self._park()
            return False
        batch: list[int] = []
        new: list[int] = []
        cached: list[int] = []
        tokens = 0
        free = self.kv_capacity_blocks - self.kv_used_blocks
        need = 0
        load_s = 0.0
        while items and len(batch) < self.max_batch_requests:
            i = items[0]
            c = self.prefix.cached_tokens(self.index, i)
            n = self._inp[i] - c
            b = self.blocks_for(i)
            if batch and tokens + n > self.max_batched_tokens:
                break
            if need + b > free:
                break  # head-of-line: the KV of earlier transfers must drain first
            items.popleft()
            load_s += self.prefix.use(self.index, i, defer=self.defer_touches)
            batch.append(i)
            new.append(n)
            cached.append(c)
            tokens += n
            need += b
        self.queue.saturated.set(self.env.now, bool(items))
        if not batch:
            self._park()
            return False
        if self.defer_touches:
            self.prefix.settle(self.index, superseded=len(batch) == 1)
        self.busy = True
        now = self.env.now
        self.kv_used_blocks += need
        self.stats.kv.change(now, need)
        for i, c in zip(batch, cached, strict=True):
            self._t_start[i] = now
            self.rec.cached_tokens[i] = c
            self.rec.prefill_instance[i] = self.index
        # Blocks found below HBM are read in before the iteration computes on them.
        duration = self.cost.prefill_time_s(new, cached) + load_s
        self.stats.busy_s += duration
        self.stats.busy_counted_until_at = now + duration
        # A prompt over the budget runs alone and fills its iteration.
        share = min(tokens / self.max_batched_tokens, 1.0)
        self.stats.prefill_token_share_s += share * duration
        self.stats.iteration_token_share = share
        self.stats.iterations += 1
        self.stats.events += 1
        self.batch = batch
        call_later(self.env, duration, self._done, batch)
        return True

    def _park(self) -> None:
        if not self.waiting_for_work:
            self.waiting_for_work = True
            self.queue.idle.append(self)

    def _done(self, batch: list[int]) -> None:
        if self.state == FAILED or self.state == STOPPED:
            return  # the iteration died with the instance; its prompts were routed again
        now = self.env.now
        self.busy = False
        self.batch = []
        holding = self.holding
        for i in batch:
            self._t_first[i] = now
            self.outstanding_tokens -= self._inp[i]
            self.prefix.insert(self.index, i, now)
            holding.add(i)
        for i in batch:
            self._on_prefilled(self, i)
        self.try_start()
        if self.state == DRAINING:
            self._check_drained()

    def release(self, i: int, start_next: bool = True) -> None:
        """Request ``i``'s KV has left this instance: free its blocks (and start what now
        fits, unless ``start_next`` is False: the run is over)."""
        blocks = self.blocks_for(i)
        self.holding.discard(i)
        self.kv_used_blocks -= blocks
        self.stats.kv.change(self.env.now, -blocks)
        if not self.busy and start_next:
            self.try_start()
            if self.state == DRAINING:
                self._check_drained()

    # -- lifecycle (autoscaling, faults) -----------------------------------------------------
    def is_empty(self) -> bool:
        """No prompt queued here, none running, no KV waiting for its transfer."""
        return not self.busy and self.kv_used_blocks == 0 and (self.shared_queue or not self.queue.items)

    def _check_drained(self) -> None:
        if self._on_idle is not None and self.is_empty():
            self._on_idle(self)

    def fail(self) -> tuple[list[int], list[int], list[int]]:
        """The instance fails: returns ``(queued, running, holding)``: prompts on its own
        queue, prompts of the running iteration and prefilled prompts whose KV was here. Its
        KV memory and queue are emptied."""
        self.state = FAILED
        queued: list[int] = []
        if not self.shared_queue:
            queued = list(self.queue.items)
            self.queue.items.clear()
            self.queue.saturated.set(self.env.now, False)
        running = self.batch if self.busy else []
        holding = sorted(self.holding)
        self.batch, self.holding, self.busy = [], set(), False
        if self.waiting_for_work and self in self.queue.idle:
            self.queue.idle.remove(self)
        self.waiting_for_work = False
        self.stats.kv.change(self.env.now, -self.kv_used_blocks)
        self.kv_used_blocks = 0
        self.outstanding_tokens = 0
        return queued, running, holding
