"""Decode instances: continuous batching with KV admission control and decode fast-forward.

A decode instance admits a request when the KV blocks of its whole sequence (prompt plus
every output token) fit in its free KV memory and a batch slot is free. It admits in arrival
order (head-of-line: a large request at the head waits, as in vLLM's FCFS scheduler). Once
admitted, the KV cache crosses the link; when it lands, the request joins the running batch
at the next iteration boundary.

**Fast-forward.** Between two changes of the batch (a request joins or finishes) every step
time follows from the cost model alone, so a whole run of steps is one event: the instance
computes the run's step times in one vectorised call and schedules only its end. A request
that lands in the middle of a run truncates it at the first step boundary at or after its
arrival, exactly where the step-by-step loop would have let it in. ``exact_steps=True`` caps
every run at one step: the step-by-step reference, one event per iteration.

Step ``S`` (the count of steps done so far) is the instance's clock: a request that joins
when ``S`` steps are done and still owes ``r`` tokens finishes when ``S + r`` are done, so
the next finisher is the top of a heap and the batch's total context is a running sum.

**Speculative decoding** (a :class:`~simdisagg.sim.speculative.Speculator`): a step emits
``1 + accepted`` tokens per request. Each request's emissions are drawn when it joins, so it
still finishes at a known step (``S`` plus its step count) and the heap still names the next
finisher. The batch's context no longer grows by the batch size per step: the instance keeps
the batch's emitted tokens per future step (every member's draws added in at its join), and
a run's contexts are their running sum; its step times come from the speculator.
"""

from __future__ import annotations

import heapq
import math
from bisect import bisect_left
from itertools import accumulate

import numpy as np
import simpy

from simdisagg.costmodel.base import CostModel, short_run_times
from simdisagg.sim.clock import EARLY, LATE, call_at, nothing_else_now
from simdisagg.sim.recorder import InstanceStats, Recorder
from simdisagg.sim.speculative import Speculator
from simdisagg.sim.states import FAILED, SERVING, STOPPED

#: Runs up to this many steps are computed in plain floats: a numpy call costs a few
#: microseconds whatever its length, and most runs between two batch changes are short.
SHORT_RUN_STEPS = 40


