"""GPU calibration jobs: time the real kernels of a model shard and write measured profiles.

``simdisagg calibrate`` runs :func:`calibrate.harness.run_calibration`, which builds one
tensor-parallel shard of a model with random bf16 weights (:mod:`calibrate.kernels`), times
prefill batches, decode steps and copies over a grid (``calibrate/grids/*.yaml``), samples GPU
power through NVML (:mod:`calibrate.power`) and writes ``raw.csv`` and ``meta.yaml``.
``simdisagg fit`` (:mod:`simdisagg.fit`) turns those into ``fit.json``.

This package imports simdisagg; simdisagg never imports it at module level. torch is
imported only when a run starts, so grids load and estimate without it. See README.md.
"""

from calibrate.harness import (
    Grid,
    Point,
    enumerate_points,
    estimate_seconds,
    load_grid,
    run_calibration,
)

__all__ = ["Grid", "Point", "enumerate_points", "estimate_seconds", "load_grid", "run_calibration"]
