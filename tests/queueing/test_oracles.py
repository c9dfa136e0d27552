"""Exact sample-path oracles: deterministic recursions and hand-derived timestamps.

These tests replay a trace through the simulator and recompute, by an independent textbook
recursion, what every request's timestamps must be; agreement is to ~1e-9 s for *any*
generated trace, not in distribution.

* One FIFO server (a single prefill instance, batching off): the Lindley recursion
  W_{n+1} = max(0, W_n + S_n − (A_{n+1} − A_n)).
* c servers fed by one central queue (``shared_queue``): the Kiefer–Wolfowitz workload
  vector recursion (FCFS to the server that frees first).
* Per-instance routing (round robin, random, least outstanding tokens): a Lindley queue per
  instance over the requests routed there.
* Little's identity on an empty-to-empty run, per stage: ∫N(t)dt = Σ_r (leave_r − enter_r).
* Decode with a constant step: completion = decode start + (output − 1) × step.
* Hand-derived scenarios (2–5 requests, constant costs) for decode joins mid-run, the
  aggregated scheduler with and without chunked prefill, and fifo versus fair-share links.

Requests with ``output_length == 1`` complete at the end of prefill (no decode, no KV
transfer), which makes the prefill pool a pure queue.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from strategies import Req, build_trace, finite, run_configs, traces

from simdisagg.config import (
    AggregatedConfig,
    ConstantCost,
    ExponentialCost,
    LinkConfig,
    PoolConfig,
    PrefixCacheConfig,
    RouterConfig,
    RunConfig,
)
from simdisagg.hardware import ProfileStore
from simdisagg.sim.engine import simulate
from simdisagg.sim.recorder import STATUS_COMPLETED, RunResult
from simdisagg.trace import Trace

STORE = ProfileStore()
BIG_KV = 10**9  # tokens: KV memory never binds
KV_BYTES_PER_TOKEN = 131072  # llama-3.1-8b: 32 layers × 8 KV heads × 128 × 2 (K, V) × 2 bytes
IB_BYTES_PER_S = 50e9  # ib-ndr-400 preset, per GPU
IB_LATENCY_S = 1.5e-6


def run(cfg: RunConfig, trace: Trace) -> RunResult:
    return simulate(cfg, trace, store=STORE)


def prefill_queue_cfg(cost: ConstantCost | ExponentialCost, count: int = 1, policy: str = "round_robin") -> RunConfig:
    """``count`` prefill instances with batching off and unbounded KV: plain FIFO servers."""
    return RunConfig(
        prefill=PoolConfig(count=count, max_prefill_batch_requests=1, kv_capacity_tokens=BIG_KV),
        decode=PoolConfig(count=1, kv_capacity_tokens=BIG_KV),
        router=RouterConfig(prefill_policy=policy),  # type: ignore[arg-type]
        cost=cost,
    )


def lindley_waits(arrivals: np.ndarray, services: np.ndarray) -> np.ndarray:
    """Waiting times of a FIFO single server: W_{n+1} = max(0, W_n + S_n − (A_{n+1} − A_n))."""
    w = np.zeros(len(arrivals))
    for n in range(len(arrivals) - 1):
        w[n + 1] = max(0.0, w[n] + services[n] - (arrivals[n + 1] - arrivals[n]))
    return w


def kiefer_wolfowitz_waits(arrivals: np.ndarray, services: np.ndarray, c: int) -> np.ndarray:
    """Waiting times of a FCFS c-server queue: the sorted workload vector V seen by an arrival;
    V_{n+1} = sort(V_n + S_n e_1 − (A_{n+1} − A_n) 1)^+ and W_n = V_n[0]."""
    v = np.zeros(c)
    w = np.zeros(len(arrivals))
    for n in range(len(arrivals)):
        w[n] = v[0]
        v[0] += services[n]
        v.sort()
        if n + 1 < len(arrivals):
            v = np.maximum(v - (arrivals[n + 1] - arrivals[n]), 0.0)
    return w


# Random prompt streams for the queueing oracles: arbitrary gaps (zero included) and sizes.
_rows = st.lists(
    st.tuples(st.one_of(st.just(0.0), finite(1e-4, 0.3)), st.integers(1, 4000)),
    min_size=1,
    max_size=60,
)


def prompts_trace(rows: list[tuple[float, int]]) -> Trace:
    t, reqs = 0.0, []
    for gap, tokens in rows:
        t += gap
        reqs.append(Req(t, tokens, 1))
    return build_trace(reqs)


# ---------------------------------------------------------------------------------------
# One server: Lindley


@settings(max_examples=50)
@given(
    rows=_rows,
    prefill_s=finite(1e-3, 0.2),
    per_token=st.one_of(st.just(0.0), finite(1e-7, 1e-4)),
)
def test_lindley_single_prefill_server(rows: list[tuple[float, int]], prefill_s: float, per_token: float) -> None:
    """W_n (prefill start − arrival) follows the Lindley recursion with S_n = a + b·tokens_n;
    service = first token − start = S_n; the instance's busy time is Σ S_n."""
    trace = prompts_trace(rows)
    result = run(
        prefill_queue_cfg(ConstantCost(prefill_s=prefill_s, prefill_s_per_token=per_token)),
        trace,
    )
    t = result.recorder.times
    a = trace.timestamp_s
    s = prefill_s + per_token * trace.input_tokens.astype(np.float64)
    np.testing.assert_allclose(t["arrival_at"], a, rtol=0, atol=1e-12)
    np.testing.assert_allclose(t["prefill_start_at"] - t["arrival_at"], lindley_waits(a, s), rtol=0, atol=1e-9)
    np.testing.assert_allclose(t["first_token_at"] - t["prefill_start_at"], s, rtol=0, atol=1e-9)
    np.testing.assert_array_equal(t["completed_at"], t["first_token_at"])
    (prefill,) = [x for x in result.recorder.instances if x.pool == "prefill"]
    assert prefill.busy_s == pytest.approx(float(s.sum()), rel=1e-12)
    assert prefill.iterations == len(trace)


