"""Instance lifecycle: cold starts, drains, failures, the policies, and refused settings."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
from strategies import build_trace

from simdisagg.coldstart import cold_start
from simdisagg.config import (
    LoadScaling,
    PredictiveScaling,
    RunConfig,
    SLOScaling,
    resolve_config,
)
from simdisagg.errors import ConfigError
from simdisagg.hardware import ProfileStore
from simdisagg.sim.autoscale import Signals, desired_count
from simdisagg.sim.engine import simulate
from simdisagg.sim.recorder import STATUS_COMPLETED
from simdisagg.sim.states import STATES

STORE = ProfileStore()
COST = {"kind": "constant", "prefill_s": 0.05, "prefill_s_per_token": 2e-5, "decode_step_s": 0.02}


def _burst_trace(n: int = 400, quiet_after_s: float = 20.0) -> object:
    """A burst that overloads one instance of each pool, then a trickle after a pause."""
    rows = [(0.02 * k, 2000, 40) for k in range(n)]
    rows += [(quiet_after_s + 60.0 + 5.0 * k, 500, 10) for k in range(20)]
    return build_trace(rows)


def _autoscaled(**over: object) -> RunConfig:
    data = {
        "prefill": {"count": 1, "max_batch_size": 8},
        "decode": {"count": 1, "max_batch_size": 8},
        "cost": COST,
        "autoscale": {
            "interval_s": 1.0,
            "prefill": {"min_instances": 1, "max_instances": 4, "cooldown_s": 2.0},
            "decode": {"min_instances": 1, "max_instances": 4, "cooldown_s": 2.0},
            "cold_start": {"weight_source": "nvme-gen4", "warmup_s": 3.0},
        },
    }
    data.update(over)
    return RunConfig.model_validate(data)


def test_cold_start_is_weight_bytes_over_bandwidth_plus_warmup() -> None:
    """The cold start of a pool: weights at the run's precision over the named source's
    bandwidth (shared by a TP-2 instance on one drive), plus the warm-up."""
    cfg = _autoscaled(prefill={"count": 1, "tp": 2})
    weight_bytes = cfg.model_shape(STORE).weight_bytes
    got = cold_start(cfg, cfg.prefill, STORE)
    assert got.load_s == pytest.approx(weight_bytes / 6.5e9)
    assert got.warmup_s == 3.0
    assert got.total_s == pytest.approx(weight_bytes / 6.5e9 + 3.0)


def test_a_scale_out_serves_no_earlier_than_its_cold_start() -> None:
    """An instance started at t takes its first request no earlier than t + load + warm-up."""
    cfg = _autoscaled()
    result = simulate(cfg, _burst_trace(), store=STORE)
    rec = result.recorder
    lives = result.meta["instances"]
    started = [life for life in lives if life.started_at > 0]
    assert started, "the burst should make the autoscaler start instances"
    for life in started:
        pool = cfg.prefill if life.pool == "prefill" else cfg.decode
        delay_s = cold_start(cfg, pool, STORE).total_s
        if math.isnan(life.serving_at):
            continue  # cancelled before it served
        assert life.serving_at == pytest.approx(life.started_at + delay_s)
        column = rec.prefill_instance if life.pool == "prefill" else rec.decode_instance
        first_work = rec.times["prefill_start_at" if life.pool == "prefill" else "decode_admit_at"]
        served = column == life.index
        assert served.any(), f"{life.pool} instance {life.index} served nothing"
        assert np.nanmin(first_work[served]) >= life.started_at + delay_s - 1e-9


def test_drain_cuts_no_request() -> None:
    """Scale-in drains: every request completes, none is retried, and an instance leaves only
    after the last request it took has finished with it."""
    cfg = _autoscaled()
    result = simulate(cfg, _burst_trace(), store=STORE)
    rec = result.recorder
    assert (rec.status == STATUS_COMPLETED).all()
    assert result.meta["faults"]["retries"] == 0
    drained = [life for life in result.meta["instances"] if life.end == "drained"]
    assert drained, "the quiet tail should make the autoscaler drain instances"
    t = rec.times
    for life in drained:
        if life.pool == "prefill":
            mine = rec.prefill_instance == life.index
            last_use = np.nanmax(t["kv_send_end_at"][mine], initial=-math.inf)  # its KV has left
            last_use = max(last_use, np.nanmax(t["first_token_at"][mine], initial=-math.inf))
        else:
            mine = rec.decode_instance == life.index
            last_use = np.nanmax(t["completed_at"][mine], initial=-math.inf)
        assert last_use <= life.ended_at + 1e-9, f"{life.pool} {life.index} left before its work was done"


def test_instance_states_use_the_four_names() -> None:
    """Instances carry ``state``: fixed clusters are all ``serving``."""
    assert STATES == ("serving", "starting", "draining", "failed")
    cfg = RunConfig.model_validate({"prefill": {"count": 2}, "decode": {"count": 1}, "cost": COST})
    result = simulate(cfg, build_trace([(0.0, 100, 5)]), store=STORE)
    assert "instances" not in result.meta  # nothing dynamic recorded for a fixed cluster
    assert result.meta["gpu_hours"] == pytest.approx(3 * result.recorder.end_at / 3600)


def test_decode_failure_resumes_requests_with_their_context() -> None:
    """A decode instance that fails mid-answer sends its requests back to prefill with the
    tokens already streamed; they complete, their first token time is the one streamed first,
    and the recomputed tokens are counted."""
    trace = build_trace([(0.01 * k, 1000, 200) for k in range(8)])
    cfg = RunConfig.model_validate({
        "prefill": {"count": 1}, "decode": {"count": 2}, "cost": COST,
        "faults": {"events": [{"kind": "instance", "pool": "decode", "index": 0, "at_s": 1.0}]},
    })  # fmt: skip
    fixed = simulate(cfg.model_copy(update={"faults": None}), trace, store=STORE)
    result = simulate(cfg, trace, store=STORE)
    rec = result.recorder
    assert (rec.status == STATUS_COMPLETED).all()
    on_failed = fixed.recorder.decode_instance == 0
    assert on_failed.any()
    faults = result.meta["faults"]
    assert faults["instance_failures"] == 1 and faults["retried_requests"] == int(on_failed.sum())
    assert faults["recomputed_tokens"] > 1000 * int(on_failed.sum())  # prompt plus streamed tokens
    # The first token is the one the client got before the failure.
    np.testing.assert_array_equal(rec.times["first_token_at"][on_failed], fixed.recorder.times["first_token_at"][on_failed])
    assert (rec.times["completed_at"][on_failed] > fixed.recorder.times["completed_at"][on_failed]).all()


@pytest.mark.parametrize("fallback", ["wait", "reject", "aggregated"])
def test_whole_decode_pool_down(fallback: str) -> None:
    """The only decode instance fails for good: ``wait`` rejects at the end what waited,
    ``reject`` rejects at once, ``aggregated`` switches a prefill instance to decode."""
    trace = build_trace([(0.05 * k, 800, 30) for k in range(40)])
    cfg = RunConfig.model_validate({
        "prefill": {"count": 2}, "decode": {"count": 1}, "cost": COST,
        "faults": {"events": [{"kind": "instance", "pool": "decode", "index": 0, "at_s": 0.5}],
                   "fallback": fallback, "role_switch_s": 1.0},
    })  # fmt: skip
    result = simulate(cfg, trace, store=STORE)
    rec = result.recorder
    reasons = set(rec.reject_reason.values())
    if fallback == "aggregated":
        assert (rec.status == STATUS_COMPLETED).all()
        assert result.meta["faults"]["role_switches"] == 1
    elif fallback == "reject":
        assert any("faults.fallback: reject" in r for r in reasons)
    else:
        assert any("none served again" in r for r in reasons)
    assert result.meta["faults"]["stranded_requests"] == 0


def test_link_outage_delays_transfers_exactly() -> None:
    """A FIFO transfer under an outage pauses and resumes: it lands the outage later."""
    trace = build_trace([(0.0, 4000, 3)])
    base = {"prefill": {"count": 1}, "decode": {"count": 1}, "cost": COST, "link": {"bandwidth_scale": 1e-4}}
    fixed = simulate(RunConfig.model_validate(base), trace, store=STORE)
    t = fixed.recorder.times
    mid = (t["kv_send_start_at"][0] + t["kv_send_end_at"][0]) / 2
    faulty = RunConfig.model_validate(
        {**base, "faults": {"events": [{"kind": "link", "at_s": float(mid), "duration_s": 0.5}]}}
    )
    got = simulate(faulty, trace, store=STORE).recorder.times
    assert got["kv_send_end_at"][0] == pytest.approx(t["kv_send_end_at"][0] + 0.5)


def test_policies() -> None:
    """Each policy's count from its signals."""
    load = LoadScaling(queue_per_instance=4.0, kv_occupancy=None, batch_occupancy=None)
    assert desired_count(load, "prefill", Signals(2, 2, queue_per_instance=10.0), 2.0, 0.1) == 5
    assert desired_count(load, "prefill", Signals(2, 2, queue_per_instance=1.0), 2.0, 0.1) == 1
    assert desired_count(load, "prefill", Signals(2, 2, queue_per_instance=3.0), 2.0, 0.1) == 2
    slo = SLOScaling()
    assert desired_count(slo, "prefill", Signals(2, 2, ttft_s=3.0), 2.0, 0.1) == 4
    assert desired_count(slo, "prefill", Signals(2, 2, ttft_s=1.7), 2.0, 0.1) == 3
    assert desired_count(slo, "decode", Signals(2, 2, ttft_s=9.0, itl_s=0.01), 2.0, 0.1) == 1
    predictive = PredictiveScaling(target_utilisation=0.5)
    assert desired_count(predictive, "prefill", Signals(1, 1, forecast_rate=10.0, work_per_request_s=0.3), 2.0, 0.1) == 6
    assert desired_count(predictive, "prefill", Signals(1, 1), 2.0, 0.1) == 1  # nothing measured: hold


