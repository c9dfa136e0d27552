"""Instance failures and link faults, scheduled or random, and what they cost the requests.

:func:`schedule_faults` turns a :class:`~simdisagg.config.FaultsConfig` into events:

* a scheduled :class:`~simdisagg.config.InstanceFailure` fails instance ``index`` of its pool
  at ``at_s`` (one that does not exist then, or has already failed or left, is recorded as
  skipped with the reason, never silently dropped); ``repair_s`` later a replacement starts,
  with a cold start;
* a :class:`~simdisagg.config.RandomInstanceFaults` gives every instance of its pool (those of
  the start and every later one) a time to failure drawn from an exponential of mean
  ``mtbf_s`` from its start, and each failure a repair time of mean ``mttr_s``, after which a
  replacement starts (and draws its own time to failure);
* a :class:`~simdisagg.config.LinkFault` scales the KV link of one prefill instance (or every
  link) for ``duration_s``; :class:`~simdisagg.config.RandomLinkFaults` alternates each link
  between exponential up times (mean ``mtbf_s``) and faults (mean ``mttr_s``). Overlapping
  faults on one link leave it at the lowest scale among them.

Random faults strike until the last open-loop arrival of the trace (``horizon_at``); after
it the cluster is only repaired, so a run whose instances fail faster than they start still
ends (its waiting requests then rejected, saying why). Random times come from the run's
``faults`` stream (:class:`~simdisagg.rng.Streams`), drawn
in event order, so a run is reproducible from its seed and adding faults shifts no other
stream.

What a failure does to the requests is the engine's (:func:`simdisagg.sim.engine.simulate`);
:class:`Recovery` keeps the count: retries (each time a request is routed again) and
recomputed tokens (prompt or context tokens whose KV had been computed, or was being computed
when the instance failed, and is computed again).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import simpy

from simdisagg.config import (
    FaultsConfig,
    InstanceFailure,
    LinkFault,
    RandomInstanceFaults,
    RandomLinkFaults,
)
from simdisagg.sim.clock import call_at, call_later
from simdisagg.sim.pools import Pool
from simdisagg.sim.recorder import Recorder
from simdisagg.sim.states import DRAINING, FAILED, SERVING, STARTING, STOPPED

#: The time columns a request keeps from its first attempt once its first token has reached
#: the client: a retry after that does not make the first token later.
FIRST_TOKEN_COLUMNS = (
    "prefill_enqueued_at", "prefill_start_at", "first_token_at", "decode_start_at", "decode_first_token_at",
)  # fmt: skip


class Recovery:
    """Counts of what faults cost, and the first-token times of requests resumed after a
    decode failure (restored when they complete)."""

    def __init__(self, rec: Recorder) -> None:
        self.rec = rec
        self.retries = np.zeros(rec.n, dtype=np.int32)
        self.recomputed_tokens = 0
        self.failures = 0
        self.role_switches = 0
        self.fallback_prefills = 0  # prompts prefilled on decode instances while prefill was down
        self.skipped: list[str] = []
        self.stranded = 0  # requests still in the cluster at its end (rejected then, saying so)
        self.saved: dict[int, tuple[float, ...]] = {}
        self.lost_at: dict[int, float] = {}  # when a resumed request last lost its KV

    def retried(self, i: int, recomputed_tokens: int = 0) -> None:
        """Request ``i`` is routed again, recomputing that many tokens."""
        self.retries[i] += 1
        self.recomputed_tokens += recomputed_tokens

    def keep_first_token(self, i: int, now: float) -> None:
        """Request ``i`` has streamed tokens and loses its KV at ``now``: keep its
        first-token times."""
        if i not in self.saved:
            t = self.rec.times
            self.saved[i] = tuple(float(t[c][i]) for c in FIRST_TOKEN_COLUMNS) + (float(self.rec.first_step_s[i]),)
        self.lost_at[i] = now

    def restore(self, i: int) -> None:
        """Request ``i`` completed after a retry: its first token is the one the client got
        first. The stall (from the failure to the retry's first decoded token) is logged as
        one inter-token gap."""
        saved = self.saved.pop(i, None)
        if saved is None:
            return
        lost_at = self.lost_at.pop(i)
        t = self.rec.times
        resumed = t["decode_first_token_at"][i]
        if not math.isnan(resumed) and not math.isnan(lost_at):
            self.rec.steps.add([max(resumed - lost_at, 0.0)], 1)
        for c, v in zip(FIRST_TOKEN_COLUMNS, saved[:-1], strict=True):
            t[c][i] = v
        self.rec.first_step_s[i] = saved[-1]

    def summary(self) -> dict[str, Any]:
        """The counts, for the run's summary."""
        return {
            "retries": int(self.retries.sum()),
            "retried_requests": int(np.count_nonzero(self.retries)),
            "recomputed_tokens": int(self.recomputed_tokens),
            "instance_failures": self.failures,
            "role_switches": self.role_switches,
            "fallback_prefills": self.fallback_prefills,
            "stranded_requests": self.stranded,
            "skipped_faults": list(self.skipped),
        }


@dataclass
class ClusterControl:
    """What faults and the autoscaler act on: the pools, the KV links by prefill index, and
    the engine's handling of a failure (``fail(pool, instance)``, re-routing its work)."""

    env: simpy.Environment
    pools: dict[str, Pool]
    links: list[Any]
    fail: Callable[[Pool, Any], None]
    all_done: Callable[[], bool]
    recovery: Recovery
    link_scales: dict[int, list[float]] = field(default_factory=dict)

    def repair(self, pool: Pool, failed: Any) -> None:
        """The failed instance is repaired: it is gone, and a replacement starts (cold)."""
        if self.all_done():
            return
        if failed.state == FAILED:
            failed.state = STOPPED
            pool.lives[failed.index].replaced_at = self.env.now
        pool.start()

    def link_fault(self, k: int, scale: float, duration_s: float) -> None:
        """Link ``k`` runs at ``scale`` for ``duration_s`` (overlaps: the lowest scale holds)."""
        if k >= len(self.links) or self.links[k].failed:
            return
        active = self.link_scales.setdefault(k, [])
        active.append(scale)
        self.links[k].set_bandwidth_scale(min(active))
        call_later(self.env, duration_s, self._link_restored, (k, scale))

    def _link_restored(self, item: tuple[int, float]) -> None:
        k, scale = item
        active = self.link_scales[k]
        active.remove(scale)
        if not self.links[k].failed:
            self.links[k].set_bandwidth_scale(min(active) if active else 1.0)


def schedule_faults(
    control: ClusterControl, faults: FaultsConfig, rng: np.random.Generator, horizon_at: float
) -> None:
    """Put the fault events of ``faults`` on the clock of ``control.env``; random faults
    strike no later than ``horizon_at``."""
    env = control.env
    for event in faults.events:
        if isinstance(event, InstanceFailure):
            call_at(env, event.at_s, _scheduled_failure, (control, event))
        elif isinstance(event, LinkFault):
            call_at(env, event.at_s, _scheduled_link_fault, (control, event))
    for spec in faults.random:
        if isinstance(spec, RandomInstanceFaults):
            names = list(control.pools) if spec.pool == "all" else [spec.pool]
            for name in names:
                pool = control.pools[name]
                hook = _RandomFailures(control, pool, spec, rng, horizon_at)
                for inst in pool.instances:
                    hook(pool, inst)
                pool.on_started.append(hook)
        elif isinstance(spec, RandomLinkFaults) and "prefill" in control.pools:
            prefill = control.pools["prefill"]
            link_hook = _RandomLinkFaults(control, spec, rng, horizon_at)
            for inst in prefill.instances:
                link_hook(prefill, inst)
            prefill.on_started.append(link_hook)


def _scheduled_failure(item: tuple[ClusterControl, InstanceFailure]) -> None:
    control, event = item
    pool = control.pools[event.pool]
    if event.index >= len(pool.instances):
        control.recovery.skipped.append(
            f"{event.pool} instance {event.index} at {event.at_s:g} s: the pool has had only "
            f"{len(pool.instances)} instances by then"
        )
        return
    inst = pool.instances[event.index]
    if inst.state not in (SERVING, STARTING, DRAINING):
        control.recovery.skipped.append(
            f"{event.pool} instance {event.index} at {event.at_s:g} s: it had already {inst.state}"
        )
        return
    control.fail(pool, inst)
    if event.repair_s is not None:
        call_later(control.env, event.repair_s, lambda _v: control.repair(pool, inst))


def _scheduled_link_fault(item: tuple[ClusterControl, LinkFault]) -> None:
    control, event = item
    if event.prefill_instance is None:
        targets = range(len(control.links))
    elif event.prefill_instance < len(control.links):
        targets = range(event.prefill_instance, event.prefill_instance + 1)
    else:
        control.recovery.skipped.append(
            f"link of prefill instance {event.prefill_instance} at {event.at_s:g} s: the pool has had only "
            f"{len(control.links)} instances by then"
        )
        return
    for k in targets:
        control.link_fault(k, event.bandwidth_scale, event.duration_s)


class _RandomFailures:
    """Gives each instance of a pool, from its start, an exponential time to failure."""

    def __init__(
        self, control: ClusterControl, pool: Pool, spec: RandomInstanceFaults, rng: np.random.Generator,
        horizon_at: float,
    ) -> None:
        self.control, self.pool, self.spec, self.rng = control, pool, spec, rng
        self.horizon_at = horizon_at

    def __call__(self, pool: Pool, inst: Any) -> None:
        if pool is not self.pool:
            return
        at = self.control.env.now + float(self.rng.exponential(self.spec.mtbf_s))
        if at <= self.horizon_at:
            call_at(self.control.env, at, self._fail, inst)

    def _fail(self, inst: Any) -> None:
        if inst.state not in (SERVING, STARTING, DRAINING) or self.control.all_done():
            return
        self.control.fail(self.pool, inst)
        repair_s = float(self.rng.exponential(self.spec.mttr_s))
        call_later(self.control.env, repair_s, lambda _v: self.control.repair(self.pool, inst))


class _RandomLinkFaults:
    """Alternates each prefill instance's link between up times and faults."""

    def __init__(
        self, control: ClusterControl, spec: RandomLinkFaults, rng: np.random.Generator, horizon_at: float
    ) -> None:
        self.control, self.spec, self.rng, self.horizon_at = control, spec, rng, horizon_at

    def __call__(self, pool: Pool, inst: Any) -> None:
        self._next(inst.index)

    def _next(self, k: int) -> None:
        at = self.control.env.now + float(self.rng.exponential(self.spec.mtbf_s))
        if at <= self.horizon_at:
            call_at(self.control.env, at, self._fault, k)

    def _fault(self, k: int) -> None:
        if self.control.all_done() or self.control.links[k].failed:
            return
        duration_s = float(self.rng.exponential(self.spec.mttr_s))
        self.control.link_fault(k, self.spec.bandwidth_scale, duration_s)
        call_later(self.control.env, duration_s, lambda _v: self._next(k))