# ---------------------------------------------------------------------------------------
# c servers: Kiefer–Wolfowitz (central queue) and per-instance Lindley (routed)


@settings(max_examples=50)
@given(
    rows=_rows,
    c=st.integers(2, 4),
    exponential=st.booleans(),
    prefill_s=finite(1e-3, 0.3),
    per_token=st.one_of(st.just(0.0), finite(1e-7, 1e-4)),
    seed=st.integers(0, 1000),
)
def test_kiefer_wolfowitz_shared_queue(
    rows: list[tuple[float, int]],
    c: int,
    exponential: bool,
    prefill_s: float,
    per_token: float,
    seed: int,
) -> None:
    """shared_queue = FCFS to the earliest-free of c servers: start times follow the
    Kiefer–Wolfowitz recursion on the observed service times (any service distribution)."""
    trace = prompts_trace(rows)
    cost = (
        ExponentialCost(mean_prefill_s=prefill_s)
        if exponential
        else ConstantCost(prefill_s=prefill_s, prefill_s_per_token=per_token)
    )
    cfg = prefill_queue_cfg(cost, count=c, policy="shared_queue").model_copy(update={"seed": seed})
    result = run(cfg, trace)
    t = result.recorder.times
    a = trace.timestamp_s
    s = t["first_token_at"] - t["prefill_start_at"]
    if not exponential:
        np.testing.assert_allclose(s, prefill_s + per_token * trace.input_tokens, rtol=0, atol=1e-9)
    np.testing.assert_allclose(t["prefill_start_at"] - a, kiefer_wolfowitz_waits(a, s, c), rtol=0, atol=1e-9)
    # Work conservation per instance: busy time = Σ services of the requests it served.
    for inst in (x for x in result.recorder.instances if x.pool == "prefill"):
        mine = result.recorder.prefill_instance == inst.index
        assert inst.busy_s == pytest.approx(float(s[mine].sum()), rel=1e-9, abs=1e-12)


@settings(max_examples=50)
@given(
    rows=_rows,
    c=st.integers(1, 4),
    policy=st.sampled_from(["round_robin", "random", "least_outstanding_tokens"]),
    prefill_s=finite(1e-3, 0.3),
    per_token=st.one_of(st.just(0.0), finite(1e-7, 1e-4)),
    seed=st.integers(0, 1000),
)
def test_routed_instances_are_independent_lindley_queues(
    rows: list[tuple[float, int]],
    c: int,
    policy: str,
    prefill_s: float,
    per_token: float,
    seed: int,
) -> None:
    """With a router choosing at arrival, each instance is a FIFO server over the requests
    routed to it (Lindley per instance); round robin assigns n mod c."""
    trace = prompts_trace(rows)
    cost = ConstantCost(prefill_s=prefill_s, prefill_s_per_token=per_token)
    result = run(
        prefill_queue_cfg(cost, count=c, policy=policy).model_copy(update={"seed": seed}),
        trace,
    )
    t = result.recorder.times
    where = result.recorder.prefill_instance
    if policy == "round_robin":
        np.testing.assert_array_equal(where, np.arange(len(trace)) % c)
    s = prefill_s + per_token * trace.input_tokens.astype(np.float64)
    for k in range(c):
        mine = np.flatnonzero(where == k)
        a = trace.timestamp_s[mine]
        np.testing.assert_allclose(
            t["prefill_start_at"][mine] - a,
            lindley_waits(a, s[mine]),
            rtol=0,
            atol=1e-9,
        )


