"""Shared test configuration: the Hypothesis "ci" profile and a trace-building fixture.

The "ci" profile is loaded by default (``HYPOTHESIS_PROFILE`` picks another): no deadline
(a simulation's first call pays for imports and profile loading), derandomized so every run
tries the same examples (CI stays deterministic), and no example database, so no
``.hypothesis/`` directory is written into the checkout.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings

# Test modules import the shared helpers as ``import strategies`` whatever pytest's import
# mode: make this folder importable explicitly.
_HERE = str(Path(__file__).resolve().parent)
if _HERE not in sys.path:
    sys.path.insert(0, _HERE)

from strategies import Req, build_trace

from simdisagg.trace import Trace

settings.register_profile(
    "ci",
    deadline=None,
    derandomize=True,
    database=None,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
settings.register_profile("dev", deadline=None, max_examples=200, print_blob=True)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


@pytest.fixture
def make_trace() -> Callable[[Sequence[Req | tuple[float, int, int]]], Trace]:
    """Build an in-memory trace from ``Req`` rows or ``(arrival_s, input, output)`` tuples.

    Request ids are ``r0, r1, ...`` in row order, so ``Req(..., wait_for=("r0",))`` chains
    a request to the first one."""
    return build_trace
