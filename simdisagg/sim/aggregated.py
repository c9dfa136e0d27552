"""Aggregated instances: one instance does both prefill and decode (the baseline).

The scheduler follows vLLM's:

* **Without chunked prefill**, waiting prompts take priority: at each iteration boundary,
  if the head of the waiting queue fits (KV blocks of its whole sequence and a batch slot),
  the instance runs a prefill-only iteration over as many waiting prompts as fit the token
  budget, and the running decode batch stalls for that iteration. Otherwise it runs decode
  steps (fast-forwarded, cut short at the first boundary after a new prompt arrives).
* **With chunked prefill**, every iteration has a token budget: one token for each running
  decode request first, then chunks of waiting prompts (in order, the partly done first) up
  to the budget. A prompt whose last chunk ran emits its first token at the end of that
  iteration and decodes from the next one.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from typing import Any

import numpy as np
import simpy

from simdisagg.costmodel.base import CostModel
from simdisagg.sim.clock import call_later
from simdisagg.sim.decode import ContinuousBatch
from simdisagg.sim.prefill import PrefixLookup
from simdisagg.sim.recorder import InstanceStats, Recorder
from simdisagg.sim.speculative import Speculator
from simdisagg.sim.states import DRAINING, FAILED, SERVING


class AggregatedInstance(ContinuousBatch):
    """An instance that prefills and decodes on the same GPUs."""

    #: Whether this instance's index names it in the ``prefill_instance`` column (an
    #: aggregated instance is its own prefill pool; a decode instance is not in that pool).
    prefill_pool_index = True

    def __init__(
        self,
        env: simpy.Environment,
        index: int,
        cost: CostModel,
        input_tokens: list[int],
        output_tokens: list[int],
        rec: Recorder,
        stats: InstanceStats,
        exact_steps: bool,
        *,
        max_batch_size: int,
        max_batched_tokens: int,
        max_batch_requests: int | None,
        kv_capacity_blocks: int,
        kv_block_tokens: int,
        chunked_prefill: bool,
        prefix: PrefixLookup,
        on_complete: Callable[[int], None],
        waiting: Any = None,
        speculator: Speculator | None = None,
        state: str = SERVING,
        on_idle: Callable[[AggregatedInstance], None] | None = None,
    ) -> None:
        super().__init__(env, index, cost, input_tokens, output_tokens, rec, stats, exact_steps, speculator)
        self.state = state
        self._on_idle = on_idle
        self.max_batch_size = max_batch_size
        self.max_batched_tokens = max_batched_tokens
        self.max_batch_requests = max_batch_requests or 1 << 30
        self.kv_capacity_blocks = kv_capacity_blocks
        self.kv_block_tokens = kv_block_tokens
        self.chunked = chunked_prefill
        self.prefix = prefix
        self._on_complete = on_complete
        # FIFO by default; tenants with priorities pass a PriorityOrder (the same interface).
        self.waiting: deque[int] = deque() if waiting is None else waiting
        self.waiting_blocks = 0  # KV blocks the waiting prompts will need
        self._prefilling: list[list[int]] = []  # [request, tokens done, cached at admission]
        self.kv_used_blocks = 0
        self.slots_used = 0
        self.outstanding_tokens = 0
        self._blocks_of: dict[int, int] = {}
        self._pending_load_s = 0.0  # time to read cached blocks from lower tiers, next iteration
        self._t_pstart = rec.times["prefill_start_at"]
        self._t_first_token = rec.times["first_token_at"]

    def blocks_for(self, i: int) -> int:
        """KV blocks request ``i`` holds at its longest."""
        return -(-(self._inp[i] + self._out[i]) // self.kv_block_tokens)

    def load(self) -> float:
        """Fraction of KV memory reserved: a load measure for routers."""
        return self.kv_used_blocks / self.kv_capacity_blocks

    def enqueue(self, i: int) -> None:
        """A new prompt arrives: it waits, and cuts the current decode run short."""
        self.waiting.append(i)
        self.waiting_blocks += self.blocks_for(i)
        self.outstanding_tokens += self._inp[i] + self._out[i]
        self._request_boundary()

    # -- admission ---------------------------------------------------------------------
    def _admit_head(self) -> int | None:
        if not self.waiting:
            return None
        i = self.waiting[0]
        blocks = self.blocks_for(i)
        if self.kv_used_blocks + blocks > self.kv_capacity_blocks or self.slots_used >= self.max_batch_size:
            return None
        self.waiting.popleft()
        self.waiting_blocks -= blocks
        self.kv_used_blocks += blocks
        self.slots_used += 1
        self._blocks_of[i] = blocks
        self.stats.kv.change(self.env.now, blocks)
        if self.prefill_pool_index:
            self.rec.prefill_instance[i] = self.index
        self.rec.decode_instance[i] = self.index
        self._t_pstart[i] = self.env.now
        cached = self.prefix.cached_tokens(self.index, i)
        self._pending_load_s += self.prefix.use(self.index, i)
        self.rec.cached_tokens[i] = cached
        self._prefilling.append([i, 0, cached])
        return i

    # -- iterations --------------------------------------------------------------------
    def _start_iteration(self) -> bool:
        started = self._start_chunked() if self.chunked else self._start_prefill_first()
        self._mark_saturation()
        return started

    def _mark_saturation(self) -> None:
        """At a boundary, once this iteration's prompts are admitted: prompts still waiting
        cannot start now (KV memory, batch slots or the token budget are full). A prompt that
        only waits for the running step to end is not counted."""
        self.stats.saturated.set(self.env.now, bool(self.waiting))

    def _start_prefill_first(self) -> bool:
        # Prefill first (vLLM's default without chunking): the decode batch stalls.
        tokens = 0
        while len(self._prefilling) < self.max_batch_requests and self.waiting:
            i = self.waiting[0]
            n = self._inp[i] - self.prefix.cached_tokens(self.index, i)
            if self._prefilling and tokens + n > self.max_batched_tokens:
                break
            if self._admit_head() is None:
                break
            tokens += self._inp[i] - self._prefilling[-1][2]
        if self._prefilling:
            new = np.array([self._inp[p[0]] - p[2] for p in self._prefilling])
            cached = np.array([p[2] for p in self._prefilling])
            duration = self.cost.prefill_time_s(new, cached)
            for entry in self._prefilling:
                entry[1] = self._inp[entry[0]] - entry[2]
            self._schedule_prefill(duration, 0)
            return True
        return self._start_decode_run()

    def _start_chunked(self) -> bool:
        # Each running request's decode tokens come first: one, or its drafts and one when it
        # speculates (verified in the same iteration, as vLLM budgets them).
        per_request = 1 if self._spec is None else 1 + self._spec.draft_tokens
        budget = self.max_batched_tokens - self.batch_size * per_request
        new: list[int] = []
        cached: list[int] = []
        # Continue partly prefilled prompts first, then admit new ones while budget remains.
        k = 0
        while budget > 0:
            if k == len(self._prefilling) and self._admit_head() is None:
                break
            i, done, pc = self._prefilling[k]
            chunk = min(self._inp[i] - pc - done, budget)
            new.append(chunk)
            cached.append(pc + done)
            budget -= chunk
            k += 1
        if not new:
            return self._start_decode_run()
        b = self.batch_size
        ctx = self._context_now()
        if self._spec is None:
            duration = self.cost.mixed_step_time_s(np.array(new), np.array(cached), b, ctx)
        else:
            duration = self._spec.mixed_step_time_s(np.array(new), np.array(cached), b, ctx)
        for j, chunk in enumerate(new):
            self._prefilling[j][1] += chunk
        self._schedule_prefill(duration, b)
        return True

    def _schedule_prefill(self, duration: float, decode_batch: int) -> None:
        duration += self._pending_load_s
        self._pending_load_s = 0.0
        if not self.chunked:
            # The running batch stalls: its next inter-token gap includes this iteration.
            self._stall_s += duration
        self.stats.busy_s += duration
        self.stats.busy_counted_until_at = self.env.now + duration
        self.stats.iterations += 1
        self.stats.events += 1
        self._run_ends = None
        self._run_steps = 1
        self._gen += 1
        call_later(self.env, duration, self._on_prefill_end, (self._gen, duration, decode_batch))

    def _on_prefill_end(self, item: tuple[int, float, int]) -> None:
        gen, duration, decode_batch = item
        if gen != self._gen:
            return
        now = self.env.now
        self._run_steps = 0
        if decode_batch:
            # A mixed iteration: the decode batch produced one token each.
            self.rec.steps.add([duration], decode_batch)
            self._mixed_step_done()
            self._mixed_first(duration)
        still: list[list[int]] = []
        for entry in self._prefilling:
            i, done, pc = entry
            if pc + done < self._inp[i]:
                still.append(entry)
                continue
            self._t_first_token[i] = now
            self._prefilled(i, now)
            if self._out[i] <= 1:
                self._release(i)
                self._on_complete(i)
            else:
                self._joiners.append(i)
        self._prefilling = still
        self._boundary()

    def _prefilled(self, i: int, now: float) -> None:
        """Request ``i``'s prompt KV now exists here: offer it to the prefix cache."""
        self.prefix.insert(self.index, i, now)

    def _mixed_first(self, duration: float) -> None:
        """Requests whose first decode step was this mixed iteration."""
        new = self._new_members
        if new:
            for i in new:
                self._t_first[i] = self.env.now
                self._first_step[i] = duration
            self._new_members = []

    def _on_finished(self, i: int) -> None:
        self._release(i)
        self._on_complete(i)

    # -- lifecycle (autoscaling, faults) -----------------------------------------------------
    def is_empty(self) -> bool:
        """Nothing waits, runs or holds KV memory here."""
        return self.slots_used == 0 and not self.waiting and not self._joiners and not self.busy

    def _on_empty(self) -> None:
        if self.state == DRAINING and self._on_idle is not None and self.is_empty():
            self._on_idle(self)

    def fail(self) -> tuple[list[tuple[int, int]], list[tuple[int, int]]]:
        """The instance fails: returns ``(unstarted, lost)``: ``(request, prompt tokens
        computed)`` of the prompts that had not finished their prefill here (waiting, or
        part-way through it), and ``(request, tokens so far)``
        of the requests whose KV was lost with it (the batch, and prompts just prefilled)."""
        self.state = FAILED
        lost = self._drop_batch()
        unstarted = [(p[0], p[1]) for p in self._prefilling] + [(i, 0) for i in self.waiting]
        self._prefilling, self._pending_load_s = [], 0.0
        self.waiting.clear()
        self.waiting_blocks = 0
        self.stats.kv.change(self.env.now, -self.kv_used_blocks)
        self.kv_used_blocks = self.slots_used = self.outstanding_tokens = 0
        self._blocks_of.clear()
        return unstarted, sorted(lost.items())

    def _release(self, i: int) -> None:
        blocks = self._blocks_of.pop(i)
        self.kv_used_blocks -= blocks
        self.slots_used -= 1
        self.outstanding_tokens -= self._inp[i] + self._out[i]
        self.stats.kv.change(self.env.now, -blocks)


