"""The one way components schedule work: a SimPy event with a callback.

Instances are event-driven objects rather than SimPy processes: every state change is a
callback on an event, so a state change costs one heap push and one call, with no generator
switching. Cancellation is by generation number: a callback whose generation is stale does
nothing (SimPy events cannot be withdrawn from the queue).

Events at the same instant run in three phases, by SimPy priority, so that the outcome never
depends on which event happened to be created first:

``EARLY``   decode step boundaries end their run and finish their requests;
``NORMAL``  arrivals, prefill ends, transfers, and whatever the finishes released;
``LATE``    decode instances admit joiners and start their next iteration.

The tie rule that follows: a request that arrives at the instant of a step boundary joins the
batch at that boundary, in step-by-step and fast-forward mode alike.

The environment is SimPy's (its clock, its event queue and its ordering key: time, priority,
insertion count), but a scheduled call is a plain queue entry ``(time, priority, id, callback,
value)`` rather than an :class:`~simpy.events.Event` with a callback list, and :func:`run`
pops and calls them: an event then costs one tuple, one push and one call. SimPy events
scheduled on the same environment still run, through :meth:`simpy.Environment.step`.
"""

from __future__ import annotations

from collections.abc import Callable
from heapq import heappop, heappush
from typing import Any, Protocol

import simpy
from simpy.events import NORMAL, URGENT

EARLY = URGENT
LATE = NORMAL + 1

__all__ = ["EARLY", "LATE", "NORMAL", "Sampler", "call_at", "call_later", "run"]


def call_later(env: simpy.Environment, delay_s: float, callback: Callable[[Any], None], value: Any = None) -> None:
    """Call ``callback(value)`` after ``delay_s`` seconds of simulated time (``NORMAL``)."""
    now = env._now
    heappush(env._queue, (now + delay_s if delay_s > 0.0 else now, NORMAL, next(env._eid), callback, value))


def call_at(
    env: simpy.Environment, at_s: float, callback: Callable[[Any], None], value: Any = None, priority: int = NORMAL
) -> None:
    """Call ``callback(value)`` at the absolute time ``at_s`` (not before now), in phase
    ``priority``.

    An absolute time, not a delay: ``now + (at − now)`` can differ from ``at`` in the last
    bit, and step boundaries must fall on exactly the same instants whether a run of decode
    steps is simulated step by step or in one jump."""
    now = env._now
    heappush(env._queue, (at_s if at_s > now else now, priority, next(env._eid), callback, value))


def nothing_else_now(env: simpy.Environment) -> bool:
    """Whether no other event is due at the current instant (a callback that would defer work
    to a later phase of this instant may then do it at once: nothing could come between)."""
    queue = env._queue
    return not queue or queue[0][0] > env._now


class Sampler(Protocol):
    """Something that samples the state at fixed instants (a time series), with no events of
    its own: the run loop calls :meth:`sample_until` before the first event at or after
    ``next_at``."""

    next_at: float

    def sample_until(self, now: float) -> float:
        """Sample every instant at or before ``now``; return the next one."""
        ...


def run(env: simpy.Environment, sampler: Sampler | None = None) -> None:
    """Run until no event is left (or until the queue is emptied to stop the run).

    With a ``sampler``, each of its instants is sampled before the first event at or after
    it, so the sample sees the state that held up to that instant; the run is unchanged."""
    queue = env._queue
    if sampler is not None:
        next_at = sampler.next_at
        while queue:
            entry = heappop(queue)
            if entry[0] >= next_at:
                next_at = sampler.sample_until(entry[0])
            if len(entry) == 5:
                env._now = entry[0]
                entry[3](entry[4])
            else:
                heappush(queue, entry)
                env.step()
        return
    while queue:
        entry = heappop(queue)
        if len(entry) == 5:
            env._now = entry[0]
            entry[3](entry[4])
        else:  # a SimPy event: let SimPy process it
            heappush(queue, entry)
            env.step()
