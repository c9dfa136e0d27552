"""Fitting measured kernels: parameter recovery, held-out error, model choice, FittedCostModel.

Synthetic measurements come from :func:`simdisagg.fit.synthetic_measurement`: times generated
by the physical model with known coefficients, times log-normal noise (and optionally a
non-physical distortion), on a grid like the default calibration grid.
"""

from __future__ import annotations

import json
import math
import warnings
from pathlib import Path

import numpy as np
import pytest
from calibration_fixtures import LLAMA_8B, TRUE, gpu_dict

from simdisagg.costmodel.base import CostModel
from simdisagg.costmodel.fitted import FittedCostModel, ShardShape, find_fitted
from simdisagg.errors import CalibrationError, ConfigError
from simdisagg.fit import (
    Candidate,
    cross_validate,
    fit_measured,
    kfold_splits,
    synthetic_measurement,
    write_fit,
)
from simdisagg.hardware import GPUProfile


@pytest.fixture(scope="module")
def shard() -> ShardShape:
    return ShardShape.of(LLAMA_8B, 1)


@pytest.fixture(scope="module")
def noisy_fit(tmp_path_factory: pytest.TempPathFactory, shard: ShardShape) -> tuple[Path, dict]:
    """A measured folder (1 % noise) fitted and written, device labelled cuda."""
    folder = tmp_path_factory.mktemp("measured") / "measured" / "h100-sxm" / "llama-3.1-8b-tp1"
    synthetic_measurement(folder, shard, TRUE, noise=0.01, seed=3, device="cuda")
    result = fit_measured(folder)
    write_fit(folder, result, plot=False)
    return folder, result.fit


def test_shard_shape_divides_heads_and_replicates_kv_heads() -> None:
    """tp divides heads, intermediate and vocab; KV heads never drop below one (replicated)."""
    s = ShardShape.of(LLAMA_8B, 8)
    assert (s.num_heads, s.num_kv_heads, s.intermediate_size) == (4, 1, 1792)
    assert ShardShape.of(LLAMA_8B, 16).num_kv_heads == 1
    assert s.kv_bytes_per_token == 2 * 32 * 1 * 128 * 2
    with pytest.raises(ConfigError):
        ShardShape.of(LLAMA_8B, 3)


def test_fit_recovers_known_physical_parameters(noisy_fit: tuple[Path, dict]) -> None:
    """NNLS on relative-error-weighted rows recovers the generating coefficients: the
    well-identified ones within 5 % at 1 % noise (prefill's KV and per-prompt terms are weakly
    identified on this grid, so only their order of magnitude is checked)."""
    _, fit = noisy_fit
    pre = fit["phases"]["prefill"]["physical"]["coefficients"]
    for name in ("const", "gemm_flops", "attn_flops"):
        assert pre[name] == pytest.approx(TRUE["prefill"][name], rel=0.05), name
    for name in ("kv_bytes", "prompts"):
        assert 0.3 < pre[name] / TRUE["prefill"][name] < 3.0, name
    dec = fit["phases"]["decode"]["physical"]["coefficients"]
    for name, value in TRUE["decode"].items():
        assert dec[name] == pytest.approx(value, rel=0.03), name
    h2d = fit["phases"]["transfer_h2d"]["physical"]["coefficients"]
    assert h2d["bytes"] == pytest.approx(TRUE["transfer_h2d"]["bytes"], rel=0.03)


def test_kfold_splits_hold_out_disjoint_points() -> None:
    """Every point is held out exactly once and never in its own fold's training set."""
    for n, k in ((37, 5), (4, 5), (10, 10)):
        splits = kfold_splits(n, k, seed=7)
        assert len(splits) == min(n, k)
        seen = []
        for train, test in splits:
            assert set(train.tolist()).isdisjoint(test.tolist())
            assert sorted(train.tolist() + test.tolist()) == list(range(n))
            seen += test.tolist()
        assert sorted(seen) == list(range(n))
    assert kfold_splits(1, 5, 0) == []
    assert [t.tolist() for _, t in kfold_splits(20, 4, 1)] == [t.tolist() for _, t in kfold_splits(20, 4, 1)]


