"""Simulating one candidate at one rate until the answer is a steady-state one, and the few
figures the planner keeps of the run.

A *probe* asks: does this cluster sustain this rate scale within the SLO? It replays a window
of the trace (:func:`~simdisagg.plan.workload.plan_window`) sized from the run itself: long
enough against the requests' p99 end-to-end latency, which the first run measures (from a
hint until then). A window found too short is extended and run again, up to
``max_extensions`` times. The answer passes when, over the requests measured after the
warm-up, the SLO attainment meets the target (over the whole window and over its last
quarter, where a backlog that grows shows first) *and* the run is at steady state
(:func:`~simdisagg.plan.steady_state.analyse`). A *screening* probe uses a short window, a
*confirming* one the long window (the whole trace, or more).
"""

from __future__ import annotations

import math
from collections.abc import MutableMapping
from pathlib import Path
from typing import Any, Literal

import numpy as np

from simdisagg.config import RunConfig, SLOConfig
from simdisagg.hardware import ProfileStore
from simdisagg.plan.spec import SteadyStateSettings
from simdisagg.plan.steady_state import analyse, measured_from_at
from simdisagg.plan.workload import RunWindow, plan_window, window_trace
from simdisagg.trace import Trace

WindowKind = Literal["screen", "confirm"]
#: The last share of the measurement window whose requests must meet the SLO target too.
TAIL_SHARE = 0.25
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


def probe_metrics(result: Any, slo: SLOConfig, measure_from_at: float = -math.inf) -> dict[str, float]:
    """The figures the planner keeps of one run, over the requests that arrived at or after
    ``measure_from_at`` (the end of the warm-up; a request that never arrived, in a run
    stopped early, counts as measured and missing). Latencies as in
    :func:`simdisagg.metrics.summarize`; throughput from the completions between the end of
    the warm-up and the last arrival; pool utilisation over the same window when the run
    recorded it (``recorder.snapshots``), else over the whole run."""
    from simdisagg.metrics import pool_utilisation, request_latencies, slo_met
    from simdisagg.sim.recorder import STATUS_COMPLETED, STATUS_REJECTED

    rec = result.recorder
    t = rec.times
    arrival = t["arrival_at"]
    with np.errstate(invalid="ignore"):
        measured = ~(arrival < measure_from_at)
    n = max(int(measured.sum()), 1)
    done = (rec.status == STATUS_COMPLETED) & measured
    lat = request_latencies(result)
    ttft, tpot = np.where(measured, lat["ttft_s"], np.nan), np.where(measured, lat["tpot_s"], np.nan)
    arrived = arrival[~np.isnan(arrival)]
    start = max(float(arrived.min()), measure_from_at) if len(arrived) else 0.0
    end = float(arrived.max()) if len(arrived) else start
    completed_at = t["completed_at"]
    with np.errstate(invalid="ignore"):
        in_window = (completed_at >= start) & (completed_at <= end)
    window_s = end - start
    if window_s <= 0 or not in_window.any():  # a single arrival, or a window with no completion
        in_window = rec.status == STATUS_COMPLETED
        window_s = max(float(np.nanmax(completed_at)) - start, 1e-12) if in_window.any() else 1e-12
    out_tok_s = float(result.output_tokens[in_window].sum() / window_s)
    with np.errstate(invalid="ignore"):
        ttft_ok = done & (ttft <= slo.ttft_s)
        tpot_bad = done & (tpot > slo.tpot_s)
    mean_tpot_ms = _nanmean_ms(tpot)
    met = slo_met(result, slo)
    with np.errstate(invalid="ignore"):
        tail = measured & ~(arrival < start + (1.0 - TAIL_SHARE) * (end - start))
    out: dict[str, float] = {
        "attainment": float((met & measured).sum() / n),
        "tail_attainment": float((met & tail).sum() / max(int(tail.sum()), 1)),
        "measured_requests": float(n),
        "ttft_miss": float(1.0 - ttft_ok.sum() / n),
        "tpot_miss": float(tpot_bad.sum() / n),
        "rejected": float(((rec.status == STATUS_REJECTED) & measured).sum() / n),
        "mean_ttft_ms": _nanmean_ms(ttft),
        "p90_ttft_ms": _nanpct_ms(ttft, 90),
        "mean_tpot_ms": mean_tpot_ms,
        "p90_tpot_ms": _nanpct_ms(tpot, 90),
        "request_throughput": float(in_window.sum() / window_s),
        "output_tok_s": out_tok_s,
        "output_tok_s_per_gpu": out_tok_s / max(result.gpus, 1),
        "tokens_per_s_per_user": 1000.0 / mean_tpot_ms if mean_tpot_ms > 0 else math.nan,
        "prefill_queue_ms": _nanmean_ms(np.where(measured, t["prefill_start_at"] - t["prefill_enqueued_at"], np.nan)),
        "decode_wait_ms": _nanmean_ms(np.where(measured, t["decode_admit_at"] - t["first_token_at"], np.nan)),
        "link_queue_ms": _nanmean_ms(np.where(measured, t["kv_send_start_at"] - t["decode_admit_at"], np.nan)),
    }
    window = (0, len(rec.snapshots) - 1) if len(rec.snapshots) >= 2 else None
    util = pool_utilisation(result, window)
    for pool in ("prefill", "decode", "aggregated"):
        for key in ("batch_occupancy", "kv_occupancy", "saturated_fraction", "busy_fraction"):
            out[f"{pool}_{key}"] = util.get(f"{pool}_{key}", math.nan)
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


