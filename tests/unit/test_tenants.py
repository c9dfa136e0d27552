"""Tenants: quotas never exceeded (for any trace, cluster and quota), a lone tenant without
quota runs exactly as no tenants, priorities order the queues, per-tenant metrics add up,
and bad tenant settings give one-line errors naming file, line and field."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from strategies import Req, build_trace, run_configs, traces
from typer.testing import CliRunner

from simdisagg.cli import app
from simdisagg.config import (
    ConstantCost,
    PoolConfig,
    RunConfig,
    SLOConfig,
    TenantConfig,
)
from simdisagg.errors import TraceError
from simdisagg.generate import assign_tenants
from simdisagg.hardware import ProfileStore
from simdisagg.metrics import NO_TENANT, summarize
from simdisagg.sim.engine import simulate
from simdisagg.sim.recorder import (
    STATUS_COMPLETED,
    STATUS_REJECTED,
    TIME_COLUMNS,
    RunResult,
)
from simdisagg.sim.router import PriorityOrder
from simdisagg.trace import Trace

STORE = ProfileStore()
NAMES = ("a", "b")


def _with_tenants(trace: Trace, names: tuple[str, ...], seed: int) -> Trace:
    """A copy of ``trace`` whose requests are labelled with ``names`` drawn evenly."""
    return assign_tenants(trace.subset(np.arange(len(trace))), dict.fromkeys(names, 1.0), seed)


@st.composite
def tenant_settings(draw: st.DrawFn, names: tuple[str, ...]) -> tuple[TenantConfig, ...]:
    """Quotas small enough to bind on a dozen requests: in flight 1-3, token rates of a few
    thousand tokens/s with bursts below and above one request's size; either over-quota rule."""
    out = []
    for name in names:
        rate = draw(st.one_of(st.none(), st.floats(50.0, 5_000.0)))
        out.append(
            TenantConfig(
                name=name,
                priority=draw(st.integers(-2, 2)),
                max_in_flight=draw(st.one_of(st.none(), st.integers(1, 2))),
                max_tokens_per_s=rate,
                burst_tokens=draw(st.one_of(st.none(), st.floats(50.0, 3000.0))) if rate is not None else None,
                over_quota=draw(st.sampled_from(["queue", "reject"])),
            )
        )
    return tuple(out)


def _check_quotas(result: RunResult, cfg: RunConfig, trace: Trace) -> None:
    """In flight per tenant never above max_in_flight; tokens admitted in any stretch
    [s, t] never above burst + rate x (t - s) + (the largest request's excess over the burst)."""
    tenants = result.tenants
    assert tenants is not None
    admitted = tenants.admitted_at
    done_at = result.recorder.times["completed_at"]
    tokens = (trace.input_tokens + trace.output_tokens).astype(np.float64)
    for k, tenant in enumerate(cfg.tenants):
        mine = np.flatnonzero((tenants.index == k) & ~np.isnan(admitted))
        if tenant.max_in_flight is not None:
            for a in admitted[mine]:
                in_flight = np.count_nonzero((admitted[mine] <= a) & ~(done_at[mine] <= a))
                assert in_flight <= tenant.max_in_flight, (tenant, a, in_flight)
            assert tenants.peak_in_flight[k] <= tenant.max_in_flight
        if tenant.max_tokens_per_s is not None and len(mine):
            rate = tenant.max_tokens_per_s
            burst = tenant.burst_tokens if tenant.burst_tokens is not None else rate
            excess = max(0.0, float(tokens[mine].max()) - burst)
            order = mine[np.argsort(admitted[mine], kind="stable")]
            times, cum = admitted[order], np.cumsum(tokens[order])
            for x in range(len(order)):
                before = cum[x - 1] if x else 0.0
                taken = cum[x:] - before  # tokens admitted from times[x] to each later admission
                bound = burst + rate * (times[x:] - times[x]) + excess
                assert np.all(taken <= bound * (1 + 1e-9) + 1e-6), (tenant, taken - bound)


@settings(max_examples=50, deadline=None)
@given(trace=traces(min_requests=4, max_requests=12, max_output=24), cfg=run_configs(), quotas=tenant_settings(NAMES),
       seed=st.integers(0, 1000))  # fmt: skip
