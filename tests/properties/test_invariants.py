"""Properties that hold for every trace and every configuration.

Each test draws small random traces (open loop, closed-loop ``wait_for`` chains with tool
waits, sessions, prefix hashes) and random small clusters (both modes, every router policy,
chunked prefill on or off, fifo or fair-share links, KV capacities small enough that
admission binds and some requests are rejected, fast-forward on or off) and checks:

* conservation: every request ends completed or rejected; token totals add up;
* KV memory: every instance's KV level is back to 0 at the end and never exceeded capacity;
* causality: each request's timestamps are in pipeline order;
* closed loop: a request arrives exactly when its last parent completed plus its tool wait;
* determinism: the same seed gives identical columns; global RNG states are untouched;
* fast-forward equivalence: ``exact_steps`` on and off give the same timestamps and summary.
"""

from __future__ import annotations

import math
import random
import typing

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from strategies import (
    COST_KINDS,
    DECODE_POLICIES,
    LINK_SHARING,
    MODES,
    PREFILL_POLICIES,
    Req,
    build_trace,
    run_configs,
    traces,
)

from simdisagg import config as config_module
from simdisagg.config import (
    ConstantCost,
    PoolConfig,
    PrefixCacheConfig,
    RouterConfig,
    RunConfig,
    TierConfig,
)
from simdisagg.hardware import ProfileStore
from simdisagg.metrics import summarize
from simdisagg.sim.engine import simulate
from simdisagg.sim.recorder import (
    STATUS_COMPLETED,
    STATUS_REJECTED,
    TIME_COLUMNS,
    RunResult,
)
from simdisagg.trace import Trace

STORE = ProfileStore()

#: The pipeline order of a request's timestamps (NaN = that stage did not happen).
ORDER = (
    "arrival_at",
    "prefill_enqueued_at",
    "prefill_start_at",
    "first_token_at",
    "decode_admit_at",
    "kv_send_start_at",
    "kv_send_end_at",
    "decode_start_at",
    "decode_first_token_at",
    "completed_at",
)

#: Summary keys that measure the simulator rather than the simulated system.
NOT_MODELLED = {"events", "wall_s"}


def run(cfg: RunConfig, trace: Trace) -> RunResult:
    return simulate(cfg, trace, store=STORE)


def describe(cfg: RunConfig, trace: Trace) -> str:
    return f"cfg={cfg.model_dump_json()}\ntrace rows=" + repr(
        list(
            zip(
                trace.timestamp_s.tolist(),
                trace.input_tokens.tolist(),
                trace.output_tokens.tolist(),
                strict=True,
            )
        )
    )


# ---------------------------------------------------------------------------------------
# Meta-test: the strategies cover every kind that config.py accepts


def _literal_args(tp: object) -> set[str]:
    return set(typing.get_args(tp))


def test_every_config_kind_has_a_strategy() -> None:
    """Every router policy, cost kind, link sharing and mode in config.py has a strategy."""
    fields = config_module.RouterConfig.model_fields
    assert _literal_args(config_module.PrefillPolicy) == set(PREFILL_POLICIES)
    assert _literal_args(fields["decode_policy"].annotation) == set(DECODE_POLICIES)
    union = typing.get_args(typing.get_args(config_module.CostConfig)[0])
    kinds = {cls.model_fields["kind"].default for cls in union}
    assert kinds == set(COST_KINDS)
    assert _literal_args(config_module.LinkConfig.model_fields["sharing"].annotation) == set(LINK_SHARING)
    assert _literal_args(config_module.RunConfig.model_fields["mode"].annotation) == set(MODES)


# ---------------------------------------------------------------------------------------
# The invariants of one run


