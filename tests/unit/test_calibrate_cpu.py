"""The calibration harness on the CPU path: tiny shapes, perf_counter, output labelled cpu.

Grid checks need no torch; the end-to-end run is skipped when torch cannot be imported.
"""

from __future__ import annotations

import csv
import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
import yaml
from calibration_fixtures import LLAMA_8B
from typer.testing import CliRunner

from calibrate.harness import (
    RAW_COLUMNS,
    enumerate_points,
    guess_gpu_profile,
    kv_capacity_tokens,
    load_grid,
)
from simdisagg.cli.calibrate import _standalone
from simdisagg.costmodel.fitted import FittedCostModel, ShardShape, find_fitted
from simdisagg.errors import CalibrationError
from simdisagg.fit import fit_measured, write_fit
from simdisagg.hardware import ModelShape

HAVE_TORCH = importlib.util.find_spec("torch") is not None
needs_torch = pytest.mark.skipif(not HAVE_TORCH, reason="torch not importable: pip install torch==2.13.0 (CPU wheel)")

TINY = ModelShape(
    name="tiny",
    display_name="Tiny",
    provenance="derived",
    source="synthetic tiny shape for CPU tests",
    num_layers=4,
    hidden_size=64,
    num_heads=4,
    num_kv_heads=2,
    head_dim=16,
    intermediate_size=128,
    vocab_size=256,
    dtype_bytes=2,
)


def test_default_grid_covers_the_issue_ranges() -> None:
    """Default grid: prompts 64 to >= 32k with cached prefixes and mixed batches; decode batch
    1 to >= 256 and contexts 128 to >= 32k where the KV fits on an 80 GB GPU; copies 64 KiB to
    1 GiB of every kind. Points beyond the KV capacity are skipped with a reason."""
    grid, _ = load_grid("default")
    shard = ShardShape.of(LLAMA_8B, 1)
    cap = kv_capacity_tokens(grid, shard, 80e9)
    assert 2e5 < cap < 6e5
    points, skipped = enumerate_points(grid, cap)
    pre = [p for p in points if p.phase == "prefill"]
    dec = [p for p in points if p.phase == "decode"]
    tr = [p for p in points if p.phase == "transfer"]
    assert min(sum(p.new) for p in pre) == 64 and max(max(p.new) for p in pre) >= 32768
    assert any(sum(p.cached) > 0 for p in pre)
    assert any(len(set(p.new)) > 1 for p in pre)
    assert min(len(p.contexts) for p in dec) == 1 and max(len(p.contexts) for p in dec) >= 256
    assert min(min(p.contexts) for p in dec) <= 128 and max(max(p.contexts) for p in dec) >= 32768
    assert any(len(set(p.contexts)) > 1 for p in dec)
    assert all(p.kv_tokens <= cap for p in pre + dec)
    assert skipped and all("exceeds capacity" in s for s in skipped)
    assert {p.transfer_kind for p in tr} == {"d2d", "h2d", "d2h"}
    assert min(p.nbytes for p in tr) == 64 * 1024 and max(p.nbytes for p in tr) == 2**30


def test_grid_errors_and_gpu_names() -> None:
    """Unknown grids are CalibrationErrors; device names map to profile names."""
    with pytest.raises(CalibrationError, match="no such grid"):
        load_grid("nonexistent")
    assert guess_gpu_profile("NVIDIA H100 80GB HBM3", ["h100-sxm", "h200"]) == "h100-sxm"
    assert guess_gpu_profile("NVIDIA H200", ["h100-sxm", "h200", "h20"]) == "h200"
    assert guess_gpu_profile("NVIDIA H20", ["h20"]) == "h20"
    assert guess_gpu_profile("Some New GPU") == "some-new-gpu"


@needs_torch
def test_attention_paths_agree_with_reference() -> None:
    """Per-sequence SDPA with lower-right causal masks and GQA equals a float32 reference on a
    packed batch with cached prefixes (the layout the flash varlen kernel uses on a GPU)."""
    import torch

    from calibrate import kernels

    batch = kernels.make_batch([5, 17, 1, 3], [0, 30, 12, 0], 16, torch.device("cpu"))
    gen = torch.Generator().manual_seed(0)
    q = torch.randn(batch.total_q, 4, 16, generator=gen)
    k = torch.randn(batch.total_k, 2, 16, generator=gen)
    v = torch.randn(batch.total_k, 2, 16, generator=gen)
    got = kernels.attention("sdpa_per_sequence", q, k, v, batch, 0.25)
    ref = kernels._reference_attention(q, k, v, batch, 0.25)
    torch.testing.assert_close(got, ref, atol=1e-5, rtol=1e-5)
    assert kernels.choose_attention(torch.device("cpu"), ShardShape.of(TINY, 1))[0] == "sdpa_per_sequence"