def test_quotas_are_never_exceeded(trace: Trace, cfg: RunConfig, quotas: tuple[TenantConfig, ...], seed: int) -> None:
    """For any trace, cluster and quotas: every request ends completed or rejected (over a
    quota only with ``over_quota: reject``, saying which), and no tenant ever has more
    requests in flight, or has taken more tokens, than its quota allows."""
    trace = _with_tenants(trace, NAMES, seed)
    cfg = cfg.model_copy(update={"tenants": quotas})
    result = simulate(cfg, trace, store=STORE)
    status = result.recorder.status
    assert np.all((status == STATUS_COMPLETED) | (status == STATUS_REJECTED))
    _check_quotas(result, cfg, trace)
    tenants = result.tenants
    assert tenants is not None
    for i, reason in result.recorder.reject_reason.items():
        if "max_in_flight" in reason or "max_tokens_per_s" in reason:
            k = int(tenants.index[i])
            assert quotas[k].over_quota == "reject" and repr(quotas[k].name) in reason
    summary = summarize(result, cfg.slo)
    per_tenant = summary["tenants"]
    assert sum(t["requests"] for t in per_tenant.values()) == len(trace)
    assert sum(t["completed"] for t in per_tenant.values()) == summary["completed"]
    assert sum(t["rejected"] for t in per_tenant.values()) == summary["rejected"]


def _same_run(a: RunResult, b: RunResult) -> None:
    for name in TIME_COLUMNS:
        assert np.array_equal(a.recorder.times[name], b.recorder.times[name], equal_nan=True), name
    assert np.array_equal(a.recorder.status, b.recorder.status)
    assert np.array_equal(a.recorder.prefill_instance, b.recorder.prefill_instance)
    assert np.array_equal(a.recorder.decode_instance, b.recorder.decode_instance)
    assert a.events == b.events


@settings(max_examples=30, deadline=None)
@given(trace=traces(max_requests=12), cfg=run_configs(), priority=st.integers(-5, 5),
       roomy=st.booleans())  # fmt: skip
def test_a_lone_tenant_runs_as_no_tenants(trace: Trace, cfg: RunConfig, priority: int, roomy: bool) -> None:
    """One tenant with no quota (or quotas that never bind), at any priority, gives exactly
    the run without tenants: same timestamps, instances, events and summary; its per-tenant
    figures are the run's."""
    labelled = _with_tenants(trace, ("solo",), 0)
    solo = TenantConfig(name="solo", priority=priority, max_in_flight=len(trace) if roomy else None)
    plain = simulate(cfg, trace, store=STORE)
    tenant_cfg = cfg.model_copy(update={"tenants": (solo,)})
    tenanted = simulate(tenant_cfg, labelled, store=STORE)
    _same_run(plain, tenanted)
    s_plain, s_tenant = summarize(plain, cfg.slo), summarize(tenanted, cfg.slo)
    row = s_tenant.pop("tenants")["solo"]
    for key in ("wall_s",):
        s_plain.pop(key), s_tenant.pop(key)
    assert json.dumps(s_plain, sort_keys=True, default=str) == json.dumps(s_tenant, sort_keys=True, default=str)
    assert row["completed"] == s_plain["completed"] and row["rejected"] == s_plain["rejected"]
    if not math.isnan(s_plain["slo_attainment"]):
        assert row["slo_attainment"] == pytest.approx(s_plain["slo_attainment"])
        assert row["request_goodput"] == pytest.approx(s_plain["request_goodput"])


def _one_server(**tenants: TenantConfig) -> RunConfig:
    """One prefill instance, one prompt per iteration, 1 s each: the queue order is visible."""
    return RunConfig(
        prefill=PoolConfig(count=1, max_prefill_batch_requests=1),
        decode=PoolConfig(count=1),
        cost=ConstantCost(prefill_s=1.0, decode_step_s=0.01),
        tenants=tuple(tenants.values()),
    )


def _labelled(rows: list[tuple[float, str]]) -> Trace:
    trace = build_trace([Req(at, 100, 2) for at, _ in rows])
    names = list(dict.fromkeys(t for _, t in rows))
    trace.tenant_names = names
    trace.tenant_index = np.array([names.index(t) for _, t in rows], dtype=np.int64)
    return trace


