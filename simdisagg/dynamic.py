"""Autoscaled against fixed: the same trace on a cluster that scales and on a fixed one that
costs the same GPU-hours.

:func:`fixed_equivalent` sizes the fixed cluster from the autoscaled run: each pool gets its
time-mean count of instances over the run, rounded to the nearest whole instance (at least
one), so the two runs hold about the same GPU-hours. Whole instances rarely match the
autoscaled GPU-hours exactly, so :func:`compare_fixed` also runs the fixed cluster one
instance away on the other side of them: the two fixed runs bracket the autoscaled GPU-hours,
and every run's GPU-hours are reported beside its P95 TTFT and ITL
(``simdisagg run --compare-fixed``).
"""

from __future__ import annotations

from typing import Any

from simdisagg.api import Progress, RunSummary, column_name, run_config
from simdisagg.config import RunConfig
from simdisagg.errors import ConfigError
from simdisagg.hardware import ProfileStore
from simdisagg.trace import Trace

#: Summary keys the side-by-side verdict quotes.
COMPARED = ("gpu_hours", "p95_ttft_ms", "p95_itl_ms", "slo_attainment")


def fixed_equivalent(cfg: RunConfig, mean_instances: dict[str, float]) -> RunConfig:
    """``cfg`` without autoscaling, each pool at its time-mean count of instances (rounded,
    at least one) from an autoscaled run of it."""
    if cfg.autoscale is None:
        raise ConfigError("--compare-fixed: the config has no autoscale settings, so there is nothing to compare")
    update: dict[str, Any] = {"autoscale": None}
    if cfg.mode == "aggregated":
        pool = cfg.aggregated_pool()
        count = max(1, round(mean_instances["aggregated"]))
        # The aggregated pool is sized from the GPUs of the two disaggregated pools.
        update["prefill"] = cfg.prefill.model_copy(update={"count": 0})
        update["decode"] = cfg.decode.model_copy(update={"count": count * pool.gpus_per_instance // cfg.decode.tp})
        data = cfg.model_copy(update=update).model_dump()
        data["aggregated"]["tp"] = pool.tp
        return RunConfig.model_validate(data)
    for name in ("prefill", "decode"):
        update[name] = getattr(cfg, name).model_copy(update={"count": max(1, round(mean_instances[name]))})
    return RunConfig.model_validate(cfg.model_copy(update=update).model_dump())


def bracketing_fixed(cfg: RunConfig, fixed: RunConfig, mean_instances: dict[str, float], below: bool) -> RunConfig:
    """The fixed cluster one instance from ``fixed`` on the other side of the autoscaled
    run's GPU-hours: one more instance (``below``: ``fixed`` holds fewer GPU-hours) in the
    pool rounded down the most, or one fewer in the pool rounded up the most."""
    pools = ("aggregated",) if cfg.mode == "aggregated" else ("prefill", "decode")
    counts = {name: max(1, round(mean_instances[name])) for name in pools}
    if below:
        name = max(pools, key=lambda k: mean_instances[k] - counts[k])
        counts[name] += 1
    else:
        candidates = [k for k in pools if counts[k] > 1] or list(pools)
        name = max(candidates, key=lambda k: counts[k] - mean_instances[k])
        counts[name] = max(1, counts[name] - 1)
    return fixed_equivalent(cfg, {k: float(v) for k, v in counts.items()})


def compare_fixed(
    trace: Trace, cfg: RunConfig, store: ProfileStore, label: str, progress: Progress | None = None
) -> list[RunSummary]:
    """Run the autoscaled ``cfg`` on ``trace``, then the fixed cluster of the nearest
    GPU-hours and its neighbour on the other side of the autoscaled GPU-hours (so the two
    fixed runs bracket them), unless the first matches them within 1 %."""
    if cfg.autoscale is None:
        raise ConfigError("--compare-fixed: the config has no autoscale settings, so there is nothing to compare")
    scaled = run_config(trace, cfg, store, label, progress)
    scaled.column = f"autoscaled (from {column_name(cfg).split(' ', 1)[1]})"
    means: dict[str, float] = scaled.result.meta["mean_instances"]  # type: ignore[assignment]
    runs = [scaled]
    fixed_cfg = fixed_equivalent(cfg, means)
    fixed = run_config(trace, fixed_cfg, store, label, progress)
    runs.append(fixed)
    target, got = scaled.summary["gpu_hours"], fixed.summary["gpu_hours"]
    if abs(got - target) > 0.01 * target:
        other_cfg = bracketing_fixed(cfg, fixed_cfg, means, below=got < target)
        if other_cfg != fixed_cfg:
            runs.append(run_config(trace, other_cfg, store, label, progress))
    for r in runs[1:]:
        r.column = f"fixed {column_name(r.cfg).split(' ', 1)[1]}"
    runs[1:] = sorted(runs[1:], key=lambda r: r.summary["gpu_hours"])
    return runs


def verdict(runs: list[RunSummary]) -> str:
    """GPU-hours, P95 TTFT and ITL and SLO attainment of each run, one line each."""
    lines = []
    for r in runs:
        s = r.summary
        lines.append(
            f"{r.column}: {s['gpu_hours']:.2f} GPU-h, P95 TTFT {s['p95_ttft_ms']:.0f} ms, "
            f"P95 ITL {s['p95_itl_ms']:.1f} ms, SLO attainment {s['slo_attainment']:.1%}"
        )
    return "\n".join(lines)