# ---------------------------------------------------------------------------------------
# Little's identity on empty-to-empty runs


def integral_of_count(enter: np.ndarray, leave: np.ndarray) -> float:
    """∫ N(t) dt for N(t) = #{r : enter_r ≤ t < leave_r}, by sweeping the sorted events."""
    if len(enter) == 0:
        return 0.0
    times = np.concatenate([enter, leave])
    steps = np.concatenate([np.ones(len(enter)), -np.ones(len(leave))])
    order = np.lexsort((-steps, times))  # at a tie, arrivals first (N never goes negative)
    times, steps = times[order], steps[order]
    level = np.cumsum(steps)
    assert (level >= 0).all()
    assert level[-1] == 0  # empty at the end
    return float((level[:-1] * np.diff(times)).sum())


STAGES = {
    "system": ("arrival_at", "completed_at"),
    "prefill": ("prefill_enqueued_at", "first_token_at"),
    "prefill_queue": ("prefill_enqueued_at", "prefill_start_at"),
    "kv_link": ("kv_send_start_at", "kv_send_end_at"),
    "decode": ("decode_start_at", "completed_at"),
}


@settings(max_examples=40)
@given(cfg=run_configs(), trace=traces())
def test_littles_identity_per_stage(cfg: RunConfig, trace: Trace) -> None:
    """∫N(t)dt = Σ_r (leave_r − enter_r) for the whole system and every stage, over an
    empty-to-empty run (N computed by a sweep over the arrival and leaving columns)."""
    result = run(cfg, trace)
    t = result.recorder.times
    done = result.recorder.status == STATUS_COMPLETED
    for name, (a_col, b_col) in STAGES.items():
        enter, leave = t[a_col][done], t[b_col][done]
        went = ~np.isnan(enter) & ~np.isnan(leave)
        enter, leave = enter[went], leave[went]
        assert (leave >= enter).all(), name
        expect = float((leave - enter).sum())
        assert integral_of_count(enter, leave) == pytest.approx(expect, rel=1e-9, abs=1e-9), name
    # Time-average form over the busy period: L̄ = λ W̄ with λ = n / T.
    if done.any():
        a, c = t["arrival_at"][done], t["completed_at"][done]
        span = float(c.max() - a.min())
        if span > 0:
            l_bar = integral_of_count(a, c) / span
            assert l_bar == pytest.approx(done.sum() / span * float((c - a).mean()), rel=1e-9)


# ---------------------------------------------------------------------------------------
# Decode with a constant step


def decode_cfg(exact_steps: bool, **update: object) -> RunConfig:
    cfg = RunConfig(
        prefill=PoolConfig(count=1, max_prefill_batch_requests=1, kv_capacity_tokens=BIG_KV),
        decode=PoolConfig(count=1, kv_capacity_tokens=BIG_KV, max_batch_size=10_000),
        cost=ConstantCost(prefill_s=0.1, decode_step_s=0.02),
        exact_steps=exact_steps,
    )
    return cfg.model_copy(update=update)


def xfer(tokens: int) -> float:
    """KV transfer of ``tokens`` prompt tokens over an idle ib-ndr-400 link, landed."""
    return tokens * KV_BYTES_PER_TOKEN / IB_BYTES_PER_S + IB_LATENCY_S


