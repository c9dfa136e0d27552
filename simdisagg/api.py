"""The package's one-call entry points, shared by the CLI and notebooks.

:func:`run_and_summarize` simulates a config on a trace and, unless asked not to, the other
serving mode beside it. Before anything is simulated, :func:`plan_runs` checks both clusters
(profiles, TP degrees, KV memory) and says how the baseline differs from the main run when it
cannot use the same GPUs, or why there is no baseline at all; the verdict line repeats it, so
a comparison is never called "same GPUs" when it is not.
"""

from __future__ import annotations

import math
import platform
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from simdisagg.config import RunConfig
from simdisagg.errors import ConfigError
from simdisagg.hardware import ProfileStore
from simdisagg.importers import load_trace
from simdisagg.metrics import summarize
from simdisagg.sim.engine import check_cluster, simulate
from simdisagg.sim.recorder import RunResult
from simdisagg.trace import Trace

#: Called as ``progress(column, now_s, finished, total)`` while a run simulates.
Progress = Callable[[str, float, int, int], None]


@dataclass(slots=True)
class RunSummary:
    """One simulated configuration: its config, raw result and summary."""

    column: str
    cfg: RunConfig
    result: RunResult
    summary: dict[str, Any]
    trace_label: str
    notes: list[str] = field(default_factory=list)
    #: How this run's hardware differs from the run it is compared with (empty: the same GPUs).
    caveats: list[str] = field(default_factory=list)
    #: Seconds the simulation took (kept out of ``summary``, which must not change between runs).
    wall_s: float = math.nan

    def frame(self) -> Any:
        """Per-request table (pandas)."""
        from simdisagg.output import requests_frame

        return requests_frame(self.result, self.cfg.slo)

    def timeseries(self) -> Any:
        """Per-window time series (pandas; see :mod:`simdisagg.sim.timeseries`)."""
        from simdisagg.sim.timeseries import timeseries_frame

        return timeseries_frame(self.result)

    def config_record(self) -> dict[str, Any]:
        """The resolved config plus the versions and inputs that produced the results."""
        return {
            "config": self.cfg.model_dump(mode="json"),
            "trace": self.trace_label,
            "cost_model": self.result.cost_label,
            "versions": versions(),
        }

    def verdict_against(self, other: RunSummary) -> str:
        """A one-line comparison of this run with another; says so when the GPUs differ."""
        a, b = self.summary, other.summary
        ga, gb = a["request_goodput"], b["request_goodput"]
        att_a, att_b = a["slo_attainment"], b["slo_attainment"]
        caveats = self.caveats + [c for c in other.caveats if c not in self.caveats]
        lead = "Same GPUs, same trace" if not caveats else f"Same trace, NOT the same GPUs ({'; '.join(caveats)})"
        if abs(att_a - att_b) < 0.005 and abs(ga - gb) <= 0.01 * max(ga, gb, 1e-9):
            return (
                f"{lead}: {self.column} and {other.column} meet the SLO equally "
                f"({att_a:.1%}); compare the latency rows."
            )
        win, lose = (self, other) if (att_a, ga) > (att_b, gb) else (other, self)
        return (
            f"{lead}: {win.column} meets the SLO for {win.summary['slo_attainment']:.1%} of "
            f"requests vs {lose.summary['slo_attainment']:.1%} for {lose.column} "
            f"(goodput {win.summary['request_goodput']:.2f} vs {lose.summary['request_goodput']:.2f} req/s)."
        )


def versions() -> dict[str, str]:
    """Versions of simdisagg, Python and the libraries that shape its results."""
    import numpy as np
    import simpy

    from simdisagg._version import __version__

    return {
        "simdisagg": __version__,
        "python": platform.python_version(),
        "simpy": simpy.__version__,
        "numpy": np.__version__,
    }


