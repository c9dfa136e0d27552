"""The planner on mixture-of-experts models: TP, attention DP and EP searched per pool, shapes
the model cannot be split by refused in one line naming the option, and devices without a
public price planned in device counts only."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from simdisagg.cli import app
from simdisagg.config import PrecisionConfig, RooflineCost, RunConfig, SLOConfig
from simdisagg.errors import ConfigError
from simdisagg.hardware import Parallelism, ProfileStore
from simdisagg.plan import PlanSpec, SearchSettings, enumerate_candidates, plan
from simdisagg.plan.spec import SteadyStateSettings, parse_parallelism
from simdisagg.trace import Trace, TraceBuilder, write_jsonl

STORE = ProfileStore()
LIGHT = SteadyStateSettings(window_lifetimes=6, min_requests=400, screen_min_requests=100)
QWEN_MOE = RunConfig(
    model="qwen3-30b-a3b", cost=RooflineCost(), slo=SLOConfig(ttft_s=1.0, tpot_s=0.05, attainment=0.9),
)


def _trace(n: int = 150, rate_rps: float = 8.0) -> Trace:
    rng = np.random.default_rng(5)
    builder = TraceBuilder("moe-plan")
    t = 0.0
    for line in range(1, n + 1):
        t += float(rng.exponential(1.0 / rate_rps))
        builder.add(line=line, timestamp_s=t, input_tokens=int(rng.integers(500, 3000)),
                    output_tokens=int(rng.integers(50, 200)))
    return builder.build()


def test_parallelism_labels_round_trip_and_bad_ones_are_refused() -> None:
    for label in ("tp8", "tp2-dp4", "tp1-dp8-ep8", "tp2-dp4-ep8"):
        assert parse_parallelism(label).label == label
    assert parse_parallelism("tp4-ep4") == Parallelism(4, 1, 4)
    for bad in ("8", "tp0", "tp2-dp2-ep3", "dp8"):
        with pytest.raises(ConfigError):
            parse_parallelism(bad, "--decode-parallelism")


def test_each_pool_searches_its_own_parallelisms_within_the_budget() -> None:
    spec = PlanSpec(base=QWEN_MOE, gpus=8, prefill_parallelisms=("tp2", "tp1-dp2-ep2"),
                    decode_parallelisms=("tp4", "tp1-dp4-ep4", "tp2-dp2-ep4"), max_batch_sizes=(64,))
    cands = enumerate_candidates(spec, STORE)
    disagg = [c for c in cands if not c.aggregated]
    assert {c.prefill_parallelism.label for c in disagg} == {"tp2", "tp1-dp2-ep2"}
    assert {c.decode_parallelism.label for c in disagg} == {"tp4", "tp1-dp4-ep4", "tp2-dp2-ep4"}
    for c in cands:
        assert c.gpus <= 8
        assert c.decode_gpus == c.decode_count * c.decode_parallelism.gpus
        cfg = c.run_config(QWEN_MOE)
        assert cfg.decode.parallelism == c.decode_parallelism
        if not c.aggregated:
            assert cfg.prefill.parallelism == c.prefill_parallelism
            assert 8 - c.gpus < min(c.prefill_parallelism.gpus, c.decode_parallelism.gpus)
    assert any("tp1-dp4-ep4" in c.label for c in cands if c.aggregated)
    # Dense plans keep their labels.
    dense = enumerate_candidates(PlanSpec(gpus=4, tps=(1, 2)), STORE)
    assert dense[-1].label.endswith("h100-sxm tp2 / h100-sxm tp2 b256 ib-ndr-400")


@pytest.mark.parametrize(
    ("pool", "label", "why"),
    [("decode", "tp4-dp3-ep12", "ep 12 does not divide the 128 experts"),
     ("prefill", "tp3", "32 attention heads are not divisible by 3")],
)
def test_shapes_the_model_cannot_be_split_by_are_refused(pool: str, label: str, why: str) -> None:
    spec = PlanSpec(base=QWEN_MOE, gpus=24, **{f"{pool}_parallelisms": (label,)})
    with pytest.raises(ConfigError) as info:
        enumerate_candidates(spec, STORE)
    assert why in str(info.value) and f"--{pool}-parallelism {label}" in str(info.value)


def test_plan_command_refuses_bad_shapes_in_one_line(tmp_path: Path) -> None:
    trace_path = tmp_path / "t.jsonl"
    write_jsonl(_trace(20), trace_path)
    cases = [
        (["--decode-parallelism", "tp1-dp2-ep8"], "--decode-parallelism: 'tp1-dp2-ep8': ep 8 must divide"),
        (["--decode-parallelism", "tp4-dp3-ep12"], "ep 12 does not divide the 128 experts"),
        (["--prefill-parallelism", "tp1-dp2", "--model", "llama-3.1-8b"], "apply to MoE models"),
        (["--budget-per-hour", "100", "--decode-gpu", "sn40l"], "sn40l has no public price"),
        (["--rank-by", "per_dollar", "--decode-gpu", "sn40l", "--gpus", "8"], "sn40l has no public price"),
    ]
    for extra, expected in cases:
        args = ["plan", str(trace_path), "--model", "qwen3-30b-a3b", "--out", str(tmp_path / "o"), *extra]
        if "--gpus" not in extra and "--budget-per-hour" not in extra:
            args += ["--gpus", "12"]
        result = CliRunner().invoke(app, args, env={"COLUMNS": "200"})
        assert result.exit_code == 1, (extra, result.output)
        lines = [line for line in result.output.splitlines() if line.strip()]
        assert len(lines) == 1 and expected in lines[0], (extra, result.output)


def test_a_moe_plan_finds_a_split_and_reports_each_pool_shape() -> None:
    spec = PlanSpec(base=QWEN_MOE, gpus=4, prefill_parallelisms=("tp1",), decode_parallelisms=("tp1", "tp1-dp2-ep2"),
                    max_batch_sizes=(64,), aggregated=False, search=SearchSettings(steady=LIGHT), verify=False)
    result = plan(_trace(), spec, workers=1)
    assert result.best is not None and result.best["goodput_rps"] > 0
    shapes = {(r["decode_dp"], r["decode_ep"]) for r in result.rows}
    assert shapes == {(1, 1), (2, 2)}


def test_a_non_gpu_decode_pool_is_planned_in_device_counts() -> None:
    base = QWEN_MOE.model_copy(update={"model": "gpt-oss-120b", "precision": PrecisionConfig(experts="mxfp4")})
    spec = PlanSpec(base=base, gpus=6, prefill_gpus=("b200",), decode_gpus=("b200", "sn40l"),
                    prefill_parallelisms=("tp1",), decode_parallelisms=("tp2",), aggregated=False)
    cands = enumerate_candidates(spec, STORE)
    mixed = [c for c in cands if c.decode_gpu == "sn40l"]
    assert mixed and all(c.gpus <= 6 for c in mixed)
    assert all(np.isnan(c.price_per_hour_usd(STORE)) for c in mixed)
    assert {(c.prefill_count, c.decode_count) for c in mixed} == {(2, 2), (4, 1)}  # no room left for one more instance