def test_priority_orders_the_prefill_queue() -> None:
    """Four low-priority prompts then two high-priority ones, while the only instance is busy:
    the high-priority ones start next, in arrival order, then the low ones in theirs.

    Derivation: r0 (low) starts at 0 and runs 1 s; r1-r3 (low) and r4, r5 (high) queue by
    0.5 s; at 1 s the queue order is r4, r5, r1, r2, r3: starts at 1, 2, 3, 4, 5 s."""
    trace = _labelled([(0.0, "low"), (0.1, "low"), (0.2, "low"), (0.3, "low"), (0.4, "high"), (0.5, "high")])
    cfg = _one_server(low=TenantConfig(name="low", priority=0), high=TenantConfig(name="high", priority=3))
    start = simulate(cfg, trace, store=STORE).recorder.times["prefill_start_at"]
    assert start.tolist() == pytest.approx([0.0, 3.0, 4.0, 5.0, 1.0, 2.0])
    # Same priorities: first come, first served.
    flat = _one_server(low=TenantConfig(name="low"), high=TenantConfig(name="high"))
    assert simulate(flat, trace, store=STORE).recorder.times["prefill_start_at"].tolist() == pytest.approx(
        [0.0, 1.0, 2.0, 3.0, 4.0, 5.0]
    )


def test_priority_orders_aggregated_waiting_prompts() -> None:
    """Aggregated instances take waiting prompts by priority too (one prompt per iteration)."""
    trace = _labelled([(0.0, "low"), (0.1, "low"), (0.2, "high")])
    cfg = _one_server(low=TenantConfig(name="low"), high=TenantConfig(name="high", priority=1)).model_copy(
        update={"mode": "aggregated", "prefill": PoolConfig(count=0),
                "decode": PoolConfig(count=1, max_prefill_batch_requests=1)}
    )  # fmt: skip
    start = simulate(cfg, trace, store=STORE).recorder.times["prefill_start_at"]
    assert start[2] < start[1]


def test_priority_order_queue() -> None:
    """Higher priority first, then earlier arrival, then the order of insertion."""
    q = PriorityOrder([0, 5, 5, 0, 5], np.array([0.0, 3.0, 1.0, 0.0, 1.0]))
    for i in range(5):
        q.append(i)
    assert len(q) == 5 and q[0] == 2
    assert list(q) == [2, 4, 1, 0, 3]
    assert [q.popleft() for _ in range(5)] == [2, 4, 1, 0, 3] and not q


def test_in_flight_quota_queues_at_the_router() -> None:
    """max_in_flight 1 with ``queue``: the tenant's second request waits at the router until
    the first completes (its quota wait is that time); with ``reject`` it is rejected, saying
    why, and the other tenant is unaffected."""
    trace = _labelled([(0.0, "a"), (0.1, "a"), (0.2, "b")])
    cfg = _one_server(a=TenantConfig(name="a", max_in_flight=1), b=TenantConfig(name="b"))
    result = simulate(cfg, trace, store=STORE)
    t = result.recorder.times
    assert result.tenants is not None
    assert result.tenants.admitted_at[1] == pytest.approx(t["completed_at"][0])
    assert t["prefill_enqueued_at"][2] == pytest.approx(0.2)  # b is not held back
    frame = pd.DataFrame(summarize(result, cfg.slo)["tenants"]).T
    assert frame.loc["a", "mean_quota_wait_ms"] == pytest.approx((t["completed_at"][0] - 0.1) * 1000.0 / 2)
    rejecting = _one_server(a=TenantConfig(name="a", max_in_flight=1, over_quota="reject"), b=TenantConfig(name="b"))
    result = simulate(rejecting, trace, store=STORE)
    assert result.recorder.status.tolist() == [STATUS_COMPLETED, STATUS_REJECTED, STATUS_COMPLETED]
    assert "tenant 'a' is at its max_in_flight of 1" in result.recorder.reject_reason[1]
    assert summarize(result, rejecting.slo)["tenants"]["a"]["rejected_over_quota"] == 1