def column_name(cfg: RunConfig) -> str:
    """A short label of a configuration, e.g. ``disagg 2P(tp1)+2D(tp1)`` or ``aggregated 4x tp1``."""
    if cfg.mode == "aggregated":
        pool = cfg.aggregated_pool()
        chunk = ", chunked" if cfg.aggregated.chunked_prefill else ""
        return f"aggregated {pool.count}x tp{pool.tp}{chunk}"
    return f"disagg {cfg.prefill.count}P(tp{cfg.prefill.tp})+{cfg.decode.count}D(tp{cfg.decode.tp})"


def _gpus(cfg: RunConfig) -> tuple[int, list[str]]:
    """GPU count and the GPU types a config runs on."""
    if cfg.mode == "aggregated":
        pool = cfg.aggregated_pool()
        return pool.gpus, [pool.gpu]
    return cfg.total_gpus, list(dict.fromkeys([cfg.prefill.gpu, cfg.decode.gpu]))


def _caveats(main: RunConfig, other: RunConfig) -> list[str]:
    """How ``other`` runs on different hardware from ``main`` (empty when the same GPUs)."""
    out = []
    (n_main, types_main), (n_other, types_other) = _gpus(main), _gpus(other)
    agg = main if main.mode == "aggregated" else other
    disagg_gpus = agg.prefill.gpus + agg.decode.gpus
    if n_main != n_other:
        tp = agg.aggregated_pool().tp
        out.append(
            f"{column_name(agg)} uses {agg.aggregated_pool().gpus} of the {disagg_gpus} GPUs: "
            f"TP {tp} does not divide {disagg_gpus}"
        )
    if types_main != types_other:
        out.append(
            f"{column_name(main)} runs on {'+'.join(types_main)}, {column_name(other)} on {'+'.join(types_other)}"
        )
    return out


@dataclass(slots=True)
class RunPlan:
    """The configs a run will simulate, checked, with what the output must say about them."""

    configs: list[RunConfig]
    cost_labels: list[dict[str, str]]
    caveats: list[str] = field(default_factory=list)
    #: Why there is no baseline column, when there is none although one was asked for.
    no_baseline: str | None = None


def other_mode(cfg: RunConfig) -> RunConfig:
    """The baseline of ``cfg``: the other serving mode on the same GPUs."""
    return cfg.as_aggregated() if cfg.mode == "disaggregated" else cfg.model_copy(update={"mode": "disaggregated"})


def plan_runs(cfg: RunConfig, store: ProfileStore, *, compare: bool = True) -> RunPlan:
    """Check ``cfg`` (and, with ``compare``, its baseline) before any simulation.

    The main config must be runnable (else :class:`ConfigError`). A baseline that cannot run
    is left out with the reason in :attr:`RunPlan.no_baseline`; one that runs on other GPUs
    (a TP that does not divide the GPU count, other GPU types) carries :attr:`RunPlan.caveats`."""
    labels = [check_cluster(cfg, store)]
    plan = RunPlan([cfg], labels)
    if not compare:
        return plan
    other = other_mode(cfg)
    mode = other.mode
    try:
        other = RunConfig.model_validate(other.model_dump())
        labels.append(check_cluster(other, store))
    except ValidationError as exc:
        plan.no_baseline = f"no {mode} baseline: {exc.errors()[0]['msg'].removeprefix('Value error, ')}"
        return plan
    except ConfigError as exc:
        plan.no_baseline = f"no {mode} baseline: {exc}"
        return plan
    plan.configs.append(other)
    plan.caveats = _caveats(cfg, other)
    return plan


#: Pools whose keys every summary carries, and the per-pool keys (``None`` where a pool is absent).
_POOLS = ("prefill", "decode", "aggregated")
_POOL_KEYS = (
    "busy_fraction", "batch_occupancy", "kv_occupancy", "saturated_fraction", "kv_mean_fraction", "kv_peak_fraction",
    "kv_final_blocks",
)
_CACHES = ("prefill", "aggregated", "decode_retained")


