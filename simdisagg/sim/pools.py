"""Pools whose instances come and go: started (after a cold start), drained, failed.

A :class:`Pool` holds every instance it ever had, by index (an instance's index is its
position in the order instances started: the initial ones are 0, 1, ..., later ones numbered
on), and ``live``, the instances that take new work now (state ``serving``), which is what the
router is offered. In a fixed cluster ``live`` is the same list as ``instances`` and nothing
here runs during the simulation.

Each instance's life is recorded (:class:`InstanceLife`): when it started, began to serve,
began to drain, ended (and why) and, for a failed one, when its replacement started, so its
state at any instant follows from the record after the run; the GPU-hours of a run count every instance from its start
(its cold start included: the GPUs are held) to its end (it left after draining, or failed).
"""

from __future__ import annotations

import math
from bisect import bisect_left
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import simpy

from simdisagg.sim.clock import call_later
from simdisagg.sim.states import DRAINING, FAILED, SERVING, STARTING, STATES, STOPPED


@dataclass(slots=True)
class InstanceLife:
    """One instance's life: times in simulated seconds (NaN: has not happened)."""

    pool: str
    index: int
    gpus: int
    started_at: float
    serving_at: float = math.nan
    draining_at: float = math.nan  # it stopped taking new work (scale-in, role switch)
    ended_at: float = math.nan  # it left, or failed
    replaced_at: float = math.nan  # a failed instance's replacement started (it stops counting as failed)
    #: why it ended: ``drained`` (scale-in), ``failed``, ``cancelled`` (scaled in while starting),
    #: ``switched`` (its GPUs took the other pool's role); empty while it lives.
    end: str = ""
    #: ``True`` for an instance that took this pool's role with another pool's GPUs.
    switched: bool = False

    def state_at(self, t: float) -> str | None:
        """Its state at time ``t`` (``None``: not started yet, or gone)."""
        if t < self.started_at:
            return None
        if not math.isnan(self.ended_at) and t >= self.ended_at:
            if self.end != "failed" or (not math.isnan(self.replaced_at) and t >= self.replaced_at):
                return None
            return FAILED
        if not math.isnan(self.draining_at) and t >= self.draining_at:
            return DRAINING
        if not math.isnan(self.serving_at) and t >= self.serving_at:
            return SERVING
        return STARTING

    def gpu_seconds(self, end_at: float) -> float:
        """GPU-seconds held from its start to its end (or ``end_at``)."""
        stop = end_at if math.isnan(self.ended_at) else self.ended_at
        return max(0.0, stop - self.started_at) * self.gpus


class Pool:
    """The instances of one pool (``prefill``, ``decode`` or ``aggregated``).

    ``make(index, state)`` builds an instance (with its statistics) in the given state;
    ``on_serving(pool, instance)`` runs when an instance starts serving (the engine hands it
    the work that waited for the pool). ``dynamic`` False: a fixed pool (``live`` is
    ``instances``)."""

    def __init__(
        self,
        env: simpy.Environment,
        name: str,
        gpus_per_instance: int,
        make: Callable[[int, str], Any],
        cold_start_s: float,
        dynamic: bool,
    ) -> None:
        self.env, self.name, self.gpus_per_instance = env, name, gpus_per_instance
        self._make = make
        self.cold_start_s = cold_start_s
        self.dynamic = dynamic
        self.instances: list[Any] = []
        self.live: list[Any] = self.instances if not dynamic else []
        self.lives: list[InstanceLife] = []
        self.on_serving: Callable[[Pool, Any], None] | None = None
        self.on_stopped: Callable[[Pool, Any], None] | None = None
        #: called with every instance the pool starts after the initial ones (random faults)
        self.on_started: list[Callable[[Pool, Any], None]] = []
        self.last_action_at = -math.inf  # the autoscaler's cooldown

    # -- building --------------------------------------------------------------------------
    def add_initial(self, count: int) -> None:
        """The instances the cluster starts with, serving at time 0."""
        for _ in range(count):
            k = len(self.instances)
            inst = self._make(k, SERVING)
            self.instances.append(inst)
            self.lives.append(InstanceLife(self.name, k, self.gpus_per_instance, 0.0, serving_at=0.0))
            if self.dynamic:
                self.live.append(inst)

    def start(self, delay_s: float | None = None, switched: bool = False) -> Any:
        """Start a new instance now: it serves after ``delay_s`` (the pool's cold start by
        default)."""
        assert self.dynamic
        k = len(self.instances)
        inst = self._make(k, STARTING)
        self.instances.append(inst)
        self.lives.append(InstanceLife(self.name, k, self.gpus_per_instance, self.env.now, switched=switched))
        call_later(self.env, self.cold_start_s if delay_s is None else delay_s, self._serve, inst)
        for hook in self.on_started:
            hook(self, inst)
        return inst

    def _serve(self, inst: Any) -> None:
        if inst.state != STARTING:
            return  # failed or cancelled during its cold start
        inst.state = SERVING
        self.lives[inst.index].serving_at = self.env.now
        self._insert_live(inst)
        if self.on_serving is not None:
            self.on_serving(self, inst)

    def _insert_live(self, inst: Any) -> None:
        keys = [x.index for x in self.live]
        self.live.insert(bisect_left(keys, inst.index), inst)

    # -- leaving ---------------------------------------------------------------------------
    def drain(self, inst: Any, why: str = "drained") -> None:
        """Take ``inst`` out of service: it takes no new work and leaves once it holds none
        (a starting instance is cancelled at once)."""
        if inst.state == STARTING:
            self._end(inst, "cancelled")
            return
        if inst.state != SERVING:
            return
        self.live.remove(inst)
        inst.state = DRAINING
        life = self.lives[inst.index]
        life.draining_at = self.env.now
        life.end = why  # provisional: the reason it will leave for
        if inst.is_empty():
            self.leave(inst)

    def leave(self, inst: Any) -> None:
        """A draining instance holds no work any more: it leaves (its GPUs are released)."""
        if inst.state != DRAINING:
            return
        self._end(inst, self.lives[inst.index].end or "drained")

    def _end(self, inst: Any, why: str) -> None:
        inst.state = STOPPED
        life = self.lives[inst.index]
        life.ended_at, life.end = self.env.now, why
        if self.on_stopped is not None:
            self.on_stopped(self, inst)

    def mark_failed(self, inst: Any) -> None:
        """``inst`` has failed (its own ``fail`` set its state and gave back its work)."""
        if inst in self.live:
            self.live.remove(inst)
        inst.state = FAILED
        life = self.lives[inst.index]
        life.ended_at, life.end = self.env.now, "failed"

    # -- figures ---------------------------------------------------------------------------
    def counts(self) -> dict[str, int]:
        """Instances per state (``serving``, ``starting``, ``draining``, ``failed``) now."""
        out = dict.fromkeys(STATES, 0)
        for inst in self.instances:
            if inst.state in out:
                out[inst.state] += 1
        return out

    def provisioned(self) -> int:
        """Instances serving or starting: what the autoscaler counts as the pool's size."""
        return sum(1 for inst in self.instances if inst.state in (SERVING, STARTING))

    def gpu_seconds(self, end_at: float) -> float:
        """GPU-seconds every instance of the pool held up to ``end_at``."""
        return sum(life.gpu_seconds(end_at) for life in self.lives)

    def mean_instances(self, end_at: float) -> float:
        """Time-mean count of instances holding GPUs over ``[0, end_at]``."""
        return self.gpu_seconds(end_at) / self.gpus_per_instance / end_at if end_at > 0 else float(len(self.live))
