"""The router: picks the prefill instance of each request and the decode instance after it.

Prefill policies (``RouterConfig.prefill_policy``):

``round_robin``               instances in turn.
``least_outstanding_tokens``  the fewest prompt tokens queued or in service (ties: lowest index).
``random``                    uniformly at random from the ``router`` stream.
``shared_queue``              no choice at arrival: every prefill instance pulls from one
                              central queue when it is free.
``kv_aware``                  minimise ``w * (prompt tokens not cached on k) + tokens queued on k``,
                              where ``w`` is ``kv_overlap_weight``: prefix-overlap credit traded
                              against load, as the KV routers of current serving stacks do.
``session_affinity``          a session's requests go where its first request went (chosen by
                              least outstanding tokens); requests without a session likewise.

Decode policies (``RouterConfig.decode_policy``):

``least_loaded``      the smallest fraction of KV memory reserved or asked for (ties: fewest
                      requests in the batch, then lowest index).
``kv_aware``          minimise ``w * (context tokens not held on k) + KV tokens reserved on k``.
``session_affinity``  a session returns to the decode instance of its previous request.

The instances offered are those that take work now (state ``serving``): a starting, draining
or failed instance is never picked. An instance's ``index`` names it in prefix-cache lookups;
a session whose instance has left the pool is placed again.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from simdisagg.config import RouterConfig
from simdisagg.sim.prefill import PrefixLookup


class Router:
    """Chooses instances by policy name, from the load figures the instances expose."""

    def __init__(self, cfg: RouterConfig, rng: np.random.Generator, session_index: np.ndarray) -> None:
        self.prefill_policy = cfg.prefill_policy
        self.decode_policy = cfg.decode_policy
        self.weight = cfg.kv_overlap_weight
        self._rng = rng
        self._session = session_index
        self._next = 0
        self._prefill_of_session: dict[int, Any] = {}
        self._decode_of_session: dict[int, Any] = {}

    @staticmethod
    def _least_outstanding(instances: Sequence[Any]) -> int:
        best, best_load = 0, instances[0].outstanding_tokens
        for k in range(1, len(instances)):
            load = instances[k].outstanding_tokens
            if load < best_load:
                best, best_load = k, load
        return best

    def pick_prefill(self, instances: Sequence[Any], i: int, prefix: PrefixLookup) -> int:
        """Index of the instance that prefills request ``i``."""
        policy = self.prefill_policy
        n = len(instances)
        if policy == "least_outstanding_tokens":
            return self._least_outstanding(instances)
        if policy == "round_robin":
            k = self._next % n
            self._next += 1
            return k
        if policy == "random":
            return int(self._rng.integers(n))
        if policy == "kv_aware":
            w = self.weight
            best, best_cost = 0, None
            for k in range(n):
                cost = w * -prefix.cached_tokens(instances[k].index, i) + instances[k].outstanding_tokens
                if best_cost is None or cost < best_cost:
                    best, best_cost = k, cost
            return best
        if policy == "session_affinity":
            s = int(self._session[i])
            if s >= 0 and s in self._prefill_of_session:
                k = self._position(instances, self._prefill_of_session[s])
                if k is not None:
                    return k
            k = self._least_outstanding(instances)
            if s >= 0:
                self._prefill_of_session[s] = instances[k]
            return k
        raise ValueError(f"unknown prefill policy {policy!r}")

    def pick_decode(self, instances: Sequence[Any], i: int, held: PrefixLookup) -> int:
        """Index of the decode instance for request ``i``."""
        policy = self.decode_policy
        if policy == "session_affinity":
            s = int(self._session[i])
            if s >= 0 and s in self._decode_of_session:
                k = self._position(instances, self._decode_of_session[s])
                if k is not None:
                    return k
            k = self._least_loaded(instances)
            if s >= 0:
                self._decode_of_session[s] = instances[k]
            return k
        if policy == "kv_aware":
            w = self.weight
            best, best_cost = 0, None
            for k in range(len(instances)):
                cost = w * -held.cached_tokens(instances[k].index, i) + instances[k].reserved_tokens
                if best_cost is None or cost < best_cost:
                    best, best_cost = k, cost
            return best
        return self._least_loaded(instances)

    @staticmethod
    def _position(instances: Sequence[Any], inst: Any) -> int | None:
        """Where ``inst`` is among the instances offered (``None``: it no longer serves)."""
        k = inst.index
        if k < len(instances) and instances[k] is inst:
            return k  # a fixed cluster: position and index agree
        for k, other in enumerate(instances):
            if other is inst:
                return k
        return None

    @staticmethod
    def _least_loaded(instances: Sequence[Any]) -> int:
        best = instances[0]
        best_k, best_load, best_batch = 0, best.load(), best.batch_size
        for k in range(1, len(instances)):
            inst = instances[k]
            load = inst.load()
            if load < best_load or (load == best_load and inst.batch_size < best_batch):
                best_k, best_load, best_batch = k, load, inst.batch_size
        return best_k
