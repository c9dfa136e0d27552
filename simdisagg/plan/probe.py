"""Simulating one candidate at one rate, and the few figures the planner keeps of the run."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

from simdisagg.config import RunConfig, SLOConfig
from simdisagg.hardware import ProfileStore
from simdisagg.trace import Trace

_STORES: dict[str | None, ProfileStore] = {}


def _store_for(profiles_dir: str | None) -> ProfileStore:
    if profiles_dir not in _STORES:
        _STORES[profiles_dir] = ProfileStore(Path(profiles_dir) if profiles_dir else None)
    return _STORES[profiles_dir]


def _nanmean_ms(values: np.ndarray) -> float:
    v = values[~np.isnan(values)]
    return float(v.mean() * 1000.0) if len(v) else math.nan


def _nanpct_ms(values: np.ndarray, q: float) -> float:
    v = values[~np.isnan(values)]
    return float(np.percentile(v, q) * 1000.0) if len(v) else math.nan


def probe_metrics(result: Any, slo: SLOConfig) -> dict[str, float]:
    """The few numbers the planner keeps of one run (same definitions as
    :func:`simdisagg.metrics.summarize`: durations from first arrival to last completion)."""
    from simdisagg.metrics import request_latencies, slo_met
    from simdisagg.sim.recorder import STATUS_COMPLETED, STATUS_REJECTED

    rec = result.recorder
    t = rec.times
    n = max(rec.n, 1)
    done = rec.status == STATUS_COMPLETED
    lat = request_latencies(result)
    arrivals = t["arrival_at"][~np.isnan(t["arrival_at"])]
    start = float(arrivals.min()) if len(arrivals) else 0.0
    end = float(np.nanmax(t["completed_at"])) if done.any() else start
    duration = max(end - start, 1e-12)
    with np.errstate(invalid="ignore"):
        ttft_ok = done & (lat["ttft_s"] <= slo.ttft_s)
        tpot_bad = done & (lat["tpot_s"] > slo.tpot_s)
    out: dict[str, float] = {
        "attainment": float(slo_met(result, slo).sum() / n),
        "ttft_miss": float(1.0 - ttft_ok.sum() / n),
        "tpot_miss": float(tpot_bad.sum() / n),
        "rejected": float((rec.status == STATUS_REJECTED).sum() / n),
        "mean_ttft_ms": _nanmean_ms(lat["ttft_s"]),
        "p90_ttft_ms": _nanpct_ms(lat["ttft_s"], 90),
        "mean_tpot_ms": _nanmean_ms(lat["tpot_s"]),
        "p90_tpot_ms": _nanpct_ms(lat["tpot_s"], 90),
        "request_throughput": float(done.sum() / duration),
        "output_tok_s_per_gpu": float(result.output_tokens[done].sum() / duration / max(result.gpus, 1)),
        "prefill_queue_ms": _nanmean_ms(t["prefill_start_at"] - t["prefill_enqueued_at"]),
        "decode_wait_ms": _nanmean_ms(t["decode_admit_at"] - t["first_token_at"]),
    }
    span = max(rec.end_at, 1e-12)
    for pool in ("prefill", "decode", "aggregated"):
        inst = [x for x in rec.instances if x.pool == pool]
        if inst:
            out[f"{pool}_busy"] = float(np.mean([x.busy_s for x in inst]) / duration)
            cap = sum(x.kv.capacity for x in inst)
            out[f"{pool}_kv_mean"] = float(sum(x.kv.integral for x in inst) / (cap * span)) if cap else math.nan
        else:
            out[f"{pool}_busy"] = math.nan
            out[f"{pool}_kv_mean"] = math.nan
    return out


def passes_target(attainment: float, target: float) -> bool:
    """Whether an SLO attainment meets the target (the one comparison every search uses)."""
    return attainment >= target - 1e-12


def allowed_misses(requests: int, target: float) -> int:
    """The most requests that may miss the SLO while attainment can still meet ``target``."""
    n = max(requests, 1)
    m = min(n, int(n * (1.0 - target)) + 2)
    while m > 0 and not passes_target((n - m) / n, target):
        m -= 1
    return m


def run_probe(
    cfg: RunConfig,
    trace: Trace,
    slo: SLOConfig,
    rate_scale: float,
    store: ProfileStore,
    cost_scale: float = 1.0,
    stop_when_failed: bool = False,
) -> dict[str, float]:
    """Simulate ``cfg`` at one rate scale and keep :func:`probe_metrics` of it.

    ``stop_when_failed`` ends the run as soon as it certainly fails by a clear margin: its
    attainment cannot reach the target less half the allowed miss rate (0.85 for a 0.9
    target; see :func:`simdisagg.sim.engine.simulate`'s ``stop_after_misses``). The pass/fail
    answer is the same as the full run's; the other figures cover only the part simulated,
    and ``stopped_early`` is 1. The margin spares the runs just past the goodput rate, whose
    figures explain the bottleneck and which would only stop near their end anyway."""
    from simdisagg.sim.engine import simulate

    run_cfg = cfg.model_copy(update={"rate_scale": rate_scale, "slo": slo})
    kwargs: dict[str, Any] = {}
    if cost_scale != 1.0:
        kwargs["cost_scale"] = cost_scale
    if stop_when_failed:
        kwargs["stop_after_misses"] = allowed_misses(len(trace), slo.attainment - (1.0 - slo.attainment) / 2.0)
    result = simulate(run_cfg, trace, store=store, **kwargs)
    stopped = "stopped_early_at_s" in result.meta
    return {"rate_scale": rate_scale, **probe_metrics(result, slo), "stopped_early": float(stopped)}