@pytest.mark.parametrize("exact_steps", [True, False])
def test_decode_scenario_hand_derived(exact_steps: bool, make_trace: Callable[..., Trace]) -> None:
    """Prefill 0.1 s per prompt (batching off), decode step δ = 0.02 s, one instance each,
    KV never binds. x(n) = n·131072/50e9 + 1.5e-6 s is an n-token KV transfer.

    r0 (t=0, 100 in, 10 out): prefill [0, 0.1]; KV lands L0 = 0.1 + x(100) = 0.100263644;
        decode idle → joins at L0; 9 steps → first decode token L0+δ, done L0+9δ = 0.280263644.
    r1 (t=0.05, 200 in, 3 out): prefill [0.1, 0.2]; lands L1 = 0.2 + x(200) = 0.200525788,
        5.013 steps into r0's run → joins at the next boundary L0 + 6δ = 0.220263644;
        2 steps → first decode token 0.240263644, done 0.260263644.
    r2 (t=0.06, 50 in, 1 out): prefill [0.2, 0.3]; the first token is the answer: done 0.3.
    r3 (t=0.5, 100 in, 4 out): prefill [0.5, 0.6]; lands L3 = 0.600263644; decode idle →
        3 steps → first decode token 0.620263644, done 0.660263644.
    """
    d = 0.02
    trace = make_trace([(0.0, 100, 10), (0.05, 200, 3), (0.06, 50, 1), (0.5, 100, 4)])
    t = run(decode_cfg(exact_steps), trace).recorder.times
    l0, l1, l3 = 0.1 + xfer(100), 0.2 + xfer(200), 0.6 + xfer(100)
    nan = math.nan
    expected = {
        "prefill_start_at": [0.0, 0.1, 0.2, 0.5],
        "first_token_at": [0.1, 0.2, 0.3, 0.6],
        "decode_admit_at": [0.1, 0.2, nan, 0.6],
        "kv_send_start_at": [0.1, 0.2, nan, 0.6],
        "kv_send_end_at": [l0, l1, nan, l3],
        "decode_start_at": [l0, l0 + 6 * d, nan, l3],
        "decode_first_token_at": [l0 + d, l0 + 7 * d, nan, l3 + d],
        "completed_at": [l0 + 9 * d, l0 + 8 * d, 0.3, l3 + 3 * d],
    }
    assert l0 == pytest.approx(0.100263644, abs=1e-12)
    for col, want in expected.items():
        np.testing.assert_allclose(t[col], want, rtol=0, atol=1e-12, err_msg=col)


@settings(max_examples=50)
@given(
    trace=traces(max_requests=15, max_output=80, closed_loop=False, hashes=False),
    step=finite(1e-3, 0.05),
    exact_steps=st.booleans(),
    decode_count=st.integers(1, 3),
)
def test_constant_decode_completion(trace: Trace, step: float, exact_steps: bool, decode_count: int) -> None:
    """Constant decode step δ, KV never binding: completion = decode start + (out − 1)·δ,
    first decode token = decode start + δ, and a request joins at the first step boundary
    at or after its KV lands: 0 ≤ decode start − KV landed < δ."""
    cfg = decode_cfg(exact_steps, cost=ConstantCost(prefill_s=0.05, decode_step_s=step))
    cfg = cfg.model_copy(update={"decode": cfg.decode.model_copy(update={"count": decode_count})})
    result = run(cfg, trace)
    t = result.recorder.times
    multi = trace.output_tokens > 1
    start = t["decode_start_at"][multi]
    out = trace.output_tokens[multi]
    assert (result.recorder.status == STATUS_COMPLETED).all()
    np.testing.assert_allclose(t["completed_at"][multi], start + (out - 1) * step, rtol=1e-12, atol=1e-9)
    np.testing.assert_allclose(t["decode_first_token_at"][multi], start + step, rtol=1e-12, atol=1e-9)
    lag = start - t["kv_send_end_at"][multi]
    assert (lag >= -1e-12).all() and (lag < step + 1e-9).all()


# ---------------------------------------------------------------------------------------
# Aggregated scheduler


def aggregated_cfg(chunked: bool, **pool: object) -> RunConfig:
    return RunConfig(
        mode="aggregated",
        prefill=PoolConfig(count=0),
        decode=PoolConfig(count=1, kv_capacity_tokens=BIG_KV, **pool),  # type: ignore[arg-type]
        aggregated=AggregatedConfig(chunked_prefill=chunked),
        router=RouterConfig(prefill_policy="round_robin"),
        prefix_cache=PrefixCacheConfig(enabled=False),
        cost=ConstantCost(prefill_s=0.1, decode_step_s=0.02),
    )


