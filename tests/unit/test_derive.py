"""Derived profiles: a measured fit scaled to a datasheet-only GPU (simdisagg.derive)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import yaml
from calibration_fixtures import LLAMA_8B, TRUE, gpu_dict
from typer.testing import CliRunner

from simdisagg.cli.calibrate import _standalone
from simdisagg.costmodel.fitted import FittedCostModel, ShardShape
from simdisagg.derive import derive_fit, render_derivation
from simdisagg.errors import CalibrationError
from simdisagg.fit import fit_measured, synthetic_measurement, write_fit
from simdisagg.hardware import GPUProfile

SOURCE = GPUProfile.model_validate(gpu_dict("h100-sxm", 989e12, 3.35e12, 450e9))
TARGET = GPUProfile.model_validate(gpu_dict("b200", 2250e12, 8.0e12, 900e9))


@pytest.fixture(scope="module")
def measured(tmp_path_factory: pytest.TempPathFactory) -> dict:
    folder = tmp_path_factory.mktemp("m") / "measured" / "h100-sxm" / "llama-3.1-8b-tp1"
    synthetic_measurement(folder, ShardShape.of(LLAMA_8B, 1), TRUE, noise=0.01, seed=4, device="cuda")
    result = fit_measured(folder)
    write_fit(folder, result, plot=False)
    return result.fit


def test_terms_scale_by_the_rate_that_bounds_them(measured: dict) -> None:
    """Compute terms scale by the FLOP/s ratio, memory terms by the bandwidth ratio, per-prompt
    overheads are kept, and the fixed term's weight-read part scales by bandwidth."""
    d = derive_fit(measured, SOURCE, TARGET)
    fr, br = 989e12 / 2250e12, 3.35e12 / 8.0e12
    assert d["derivation"]["flops_ratio"] == pytest.approx(fr)
    assert d["derivation"]["bandwidth_ratio"] == pytest.approx(br)
    for phase in ("prefill", "decode"):
        src = measured["phases"][phase]["physical"]["coefficients"]
        new = d["phases"][phase]["physical"]["coefficients"]
        assert new["gemm_flops"] == pytest.approx(src["gemm_flops"] * fr)
        assert new["kv_bytes"] == pytest.approx(src["kv_bytes"] * br)
        split = d["phases"][phase]["source_const_split"]
        assert split["weight_read_s"] + split["overhead_s"] == pytest.approx(src["const"])
        assert new["const"] == pytest.approx(split["overhead_s"] + split["weight_read_s"] * br)
    pre_src = measured["phases"]["prefill"]["physical"]["coefficients"]
    pre_new = d["phases"]["prefill"]["physical"]["coefficients"]
    assert pre_new["attn_flops"] == pytest.approx(pre_src["attn_flops"] * fr)
    assert pre_new["prompts"] == pytest.approx(pre_src["prompts"])
    assert d["weight_read"]["weight_read_s"] == pytest.approx(measured["weight_read"]["weight_read_s"] * br)


def test_derived_fit_is_labelled_and_loads(measured: dict) -> None:
    """provenance derived, physical terms only, source held-out error kept as a lower bound,
    host copies dropped; FittedCostModel loads it and the faster GPU is faster."""
    d = derive_fit(measured, SOURCE, TARGET)
    assert d["provenance"] == "derived"
    assert d["gpu"] == "b200"
    assert all(spec["chosen"] == "physical" for spec in d["phases"].values())
    assert "transfer_h2d" not in d["phases"] and "transfer_d2d" in d["phases"]
    assert "lower bound" in d["phases"]["decode"]["held_out_error_note"]
    assert "peak" in d["derivation"]["reasoning"]
    target_model = FittedCostModel(json.loads(json.dumps(d)))
    source_model = FittedCostModel(measured)
    assert target_model.label == "derived:b200/llama-3.1-8b-tp1(from h100-sxm)"
    assert target_model.provenance == "derived"
    assert target_model.held_out_error["decode"]["median_ape"] == pytest.approx(
        measured["phases"]["decode"]["held_out"]["physical"]["median_ape"]
    )
    for b, c in ((1, 1000), (64, 64 * 2000), (256, 256 * 512)):
        assert target_model.decode_step_time_s(b, c) < source_model.decode_step_time_s(b, c)
    n = np.array([8192])
    assert target_model.prefill_time_s(n, n * 0) < source_model.prefill_time_s(n, n * 0)
    run = target_model.decode_run_times_s(8, 8000, 40)
    np.testing.assert_array_equal(run, [target_model.decode_step_time_s(8, 8000 + 8 * j) for j in range(40)])
    assert "provenance: derived" in render_derivation(d)