def test_held_out_predictions_do_not_see_the_held_out_points(tmp_path: Path, shard: ShardShape) -> None:
    """A held-out prediction is made by a candidate fitted on the training folds only: it
    equals a refit on those indices, and corrupting the held-out measurements leaves it
    unchanged."""
    synthetic_measurement(tmp_path, shard, TRUE, noise=0.02, seed=5)
    data = fit_measured(tmp_path).data["decode"]
    cv = cross_validate(data, folds=5, seed=0)
    for train, test in cv.splits:
        for kind in ("physical", "interpolation"):
            cand = Candidate(kind, data.subset(train))
            np.testing.assert_allclose(cv.predictions[kind][test], cand.predict(data.features[test], data.coords[test]))
    train, test = cv.splits[0]
    corrupted = data.subset(np.arange(len(data)))
    corrupted.y = corrupted.y.copy()
    corrupted.y[test] *= 10.0
    cv2 = cross_validate(corrupted, folds=5, seed=0)
    for kind in ("physical", "interpolation"):
        np.testing.assert_allclose(cv2.predictions[kind][test], cv.predictions[kind][test])


def test_held_out_error_is_reported_per_phase(noisy_fit: tuple[Path, dict]) -> None:
    """fit.json reports median <= p95 <= max held-out APE per phase and the worst point; with 1 %
    noise the physical model's held-out median error is about the noise."""
    _, fit = noisy_fit
    for name, spec in fit["phases"].items():
        e = spec["held_out_error"]
        assert 0 <= e["median_ape"] <= e["p95_ape"] <= e["max_ape"], name
        assert spec["worst_point"]["ape"] == pytest.approx(e["max_ape"])
        assert spec["folds"] == 5
    assert fit["phases"]["decode"]["held_out"]["physical"]["median_ape"] < 0.02


def test_physical_model_chosen_for_physical_data(noisy_fit: tuple[Path, dict]) -> None:
    """Data generated by the physical model: interpolating noise does not help on held-out
    points, so the physical terms are chosen for prefill and decode."""
    _, fit = noisy_fit
    assert fit["phases"]["prefill"]["chosen"] == "physical"
    assert fit["phases"]["decode"]["chosen"] == "physical"


def test_interpolation_chosen_when_data_are_not_physical(tmp_path: Path, shard: ShardShape) -> None:
    """A smooth non-physical factor over log batch size (kernel switches, tile effects) is not
    representable by the linear terms; interpolating the residual wins on held-out points."""
    wiggle = {"decode": lambda z: 1.0 + 0.4 * math.sin(1.3 * z[0]) * math.cos(0.7 * z[1])}
    synthetic_measurement(tmp_path, shard, TRUE, noise=0.005, seed=2, distortion=wiggle)
    fit = fit_measured(tmp_path).fit
    dec = fit["phases"]["decode"]
    assert dec["chosen"] == "interpolation"
    assert dec["held_out"]["interpolation"]["mean_ape"] < dec["held_out"]["physical"]["mean_ape"]


def test_fitted_cost_model_round_trips_and_matches_data(noisy_fit: tuple[Path, dict], shard: ShardShape) -> None:
    """fit.json -> FittedCostModel: protocol, label, held-out errors, and predictions at the
    measured points within a few times the noise."""
    folder, fit = noisy_fit
    model = FittedCostModel.from_file(folder / "fit.json")  # the factory's entry point
    assert isinstance(model, CostModel)
    assert model.label == "fitted:h100-sxm/llama-3.1-8b-tp1"
    assert set(model.held_out_error) >= {"prefill", "decode"}
    assert set(model.held_out_error["decode"]) >= {"median_ape", "p95_ape", "max_ape"}
    assert model.held_out_error["decode"] == pytest.approx(fit["phases"]["decode"]["held_out_error"])
    result = fit_measured(folder)
    dec = result.data["decode"]
    b = np.exp(dec.coords[:, 0]).round().astype(int)
    c = (dec.features[:, 2] / shard.kv_bytes_per_token).round().astype(int)
    pred = np.array([model.decode_step_time_s(int(bi), int(ci)) for bi, ci in zip(b, c, strict=True)])
    assert np.median(np.abs(pred / dec.y - 1)) < 0.02
    t = model.prefill_time_s(np.array([2048]), np.array([0]))
    expected = TRUE["prefill"]
    feats = ShardShape.of(LLAMA_8B, 1)
    truth = (
        expected["const"]
        + expected["gemm_flops"] * (2 * 32 * feats.layer_params * 2048 + 2 * feats.lm_head_params)
        + expected["attn_flops"] * 4 * 32 * 32 * 128 * (2048 * 2049 / 2)
        + expected["kv_bytes"] * feats.kv_bytes_per_token * 2048
        + expected["prompts"]
    )
    assert t == pytest.approx(truth, rel=0.03)
    assert model.transfer_time_s("h2d", 2**30) == pytest.approx(2**30 / 50e9, rel=0.03)