def kv_capacity_tokens(result: Any, cfg: RunConfig) -> float:
    """KV tokens the decode (or aggregated) pool holds for requests in flight."""
    pool = "aggregated" if cfg.mode == "aggregated" else "decode"
    blocks = sum(x.kv.capacity for x in result.recorder.instances if x.pool == pool)
    return float(blocks * cfg.decode.kv_block_tokens)


def run_window(
    cfg: RunConfig,
    trace: Trace,
    slo: SLOConfig,
    rate_scale: float,
    store: ProfileStore,
    steady: SteadyStateSettings,
    cost_scale: float = 1.0,
    stop_when_failed: bool = False,
) -> tuple[Any, float]:
    """Simulate ``trace`` (a run window) at ``rate_scale``; return the result and the end of
    its warm-up (simulated seconds). The run records pool counters over the measurement window.

    ``stop_when_failed`` ends the run as soon as it certainly fails by a clear margin: more
    measured requests (those arriving after the warm-up) have missed the SLO than may while
    their attainment still reaches the target less half the allowed miss rate (0.85 for a 0.9
    target). The pass/fail answer is the same as the full run's;
    ``result.meta["stopped_early_at_s"]`` says it stopped. Not for closed-loop traces, whose
    measured requests are not known before the run."""
    from simdisagg.sim.engine import simulate

    run_cfg = cfg.model_copy(update={"rate_scale": rate_scale, "slo": slo})
    open_ts = trace.timestamp_s[~trace.closed_loop] / rate_scale
    warm_end = measured_from_at(float(open_ts.min()), float(open_ts.max()), steady)
    kwargs: dict[str, Any] = {"measure_from_at": warm_end}
    if cost_scale != 1.0:
        kwargs["cost_scale"] = cost_scale
    if stop_when_failed and not trace.closed_loop.any():
        margin_target = slo.attainment - (1.0 - slo.attainment) / 2.0
        kwargs["stop_after_misses"] = allowed_misses(int((open_ts >= warm_end).sum()), margin_target)
    return simulate(run_cfg, trace, store=store, **kwargs), warm_end