def check_invariants(cfg: RunConfig, trace: Trace, result: RunResult) -> None:
    rec = result.recorder
    t = rec.times
    status = rec.status
    n = len(trace)
    why = describe(cfg, trace)

    # Conservation of requests: nothing is left unfinished.
    assert np.isin(status, (STATUS_COMPLETED, STATUS_REJECTED)).all(), f"unfinished requests\n{why}"
    done = status == STATUS_COMPLETED
    s = summarize(result, cfg.slo)
    assert s["completed"] + s["rejected"] == n and s["unfinished"] == 0
    assert s["total_output_tokens"] == int(trace.output_tokens[done].sum())
    assert s["total_input_tokens"] == int(trace.input_tokens[done].sum())

    # KV memory: back to zero everywhere, never above capacity.
    for inst in rec.instances:
        assert inst.kv.level == 0, f"{inst.pool}[{inst.index}] ends holding {inst.kv.level} KV blocks\n{why}"
        assert 0 <= inst.kv.peak <= inst.kv.capacity
        assert inst.kv.integral >= 0

    # Every completed request went through the stages its path needs.
    for col in ("arrival_at", "prefill_start_at", "first_token_at", "completed_at"):
        assert not np.isnan(t[col][done]).any(), f"completed request without {col}\n{why}"
    multi = done & (trace.output_tokens > 1)
    assert not np.isnan(t["decode_start_at"][multi]).any()
    assert not np.isnan(t["decode_first_token_at"][multi]).any()
    single = done & (trace.output_tokens == 1)
    np.testing.assert_array_equal(t["completed_at"][single], t["first_token_at"][single])
    if cfg.mode == "disaggregated":
        remote = multi & ~np.isnan(t["decode_admit_at"])
        for col in ("kv_send_start_at", "kv_send_end_at"):
            assert not np.isnan(t[col][remote]).any()

    # Causality: timestamps are in pipeline order (stages that did not happen are skipped).
    for i in range(n):
        last, last_col = -math.inf, ""
        for col in ORDER:
            v = t[col][i]
            if math.isnan(v):
                continue
            assert v >= last, f"request {i}: {col}={v!r} < {last_col}={last!r}\n{why}"
            last, last_col = v, col

    # Rejected requests are never served; completed ones are finite.
    rej = status == STATUS_REJECTED
    assert np.isnan(t["prefill_start_at"][rej]).all()
    assert np.isfinite(t["completed_at"][done]).all()

    # Closed loop: arrival = max(parent completions) + tool wait, or rejected with a parent.
    for i in np.flatnonzero(trace.closed_loop).tolist():
        parents = trace.waits_of(i)
        if (status[parents] == STATUS_COMPLETED).all():
            expect = float(t["completed_at"][parents].max()) + float(trace.tool_wait_s[i])
            assert t["arrival_at"][i] == pytest.approx(expect, rel=1e-9, abs=1e-12), why
        else:
            assert status[i] == STATUS_REJECTED, f"request {i} waits for a rejected request\n{why}"


@settings(max_examples=50)
@given(cfg=run_configs(), trace=traces())
def test_invariants_hold_for_any_trace_and_config(cfg: RunConfig, trace: Trace) -> None:
    """Conservation, KV back to 0 and ≤ capacity, time order, closed-loop arrivals."""
    check_invariants(cfg, trace, run(cfg, trace))


