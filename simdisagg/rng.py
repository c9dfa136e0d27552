"""Named, independent random streams from one seed.

Adding a stream never shifts the others, so what-if runs share common random numbers for
arrivals, routing and service noise. The global ``random`` and ``numpy.random`` states are
never touched.
"""

from __future__ import annotations

import zlib

import numpy as np


class Streams:
    """``streams["router"]`` is a numpy Generator derived from (seed, replication, name)."""

    def __init__(self, seed: int, replication: int = 0) -> None:
        self._seed, self._rep = seed, replication
        self._cache: dict[str, np.random.Generator] = {}

    def __getitem__(self, name: str) -> np.random.Generator:
        if name not in self._cache:
            seq = np.random.SeedSequence(self._seed, spawn_key=(self._rep, zlib.crc32(name.encode())))
            self._cache[name] = np.random.default_rng(seq)
        return self._cache[name]
