"""Conservation under any fault schedule: every request ends completed or rejected with a
reason, KV memory returns to zero and never passes capacity, and the fault counts add up.

Schedules are drawn by hypothesis: instance failures of either pool at any time (with or
without repair), link degradations and outages, random MTBF/MTTR faults, every fallback
policy, with and without autoscaling, on the small clusters and traces of the invariant
suite (``tests/strategies.py``)."""

from __future__ import annotations

import math

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from strategies import run_configs, traces

from simdisagg.config import (
    AutoscaleConfig,
    ColdStartConfig,
    FaultsConfig,
    InstanceFailure,
    LinkFault,
    LoadScaling,
    PoolScaling,
    RandomInstanceFaults,
    RandomLinkFaults,
    RunConfig,
)
from simdisagg.hardware import ProfileStore
from simdisagg.sim.engine import simulate
from simdisagg.sim.recorder import STATUS_COMPLETED, STATUS_REJECTED
from simdisagg.trace import Trace

STORE = ProfileStore()
_time = st.floats(0.0, 3.0, allow_nan=False)


@st.composite
def fault_schedules(draw: st.DrawFn, mode: str) -> FaultsConfig:
    """Scheduled failures and link faults, possibly random ones, and a fallback policy."""
    pools = ["aggregated"] if mode == "aggregated" else ["prefill", "decode"]
    events: list[InstanceFailure | LinkFault] = []
    for _ in range(draw(st.integers(0, 4))):
        events.append(
            InstanceFailure(
                pool=draw(st.sampled_from(pools)),
                index=draw(st.integers(0, 3)),
                at_s=draw(_time),
                repair_s=draw(st.one_of(st.none(), st.floats(0.01, 2.0))),
            )
        )
    if mode == "disaggregated":
        for _ in range(draw(st.integers(0, 2))):
            events.append(
                LinkFault(
                    prefill_instance=draw(st.one_of(st.none(), st.integers(0, 2))),
                    at_s=draw(_time),
                    duration_s=draw(st.floats(0.01, 2.0)),
                    bandwidth_scale=draw(st.sampled_from([0.0, 0.1, 0.5])),
                )
            )
    random: list[RandomInstanceFaults | RandomLinkFaults] = []
    if draw(st.booleans()):
        random.append(RandomInstanceFaults(pool="all", mtbf_s=draw(st.floats(0.2, 5.0)), mttr_s=draw(st.floats(0.05, 1.0))))
    if mode == "disaggregated" and draw(st.booleans()):
        random.append(RandomLinkFaults(mtbf_s=draw(st.floats(0.2, 5.0)), mttr_s=draw(st.floats(0.05, 1.0))))
    return FaultsConfig(
        events=tuple(events),
        random=tuple(random),
        fallback=draw(st.sampled_from(["wait", "reject", "aggregated"])),
        role_switch_s=draw(st.one_of(st.none(), st.floats(0.0, 0.5))),
    )


@st.composite
def faulty_runs(draw: st.DrawFn) -> tuple[RunConfig, Trace]:
    # Instance failures under speculative decoding are refused (not modelled).
    cfg = draw(run_configs(exact_steps=False, speculative=False))
    faults = draw(fault_schedules(cfg.mode))
    autoscale = None
    if draw(st.booleans()):
        scaling = PoolScaling(min_instances=1, max_instances=8, cooldown_s=draw(st.floats(0.0, 1.0)),
                              policy=LoadScaling(queue_per_instance=1.0))
        autoscale = AutoscaleConfig(
            interval_s=draw(st.floats(0.05, 1.0)),
            prefill=scaling if cfg.mode == "disaggregated" else None,
            decode=scaling if cfg.mode == "disaggregated" else None,
            aggregated=scaling if cfg.mode == "aggregated" else None,
            cold_start=ColdStartConfig(warmup_s=draw(st.floats(0.0, 0.5))),
        )
    data = cfg.model_dump()
    data["faults"] = faults.model_dump()
    data["autoscale"] = autoscale.model_dump() if autoscale is not None else None
    return RunConfig.model_validate(data), draw(traces(closed_loop=True))


def check_conservation(cfg: RunConfig, trace: Trace) -> None:
    result = simulate(cfg, trace, store=STORE)
    rec = result.recorder
    why = cfg.model_dump_json()
    status = rec.status
    # Nothing is lost: completed, or rejected with a reason.
    assert np.isin(status, (STATUS_COMPLETED, STATUS_REJECTED)).all(), why
    for i in np.flatnonzero(status == STATUS_REJECTED).tolist():
        assert rec.reject_reason.get(i), f"request {i} rejected without a reason\n{why}"
    faults = result.meta["faults"]
    assert faults["stranded_requests"] == 0, f"requests stranded in the cluster\n{why}"
    # KV never over capacity, and back to zero on every instance.
    for inst in rec.instances:
        assert inst.kv.level == 0, f"{inst.pool}[{inst.index}] ends holding {inst.kv.level} blocks\n{why}"
        assert 0 <= inst.kv.peak <= inst.kv.capacity
    # Completed requests have their stages, first token before completion.
    done = status == STATUS_COMPLETED
    t = rec.times
    for col in ("arrival_at", "first_token_at", "completed_at"):
        assert not np.isnan(t[col][done]).any(), f"completed request without {col}\n{why}"
    assert (t["first_token_at"][done] <= t["completed_at"][done]).all(), why
    assert (t["arrival_at"][done] <= t["first_token_at"][done]).all(), why
    # The counts add up: retried requests are counted, recomputed tokens are not negative.
    retries = result.meta["retries"]
    assert faults["retries"] == int(retries.sum()) and faults["recomputed_tokens"] >= 0
    # GPU-hours: positive, and no instance ends before it starts.
    assert result.meta["gpu_hours"] > 0 or result.recorder.end_at == 0
    for life in result.meta["instances"]:
        assert math.isnan(life.ended_at) or life.ended_at >= life.started_at


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(case=faulty_runs())
def test_no_request_is_lost_under_any_fault_schedule(case: tuple[RunConfig, Trace]) -> None:
    """Every request ends completed or rejected with a reason, whatever fails when."""
    check_conservation(*case)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(cfg=run_configs(exact_steps=False), trace=traces(closed_loop=True))
def test_a_dynamic_cluster_that_never_changes_is_the_fixed_cluster(cfg: RunConfig, trace: Trace) -> None:
    """No faults and bounds that pin every pool at its size: the same run, column for column."""
    data = cfg.model_dump()
    pools = ("aggregated",) if cfg.mode == "aggregated" else ("prefill", "decode")
    counts = {"prefill": cfg.prefill.count, "decode": cfg.decode.count, "aggregated": cfg.aggregated_pool().count}
    data["autoscale"] = {"interval_s": 0.05, **{p: {"min_instances": counts[p], "max_instances": counts[p]} for p in pools}}
    data["faults"] = {}
    dynamic = simulate(RunConfig.model_validate(data), trace, store=STORE).recorder
    fixed = simulate(cfg, trace, store=STORE).recorder
    np.testing.assert_array_equal(dynamic.status, fixed.status)
    for column, values in fixed.times.items():
        np.testing.assert_array_equal(dynamic.times[column], values, err_msg=column)