def test_same_gpu_derivation_is_the_physical_fit(measured: dict) -> None:
    """Deriving onto the source GPU itself changes no coefficient (ratios of 1)."""
    d = derive_fit(measured, SOURCE, SOURCE)
    for phase in ("prefill", "decode"):
        assert d["phases"][phase]["physical"]["coefficients"] == pytest.approx(
            measured["phases"][phase]["physical"]["coefficients"]
        )


def test_derive_refuses_cpu_derived_or_mismatched_sources(measured: dict) -> None:
    """Only a GPU-measured fit of the named source GPU can be derived from."""
    with pytest.raises(CalibrationError, match="device=cpu"):
        derive_fit({**measured, "device": "cpu"}, SOURCE, TARGET)
    with pytest.raises(CalibrationError, match="measured fit"):
        derive_fit(derive_fit(measured, SOURCE, TARGET), TARGET, SOURCE)
    with pytest.raises(CalibrationError, match="source profile"):
        derive_fit(measured, TARGET, SOURCE)


def test_tp_shard_uses_target_intra_node_bandwidth(tmp_path: Path) -> None:
    """A tp>1 derived fit carries a modelled all-reduce over the target's NVLink bandwidth."""
    synthetic_measurement(tmp_path, ShardShape.of(LLAMA_8B, 2), TRUE, noise=0.0, device="cuda")
    fit = fit_measured(tmp_path).fit
    d = derive_fit(fit, SOURCE, TARGET)
    assert d["allreduce"]["provenance"] == "modelled"
    assert d["allreduce"]["intra_node_bandwidth_bytes_per_s"] == 900e9
    assert FittedCostModel(d).label.startswith("derived:b200/llama-3.1-8b-tp2")


def test_fit_cli_derive_to_writes_derived_profile(tmp_path: Path) -> None:
    """`simdisagg fit <measured> --derive-to b200` writes <root>/derived/b200/<model>-tp<k>/."""
    profiles = tmp_path / "profiles"
    (profiles / "gpus").mkdir(parents=True)
    for g in (gpu_dict("h100-sxm", 989e12, 3.35e12, 450e9), gpu_dict("b200", 2250e12, 8.0e12, 900e9)):
        (profiles / "gpus" / f"{g['name']}.yaml").write_text(yaml.safe_dump(g))
    folder = profiles / "measured" / "h100-sxm" / "llama-3.1-8b-tp1"
    synthetic_measurement(folder, ShardShape.of(LLAMA_8B, 1), TRUE, noise=0.01, device="cuda")
    result = CliRunner().invoke(
        _standalone(), ["fit", str(folder), "--no-plot", "--derive-to", "b200", "--profiles-dir", str(profiles)]
    )
    assert result.exit_code == 0, result.output
    out = profiles / "derived" / "b200" / "llama-3.1-8b-tp1"
    derived = json.loads((out / "fit.json").read_text())
    assert derived["provenance"] == "derived" and derived["gpu"] == "b200"
    assert (out / "derivation.md").is_file()
    assert (folder / "fit.json").is_file() and (folder / "fit_report.md").is_file()
    assert "provenance derived" in result.output