@needs_torch
def test_harness_runs_on_cpu_and_fit_follows(tmp_path: Path) -> None:
    """End to end on the CPU: raw.csv (one row per point, device=cpu) and meta.yaml (device
    cpu, a warning, versions, grid, shard), then fit, report, plot and FittedCostModel; the CPU
    fit is never found for a GPU."""
    from calibrate.harness import run_calibration

    out = tmp_path / "measured" / "cpu" / "tiny-tp1"
    result = run_calibration(TINY, 1, out, grid="tiny", device="cpu", command_line="test", log=lambda _m: None)
    assert result.failed == [] and result.skipped == []
    with (out / "raw.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    assert list(rows[0]) == list(RAW_COLUMNS)
    assert {r["device"] for r in rows} == {"cpu"}
    assert {r["phase"] for r in rows} == {"prefill", "decode", "transfer"}
    for r in rows:
        assert int(r["n_reps"]) >= 3
        assert float(r["p10_s"]) <= float(r["median_s"]) <= float(r["p90_s"])
        assert float(r["median_s"]) > 0
        assert np.isnan(float(r["power_w_mean"]))
    assert {r["timer"] for r in rows} == {"perf_counter"}
    meta = yaml.safe_load((out / "meta.yaml").read_text())
    assert meta["device"] == "cpu" and meta["gpu_profile"] == "cpu"
    assert "not a GPU profile" in meta["warning"]
    assert meta["schema_version"] == 1 and meta["grid"]["name"] == "tiny" and len(meta["grid"]["sha256"]) == 64
    assert meta["torch_version"] and meta["command_line"] == "test" and meta["date"]
    assert meta["shard"]["num_heads"] == 4 and meta["layers_timed"] == 2
    assert meta["method"]["attention"] == "sdpa_per_sequence" and meta["power_method"] == "none"
    assert meta["complete"] is True

    fitted = fit_measured(out, folds=3)
    written = write_fit(out, fitted, plot=True)
    assert {p.name for p in written} == {"fit.json", "fit_report.md", "fit_plot.png"}
    fit = json.loads((out / "fit.json").read_text())
    assert fit["device"] == "cpu" and set(fit["phases"]) >= {"prefill", "decode", "transfer_d2d"}
    assert "not a GPU profile" in (out / "fit_report.md").read_text()
    model = FittedCostModel.from_path(out)
    assert model.label == "fitted:cpu/tiny-tp1(device=cpu)"
    assert model.decode_step_time_s(2, 64) > 0 and model.prefill_time_s(np.array([16]), np.array([0])) > 0
    assert find_fitted([tmp_path], "h100-sxm", "tiny", 1) is None
    (tmp_path / "measured" / "h100-sxm").mkdir()
    (out.parent.parent / "h100-sxm" / "tiny-tp1").symlink_to(out)
    with pytest.warns(UserWarning, match="device=cpu"):
        assert find_fitted([tmp_path], "h100-sxm", "tiny", 1) is None
    assert find_fitted([tmp_path], "cpu", "tiny", 1) == out / "fit.json"


@needs_torch
def test_cli_calibrate_cpu_guards(tmp_path: Path) -> None:
    """The CLI keeps CPU output out of hardware_profiles/ and never overwrites raw data."""
    model_yaml = tmp_path / "tiny.yaml"
    model_yaml.write_text(yaml.safe_dump(TINY.model_dump(mode="json")))
    app = _standalone()
    r = CliRunner().invoke(app, ["calibrate", "gpu", "--model", str(model_yaml), "--device", "cpu", "--grid", "tiny"])
    assert r.exit_code == 1 and r.output.startswith("error: ") and "--out" in r.output
    out = tmp_path / "o"
    out.mkdir()
    (out / "raw.csv").write_text("x\n")
    args = ["calibrate", "gpu", "--model", str(model_yaml), "--device", "cpu", "--grid", "tiny", "--out", str(out)]
    r = CliRunner().invoke(app, args)
    assert r.exit_code == 1 and "never overwritten" in r.output