def test_token_bucket_admits_at_the_refill_instant() -> None:
    """A bucket of 1000 tokens refilling at 500 tokens/s, requests of 102 tokens at 0 s: nine
    pass at once (918 tokens), the tenth waits until the bucket holds 102 again:
    (102 - 82) / 500 = 0.04 s."""
    trace = _labelled([(0.0, "a")] * 10)
    cfg = _one_server(a=TenantConfig(name="a", max_tokens_per_s=500, burst_tokens=1000))
    result = simulate(cfg, trace, store=STORE)
    assert result.tenants is not None
    admitted = result.tenants.admitted_at
    assert np.all(admitted[:9] == 0.0)
    assert admitted[9] == pytest.approx(20 / 500)


def test_per_tenant_slos_and_goodput() -> None:
    """Each tenant is judged by its own SLO; without one, by the run's. Requests naming no
    tenant form their own group."""
    rows = [(0.0, "strict"), (0.0, "loose"), (0.0, "strict"), (0.0, "loose")]
    trace = _labelled(rows)
    trace.tenant_index = np.array([0, 1, 0, -1], dtype=np.int64)
    cfg = _one_server(
        strict=TenantConfig(name="strict", slo=SLOConfig(ttft_s=1.5, tpot_s=1.0)), loose=TenantConfig(name="loose")
    ).model_copy(update={"slo": SLOConfig(ttft_s=100.0, tpot_s=1.0)})
    result = simulate(cfg, trace, store=STORE)
    per = summarize(result, cfg.slo)["tenants"]
    # Prompts start at 0, 1, 2, 3 s; first tokens at 1, 2, 3, 4 s (plus the hand-off).
    assert per["strict"]["slo_attainment"] == 0.5 and per["strict"]["slo_ttft_ms"] == 1500.0
    assert per["loose"]["slo_attainment"] == 1.0 and per[NO_TENANT]["requests"] == 1
    # Goodput: requests within their tenant's SLO per second of the whole run (1 each here).
    duration = summarize(result, cfg.slo)["duration_s"]
    for name in ("strict", "loose", NO_TENANT):
        assert per[name]["request_goodput"] * duration == pytest.approx(1.0)


def test_unlisted_trace_tenant_is_refused_naming_the_line() -> None:
    """With tenants listed, a trace line naming another is refused: file, line, field."""
    trace = _labelled([(0.0, "a"), (0.1, "b")])
    cfg = _one_server(a=TenantConfig(name="a"))
    with pytest.raises(TraceError) as err:
        simulate(cfg, trace, store=STORE)
    assert err.value.line == 2 and err.value.field == "tenant" and "'b'" in str(err.value)
    # No tenants listed: the trace's tenants are labels for the metrics only.
    assert set(summarize(simulate(_one_server(), trace, store=STORE), cfg.slo)["tenants"]) == {"a", "b"}


BAD_TENANT_CONFIGS = [
    ("tenants:\n  - name: a\n    max_in_flight: 0\n", "bad.yaml:3: field 'tenants.0.max_in_flight'"),
    ("tenants:\n  - name: a\n  - name: a\n", "bad.yaml:3: field 'tenants.1': tenant 'a' is listed twice"),
    ("tenants:\n  - name: a\n    max_tokens_per_s: -5\n", "bad.yaml:3: field 'tenants.0.max_tokens_per_s'"),
    ("tenants:\n  - name: a\n    burst_tokens: 100\n", "field 'tenants.0': burst_tokens applies only with"),
    ("tenants:\n  - name: a\n    over_quota: drop\n", "bad.yaml:3: field 'tenants.0.over_quota'"),
    ("tenants:\n  - name: a\n    max_in_fligt: 3\n", "did you mean 'max_in_flight'?"),
    ("tenants:\n  - {name: a, priority: 1.5}\n", "bad.yaml:2: field 'tenants.0.priority'"),
    ("tenants:\n  - name: ''\n", "bad.yaml:2: field 'tenants.0.name'"),
    ("tenants:\n  - name: a\n    slo: {ttft_s: 0}\n", "field 'tenants.0.slo.ttft_s'"),
]


