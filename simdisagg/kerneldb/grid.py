"""Interpolation of measured kernel latencies over a rectilinear grid of shapes.

A kernel table measures latency at the crossings of a few axes (tokens, batch, sequence
length...), each sampled geometrically. :class:`LogGrid` interpolates between them:

* **log-space multilinear**: ``log(latency)`` is interpolated linearly in ``log(axis)`` along
  every axis (bilinear / trilinear on the grid cell that holds the point). A kernel whose time
  grows as a power of a size (``t ~ m``, ``t ~ isl^2``) is then reproduced exactly between two
  measured points, and every measured point is reproduced exactly.
* **monotone between neighbours** (shape-preserving): inside a grid cell the interpolant is a
  weighted mean of the cell's corners, so along any axis it moves monotonically from one
  measured value to the next and never beyond them (no overshoot, unlike a spline). A table
  that is monotone along an axis gives an interpolant monotone along it. Measurements are not
  smoothed: a kernel switch (GEMM tile steps: ``m = 256`` and ``257`` differ by a third) is
  kept, because the engine really pays it.
* **no silent extrapolation**: a point outside the measured range of an axis raises
  :class:`OutsideGridError` naming the axis, the value and the range. Callers that know a safe
  way to go beyond the grid (splitting a GEMM into blocks that lie inside it, scaling attention
  by its FLOPs) do it themselves and say so in their output.

Cells the table leaves empty (kernel tables are often triangular: large batches are measured
only for short sequences) are reported as outside the grid; the caller decides.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Sequence

import numpy as np


class OutsideGridError(ValueError):
    """A lookup fell outside the measured grid (the message names axis, value and range)."""


class LogGrid:
    """Log-space multilinear interpolation of one table (see module docstring).

    ``axes`` are the sorted, positive, distinct values of each axis; ``values`` has one
    dimension per axis, positive where measured and NaN where the table has no point.
    """

    def __init__(
        self,
        names: Sequence[str],
        axes: Sequence[Sequence[float]],
        values: np.ndarray,
        label: str,
    ) -> None:
        if len(names) != len(axes) or np.ndim(values) != len(axes):
            raise ValueError("one name and one axis per dimension of values")
        self.names = tuple(names)
        self.label = label
        self.axes = [np.asarray(a, dtype=np.float64) for a in axes]
        for name, axis in zip(self.names, self.axes, strict=True):
            if axis.size == 0 or (axis <= 0).any() or (np.diff(axis) <= 0).any():
                raise ValueError(f"{label}: axis '{name}' must be positive and strictly increasing")
        grid = np.asarray(values, dtype=np.float64).copy()
        if grid.shape != tuple(a.size for a in self.axes):
            raise ValueError(f"{label}: values shape {grid.shape} does not match the axes")
        if np.any(grid[np.isfinite(grid)] <= 0):
            raise ValueError(f"{label}: latencies must be positive")
        self.measured = np.isfinite(grid)
        self.values = grid
        self._log_axes = [np.log(a) for a in self.axes]
        self._log_values = np.log(grid)

    def range_of(self, name: str) -> tuple[float, float]:
        """Smallest and largest measured value of an axis."""
        axis = self.axes[self.names.index(name)]
        return float(axis[0]), float(axis[-1])

    def inside(self, point: Sequence[float]) -> bool:
        """Whether ``point`` lies in a cell whose corners are all measured."""
        try:
            self(point)
        except OutsideGridError:
            return False
        return True

    def __call__(self, point: Sequence[float]) -> float:
        """Interpolated latency at ``point`` (one value per axis, in the table's units)."""
        lo_idx: list[int] = []
        weights: list[float] = []
        for name, axis, log_axis, x in zip(self.names, self.axes, self._log_axes, point, strict=True):
            x = float(x)
            if not (axis[0] * (1 - 1e-12) <= x <= axis[-1] * (1 + 1e-12)):
                raise OutsideGridError(
                    f"{self.label}: {name}={x:g} is outside the measured range {axis[0]:g}..{axis[-1]:g}"
                )
            if axis.size == 1:
                lo_idx.append(0)
                weights.append(0.0)
                continue
            j = min(max(bisect.bisect_right(axis.tolist(), x) - 1, 0), axis.size - 2)
            span = log_axis[j + 1] - log_axis[j]
            w = (math.log(max(x, axis[0])) - log_axis[j]) / span
            lo_idx.append(j)
            weights.append(min(max(w, 0.0), 1.0))
        total = 0.0
        for corner in range(1 << len(lo_idx)):
            weight = 1.0
            index = []
            for dim, (j, w) in enumerate(zip(lo_idx, weights, strict=True)):
                upper = (corner >> dim) & 1
                if self.axes[dim].size == 1:
                    if upper:
                        weight = 0.0
                        break
                    index.append(0)
                    continue
                weight *= w if upper else 1.0 - w
                index.append(j + upper)
            if weight == 0.0:
                continue
            value = self._log_values[tuple(index)]
            if not math.isfinite(value):
                where = ", ".join(f"{n}={float(p):g}" for n, p in zip(self.names, point, strict=True))
                raise OutsideGridError(f"{self.label}: {where} is in a cell the table did not measure")
            total += weight * value
        return math.exp(total)