def run_probe(
    cfg: RunConfig,
    trace: Trace,
    slo: SLOConfig,
    rate_scale: float,
    store: ProfileStore,
    steady: SteadyStateSettings,
    *,
    kind: WindowKind = "confirm",
    lifetime_hint_s: float,
    cost_scale: float = 1.0,
    stop_when_failed: bool = False,
    windows: MutableMapping[tuple[int, int], Trace] | None = None,
) -> dict[str, Any]:
    """Whether ``cfg`` sustains ``rate_scale`` of ``trace`` within ``slo``, at steady state.

    Sizes the run window from ``lifetime_hint_s`` (a p99 end-to-end latency), runs it, and
    extends it while the run shows it too short (see the module docstring). ``windows``
    caches the traces of the windows built so far. Returns plain data: ``passed``, the
    :func:`probe_metrics`, the window (``copies`` of the trace or its first ``head``
    requests), the steady-state figures, ``failed_on`` (``slo``, ``backlog`` or ``window``)
    and ``reason``, and ``runs`` (simulations, extensions included)."""
    lifetimes = steady.window_lifetimes if kind == "confirm" else steady.screen_window_lifetimes
    min_measured = steady.min_requests if kind == "confirm" else steady.screen_min_requests
    need_requests = math.ceil(min_measured / (1.0 - steady.warmup_fraction))
    lifetime = max(lifetime_hint_s, 1e-6)
    cache = windows if windows is not None else {}
    runs = 0
    extensions = 0
    while True:
        window = plan_window(
            trace, rate_scale, lifetimes * lifetime, need_requests, kind == "screen", steady.max_requests
        )
        key = (window.copies, window.head)
        if key not in cache:
            cache[key] = window_trace(trace, window)
        result, warm_end = run_window(
            cfg, cache[key], slo, rate_scale, store, steady, cost_scale, stop_when_failed
        )
        runs += 1
        metrics = probe_metrics(result, slo, warm_end)
        stopped = "stopped_early_at_s" in result.meta
        base = {"rate_scale": rate_scale, "kind": kind, **metrics, "stopped_early": float(stopped),
                "window": _window_record(window, extensions), "runs": runs}
        reason = f"SLO attainment {metrics['attainment']:.1%} below the {slo.attainment:.0%} target"
        if stopped:
            return {**base, "passed": False, "failed_on": "slo", "steady": None, "reason": reason}
        state = analyse(result, steady, window_lifetimes=lifetimes, min_requests=min_measured,
                        kv_capacity_tokens=kv_capacity_tokens(result, cfg))
        if not passes_target(metrics["attainment"], slo.attainment):
            # A run to its end also says whether a backlog grew, and how fast.
            if state.growing:
                reason += "; " + state.growth_text()
            return {**base, "passed": False, "failed_on": "slo", "steady": state.to_dict(), "reason": reason}
        if state.long_enough or window.capped or extensions >= steady.max_extensions:
            break
        # Too short against the lifetimes this run measured, or too few requests measured
        # after the warm-up (a time share of a bursty window): run again on a longer window.
        lifetime = max(lifetime, state.lifetime_p99_s * 1.25)
        if state.measured < min_measured:
            need_requests = math.ceil(need_requests * 1.1 * min_measured / max(state.measured, 1))
        extensions += 1
    record = {**base, "steady": state.to_dict(), "lifetime_p99_s": state.lifetime_p99_s}
    if not passes_target(metrics["tail_attainment"], slo.attainment):
        # Met over the window, not at its end: the waits are still rising (a backlog too slow
        # to show in the trend yet), and a longer run would miss the SLO.
        reason = (f"SLO attainment {metrics['tail_attainment']:.1%} over the last {TAIL_SHARE:.0%} of the window "
                  f"({metrics['attainment']:.1%} over all of it), below the {slo.attainment:.0%} target")
        if state.growing:
            reason += "; " + state.growth_text()
        return {**record, "passed": False, "failed_on": "slo", "reason": reason}
    if state.growing:
        # The completion rate over the second half bounds what the cluster sustains.
        sustainable = rate_scale * max(1.0 - state.growth_rps / max(state.arrival_rate_rps, 1e-12), 0.0)
        return {**record, "passed": False, "failed_on": "backlog", "sustainable_rate_scale": sustainable,
                "reason": state.growth_text()}
    if not state.long_enough and not window.capped:
        if state.window_s < lifetimes * state.lifetime_p99_s:
            reason = (f"no steady state: through {extensions} extension(s) the window ({state.window_s:.3g} s, "
                      f"{window.requests} requests) stayed shorter than {lifetimes:g}x the p99 end-to-end latency "
                      f"({state.lifetime_p99_s:.3g} s), which grew with it: a backlog that outlasts any finite trace")
        else:
            reason = (f"too few requests measured after the warm-up ({state.measured} of {min_measured}) "
                      f"through {extensions} extension(s)")
        return {**record, "passed": False, "failed_on": "window", "reason": reason}
    return {**record, "passed": True, "failed_on": None, "reason": None}


def _window_record(window: RunWindow, extensions: int) -> dict[str, Any]:
    return {"copies": window.copies, "head": window.head, "requests": window.requests,
            "window_s": window.window_s, "capped": window.capped, "extensions": extensions}