@settings(max_examples=40)
@given(cfg=run_configs(prefix_cache=False), trace=traces(hashes=False))
def test_kv_level_integral_is_sum_of_holding_times(cfg: RunConfig, trace: Trace) -> None:
    """Little's law for KV memory: ∫ level dt = Σ_r blocks_r × (release_r − reserve_r) per
    instance, with the reservation and release instants read from the request columns
    (prefill: prompt blocks from prefill start to KV landed; decode: sequence blocks from
    admission to completion; aggregated: sequence blocks from admission to completion)."""
    result = run(cfg, trace)
    rec = result.recorder
    t = rec.times
    done = rec.status == STATUS_COMPLETED
    inp, out = trace.input_tokens, trace.output_tokens
    for inst in rec.instances:
        if inst.pool == "prefill":
            pool = cfg.prefill
            mine = done & (rec.prefill_instance == inst.index) & ~np.isnan(t["prefill_start_at"])
            if cfg.router.conditional_prefill_tokens is not None:
                # Requests prefilled on their decode instance never touched a prefill instance.
                mine &= np.isnan(t["decode_admit_at"]) == (out <= 1)
            blocks = -(-inp // pool.kv_block_tokens)
            start = t["prefill_start_at"]
            end = np.where(out > 1, t["kv_send_end_at"], t["first_token_at"])
        elif inst.pool == "decode":
            pool = cfg.decode
            mine = done & (rec.decode_instance == inst.index) & (out > 1)
            blocks = -(-(inp + out) // pool.kv_block_tokens)
            start = np.where(
                np.isnan(t["decode_admit_at"]),
                t["prefill_start_at"],
                t["decode_admit_at"],
            )
            end = t["completed_at"]
        else:
            pool = cfg.aggregated_pool()
            mine = done & (rec.prefill_instance == inst.index)
            blocks = -(-(inp + out) // pool.kv_block_tokens)
            start, end = t["prefill_start_at"], t["completed_at"]
        expect = float((blocks[mine] * (end[mine] - start[mine])).sum())
        assert inst.kv.integral == pytest.approx(expect, rel=1e-9, abs=1e-9), (
            f"{inst.pool}[{inst.index}]: ∫KV={inst.kv.integral} Σ={expect}\n{describe(cfg, trace)}"
        )


# ---------------------------------------------------------------------------------------
# Determinism and the global RNGs


@settings(max_examples=30)
@given(cfg=run_configs(), trace=traces())
def test_same_seed_same_columns(cfg: RunConfig, trace: Trace) -> None:
    """Two runs with the same inputs and seed give identical columns, bit for bit."""
    a, b = run(cfg, trace), run(cfg, trace)
    for col in TIME_COLUMNS:
        assert np.array_equal(a.recorder.times[col], b.recorder.times[col], equal_nan=True), col
    assert np.array_equal(a.recorder.status, b.recorder.status)
    assert np.array_equal(a.recorder.prefill_instance, b.recorder.prefill_instance)
    assert np.array_equal(a.recorder.decode_instance, b.recorder.decode_instance)
    for x, y in zip(a.recorder.steps.distribution(), b.recorder.steps.distribution(), strict=True):
        assert np.array_equal(x, y)
    assert a.events == b.events


@settings(max_examples=30)
@given(cfg=run_configs(), trace=traces(), seed=st.integers(0, 2**32 - 1))
def test_global_rng_state_untouched(cfg: RunConfig, trace: Trace, seed: int) -> None:
    """simulate() never draws from (or reseeds) ``random`` or the legacy ``np.random``."""
    random.seed(seed)
    np.random.seed(seed % 2**32)  # noqa: NPY002 - the legacy global state is what we check
    py_state = random.getstate()
    np_state = np.random.get_state()  # noqa: NPY002
    run(cfg, trace)
    assert random.getstate() == py_state
    after = np.random.get_state()  # noqa: NPY002
    assert after[0] == np_state[0] and np.array_equal(after[1], np_state[1])  # type: ignore[index]
    assert after[2:] == np_state[2:]  # type: ignore[index]


# ---------------------------------------------------------------------------------------
# Fast-forward equivalence: the speed path must agree with the step-by-step reference


def assert_same_run(cfg: RunConfig, trace: Trace) -> None:
    exact = run(cfg.model_copy(update={"exact_steps": True}), trace)
    fast = run(cfg.model_copy(update={"exact_steps": False}), trace)
    why = describe(cfg, trace)
    assert np.array_equal(exact.recorder.status, fast.recorder.status), why
    assert np.array_equal(exact.recorder.decode_instance, fast.recorder.decode_instance), why
    assert np.array_equal(exact.recorder.prefill_instance, fast.recorder.prefill_instance), why
    for col in TIME_COLUMNS:
        e, f = exact.recorder.times[col], fast.recorder.times[col]
        assert np.array_equal(np.isnan(e), np.isnan(f)), f"{col}: NaN pattern differs\n{why}"
        np.testing.assert_allclose(f, e, rtol=1e-9, atol=1e-12, equal_nan=True, err_msg=f"{col}\n{why}")
    # The step log holds the same steps (fast-forward logs runs, exact logs one by one).
    np.testing.assert_allclose(
        np.sort(fast.recorder.steps.distribution()[0]),
        np.sort(exact.recorder.steps.distribution()[0]),
        rtol=1e-9,
        atol=1e-12,
    )
    se, sf = summarize(exact, cfg.slo), summarize(fast, cfg.slo)
    assert se.keys() == sf.keys()
    for key in se:
        if key in NOT_MODELLED:
            continue
        a, b = se[key], sf[key]
        if isinstance(a, float) and isinstance(b, float):
            assert (math.isnan(a) and math.isnan(b)) or b == pytest.approx(a, rel=1e-9, abs=1e-9), (
                f"{key}: exact={a!r} fast={b!r}\n{why}"
            )
        else:
            assert a == b, f"{key}: exact={a!r} fast={b!r}\n{why}"
    for ie, iff in zip(exact.recorder.instances, fast.recorder.instances, strict=True):
        assert iff.kv.integral == pytest.approx(ie.kv.integral, rel=1e-9, abs=1e-9)
        assert iff.kv.peak == ie.kv.peak
        assert iff.busy_s == pytest.approx(ie.busy_s, rel=1e-9, abs=1e-12)
        assert iff.iterations == ie.iterations


@settings(max_examples=60)
@given(cfg=run_configs(mode="disaggregated"), trace=traces())
def test_fast_forward_equals_exact_steps_disaggregated(cfg: RunConfig, trace: Trace) -> None:
    """Disaggregated: fast-forwarded decode runs give the step-by-step timestamps."""
    assert_same_run(cfg, trace)


@settings(max_examples=60)
@given(cfg=run_configs(mode="aggregated", chunked=False), trace=traces())
def test_fast_forward_equals_exact_steps_aggregated(cfg: RunConfig, trace: Trace) -> None:
    """Aggregated without chunked prefill (prefill iterations stall the decode batch)."""
    assert_same_run(cfg, trace)


@settings(max_examples=60)
@given(cfg=run_configs(mode="aggregated", chunked=True), trace=traces())
def test_fast_forward_equals_exact_steps_chunked(cfg: RunConfig, trace: Trace) -> None:
    """Aggregated with chunked prefill (mixed iterations)."""
    assert_same_run(cfg, trace)


@settings(max_examples=40)
@given(
    cfg=run_configs(cost_kinds=("constant", "roofline")),
    trace=traces(max_requests=30, max_output=400, closed_loop=False, hashes=False),
)
def test_fast_forward_equals_exact_steps_long_decodes(cfg: RunConfig, trace: Trace) -> None:
    """Long decodes (hundreds of steps per run) with context-dependent step times: the runs
    that fast-forward skips over are long, and arrivals truncate them mid-run."""
    assert_same_run(cfg, trace)


# ---------------------------------------------------------------------------------------
# Regressions: promoting a block cascades evictions that used to leave PrefixCache.use with
# stale tier positions (a KeyError).


def _tier(kind: str, capacity_bytes: float) -> TierConfig:
    return TierConfig(
        kind=kind,  # type: ignore[arg-type]
        capacity_bytes=capacity_bytes,
        read_bytes_per_s=1e10,
        write_bytes_per_s=1e10,
    )


def test_prefix_cache_lower_tier_regression_shared_store() -> None:
    """One shared-store tier, an HBM cache of one 16-token block (hbm_fraction 0.2 of 80).
    r0 (1,2) leaves HBM={2}, store={1,2}; r1 (1,) promotes 1: HBM={1}. r2 (1,2) matches
    [hbm, store]; promoting 2 evicts 1 from HBM, so touching 1 in HBM must re-locate it
    (it used to raise KeyError)."""
    cfg = RunConfig(
        prefix_cache=PrefixCacheConfig(hbm_fraction=0.2, tiers=(_tier("shared_store", 1e9),)),
        cost=ConstantCost(),
        prefill=PoolConfig(count=1, kv_block_tokens=1, kv_capacity_tokens=80),
    )
    trace = build_trace(
        [
            Req(0.0, 33, 1, hash_ids=(1, 2)),
            Req(1.0, 17, 1, hash_ids=(1,)),
            Req(2.0, 33, 1, hash_ids=(1, 2)),
        ],
        hash_block_tokens=16,
    )
    check_invariants(cfg, trace, run(cfg, trace))


def test_prefix_cache_lower_tier_regression_two_host_tiers() -> None:
    """No HBM cache, two host-DRAM tiers of one 2 MiB block each: promoting one block of the
    second request cascades the other block down a tier before it is taken from the first
    (it used to raise KeyError)."""
    block = 16 * 131072.0  # one 16-token block of llama-3.1-8b KV
    cfg = RunConfig(
        prefix_cache=PrefixCacheConfig(
            hbm_fraction=0.0,
            tiers=(_tier("host_dram", block), _tier("host_dram", block)),
        ),
        cost=ConstantCost(),
    )
    trace = build_trace(
        [Req(0.0, 33, 1, hash_ids=(1, 2)), Req(1.0, 33, 1, hash_ids=(1, 2))],
        hash_block_tokens=16,
    )
    check_invariants(cfg, trace, run(cfg, trace))


# ---------------------------------------------------------------------------------------
# Exact ties: an arrival that coincides with a decode step boundary (to the last bit) joins the
# batch at that boundary in both modes (the clock's tie rule: boundaries finish in the EARLY
# phase of an instant and start the next step in the LATE phase; fast-forward places its
# boundaries at the same absolute instants). Round-number costs and zero tool waits tie often.


def test_fast_forward_tie_float_rounding() -> None:
    """One aggregated instance, prefill 0.01 s, decode step 0.02 s. r0 (t=0, 10 out)
    decodes from 0.01; r1 arrives at 0.07. Exact mode reaches the boundary 0.01+0.02+0.02+0.02
    == 0.07 (bit for bit), so r1 joins it and starts at 0.07. Fast-forward once located r1 by
    searchsorted(cum, 0.07 − 0.01), and 0.07 − 0.01 rounds above cum[2] = 0.06 (r1 started at
    0.09); its boundaries are now absolute times summed as the clock sums them."""
    cfg = RunConfig(
        mode="aggregated",
        prefill=PoolConfig(count=0),
        decode=PoolConfig(count=1),
        router=RouterConfig(prefill_policy="round_robin"),
        cost=ConstantCost(prefill_s=0.01, decode_step_s=0.02),
    )
    assert_same_run(cfg, build_trace([(0.0, 1, 10), (0.07, 1, 1)]))


def test_fast_forward_tie_event_order() -> None:
    """Two aggregated instances, prefill 0.25 s, decode step 0.125 s (sums exact in binary),
    round robin. r0 (out 2) on instance 0 completes at 0.375; r1 (out 4) decodes on
    instance 1 with boundaries 0.375, 0.5, 0.625; r2 (t=0.3) goes to instance 0; r3 waits
    for r0 (tool wait 0) and arrives at 0.375, routed to instance 1. Exact mode once ran
    instance 1's whole boundary at 0.375 before r3's arrival (its event was older), so r3
    started at 0.5, while fast-forward truncated r1's run at 0.375 = now and started r3 there.
    Boundaries now start their next step in the LATE phase, after every arrival of the
    instant: both start r3 at 0.375."""
    cfg = RunConfig(
        mode="aggregated",
        prefill=PoolConfig(count=0),
        decode=PoolConfig(count=2),
        router=RouterConfig(prefill_policy="round_robin"),
        cost=ConstantCost(prefill_s=0.25, decode_step_s=0.125),
    )
    trace = build_trace([Req(0, 1, 2), Req(0, 1, 4), Req(0.3, 1, 1), Req(0, 1, 1, ("r0",))])
    assert_same_run(cfg, trace)


_round_s = st.sampled_from([0.0, 0.01, 0.02, 0.05, 0.1, 0.125, 0.25])


@st.composite
def _round_number_cases(draw: st.DrawFn) -> tuple[RunConfig, Trace]:
    cfg = draw(run_configs(cost_kinds=("constant",)))
    cost = ConstantCost(
        prefill_s=draw(st.sampled_from([0.01, 0.02, 0.05, 0.1, 0.125, 0.25])),
        decode_step_s=draw(st.sampled_from([0.01, 0.02, 0.025, 0.05, 0.125])),
    )
    rows, t = [], 0.0
    for k in range(draw(st.integers(1, 12))):
        t += draw(_round_s)
        waits: tuple[str, ...] = ()
        if k and draw(st.booleans()):
            waits = (f"r{draw(st.integers(0, k - 1))}",)
        rows.append(
            Req(
                t,
                draw(st.integers(1, 600)),
                draw(st.integers(1, 30)),
                waits,
                draw(_round_s),
            )
        )
    return cfg.model_copy(update={"cost": cost}), build_trace(rows)



@settings(max_examples=200, deadline=None)
@given(case=_round_number_cases())
def test_fast_forward_equals_exact_steps_round_numbers(
    case: tuple[RunConfig, Trace],
) -> None:
    """Fast-forward equivalence with round-number costs, arrivals and tool waits, where
    events tie exactly (the property the speed path must meet once ties have one rule)."""
    assert_same_run(*case)