class ContinuousBatch:
    """The running batch of a decode or aggregated instance, and its fast-forward runs."""

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
        speculator: Speculator | None = None,
    ) -> None:
        self.env, self.index, self.cost = env, index, cost
        self._inp, self._out = input_tokens, output_tokens
        self.rec, self.stats = rec, stats
        self.exact_steps = exact_steps
        self.steps_done = 0
        self._finish_heap: list[tuple[int, int]] = []  # (finish step, request)
        self._join_step: dict[int, int] = {}
        self.batch_size = 0
        self._ctx_offset = 0  # sum over the batch of (context at join - join step)
        self._joiners: list[int] = []
        self._gen = 0
        self._run_start_at = 0.0
        self._run_context = 0  # total context of the current run's first step
        self._cost_key = rec.steps.cost_key(cost)
        self._short_run = short_run_times(cost)
        # The absolute end time of each step of the current run (a list for a short run, an
        # array for a long one).
        self._run_ends: list[float] | np.ndarray | None = None
        self._run_steps = 0  # steps of the current run that will have run at its end event
        self._stall_s = 0.0  # time the batch spent stalled (aggregated prefill) before its next step
        self._new_members: list[int] = []  # joined, no decode token yet
        self.busy = False
        self._kick_pending = False
        self._t_start = rec.times["decode_start_at"]
        self._t_first = rec.times["decode_first_token_at"]
        self._first_step = rec.first_step_s
        # Speculative decoding (None: one token per request per step, the code above).
        self._spec = speculator
        # Tokens the batch emits at each future step: element t is step _emit_from + t.
        self._emit = np.zeros(0, dtype=np.int64)
        self._emit_from = 0
        self._emitted_before = 0  # tokens emitted by members, ever, before step steps_done
        self._run_times: np.ndarray | None = None  # the current speculative run's step times
        #: ``serving``, ``starting``, ``draining`` or ``failed`` (:mod:`simdisagg.sim.states`);
        #: always ``serving`` in a fixed cluster.
        self.state = SERVING

    # -- joining -------------------------------------------------------------------------
    def _request_boundary(self) -> None:
        """Make the batch reach a boundary as soon as possible: now if idle, else at the
        first step boundary at or after now (truncating the current run)."""
        if not self.busy:
            if not self._kick_pending:
                self._kick_pending = True
                call_at(self.env, self.env.now, self._kick, None, LATE)
            return
        ends = self._run_ends
        if ends is None or self._run_steps <= 1:
            return  # a single step (or a prefill iteration) ends at the next boundary anyway
        # The first boundary at or after now: one at exactly now still takes the joiner (the
        # clock's tie rule), as the step-by-step mode does.
        now = self.env.now
        j = bisect_left(ends, now) if type(ends) is list else int(np.searchsorted(ends, now, side="left"))
        if j + 1 < self._run_steps:
            self._run_steps = j + 1
            self._gen += 1
            call_at(self.env, float(ends[j]), self._on_run_end, self._gen, EARLY)

    def _kick(self, _value: object) -> None:
        self._kick_pending = False
        if not self.busy and self.state != FAILED and self.state != STOPPED:
            self.busy = True
            self._finish_done()
            self._start_phase(None)

    def _on_run_end(self, gen: int) -> None:
        if gen != self._gen:
            return  # superseded by a truncation
        steps = self._run_steps
        ends = self._run_ends
        assert ends is not None
        if self._spec is None:
            self.rec.steps.add_run(self._cost_key, self.batch_size, self._run_context, steps)
        else:
            self._speculative_run_done(steps)
        self.stats.busy_s += float(ends[steps - 1]) - self._run_start_at
        self.stats.iterations += steps
        self.stats.events += 1
        self.steps_done += steps
        self._run_ends = None
        self._run_steps = 0
        self._boundary()

    # -- the boundary ------------------------------------------------------------------
    def _boundary(self) -> None:
        """Apply finishes now; admit joiners and start the next iteration in the ``LATE``
        phase of this instant, once every arrival of the instant has been seen."""
        self._finish_done()
        if nothing_else_now(self.env):
            # Called last by an event's callback: with nothing else due now, the LATE phase
            # of this instant is now (one event fewer per boundary).
            self._start_phase(None)
        else:
            call_at(self.env, self.env.now, self._start_phase, None, LATE)

    def _start_phase(self, _value: object) -> None:
        if self.state != SERVING:
            if self.state == FAILED or self.state == STOPPED:
                return
            self._add_joiners()
            self._after_changes()
            if not self._start_iteration():
                self.busy = False
                self._on_empty()
            return
        self._add_joiners()
        self._after_changes()
        if not self._start_iteration():
            self.busy = False

    def _finish_done(self) -> None:
        s = self.steps_done
        heap = self._finish_heap
        if not heap or heap[0][0] > s:
            return
        before = self.batch_size
        while heap and heap[0][0] <= s:
            _, i = heapq.heappop(heap)
            self.batch_size -= 1
            join_step = self._join_step.pop(i)
            if self._spec is None:
                self._ctx_offset -= self._inp[i] + 1 - join_step
            else:
                # Its whole context leaves: prompt, first token and every token it emitted
                # (which _emitted_before counts).
                self._ctx_offset -= self._inp[i] + self._out[i]
            self._on_finished(i)
        # All at this instant: one change of the occupancy level for every finish.
        self.stats.batch.change(self.env.now, float(self.batch_size - before))

    def _add_joiners(self) -> None:
        if not self._joiners:
            return
        s = self.steps_done
        now = self.env.now
        if self._spec is not None:
            self._add_speculative_joiners(s, now)
            return
        for i in self._joiners:
            self._join_step[i] = s
            heapq.heappush(self._finish_heap, (s + self._out[i] - 1, i))
            self.batch_size += 1
            self._ctx_offset += self._inp[i] + 1 - s
            self._t_start[i] = now
        self.stats.batch.change(now, float(len(self._joiners)))
        self._new_members.extend(self._joiners)
        self._joiners = []

    def _start_decode_run(self) -> bool:
        """Schedule a run of decode steps up to the next finish (one step when exact)."""
        b = self.batch_size
        if b == 0:
            return False
        s = self.steps_done
        n = 1 if self.exact_steps else self._finish_heap[0][0] - s
        now = self.env.now
        # Boundaries as absolute times summed one step at a time from now, exactly as the
        # step-by-step mode's clock advances (np.cumsum adds in order, as the loop does).
        times: list[float] | np.ndarray
        ends: list[float] | np.ndarray
        if self._spec is None:
            ctx0 = self._ctx_offset + b * s
            times = self._short_run(b, ctx0, n) if n <= SHORT_RUN_STEPS else self.cost.decode_run_times_s(b, ctx0, n)
        else:
            ctx0 = self._ctx_offset + self._emitted_before
            times = self._speculative_run_times(b, ctx0, s, n)
            if n <= SHORT_RUN_STEPS:
                times = times.tolist()
        if n <= SHORT_RUN_STEPS:
            ends = list(accumulate(times, initial=now))  # in order, as the clock adds
            del ends[0]
            first, last_end = times[0], ends[-1]
        else:
            ends = np.cumsum(np.concatenate(([now], times)))[1:]
            first, last_end = float(times[0]), float(ends[-1])
        new = self._new_members
        if self._stall_s > 0.0:
            # Members that already decoded sat through the stall: their next gap includes it.
            # (New members' first gap is measured directly from their first token.)
            old = b - len(new)
            if old:
                self.rec.steps.add_weighted(np.array([first, first + self._stall_s]), np.array([-old, old]))
            self._stall_s = 0.0
        if new:
            t_first = now + first
            for i in new:
                self._t_first[i] = t_first
                self._first_step[i] = first
            self._new_members = []
        self._run_start_at, self._run_context = now, ctx0
        self._run_ends, self._run_steps = ends, n
        self._gen += 1
        call_at(self.env, last_end, self._on_run_end, self._gen, EARLY)
        return True

    # -- speculative decoding ------------------------------------------------------------
    def _add_speculative_joiners(self, s: int, now: float) -> None:
        """Joiners of a speculating batch: draw each one's emissions for all its steps and add
        them to the batch's emitted tokens per future step."""
        spec = self._spec
        assert spec is not None
        self._trim_emitted(s)
        for i in self._joiners:
            emitted = spec.emissions(i, self._out[i] - 1)
            steps = len(emitted)
            self._join_step[i] = s
            heapq.heappush(self._finish_heap, (s + steps, i))
            self.batch_size += 1
            self._ctx_offset += self._inp[i] + 1
            self._t_start[i] = now
            lo = s - self._emit_from
            if lo + steps > len(self._emit):
                grown = np.zeros(max(lo + steps, 2 * len(self._emit)), dtype=np.int64)
                grown[: len(self._emit)] = self._emit
                self._emit = grown
            self._emit[lo : lo + steps] += emitted
        self.stats.batch.change(now, float(len(self._joiners)))
        self._new_members.extend(self._joiners)
        self._joiners = []

    def _trim_emitted(self, s: int) -> None:
        """Drop the emitted-token counts of steps already done (once they are most of it)."""
        done = s - self._emit_from
        if done > 4096 and 2 * done > len(self._emit):
            self._emit = self._emit[done:].copy()
            self._emit_from = s

    def _speculative_run_times(self, batch_size: int, context0: int, s: int, n: int) -> np.ndarray:
        """Step times of a speculative run of ``n`` steps from step ``s`` (total context
        ``context0`` at its first step, then growing by the tokens each step emits); kept
        for the step log until the run ends."""
        spec = self._spec
        assert spec is not None
        lo = s - self._emit_from
        emitted = self._emit[lo : lo + n]
        contexts = np.empty(n, dtype=np.int64)
        contexts[0] = context0
        if n > 1:
            np.cumsum(emitted[:-1], out=contexts[1:])
            contexts[1:] += context0
        times = spec.step_times_s(batch_size, contexts)
        self._run_times = times
        return times

    def _speculative_run_done(self, steps: int) -> None:
        """Log a speculative run's steps (each one inter-token gap for every member: the
        tokens a step emits reach the client together) and count its emitted tokens."""
        spec = self._spec
        assert spec is not None and self._run_times is not None
        if spec.draft_tokens == 0:
            # One token per request per step: a plain decode run, logged as the cost model's.
            self.rec.steps.add_run(self._cost_key, self.batch_size, self._run_context, steps)
        else:
            self.rec.steps.add(self._run_times[:steps], self.batch_size)
        lo = self.steps_done - self._emit_from
        self._emitted_before += int(self._emit[lo : lo + steps].sum())
        self._run_times = None

    def _context_now(self) -> int:
        """Total context of the batch at the next step."""
        if self._spec is None:
            return self._ctx_offset + self.batch_size * self.steps_done
        return self._ctx_offset + self._emitted_before

    def _mixed_step_done(self) -> None:
        """A mixed (chunked-prefill) iteration decoded one step of the batch."""
        if self._spec is not None:
            self._emitted_before += int(self._emit[self.steps_done - self._emit_from])
        self.steps_done += 1

    def tokens_so_far(self) -> dict[int, int]:
        """Tokens each request of the batch has received (its first token, from prefill,
        counts), at this instant: the steps of the current run that have ended count."""
        ended = self.steps_done
        ends = self._run_ends
        if ends is not None:
            now = self.env.now
            ended += min(sum(1 for t in ends if t <= now) if type(ends) is list
                         else int(np.searchsorted(ends, now, side="right")), self._run_steps)
        return {i: 1 + ended - s for i, s in self._join_step.items()}

    def _drop_batch(self) -> dict[int, int]:
        """Stop everything (the instance failed): returns the tokens so far of every request
        of the batch and of those about to join it."""
        lost = self.tokens_so_far()
        for i in self._joiners:
            lost[i] = 1
        self._gen += 1  # the pending run end is ignored
        now = self.env.now
        self.stats.batch.change(now, -float(self.batch_size))
        self.batch_size = 0
        self._finish_heap, self._join_step, self._joiners, self._new_members = [], {}, [], []
        self._ctx_offset = 0
        self._run_ends, self._run_steps, self._stall_s = None, 0, 0.0
        self.busy = False
        return lost

    # -- hooks -------------------------------------------------------------------------
    def _on_empty(self) -> None:
        """Called at a boundary of a draining instance that found nothing to run."""

    def _after_changes(self) -> None:
        """Called at a boundary after finishes and joins (admission, for instance)."""

    def _start_iteration(self) -> bool:
        """Start the next iteration; return False when there is nothing to run."""
        return self._start_decode_run()

    def _on_finished(self, i: int) -> None:
        raise NotImplementedError


def kv_capacity_blocks(
    hbm_capacity_bytes: float,
    gpus: int,
    memory_utilisation: float,
    weight_bytes: float,
    kv_bytes_per_token: float,
    block_tokens: int,
    override_tokens: int | None = None,
) -> int:
    """KV blocks an instance holds: usable HBM of its GPUs minus the weights (paged attention).

    Activation memory is not subtracted separately; ``memory_utilisation`` (vLLM's
    ``gpu_memory_utilization``) leaves the headroom for it."""
    if override_tokens is not None:
        return max(0, override_tokens // block_tokens)
    free = hbm_capacity_bytes * gpus * memory_utilisation - weight_bytes
    if free <= 0:
        return 0
    return int(math.floor(free / (kv_bytes_per_token * block_tokens)))