class DecodeInstance(AggregatedInstance):
    """A decode instance of a disaggregated cluster.

    Remote requests ask for KV memory (:meth:`submit`), are admitted in arrival order when
    the KV blocks of their whole sequence and a batch slot are free (head-of-line, as vLLM's
    FCFS scheduler), receive their KV over the link, and join the batch (:meth:`join`).
    Under conditional disaggregation a short request can instead be prefilled here
    (:meth:`enqueue`, inherited): the batch stalls for that prefill, as in aggregated serving.
    ``prefix`` is the instance's retained KV of finished requests: a request whose leading
    blocks are still held needs only the rest sent (or computed).
    """

    def __init__(self, *args: object, on_complete: Callable[[int], None], **kwargs: object) -> None:
        super().__init__(*args, chunked_prefill=False, on_complete=on_complete, **kwargs)  # type: ignore[arg-type]
        self.queued_blocks = 0
        self._admit_queue: deque[tuple[int, int, Callable[[int], None]]] = deque()
        self._remote: set[int] = set()
        self._t_admit = self.rec.times["decode_admit_at"]
        self.reserved_tokens = 0  # KV tokens reserved or asked for (router load)

    prefill_pool_index = False  # a prompt prefilled here (conditional) has no prefill-pool instance

    def load(self) -> float:
        """Fraction of KV memory reserved or asked for (over the link, or by prompts queued
        for prefill here): the router's measure of load."""
        return (self.kv_used_blocks + self.queued_blocks + self.waiting_blocks) / self.kv_capacity_blocks

    def held_tokens(self, i: int) -> int:
        """Leading prompt tokens of request ``i`` whose KV this instance still holds."""
        return self.prefix.cached_tokens(self.index, i)

    def submit(self, i: int, on_admitted: Callable[[int], None]) -> None:
        """Ask for KV memory for request ``i``; ``on_admitted(i)`` runs once it is reserved."""
        blocks = self.blocks_for(i)
        self._admit_queue.append((i, blocks, on_admitted))
        self.queued_blocks += blocks
        self.reserved_tokens += self._inp[i] + self._out[i]
        self._try_admit()

    def _mark_saturation(self) -> None:
        """Saturated while requests wait for KV memory or a batch slot here (a request that
        fits is admitted at once, so none waits otherwise)."""
        self.stats.saturated.set(self.env.now, bool(self._admit_queue))

    def _try_admit(self) -> None:
        q = self._admit_queue
        while q:
            i, blocks, on_admitted = q[0]
            if self.kv_used_blocks + blocks > self.kv_capacity_blocks or self.slots_used >= self.max_batch_size:
                break  # head-of-line: later requests wait behind the head
            q.popleft()
            self.queued_blocks -= blocks
            self.kv_used_blocks += blocks
            self.slots_used += 1
            self._blocks_of[i] = blocks
            self._remote.add(i)
            self.stats.kv.change(self.env.now, blocks)
            self._t_admit[i] = self.env.now
            on_admitted(i)
        self._mark_saturation()

    def join(self, i: int) -> None:
        """Request ``i``'s KV has landed: it joins the batch at the next step boundary."""
        self._joiners.append(i)
        self._request_boundary()

    def enqueue(self, i: int) -> None:
        """Prefill request ``i`` here (conditional disaggregation)."""
        self.reserved_tokens += self._inp[i] + self._out[i]
        super().enqueue(i)

    def _after_changes(self) -> None:
        self._try_admit()

    def is_empty(self) -> bool:
        """Nothing waits for memory, for prefill, or runs here, and no KV is reserved."""
        return not self._admit_queue and super().is_empty()

    def cancel(self, i: int) -> None:
        """Request ``i``'s KV will never come (its prefill instance failed): drop its wait
        for memory here, or the memory reserved for it."""
        for k, item in enumerate(self._admit_queue):
            if item[0] == i:
                del self._admit_queue[k]
                self.queued_blocks -= item[1]
                self.reserved_tokens -= self._inp[i] + self._out[i]
                return
        if i in self._remote and i not in self._join_step and i not in self._joiners:
            self._remote.discard(i)
            blocks = self._blocks_of.pop(i)
            self.kv_used_blocks -= blocks
            self.slots_used -= 1
            self.reserved_tokens -= self._inp[i] + self._out[i]
            self.stats.kv.change(self.env.now, -blocks)
            self._try_admit()
            if self.state == DRAINING and not self.busy:
                self._on_empty()

    def fail_decode(self) -> tuple[list[tuple[int, int]], list[tuple[int, int]], list[int]]:
        """The instance fails: :meth:`AggregatedInstance.fail`'s two lists, and the requests
        that waited here for KV memory (their KV is still on their prefill instance). Those
        whose KV is on its way here find the instance failed when it lands."""
        waiting_memory = [item[0] for item in self._admit_queue]
        self._admit_queue.clear()
        self.queued_blocks = 0
        self._remote.clear()
        self.reserved_tokens = 0
        unstarted, lost = self.fail()
        return unstarted, lost, waiting_memory

    def _prefilled(self, i: int, now: float) -> None:
        pass  # retained at release, with the whole context

    def _release(self, i: int) -> None:
        now = self.env.now
        self.prefix.insert(self.index, i, now)  # keep the context while memory allows
        self.reserved_tokens -= self._inp[i] + self._out[i]
        if i in self._remote:
            self._remote.discard(i)
            blocks = self._blocks_of.pop(i)
            self.kv_used_blocks -= blocks
            self.slots_used -= 1
            self.stats.kv.change(now, -blocks)
        else:
            super()._release(i)