def mode_independent(summary: dict[str, Any]) -> dict[str, Any]:
    """The summary with the same keys, in the same order, whatever the serving mode.

    Pool and prefix-cache keys of every pool appear in both modes (``None`` where this mode
    has no such pool), the link keys too, all after the mode-free keys and in a fixed order;
    ``prompt_prefix_hit_fraction`` is the token hit fraction of the cache in front of the
    prompts (the prefill pool's, or the aggregated pool's)."""
    cache_suffixes: list[str] = []
    for cache in _CACHES:
        for key in summary:
            rest = key.removeprefix(f"{cache}_")
            if rest != key and (rest.startswith("prefix_") or rest == "prefill_tokens_saved"):
                if rest not in cache_suffixes:
                    cache_suffixes.append(rest)
    pool_keys = [f"{pool}_{key}" for pool in _POOLS for key in _POOL_KEYS]
    cache_keys = [f"{cache}_{rest}" for cache in _CACHES for rest in sorted(cache_suffixes)]
    tail = pool_keys + ["link_busy_fraction", "kv_bytes_sent"] + cache_keys
    out = {k: v for k, v in summary.items() if k not in tail and k != "wall_s"}
    for key in tail:
        out[key] = summary.get(key)
    cache = "aggregated" if summary.get("mode") == "aggregated" else "prefill"
    out["prompt_prefix_hit_fraction"] = summary.get(f"{cache}_prefix_token_hit_fraction")
    return out


def run_config(
    trace: Trace, cfg: RunConfig, store: ProfileStore, label: str, progress: Progress | None = None
) -> RunSummary:
    """Simulate one config and summarise it."""
    column = column_name(cfg)
    hook = None if progress is None else (lambda now, done, total: progress(column, now, done, total))
    result = simulate(cfg, trace, store=store, progress=hook)
    summary = mode_independent(summarize(result, cfg.slo))
    notes: list[str] = []
    if "roofline" in summary["cost_model"]:
        notes.append(
            f"{column}: no measured profile for this GPU, model, TP, precision "
            f"({cfg.precision.weights}/{cfg.precision.kv_cache}) and framework ({cfg.framework}); step times come "
            "from the roofline model with assumed efficiencies (see `simdisagg calibrate import`)."
        )
    if summary["rejected"]:
        reasons = sorted(set(result.recorder.reject_reason.values()))[:3]
        notes.append(f"{column}: {summary['rejected']} requests rejected, e.g. {'; '.join(reasons)}")
    return RunSummary(column, cfg, result, summary, label, notes, wall_s=result.wall_s)


def run_and_summarize(
    trace_path: Path | str | Trace,
    cfg: RunConfig,
    *,
    compare: bool = True,
    profiles_dir: Path | None = None,
    progress: Progress | None = None,
) -> list[RunSummary]:
    """Run ``cfg`` on a trace and, with ``compare``, the other mode on the same GPUs.

    Both clusters are checked before anything is simulated (:func:`plan_runs`). When the
    baseline cannot run, the first summary's notes say why; when it runs on other GPUs, both
    summaries' caveats say how, and so does the verdict."""
    store = ProfileStore(profiles_dir)
    plan = plan_runs(cfg, store, compare=compare)
    trace = trace_path if isinstance(trace_path, Trace) else load_trace(trace_path)
    label = trace.source if isinstance(trace_path, Trace) else str(trace_path)
    return run_planned(trace, plan, store, label, progress)


def run_planned(
    trace: Trace, plan: RunPlan, store: ProfileStore, label: str, progress: Progress | None = None
) -> list[RunSummary]:
    """Simulate the configs of a checked :class:`RunPlan`, with its caveats and notes."""
    runs = [run_config(trace, c, store, label, progress) for c in plan.configs]
    for r in runs:
        r.caveats = list(plan.caveats)
    if plan.no_baseline:
        runs[0].notes.append(plan.no_baseline)
    return runs
