"""The measured profiles shipped in hardware_profiles/measured/: every one loads, names its
source, meets the fit's held-out targets and respects the GPU's physical floors; ``auto``
picks them over the roofline, and a run on one round-trips through ``simdisagg run``."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from simdisagg import RunConfig
from simdisagg.cli import app
from simdisagg.costmodel.factory import make_cost_model
from simdisagg.costmodel.fitted import FittedCostModel
from simdisagg.fit import physical_floors
from simdisagg.hardware import ProfileStore
from simdisagg.rng import Streams

ROOT = Path(__file__).resolve().parents[2] / "hardware_profiles"
SHIPPED = sorted(ROOT.glob("measured/*/*/fit.json"))


def test_profiles_are_shipped_for_the_models_the_issue_names() -> None:
    names = {f"{p.parent.parent.name}/{p.parent.name}" for p in SHIPPED}
    for gpu in ("h100-sxm", "h200", "b200"):
        for model, tps in (("llama-3.1-8b", (1, 2)), ("llama-3.1-70b", (4, 8)), ("qwen3-32b", (1, 2, 4))):
            for tp in tps:
                for precision in ("bf16-kvbf16", "fp8-kvfp8"):
                    assert f"{gpu}/{model}-tp{tp}-{precision}-vllm" in names


@pytest.mark.parametrize("fit_json", SHIPPED, ids=lambda p: f"{p.parent.parent.name}/{p.parent.name}")
def test_every_shipped_profile_is_sourced_accurate_and_physical(fit_json: Path) -> None:
    fit = json.loads(fit_json.read_text())
    assert fit["provenance"] == "measured" and fit["device"] == "cuda"
    source = fit["source"]
    assert source["kind"] == "kernel database" and len(source["source_commit"]) == 40
    assert source["framework"] == fit["framework"] and source["version"]
    for phase in ("prefill", "decode"):
        error = fit["phases"][phase]["held_out_error"]
        assert error["median_ape"] <= 0.03 and error["p95_ape"] <= 0.10, (phase, error)
    gpu = ProfileStore().gpu(fit["gpu"])
    for floor in physical_floors(fit, gpu):
        assert floor["ok"], floor
    assert (fit_json.parent / "fit_report.md").is_file() and (fit_json.parent / "meta.yaml").is_file()
    assert FittedCostModel.from_path(fit_json).label == f"measured:{fit['gpu']}/{fit_json.parent.name}"


def test_auto_picks_the_measured_profile_and_falls_back_to_the_roofline() -> None:
    store = ProfileStore()
    cfg = RunConfig()
    model = cfg.model_shape(store)
    cost = make_cost_model(cfg.cost, model, store.gpu("h100-sxm"), 1, Streams(0), store, "decode", framework="vllm")
    assert cost.label.startswith("measured:h100-sxm/llama-3.1-8b-tp1-bf16-kvbf16-vllm")
    fp8 = RunConfig(precision={"weights": "fp8", "kv_cache": "fp8"}, framework="trtllm")
    cost = make_cost_model(fp8.cost, fp8.model_shape(store), store.gpu("h200"), 2, Streams(0), store, "decode", "trtllm")
    assert cost.label.startswith("measured:h200/llama-3.1-8b-tp2-fp8-kvfp8-trtllm")
    # No profile for this GPU: the labelled roofline.
    cost = make_cost_model(cfg.cost, model, store.gpu("l40s"), 1, Streams(0), store, "decode", framework="vllm")
    assert cost.label.startswith("roofline:")


def test_a_measured_profile_round_trips_through_run(tmp_path: Path) -> None:
    trace = tmp_path / "t.jsonl"
    trace.write_text("".join(f'{{"timestamp": {i * 50}, "input_length": 900, "output_length": 40}}\n' for i in range(40)))
    out = tmp_path / "out"
    res = CliRunner().invoke(
        app,
        ["run", str(trace), "--gpu", "h200", "--model", "llama-3.1-70b", "--tp", "4", "--weights", "fp8",
         "--kv-cache", "fp8", "--framework", "vllm", "--prefill", "1", "--decode", "1", "--out", str(out)],
    )
    assert res.exit_code == 0, res.output
    assert "measured:h200/llama-3.1-70b-tp4-fp8-kvfp8-vllm" in res.output
    summary = json.loads((out / "summary.json").read_text())
    assert summary["completed"] == 40
    assert summary["cost_model"].startswith("measured:h200/llama-3.1-70b-tp4-fp8-kvfp8-vllm")
    config = json.loads((out / "config.json").read_text())
    assert config["config"]["precision"] == {"weights": "fp8", "kv_cache": "fp8", "experts": None}
    assert config["config"]["framework"] == "vllm"
