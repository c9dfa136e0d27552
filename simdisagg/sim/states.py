"""The lifecycle states of an instance (its ``state`` attribute).

``serving``   takes new work (the only state of a fixed cluster's instances);
``starting``  cold start: loading weights and warming up, takes no work yet;
``draining``  scale-in or role switch: takes no new work, finishes what it holds, then leaves;
``failed``    failed: its work was routed again; a repair starts a new instance.

An instance that has left (drained empty) is ``stopped`` and counts in no state.
"""

from __future__ import annotations

SERVING = "serving"
STARTING = "starting"
DRAINING = "draining"
FAILED = "failed"
STOPPED = "stopped"

#: The states an instance is counted in while it holds GPUs.
STATES = (SERVING, STARTING, DRAINING, FAILED)
