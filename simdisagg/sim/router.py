"""The router: picks the prefill instance of each request and the decode instance after it.

Prefill policies (by name in ``RouterConfig.prefill_policy``):

``round_robin``               instances in turn.
``least_outstanding_tokens``  the instance with the fewest prompt tokens queued or in service
                              (ties: lowest index).
``random``                    uniformly at random from the ``router`` stream.
``shared_queue``              no choice at arrival: every prefill instance pulls from one
                              central queue when it is free.

Decode policy ``least_loaded``: the decode instance with the smallest fraction of KV memory
reserved or asked for (ties: fewest requests in its batch, then lowest index).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

import numpy as np


class _Loaded(Protocol):
    outstanding_tokens: int


class _KVLoaded(Protocol):
    batch_size: int

    def load(self) -> float: ...


class Router:
    """Chooses instances by policy name. Holds no reference to the cluster beyond the lists
    of instances it is given."""

    def __init__(self, prefill_policy: str, decode_policy: str, rng: np.random.Generator) -> None:
        self.prefill_policy = prefill_policy
        self.decode_policy = decode_policy
        self._rng = rng
        self._next = 0

    def pick_prefill(self, instances: Sequence[_Loaded], i: int) -> int:
        """Index of the instance that prefills request ``i``."""
        policy = self.prefill_policy
        n = len(instances)
        if policy == "round_robin":
            k = self._next % n
            self._next += 1
            return k
        if policy == "random":
            return int(self._rng.integers(n))
        if policy == "least_outstanding_tokens":
            best, best_load = 0, instances[0].outstanding_tokens
            for k in range(1, n):
                load = instances[k].outstanding_tokens
                if load < best_load:
                    best, best_load = k, load
            return best
        raise ValueError(f"unknown prefill policy {policy!r}")

    def pick_decode(self, instances: Sequence[_KVLoaded], i: int) -> int:
        """Index of the decode instance for request ``i`` (least KV load)."""
        best, best_key = 0, (instances[0].load(), instances[0].batch_size)
        for k in range(1, len(instances)):
            key = (instances[k].load(), instances[k].batch_size)
            if key < best_key:
                best, best_key = k, key
        return best
