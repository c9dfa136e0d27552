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
"""

from __future__ import annotations

from collections.abc import Callable
from heapq import heappush
from typing import Any

import simpy
from simpy.events import NORMAL, URGENT, Event, Timeout

EARLY = URGENT
LATE = NORMAL + 1

__all__ = ["EARLY", "LATE", "NORMAL", "call_at", "call_later"]


def call_later(env: simpy.Environment, delay_s: float, callback: Callable[[Any], None], value: Any = None) -> None:
    """Call ``callback(value)`` after ``delay_s`` seconds of simulated time (``NORMAL``)."""
    event = Timeout(env, delay_s if delay_s > 0.0 else 0.0, value)
    event.callbacks.append(lambda ev: callback(ev._value))


def call_at(
    env: simpy.Environment, at_s: float, callback: Callable[[Any], None], value: Any = None, priority: int = NORMAL
) -> None:
    """Call ``callback(value)`` at the absolute time ``at_s`` (not before now), in phase
    ``priority``.

    An absolute time, not a delay: ``now + (at − now)`` can differ from ``at`` in the last
    bit, and step boundaries must fall on exactly the same instants whether a run of decode
    steps is simulated step by step or in one jump. SimPy's public ``schedule`` takes a delay,
    so the event goes on the environment's queue directly, with the key ``schedule`` uses.
    """
    event = Event(env)
    event._ok = True
    event._value = value
    event.callbacks.append(lambda ev: callback(ev._value))
    heappush(env._queue, (at_s if at_s > env.now else env.now, priority, next(env._eid), event))
