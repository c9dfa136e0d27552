"""The Pareto frontier of (per-user speed, throughput per GPU) points."""

from __future__ import annotations

import math

import numpy as np


def pareto_frontier(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Indices of the points no other point beats in both ``x`` and ``y`` (larger is better),
    sorted by ``x``."""
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    ok = np.flatnonzero(np.isfinite(x) & np.isfinite(y))
    order = ok[np.lexsort((-y[ok], -x[ok]))]  # x descending, then y descending
    keep = []
    best_y = -math.inf
    for i in order.tolist():
        if y[i] > best_y:
            keep.append(i)
            best_y = y[i]
    return np.array(sorted(keep, key=lambda i: x[i]), dtype=np.int64)
