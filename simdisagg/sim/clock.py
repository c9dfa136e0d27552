"""The one way components schedule work: a SimPy ``Timeout`` with a callback.

Instances are event-driven objects rather than SimPy processes: every state change is a
callback on a timeout, so a state change costs one heap push and one call, with no generator
switching. Cancellation is by generation number: a callback whose generation is stale does
nothing (SimPy events cannot be withdrawn from the queue).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import simpy
from simpy.events import Timeout


def call_later(env: simpy.Environment, delay_s: float, callback: Callable[[Any], None], value: Any = None) -> None:
    """Call ``callback(value)`` after ``delay_s`` seconds of simulated time."""
    event = Timeout(env, delay_s if delay_s > 0.0 else 0.0, value)
    event.callbacks.append(lambda ev: callback(ev._value))