@pytest.mark.parametrize(
    ("text", "field"),
    [
        ("autoscale:\n  prefill:\n    min_instances: 5\n    max_instances: 2\n", "autoscale.prefill"),
        ("autoscale:\n  decode:\n    policy:\n      kind: slo\n      scale_in_below: 0.9\n", "autoscale.decode.policy"),
        ("autoscale:\n  decode:\n    policy:\n      kind: guess\n", "autoscale.decode.policy"),
        ("autoscale:\n  interval_s: 0\n", "autoscale.interval_s"),
        ("faults:\n  events:\n  - kind: instance\n    pool: decode\n    index: 0\n    at_s: -1\n", "faults.events.0"),
        ("faults:\n  events:\n  - kind: instance\n    pool: aggregated\n    index: 0\n    at_s: 1\n", "faults.events.0"),
        ("faults:\n  random:\n  - kind: link\n    mtbf_s: 0\n    mttr_s: 1\n", "faults.random.0"),
        ("faults:\n  fallback: retry\n", "faults.fallback"),
    ],
)
def test_bad_dynamic_settings_name_the_field(tmp_path: Path, text: str, field: str) -> None:
    """A bad autoscaling or fault setting is one line that names the file and the field."""
    path = tmp_path / "run.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as exc:
        resolve_config(path, {}, {}, STORE)
    message = str(exc.value)
    assert "\n" not in message and str(path) in message and field in message, message