def test_interpolation_reproduces_measured_points(tmp_path: Path, shard: ShardShape) -> None:
    """With interpolation chosen, the fitted model passes through every measured decode point."""
    wiggle = {"decode": lambda z: 1.0 + 0.4 * math.sin(1.3 * z[0]) * math.cos(0.7 * z[1])}
    synthetic_measurement(tmp_path, shard, TRUE, noise=0.005, seed=2, distortion=wiggle)
    result = fit_measured(tmp_path)
    write_fit(tmp_path, result, plot=False)
    model = FittedCostModel.from_path(tmp_path / "fit.json")
    assert model.chosen["decode"] == "interpolation"
    dec = result.data["decode"]
    b = np.exp(dec.coords[:, 0]).round().astype(int)
    c = (dec.features[:, 2] / shard.kv_bytes_per_token).round().astype(int)
    pred = np.array([model.decode_step_time_s(int(bi), int(ci)) for bi, ci in zip(b, c, strict=True)])
    np.testing.assert_allclose(pred, dec.y, rtol=1e-9)
    assert "device=synthetic" in model.label


@pytest.mark.parametrize("distorted", [False, True])
def test_decode_run_times_equal_stepwise(tmp_path: Path, shard: ShardShape, distorted: bool) -> None:
    """decode_run_times_s(B, C, n)[j] == decode_step_time_s(B, C + j*B) exactly, for the
    physical and the interpolated model, inside and beyond the measured grid."""
    wiggle = {"decode": lambda z: 1.0 + 0.4 * math.sin(1.3 * z[0])} if distorted else None
    synthetic_measurement(tmp_path, shard, TRUE, noise=0.01, seed=1, distortion=wiggle)
    write_fit(tmp_path, fit_measured(tmp_path), plot=False)
    model = FittedCostModel.from_path(tmp_path)
    for b, c, n in ((1, 100, 300), (7, 5000, 64), (64, 64 * 700, 200), (600, 600 * 900, 20), (3, 1, 5)):
        run = model.decode_run_times_s(b, c, n)
        step = np.array([model.decode_step_time_s(b, c + j * b) for j in range(n)])
        assert run.shape == (n,)
        np.testing.assert_array_equal(run, step)
        assert np.all(np.diff(run) >= -1e-15) or distorted


def test_mixed_step_shares_one_weight_read(noisy_fit: tuple[Path, dict]) -> None:
    """mixed = prefill + decode - one weight read, never below the slower part; degenerate
    mixes reduce to the pure phases."""
    folder, fit = noisy_fit
    model = FittedCostModel.from_path(folder)
    new, cached = np.array([512, 256]), np.array([0, 1024])
    p = model.prefill_time_s(new, cached)
    d = model.decode_step_time_s(32, 32 * 1000)
    m = model.mixed_step_time_s(new, cached, 32, 32 * 1000)
    assert max(p, d) <= m < p + d
    assert m == pytest.approx(p + d - min(model.weight_read_s, p, d))
    assert model.weight_read_s == pytest.approx(fit["weight_read"]["weight_read_s"])
    assert model.mixed_step_time_s(new, cached, 0, 0) == p
    assert model.mixed_step_time_s(np.array([], dtype=int), np.array([], dtype=int), 32, 32000) == d
    assert model.prefill_time_s(np.array([], dtype=int), np.array([], dtype=int)) == 0.0


