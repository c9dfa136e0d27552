"""The roofline's vectorised isolated-request times, and the session slowdown built on them."""

from __future__ import annotations

import numpy as np
import pytest

from simdisagg import RunConfig, simulate
from simdisagg.costmodel.roofline import RooflineCostModel
from simdisagg.hardware import ProfileStore
from simdisagg.metrics import session_metrics
from simdisagg.trace import TraceBuilder


@pytest.mark.parametrize(("gpu", "model", "tp"), [("h100-sxm", "llama-3.1-8b", 1), ("l40s", "llama-3.1-70b", 4)])
def test_isolated_times_equal_the_step_loop(gpu: str, model: str, tp: int) -> None:
    store = ProfileStore()
    cost = RooflineCostModel(store.model(model), store.gpu(gpu), tp)
    rng = np.random.default_rng(3)
    # Contexts from tiny to a million tokens, so that both sides of the roofline occur.
    n_in = rng.integers(1, 1_000_000, 60)
    cached = (n_in * rng.random(60)).astype(np.int64)
    steps = rng.integers(0, 3000, 60)
    prefill = cost.isolated_prefill_times_s(n_in - cached, cached)
    decode = cost.isolated_decode_times_s(n_in + 1, steps)
    for k in range(60):
        assert prefill[k] == pytest.approx(cost.prefill_time_s([int(n_in[k] - cached[k])], [int(cached[k])]), rel=1e-12)
        loop = float(cost.decode_run_times_s(1, int(n_in[k]) + 1, int(steps[k])).sum())
        assert decode[k] == pytest.approx(loop, rel=1e-9, abs=1e-12)


@pytest.mark.parametrize("profile", ["h100-sxm/llama-3.1-8b-tp1-bf16-kvbf16-vllm", "b200/qwen3-32b-tp4-fp8-kvfp8-sglang"])
def test_fitted_isolated_times_equal_the_step_loop(profile: str) -> None:
    """A measured profile's closed-form sums over its decode table match the step loop."""
    from pathlib import Path

    from simdisagg.costmodel.fitted import FittedCostModel

    root = Path(__file__).resolve().parents[2] / "hardware_profiles" / "measured"
    cost = FittedCostModel.from_path(root / profile)
    rng = np.random.default_rng(5)
    n_in = rng.integers(1, 1_000_000, 60)
    cached = (n_in * rng.random(60)).astype(np.int64)
    steps = np.concatenate([[0, 1, 2], rng.integers(0, 5000, 57)])
    prefill = cost.isolated_prefill_times_s(n_in - cached, cached)
    decode = cost.isolated_decode_times_s(n_in + 1, steps)
    for k in range(60):
        assert prefill[k] == cost.prefill_time_s([int(n_in[k] - cached[k])], [int(cached[k])])
        loop = float(cost.decode_run_times_s(1, int(n_in[k]) + 1, int(steps[k])).sum())
        assert decode[k] == pytest.approx(loop, rel=1e-9, abs=1e-12)


@pytest.mark.parametrize("framework", ["vllm", "sglang"])
def test_lone_session_slowdown_is_one(framework: str) -> None:
    """Alone on the cluster, an agent's critical path is exactly its isolated service plus its
    tool waits."""
    b = TraceBuilder("lone")
    b.add(line=1, timestamp_s=0.0, input_tokens=3000, output_tokens=40, request_id="a", session_id="s")
    b.add(line=2, timestamp_s=9.0, input_tokens=3500, output_tokens=20, request_id="b", session_id="s",
          wait_for=["a"], tool_wait_s=1.5)  # fmt: skip
    b.add(line=3, timestamp_s=9.0, input_tokens=4200, output_tokens=1, request_id="c", session_id="s",
          wait_for=["b"], tool_wait_s=0.25)  # fmt: skip
    for mode in ("disaggregated", "aggregated"):
        # A measured profile, with a front-end delay under SGLang's fitted overheads.
        cfg = RunConfig(mode=mode, framework=framework, precision={"weights": "fp8", "kv_cache": "fp8"})
        result = simulate(cfg, b.build())
        assert result.cost_label.startswith("measured:")
        table = session_metrics(result)
        assert float(table["slowdown"].iloc[0]) == pytest.approx(1.0, rel=1e-9)
        assert float(table["queueing_s"].iloc[0]) == pytest.approx(0.0, abs=1e-12)