@pytest.mark.parametrize(("body", "expected"), BAD_TENANT_CONFIGS)
def test_bad_tenant_settings_give_one_line_errors(tmp_path: Path, body: str, expected: str) -> None:
    """Bad numbers, duplicates, unknown settings: one line naming file, line and field, exit 1."""
    (tmp_path / "bad.yaml").write_text(body)
    trace = tmp_path / "t.jsonl"
    trace.write_text('{"timestamp": 0, "input_length": 10, "output_length": 2, "tenant": "a"}\n')
    res = CliRunner().invoke(app, ["run", str(trace), "--config", str(tmp_path / "bad.yaml"), "--no-compare"])
    assert res.exit_code != 0
    lines = [x for x in res.output.splitlines() if x.startswith("error:")]
    assert len(lines) == 1 and expected in lines[0], res.output


def test_unlisted_tenant_in_trace_file_names_file_line_field(tmp_path: Path) -> None:
    """From the command line: the trace file, the line and ``tenant``, one line, exit 1."""
    (tmp_path / "c.yaml").write_text("tenants:\n  - name: a\n")
    trace = tmp_path / "t.jsonl"
    trace.write_text(
        '{"timestamp": 0, "input_length": 10, "output_length": 2, "tenant": "a"}\n'
        '{"timestamp": 5, "input_length": 10, "output_length": 2, "tenant": "bee"}\n'
    )
    res = CliRunner().invoke(app, ["run", str(trace), "--config", str(tmp_path / "c.yaml"), "--no-compare"])
    assert res.exit_code == 1
    lines = [x for x in res.output.splitlines() if x.startswith("error:")]
    assert len(lines) == 1 and f"{trace}:2: field 'tenant': tenant 'bee' is not in the config's tenants" in lines[0]


def test_tenant_outputs(tmp_path: Path) -> None:
    """``run --out`` with tenants: the requests table names each request's tenant and its
    wait at the router; summary.json has a block per tenant; the printout a table."""
    (tmp_path / "c.yaml").write_text(
        "tenants:\n  - {name: a, priority: 1}\n  - {name: b, max_in_flight: 1}\n"
    )
    trace = tmp_path / "t.jsonl"
    trace.write_text("".join(
        f'{{"timestamp": {k * 10}, "input_length": 200, "output_length": 20, "tenant": "{"ab"[k % 2]}"}}\n'
        for k in range(6)
    ))  # fmt: skip
    res = CliRunner().invoke(app, ["run", str(trace), "--config", str(tmp_path / "c.yaml"), "--out", str(tmp_path / "o")])
    assert res.exit_code == 0, res.output
    assert "per tenant" in res.output
    frame = pd.read_parquet(tmp_path / "o" / "requests.parquet")
    assert frame["tenant"].tolist() == ["a", "b"] * 3
    assert {"admitted_at", "quota_wait_s", "tenant_slo_met"} <= set(frame.columns)
    summary = json.loads((tmp_path / "o" / "summary.json").read_text())
    assert set(summary["tenants"]) == {"a", "b"} and summary["tenants"]["b"]["peak_in_flight"] == 1
    baseline = json.loads((tmp_path / "o" / "baseline_summary.json").read_text())
    assert set(baseline["tenants"]) == {"a", "b"}


def test_quotas_hold_on_a_loaded_run() -> None:
    """A loaded run of generated chat traffic where both quotas bind (requests wait at the
    router for each): they hold at every admission."""
    from simdisagg.generate import generate_trace

    trace = generate_trace("chat", num_requests=400, seed=3, tenants={"a": 0.6, "b": 0.4})
    cfg = RunConfig(
        rate_scale=4.0,
        tenants=(TenantConfig(name="a", max_in_flight=6), TenantConfig(name="b", max_tokens_per_s=2000.0, priority=1)),
    )
    result = simulate(cfg, trace, store=STORE)
    assert (result.recorder.status == STATUS_COMPLETED).all()
    _check_quotas(result, cfg, trace)
    tenants = result.tenants
    assert tenants is not None and tenants.peak_in_flight[0] == 6
    wait = tenants.admitted_at - result.recorder.times["arrival_at"]
    assert (wait[tenants.index == 0] > 0).any() and (wait[tenants.index == 1] > 0).any()
