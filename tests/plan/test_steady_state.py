"""Sustainable goodput: a rate passes only at steady state (:mod:`simdisagg.plan.steady_state`).

The queueing checks use an M/D/1 queue: one prefill instance, batching off, a constant 0.1 s
prefill (service rate μ = 10/s), one-token answers (a request completes at the end of its
prefill) and Poisson arrivals at λ = ρμ. Its SLO is loose (an hour's TTFT), so that only the
steady-state test can fail a rate: at ρ = 0.7 the queue is stable; at ρ = 1.1 it grows by
λ − μ = 1 request per second for as long as arrivals last, however short the trace given.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from simdisagg.config import (
    ConstantCost,
    PoolConfig,
    RooflineCost,
    RunConfig,
    SLOConfig,
)
from simdisagg.hardware import ProfileStore
from simdisagg.metrics import pool_utilisation
from simdisagg.plan import (
    Candidate,
    PlanSpec,
    diagnose,
    evaluate_candidate,
    plan,
    run_probe,
)
from simdisagg.plan.spec import SteadyStateSettings
from simdisagg.plan.steady_state import analyse, interval_bin_means, trend
from simdisagg.plan.workload import extend_trace, plan_window, trace_head
from simdisagg.sim.engine import simulate
from simdisagg.trace import Trace, TraceBuilder

STORE = ProfileStore()
SERVICE_S = 0.1
MD1 = RunConfig(
    prefill=PoolConfig(count=1, max_prefill_batch_requests=1, kv_capacity_tokens=10**9),
    decode=PoolConfig(count=1, kv_capacity_tokens=10**9),
    cost=ConstantCost(prefill_s=SERVICE_S),
)
LOOSE = SLOConfig(ttft_s=600.0, tpot_s=1.0, attainment=0.9)  # the largest target accepted
STEADY = SteadyStateSettings()


def poisson_trace(n: int, rate_rps: float, seed: int = 3, output_tokens: int = 1, name: str = "poisson") -> Trace:
    """``n`` Poisson arrivals with 100-token prompts, scaled so that their mean gap is exactly
    ``1 / rate_rps``: tiled end to end (one mean gap between copies) they arrive at exactly
    ``rate_rps``, however few they are."""
    rng = np.random.default_rng(seed)
    gaps = rng.exponential(1.0 / rate_rps, n)
    gaps[1:] *= (n - 1) / rate_rps / gaps[1:].sum()
    builder = TraceBuilder(name)
    for i, t in enumerate(np.cumsum(gaps).tolist()):
        builder.add(line=i + 1, timestamp_s=t, input_tokens=100, output_tokens=output_tokens)
    return builder.build()


def md1_probe(n: int, rho: float) -> dict:
    """A confirming steady-state probe of the M/D/1 queue at load ``rho`` on an ``n``-request trace
    (the trace's own rate, scale 1), sized from a lifetime hint of one service time."""
    trace = poisson_trace(n, rho / SERVICE_S)
    return run_probe(MD1, trace, LOOSE, 1.0, STORE, STEADY, kind="confirm", lifetime_hint_s=SERVICE_S)


# -- the statistics -------------------------------------------------------------------------------
def test_trend_of_a_line_and_of_noise() -> None:
    """The OLS slope of exact points on a line is the line's, with an infinite t statistic;
    on zero-mean noise the t statistic is small; fewer than three points give no trend."""
    x = np.arange(8.0)
    line = trend(x, 2.0 + 0.5 * x)
    assert line.slope == pytest.approx(0.5) and math.isinf(line.t)
    noise = trend(x, np.array([1.0, -1.0, 1.0, -1.0, 1.0, -1.0, 1.0, -1.0]))
    assert abs(noise.t) < 3
    assert trend(x[:2], x[:2]).t == 0.0


def test_interval_bin_means_are_exact_time_averages() -> None:
    """Intervals [0, 2), [1, 3) and [1, ∞) over bins [0, 1), [1, 2), [2, 4): one; three; then
    the second for one of the two seconds and the third for both: (1 + 2) / 2 = 1.5."""
    means = interval_bin_means(np.array([0.0, 1.0, 1.0]), np.array([2.0, 3.0, np.nan]), np.array([0.0, 1.0, 2.0, 4.0]))
    np.testing.assert_allclose(means, [1.0, 3.0, 1.5])


# -- M/D/1: stable passes, overloaded fails ------------------------------------------------------
def test_md1_below_capacity_is_steady() -> None:
    """ρ = 0.7: no growing backlog (completions keep pace with arrivals) and a window long
    against the lifetimes, so the rate passes; a 300-request trace is tiled to reach it."""
    probe = md1_probe(300, 0.7)
    assert probe["passed"], probe["reason"]
    state = probe["steady"]
    assert state["long_enough"] and not state["growing"]
    assert state["completion_ratio"] == pytest.approx(1.0, abs=0.05)
    assert abs(state["growth_rps"]) < STEADY.max_growth * state["arrival_rate_rps"]
    assert probe["window"]["copies"] > 1 and probe["measured_requests"] >= STEADY.min_requests


@pytest.mark.parametrize("n", [20, 200, 3000])
def test_md1_over_capacity_fails_however_short_the_trace(n: int) -> None:
    """ρ = 1.1 (λ = 11/s against μ = 10/s): the rate fails on a growing backlog for a trace of
    20, 200 or 3,000 requests (each extended to the long window), and the diagnosis gives the
    growth rate, close to λ − μ = 1 request per second."""
    probe = md1_probe(n, 1.1)
    assert not probe["passed"]
    assert probe["failed_on"] in ("backlog", "window"), probe["reason"]
    assert probe["steady"]["growth_rps"] == pytest.approx(1.0, rel=0.5)
    if probe["failed_on"] == "backlog":
        assert "backlog grows" in probe["reason"] and "req/s" in probe["reason"]
        assert probe["sustainable_rate_scale"] < 1.0


def test_finite_trace_passes_the_slo_where_the_cluster_cannot_keep_up() -> None:
    """The finite-trace trap: at ρ = 1.1 a 200-request trace replayed once meets the SLO (the
    queue never grows past a few seconds before arrivals stop), yet the rate is not
    sustainable. The goodput search puts the goodput at capacity (ρ ≤ 1, within the backlog
    growth the test lets pass, ``max_growth`` = 2 % of arrivals, and the search tolerance) and
    says why the rate above it failed."""
    trace = poisson_trace(200, 11.0)
    once = simulate(MD1.model_copy(update={"slo": LOOSE}), trace, store=STORE)
    waits = once.recorder.times["completed_at"] - once.recorder.times["arrival_at"]
    assert float(np.max(waits)) < LOOSE.ttft_s  # every request meets the SLO on the finite trace
    cand = Candidate("disaggregated", 1, 1, "h100-sxm", 1, 1, "h100-sxm", 256, "ib-ndr-400")
    base = MD1.model_copy(update={"slo": LOOSE}).model_dump(mode="json")
    res = evaluate_candidate(trace, cand.to_dict(), LOOSE.model_dump(), base,
                             {"start_rate_scale": 1.0, "lifetime_hint_s": SERVICE_S})
    goodput_rho = res["goodput_rate_scale"] * 11.0 * SERVICE_S  # the tiled trace arrives at 11/s x scale
    assert 0.85 < goodput_rho < (1.0 + STEADY.max_growth) * (1.0 + 0.02), goodput_rho
    _, why = diagnose(res, LOOSE)
    assert "req/s" in why and ("backlog grows" in why or "no steady state" in why), why


# -- windows ------------------------------------------------------------------------------------
def test_a_short_trace_is_extended_and_the_plan_says_so() -> None:
    """A 120-request trace is far shorter than the window a steady-state answer needs: the
    plan tiles it (fresh ids, sessions and hashes) to at least the stated minimum of
    requests after the warm-up and says so in its steady-state note."""
    trace = poisson_trace(120, 4.0, output_tokens=40, name="short")
    base = RunConfig(cost=RooflineCost(), slo=SLOConfig(ttft_s=1.0, tpot_s=0.05))
    res = plan(trace, PlanSpec(base=base, gpus=2, max_batch_sizes=(8,)), workers=1)
    best = res.best
    assert best is not None and best["window_copies"] > 1
    assert best["window_requests"] == 120 * best["window_copies"]
    assert best["window_requests"] * (1 - STEADY.warmup_fraction) >= STEADY.min_requests
    assert best["window_s"] >= STEADY.window_lifetimes * best["lifetime_p99_s"]
    assert f"tiled {best['window_copies']}x" in res.steady_note and "fresh request ids" in res.steady_note


def test_extended_trace_is_fresh_traffic_of_the_same_kind() -> None:
    """Copies keep the rate (one mean gap apart), take fresh ids, sessions and prefix hashes
    (no copy hits another's cache), keep their waits within the copy; a head is a prefix."""
    builder = TraceBuilder("sessions", hash_block_tokens=32)
    builder.add(line=1, timestamp_s=0.0, input_tokens=64, output_tokens=4, request_id="a", session_id="s",
                hash_ids=[1, 2])
    builder.add(line=2, timestamp_s=1.0, input_tokens=96, output_tokens=4, request_id="b", session_id="s",
                hash_ids=[1, 2, 3], wait_for=["a"], tool_wait_s=0.5)
    builder.add(line=3, timestamp_s=2.0, input_tokens=32, output_tokens=4, request_id="c", hash_ids=[7])
    trace = builder.build()
    ext = extend_trace(trace, 3)
    assert len(ext) == 9 and len(set(ext.request_ids)) == 9
    assert ext.request_ids[:3] == ["a", "b", "c"] and ext.request_ids[3] == "a~1"
    # Open-loop arrivals (a, c) 0, 2 | 4, 6 | 8, 10: the copy period is their span (2 s) plus
    # their mean gap (2 s); b waits for a.
    np.testing.assert_allclose(ext.timestamp_s[[0, 2, 3, 5, 6, 8]], [0, 2, 4, 6, 8, 10])
    assert ext.session_index.tolist() == [0, 0, -1, 1, 1, -1, 2, 2, -1]
    assert [ext.waits_of(i).tolist() for i in (1, 4, 7)] == [[0], [3], [6]]
    hashes = [set(ext.hashes_of(i).tolist()) for i in range(9)]
    assert not (hashes[0] | hashes[1] | hashes[2]) & (hashes[3] | hashes[4] | hashes[5])
    assert [len(h) for h in hashes] == [2, 3, 1] * 3
    head = trace_head(ext, 4)
    assert head.request_ids == ext.request_ids[:4] and head.waits_of(1).tolist() == [0]


def test_window_sizing() -> None:
    """The whole trace when it is long enough; its first requests for a screening run; copies
    otherwise; never more than the cap (and then it says so)."""
    trace = poisson_trace(1000, 10.0)  # about 100 s
    assert plan_window(trace, 1.0, 50.0, 300, cut=False, max_requests=10**6).copies == 1
    head = plan_window(trace, 1.0, 50.0, 300, cut=True, max_requests=10**6)
    assert head.copies == 1 and 450 < head.head < 550 and head.window_s >= 50.0
    tiled = plan_window(trace, 1.0, 500.0, 300, cut=True, max_requests=10**6)
    assert tiled.copies == 6 and tiled.window_s >= 500.0  # five copies fall short by the last gap
    capped = plan_window(trace, 1.0, 500.0, 300, cut=True, max_requests=3000)
    assert capped.capped and capped.requests == 3000


def test_utilisation_over_the_measurement_window() -> None:
    """A run asked for a measurement window records the pool counters at its first arrival at
    or after the warm-up and at its last arrival; the utilisation between them leaves the
    drain after the last arrival out: the M/D/1 server at ρ = 0.7 is busy about 70 % of it."""
    trace = poisson_trace(3000, 7.0)
    result = simulate(MD1, trace, store=STORE, measure_from_at=60.0)
    assert len(result.recorder.snapshots) == 2
    (t0, _), (t1, _) = result.recorder.snapshots
    assert t0 >= 60.0 and t1 == pytest.approx(float(result.recorder.times["arrival_at"].max()))
    window = pool_utilisation(result, (0, 1))
    assert window["prefill_busy_fraction"] == pytest.approx(0.7, abs=0.05)
    assert window["prefill_batch_occupancy"] == pytest.approx(window["prefill_busy_fraction"] * 100 / 8192)


def test_analyse_reports_where_the_backlog_grows() -> None:
    """An overloaded decode pool (one instance, two batch slots, long answers) grows its queue
    of requests waiting for a decode slot: that stage leads the growth the analysis reports."""
    trace = poisson_trace(600, 4.0, output_tokens=200)
    cfg = RunConfig(prefill=PoolConfig(count=1), decode=PoolConfig(count=1, max_batch_size=2),
                    cost=ConstantCost(prefill_s=0.01, decode_step_s=0.01))
    result = simulate(cfg, trace, store=STORE)
    state = analyse(result, STEADY, window_lifetimes=1.0, min_requests=10)
    assert state.growing
    stages = state.stage_growth_rps
    assert max(stages, key=lambda k: stages[k]) == "decode_slot_wait"
    assert "waiting for a decode slot" in state.growth_text()