def test_tensor_parallel_adds_modelled_allreduce(tmp_path: Path) -> None:
    """A tp=2 shard adds 2 ring all-reduces per layer over the GPU's intra-node bandwidth; without
    the GPU's bandwidth the model refuses to guess."""
    shard2 = ShardShape.of(LLAMA_8B, 2)
    synthetic_measurement(tmp_path, shard2, TRUE, noise=0.0, seed=0)
    fit = fit_measured(tmp_path).fit
    assert fit["allreduce"] is None or fit["allreduce"]["provenance"] == "modelled"
    fit = {**fit, "allreduce": None}
    with pytest.raises(ConfigError):
        FittedCostModel(fit)
    gpu = GPUProfile.model_validate(gpu_dict(nvlink=400e9))
    model = FittedCostModel(fit, gpu=gpu)
    single = FittedCostModel({**fit, "shard": {**fit["shard"], "tp": 1}})
    b = 16
    per_token = 2 * 32 * 4096 * 2 * (2 * (2 - 1) / 2 / 400e9)
    expected = 2 * 32 * 1e-5 + per_token * b
    assert model.decode_step_time_s(b, 16000) - single.decode_step_time_s(b, 16000) == pytest.approx(expected)


def test_find_fitted_prefers_measured_and_skips_cpu(tmp_path: Path, noisy_fit: tuple[Path, dict]) -> None:
    """measured/<gpu>/<model>-tp<k>/fit.json first, then derived/; CPU fits never stand in for a GPU."""
    _, fit = noisy_fit
    root_a, root_b = tmp_path / "a", tmp_path / "b"
    derived = root_a / "derived" / "h100-sxm" / "llama-3.1-8b-tp1"
    derived.mkdir(parents=True)
    (derived / "fit.json").write_text(json.dumps({**fit, "provenance": "derived"}))
    measured = root_b / "measured" / "h100-sxm" / "llama-3.1-8b-tp1"
    measured.mkdir(parents=True)
    (measured / "fit.json").write_text(json.dumps(fit))
    assert find_fitted([root_a, root_b], "h100-sxm", "llama-3.1-8b", 1) == measured / "fit.json"
    assert find_fitted([root_a], "h100-sxm", "llama-3.1-8b", 1) == derived / "fit.json"
    assert find_fitted([root_a, root_b], "h200", "llama-3.1-8b", 1) is None
    assert find_fitted([root_a, root_b], "h100-sxm", "llama-3.1-8b", 2) is None
    (measured / "fit.json").write_text(json.dumps({**fit, "device": "cpu"}))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert find_fitted([root_b], "h100-sxm", "llama-3.1-8b", 1) is None
    assert any("device=cpu" in str(w.message) for w in caught)


def test_bad_raw_files_raise_calibration_error(tmp_path: Path, shard: ShardShape) -> None:
    """Missing files, missing columns and non-positive times are one-line CalibrationErrors."""
    with pytest.raises(CalibrationError, match="raw.csv"):
        fit_measured(tmp_path)
    synthetic_measurement(tmp_path, shard, TRUE)
    text = (tmp_path / "raw.csv").read_text().splitlines()
    header = text[0].split(",")
    col = header.index("median_s")
    cells = text[1].split(",")
    cells[col] = "0"
    (tmp_path / "raw.csv").write_text("\n".join([text[0], ",".join(cells), *text[2:]]) + "\n")
    with pytest.raises(CalibrationError, match=r"raw.csv:2: field 'median_s'"):
        fit_measured(tmp_path)
    (tmp_path / "raw.csv").write_text("phase,median_s\nprefill,1.0\n")
    with pytest.raises(CalibrationError, match="missing columns"):
        fit_measured(tmp_path)


def test_bulk_and_short_run_decode_times_match_the_run_bit_for_bit(noisy_fit: tuple[Path, dict]) -> None:
    """The step log recomputes fast-forwarded runs in bulk: each step must be exactly the
    duration the run had (the fitted model's per-row arithmetic is the same either way)."""
    from simdisagg.costmodel.base import decode_times_bulk_s, short_run_times

    folder, _ = noisy_fit
    model = FittedCostModel.from_path(folder)
    for batch, context, steps in ((1, 700, 5), (48, 48 * 3000 + 17, 300)):
        run = model.decode_run_times_s(batch, context, steps)
        bulk = decode_times_bulk_s(model, np.full(steps, batch), context + batch * np.arange(steps))
        assert np.array_equal(run, bulk)
        assert short_run_times(model)(batch, context, steps) == run.tolist()