@pytest.mark.parametrize("exact_steps", [True, False])
def test_aggregated_scenario_hand_derived(exact_steps: bool) -> None:
    """One aggregated instance, no chunking, prefill 0.1 s per iteration (any batch),
    decode step 0.02 s. Waiting prompts go first; the decode batch stalls meanwhile.

    r0 (t=0, 100 in, 4 out): prefill [0, 0.1]; joins at 0.1, first decode token 0.12.
    r1 (t=0.13, out 3) cuts r0's run at the next boundary 0.14 (r0 has 2 of 3 steps).
    r2 (t=0.135, out 2) arrives before that boundary: r1 and r2 prefill together [0.14, 0.24].
    At 0.24 both join; one step [0.24, 0.26] ends r0 (3rd step) and r2 (1st); r1 needs
    one more: done 0.28. r0 = 0.1 + 3·0.02 + 0.1 stall = 0.26.
    """
    trace = build_trace([(0.0, 100, 4), (0.13, 100, 3), (0.135, 100, 2)])
    t = run(aggregated_cfg(False).model_copy(update={"exact_steps": exact_steps}), trace).recorder.times
    expected = {
        "prefill_start_at": [0.0, 0.14, 0.14],
        "first_token_at": [0.1, 0.24, 0.24],
        "decode_start_at": [0.1, 0.24, 0.24],
        "decode_first_token_at": [0.12, 0.26, 0.26],
        "completed_at": [0.26, 0.28, 0.26],
    }
    for col, want in expected.items():
        np.testing.assert_allclose(t[col], want, rtol=0, atol=1e-12, err_msg=col)
    for col in ("decode_admit_at", "kv_send_start_at", "kv_send_end_at"):
        assert np.isnan(t[col]).all()


@pytest.mark.parametrize("exact_steps", [True, False])
def test_aggregated_chunked_scenario_hand_derived(exact_steps: bool) -> None:
    """Chunked prefill, budget 64 tokens per iteration; an iteration takes
    max(prefill 0.1 s, decode step 0.02 s) = 0.1 s whenever it holds a chunk.

    r0 (t=0, 100 in, 3 out): chunks of 64 [0, 0.1] and 36 [0.1, 0.2]; first token 0.2;
        joins at 0.2; decode step [0.2, 0.22] (first decode token 0.22).
    r1 (t=0.21, 10 in, 2 out) cuts r0's run at 0.22, then a mixed iteration [0.22, 0.32]
        holds r1's whole prompt and r0's last step: r0 done 0.32, r1's first token 0.32;
        r1 joins, one step: first decode token and done at 0.34.
    """
    trace = build_trace([(0.0, 100, 3), (0.21, 10, 2)])
    cfg = aggregated_cfg(True, max_batched_tokens=64).model_copy(update={"exact_steps": exact_steps})
    result = run(cfg, trace)
    t = result.recorder.times
    expected = {
        "prefill_start_at": [0.0, 0.22],
        "first_token_at": [0.2, 0.32],
        "decode_start_at": [0.2, 0.32],
        "decode_first_token_at": [0.22, 0.34],
        "completed_at": [0.32, 0.34],
    }
    for col, want in expected.items():
        np.testing.assert_allclose(t[col], want, rtol=0, atol=1e-12, err_msg=col)
    (inst,) = result.recorder.instances
    assert inst.busy_s == pytest.approx(0.1 + 0.1 + 0.02 + 0.1 + 0.02, abs=1e-12)


# ---------------------------------------------------------------------------------------
# KV links: fifo and fair share


def link_cfg(sharing: str) -> RunConfig:
    # Bandwidth scaled so that one prompt token of KV takes exactly 1 ms to send.
    scale = KV_BYTES_PER_TOKEN * 1000.0 / IB_BYTES_PER_S
    return RunConfig(
        prefill=PoolConfig(count=1, kv_capacity_tokens=BIG_KV),
        decode=PoolConfig(count=1, kv_capacity_tokens=BIG_KV),
        link=LinkConfig(sharing=sharing, bandwidth_scale=scale),  # type: ignore[arg-type]
        cost=ConstantCost(prefill_s=0.5, decode_step_s=0.01),
    )