def test_unknown_weight_source_is_refused_before_the_run() -> None:
    from simdisagg.sim.engine import check_cluster

    cfg = _autoscaled(autoscale={"prefill": {"min_instances": 1}, "cold_start": {"weight_source": "floppy"}})
    with pytest.raises(ConfigError, match="autoscale.cold_start.weight_source"):
        check_cluster(cfg, STORE)


def test_prefill_failure_reroutes_queued_and_running_prompts() -> None:
    """A prefill instance that fails with prompts queued and one running: every prompt is
    prefilled again elsewhere and completes; the running one's tokens count as recomputed."""
    trace = build_trace([(0.0, 4000, 5) for _ in range(6)])
    cfg = RunConfig.model_validate({
        "prefill": {"count": 2, "max_prefill_batch_requests": 1}, "decode": {"count": 1}, "cost": COST,
        "router": {"prefill_policy": "round_robin"},
        "faults": {"events": [{"kind": "instance", "pool": "prefill", "index": 0, "at_s": 0.01}]},
    })  # fmt: skip
    result = simulate(cfg, trace, store=STORE)
    rec = result.recorder
    assert (rec.status == STATUS_COMPLETED).all()
    assert (rec.prefill_instance == 1).all()  # all prefilled on the survivor in the end
    faults = result.meta["faults"]
    assert faults["retried_requests"] == 3  # instance 0 had three of the six (round robin)
    assert faults["recomputed_tokens"] == 4000  # only the running prompt had been computed


def test_instance_lives_give_the_state_at_any_time() -> None:
    """The recorded lives replay each instance's state: serving, failed until replaced, and a
    replacement starting through its cold start."""
    trace = build_trace([(0.01 * k, 1000, 50) for k in range(20)])
    cfg = RunConfig.model_validate({
        "prefill": {"count": 1}, "decode": {"count": 2}, "cost": COST,
        "autoscale": {"cold_start": {"warmup_s": 1.0}},
        "faults": {"events": [{"kind": "instance", "pool": "decode", "index": 1, "at_s": 0.5, "repair_s": 0.2}]},
    })  # fmt: skip
    result = simulate(cfg, trace, store=STORE)
    lives = {(life.pool, life.index): life for life in result.meta["instances"]}
    failed, replacement = lives[("decode", 1)], lives[("decode", 2)]
    assert failed.state_at(0.4) == "serving" and failed.state_at(0.6) == "failed" and failed.state_at(0.71) is None
    assert replacement.started_at == pytest.approx(0.7)
    assert replacement.state_at(0.8) == "starting"