@pytest.mark.parametrize(
    ("sharing", "start", "end"),
    [
        # r0: 1000 tokens from 0.5 (1 s alone). r1: 3000 tokens, prefilled [0.5, 1.0].
        # fifo: r0 [0.5, 1.5]; r1 waits, [1.5, 4.5].
        ("fifo", [0.5, 1.5], [1.5, 4.5]),
        # fair share: at 1.0 r0 has 500 ms of work left, both at half rate: r0 ends 2.0;
        # r1 has sent 500 by then, 2500 left at full rate: ends 4.5 (work-conserving).
        ("fair_share", [0.5, 1.0], [2.0, 4.5]),
    ],
)
def test_link_staggered_transfers(sharing: str, start: list[float], end: list[float]) -> None:
    """Two KV transfers, the second arriving mid-way through the first (1 ms per token)."""
    trace = build_trace([(0.0, 1000, 2), (0.25, 3000, 2)])
    t = run(link_cfg(sharing), trace).recorder.times
    np.testing.assert_allclose(t["first_token_at"], [0.5, 1.0], atol=1e-12)
    np.testing.assert_allclose(t["kv_send_start_at"], start, atol=1e-9)
    np.testing.assert_allclose(t["kv_send_end_at"], np.array(end) + IB_LATENCY_S, atol=1e-9)


@pytest.mark.parametrize(
    ("sharing", "start", "end"),
    [
        # r0 and r1 are prefilled in one batch [0.5, 1.0] and sent from 1.0, r0 first.
        ("fifo", [1.0, 2.0], [2.0, 5.0]),
        # Processor sharing: r0 (1 s alone) takes 2 s at half rate; r1 then has 2 s left.
        ("fair_share", [1.0, 1.0], [3.0, 5.0]),
    ],
)
def test_link_simultaneous_transfers(sharing: str, start: list[float], end: list[float]) -> None:
    """Two KV transfers that start together, 1000 and 3000 tokens. A one-token request
    holds the prefill instance over [0, 0.5] so that r0 and r1 (both arriving at 0.1) wait
    and run as one batch (an idle instance starts at once on whatever has arrived)."""
    trace = build_trace([(0.0, 10, 1), (0.1, 1000, 2), (0.1, 3000, 2)])
    result = run(link_cfg(sharing), trace)
    t = result.recorder.times
    np.testing.assert_allclose(t["prefill_start_at"], [0.0, 0.5, 0.5], atol=1e-12)
    np.testing.assert_allclose(t["kv_send_start_at"][1:], start, atol=1e-9)
    np.testing.assert_allclose(t["kv_send_end_at"][1:], np.array(end) + IB_LATENCY_S, atol=1e-9)
    # Busy time of the link: it sent 4 s of work without idling.
    assert result.recorder.link_busy_s[0] == pytest.approx(4.0, abs=1e-9)


@settings(max_examples=40)
@given(
    sizes=st.lists(st.integers(1, 2000), min_size=1, max_size=6),
    gaps=st.lists(finite(0.0, 1.0), min_size=6, max_size=6),
)
def test_fair_share_link_matches_processor_sharing_oracle(sizes: list[int], gaps: list[float]) -> None:
    """A fair-share link is an egalitarian processor-sharing server: its departures match a
    direct PS computation (advance every flow at rate 1/n between events) for any sizes and
    release times. Prefill is batching-off and 0.5 s, so transfers enter at known times."""
    cfg = link_cfg("fair_share").model_copy(
        update={"prefill": PoolConfig(count=1, kv_capacity_tokens=BIG_KV, max_prefill_batch_requests=1)}
    )
    rows, t0 = [], 0.0
    for size, gap in zip(sizes, gaps, strict=False):
        t0 += gap
        rows.append((t0, size, 2))
    t = run(cfg, build_trace(rows)).recorder.times
    release = t["kv_send_start_at"]
    work = np.array(sizes, dtype=np.float64) * 1e-3  # seconds of link time alone
    finish = processor_sharing_departures(release, work)
    np.testing.assert_allclose(t["kv_send_end_at"] - IB_LATENCY_S, finish, rtol=1e-9, atol=1e-9)


def processor_sharing_departures(release: np.ndarray, work: np.ndarray) -> np.ndarray:
    """Departure times of jobs under egalitarian PS at unit capacity (event-by-event)."""
    n = len(work)
    left = work.copy()
    done = np.full(n, np.nan)
    order = list(np.argsort(release, kind="stable"))
    active: list[int] = []
    now = 0.0
    while order or active:
        next_release = release[order[0]] if order else math.inf
        if active:
            k = min(active, key=lambda j: left[j])
            next_departure = now + left[k] * len(active)
        else:
            next_departure = math.inf
        t_next = min(next_release, next_departure)
        if active:
            for j in active:
                left[j] -= (t_next - now) / len(active)
        now = t_next
        if next_departure <= next_release:
            active.remove(k)
            done[k] = now
        else:
            active.append(order.pop(0))
    return done
