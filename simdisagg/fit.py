"""Fit cost models to measured kernels: ``raw.csv`` -> ``fit.json`` + ``fit_report.md`` + plot.

For every phase in ``raw.csv`` (``prefill``, ``decode``, and ``transfer_<kind>``) two candidate
predictors are fitted (their form is described in :mod:`simdisagg.costmodel.fitted`):

* **physical** -- non-negative least squares (:func:`scipy.optimize.nnls`) on the physical
  features, each row divided by its measured time so the fit minimises *relative* error;
* **interpolation** -- the physical prediction times an interpolated log-residual over the
  measured grid.

The choice between them is made on points the fit has not seen: the grid points of a phase are
split into ``k`` folds (seeded shuffle, each point held out exactly once); each fold's points
are predicted by candidates fitted to the other folds. The candidate with the lower mean
held-out absolute percentage error (APE) is chosen (the physical one unless interpolation is
more than 2 % better: it extrapolates more safely), then refitted on all points. ``fit.json``
records, per phase, both candidates' held-out median / p95 / max APE and the point where the
chosen one errs most.

Nothing here imports torch; matplotlib is imported only to draw the plot.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from simdisagg.costmodel.fitted import (
    ALLREDUCE_LATENCY_S,
    DECODE_FEATURES,
    FEATURE_BOUND,
    FEATURE_UNITS,
    FIT_SCHEMA_VERSION,
    PREFILL_FEATURES,
    TRANSFER_FEATURES,
    TRANSFER_KINDS,
    LogResidualInterpolator,
    ShardShape,
    ape_summary,
    decode_coords,
    decode_features,
    fit_label,
    linear_terms,
    prefill_aggregates,
    prefill_coords,
    prefill_features,
    transfer_coords,
    transfer_features,
)
from simdisagg.errors import CalibrationError, ConfigError

#: Columns every ``raw.csv`` must have (more are allowed).
RAW_REQUIRED_COLUMNS: tuple[str, ...] = (
    "device",
    "phase",
    "batch_size",
    "new_tokens_list",
    "cached_tokens_list",
    "context_tokens",
    "bytes",
    "transfer_kind",
    "n_reps",
    "median_s",
    "p10_s",
    "p90_s",
    "mean_s",
    "std_s",
    "power_w_mean",
)

#: Interpolation must beat the physical terms' held-out error by this fraction to be chosen:
#: near-ties go to the physical terms, which extrapolate more safely beyond the grid.
TIE_MARGIN = 0.02

#: Criterion used to choose between candidates (documented in fit.json).
CRITERION = "lowest mean held-out absolute percentage error (physical unless interpolation is > 2 % lower)"


# -- data ------------------------------------------------------------------------------------
@dataclass
class PhaseData:
    """One phase's measured points: features, interpolation coordinates, median times."""

    name: str
    feature_names: tuple[str, ...]
    coord_names: tuple[str, ...]
    features: np.ndarray
    coords: np.ndarray
    y: np.ndarray
    labels: list[str]
    power_w: np.ndarray
    #: Points never fitted, only predicted (``holdout`` column of raw.csv); none by default.
    holdout: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=bool))

    def __post_init__(self) -> None:
        if self.holdout.shape[0] != self.y.shape[0]:
            self.holdout = np.zeros(self.y.shape[0], dtype=bool)

    def __len__(self) -> int:
        return int(self.y.shape[0])

    def subset(self, idx: np.ndarray) -> PhaseData:
        """The points at ``idx``."""
        return PhaseData(
            self.name,
            self.feature_names,
            self.coord_names,
            self.features[idx],
            self.coords[idx],
            self.y[idx],
            [self.labels[i] for i in idx],
            self.power_w[idx],
            self.holdout[idx],
        )


def _parse_list(text: object) -> list[int]:
    if text is None or (isinstance(text, float) and math.isnan(text)) or str(text).strip() == "":
        return []
    return [int(float(v)) for v in str(text).split(";") if v.strip() != ""]


def _human_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.3g} {unit}"
        n /= 1024.0
    return f"{n:.3g} GiB"


def _short_list(values: list[int], limit: int = 6) -> str:
    if len(values) > 1 and len(set(values)) == 1:
        return f"{values[0]} each"
    if len(values) <= limit:
        return "[" + ",".join(str(v) for v in values) + "]"
    return "[" + ",".join(str(v) for v in values[:limit]) + ",...]"


def raw_samples_path(folder: Path) -> Path:
    """``raw.csv`` of a measured folder, or ``raw.csv.gz`` (how kernel-database imports are
    stored: the same columns, compressed) when only that exists."""
    folder = Path(folder)
    plain = folder / "raw.csv"
    packed = folder / "raw.csv.gz"
    return packed if packed.is_file() and not plain.is_file() else plain


def load_raw(folder: Path) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Rows of ``raw.csv`` (as dicts) and the parsed ``meta.yaml`` of a measured folder."""
    import pandas as pd

    folder = Path(folder)
    raw_path, meta_path = raw_samples_path(folder), folder / "meta.yaml"
    if not raw_path.is_file():
        raise CalibrationError(f"{raw_path}: no raw.csv (run simdisagg calibrate first)")
    if not meta_path.is_file():
        raise CalibrationError(f"{meta_path}: no meta.yaml next to raw.csv")
    try:
        frame = pd.read_csv(raw_path, keep_default_na=True, dtype={"new_tokens_list": str, "cached_tokens_list": str})
    except (OSError, ValueError) as exc:
        raise CalibrationError(f"{raw_path}: cannot read ({exc})") from exc
    missing = [c for c in RAW_REQUIRED_COLUMNS if c not in frame.columns]
    if missing:
        raise CalibrationError(f"{raw_path}: missing columns {', '.join(missing)}")
    if frame.empty:
        raise CalibrationError(f"{raw_path}: no measured points")
    bad = frame[~(frame["median_s"] > 0)]
    if not bad.empty:
        raise CalibrationError(f"{raw_path}:{int(bad.index[0]) + 2}: field 'median_s': must be > 0")
    try:
        meta = yaml.safe_load(meta_path.read_text())
    except yaml.YAMLError as exc:
        raise CalibrationError(f"{meta_path}: not valid YAML") from exc
    for key in ("schema_version", "device", "shard", "gpu_profile"):
        if key not in meta:
            raise CalibrationError(f"{meta_path}: field '{key}': missing")
    devices = set(frame["device"].astype(str))
    if devices != {str(meta["device"])}:
        raise CalibrationError(
            f"{raw_path}: device column {sorted(devices)} disagrees with meta.yaml ({meta['device']})"
        )
    return frame.to_dict(orient="records"), meta


def _holdout(rows: list[dict[str, Any]]) -> np.ndarray:
    """The ``holdout`` flags of raw rows (absent or empty: not held out)."""
    flags = []
    for r in rows:
        v = r.get("holdout", 0)
        flags.append(bool(v) and not (isinstance(v, float) and math.isnan(v)) and str(v).strip() not in ("", "0"))
    return np.array(flags, dtype=bool)


def phase_datasets(rows: list[dict[str, Any]], shard: ShardShape) -> dict[str, PhaseData]:
    """Group raw rows into per-phase datasets with features and coordinates."""
    out: dict[str, PhaseData] = {}
    pre = [r for r in rows if r["phase"] == "prefill"]
    if pre:
        agg = []
        labels = []
        for r in pre:
            n = _parse_list(r["new_tokens_list"])
            c = _parse_list(r["cached_tokens_list"]) or [0] * len(n)
            agg.append(prefill_aggregates(np.array(n), np.array(c)))
            if len(n) == 1:
                labels.append(f"prompt n={n[0]} cached={c[0]}")
            else:
                labels.append(f"{len(n)} prompts n={_short_list(n)} cached={_short_list(c)}")
        a = np.array(agg, dtype=np.float64)
        out["prefill"] = PhaseData(
            "prefill",
            PREFILL_FEATURES,
            ("log_new_tokens", "log_prompts", "log1p_mean_cached_tokens"),
            prefill_features(shard, a[:, 0], a[:, 1], a[:, 2], a[:, 3]),
            prefill_coords(a[:, 0], a[:, 1], a[:, 3]),
            np.array([float(r["median_s"]) for r in pre]),
            labels,
            np.array([float(r["power_w_mean"]) for r in pre]),
            _holdout(pre),
        )
    dec = [r for r in rows if r["phase"] == "decode"]
    if dec:
        bs = np.array([float(r["batch_size"]) for r in dec])
        cs = np.array([float(r["context_tokens"]) for r in dec])
        out["decode"] = PhaseData(
            "decode",
            DECODE_FEATURES,
            ("log_batch_size", "log_mean_context_tokens"),
            decode_features(shard, bs, cs),
            decode_coords(bs, cs),
            np.array([float(r["median_s"]) for r in dec]),
            [f"B={int(bi)} C={int(ci)} (mean ctx {ci / bi:.0f})" for bi, ci in zip(bs, cs, strict=True)],
            np.array([float(r["power_w_mean"]) for r in dec]),
            _holdout(dec),
        )
    for kind in TRANSFER_KINDS:
        tr = [r for r in rows if r["phase"] == "transfer" and r["transfer_kind"] == kind]
        if not tr:
            continue
        nbytes = np.array([float(r["bytes"]) for r in tr])
        out[f"transfer_{kind}"] = PhaseData(
            f"transfer_{kind}",
            TRANSFER_FEATURES,
            ("log_bytes",),
            transfer_features(nbytes),
            transfer_coords(nbytes),
            np.array([float(r["median_s"]) for r in tr]),
            [f"{kind} {_human_bytes(x)}" for x in nbytes],
            np.array([float(r["power_w_mean"]) for r in tr]),
        )
    return out


# -- fitting ---------------------------------------------------------------------------------
def nnls_relative(features: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Non-negative coefficients minimising ``sum(((features @ a) / y - 1)**2)``.

    Rows are divided by the measured time (relative error), columns are scaled to unit maximum
    for conditioning, and all-zero columns get a zero coefficient."""
    from scipy.optimize import nnls

    x = np.asarray(features, dtype=np.float64) / np.asarray(y, dtype=np.float64)[:, None]
    scale = np.abs(x).max(axis=0)
    active = scale > 0
    coef = np.zeros(x.shape[1])
    if not active.any():
        return coef
    sol, _ = nnls(x[:, active] / scale[active], np.ones(x.shape[0]), maxiter=50 * x.shape[1] + 100)
    coef[active] = sol / scale[active]
    return coef


def _physical_floor(pred: np.ndarray) -> np.ndarray:
    # A degenerate fit can predict 0 s; keep log-residuals and APEs finite.
    return np.asarray(np.maximum(pred, 1e-12), dtype=np.float64)


class Candidate:
    """A fitted candidate predictor (physical, or physical x interpolated residual)."""

    def __init__(self, kind: str, data: PhaseData) -> None:
        self.kind = kind
        self.coef = nnls_relative(data.features, data.y)
        self.interp: LogResidualInterpolator | None = None
        self.residuals = np.log(data.y / _physical_floor(linear_terms(data.features, self.coef)))
        if kind == "interpolation":
            self.interp = LogResidualInterpolator(data.coords, self.residuals)

    def predict(self, features: np.ndarray, coords: np.ndarray) -> np.ndarray:
        """Predicted seconds for the given points."""
        base = _physical_floor(linear_terms(features, self.coef))
        if self.interp is None:
            return np.asarray(base, dtype=np.float64)
        return np.asarray(base * np.exp(self.interp(coords)), dtype=np.float64)


def kfold_splits(n: int, folds: int, seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """``(train, test)`` index pairs: a seeded shuffle of ``range(n)`` cut into
    ``min(folds, n)`` folds; every index is in exactly one test set and never in its own
    fold's training set."""
    k = min(folds, n)
    if k < 2:
        return []
    order = np.random.default_rng(np.random.SeedSequence(seed)).permutation(n)
    parts = np.array_split(order, k)
    return [(np.sort(np.concatenate([p for j, p in enumerate(parts) if j != i])), np.sort(parts[i])) for i in range(k)]


@dataclass
class CrossValidation:
    """Held-out predictions of each candidate for every point of a phase."""

    splits: list[tuple[np.ndarray, np.ndarray]]
    predictions: dict[str, np.ndarray] = field(default_factory=dict)


CANDIDATES: tuple[str, ...] = ("physical", "interpolation")
#: Candidates shown in reports (``components`` only for imports that break iterations down).
REPORTED_CANDIDATES: tuple[str, ...] = ("physical", "interpolation", "components")


def cross_validate(data: PhaseData, folds: int = 5, seed: int = 0) -> CrossValidation:
    """Predict every point from candidates fitted without it (k-fold by grid point)."""
    splits = kfold_splits(len(data), folds, seed)
    cv = CrossValidation(splits)
    for kind in CANDIDATES:
        pred = np.full(len(data), np.nan)
        for train, test in splits:
            cand = Candidate(kind, data.subset(train))
            pred[test] = cand.predict(data.features[test], data.coords[test])
        cv.predictions[kind] = pred
    return cv


def _worst(data: PhaseData, pred: np.ndarray) -> dict[str, Any] | None:
    if len(data) == 0 or np.isnan(pred).all():
        return None
    ape = np.abs(pred - data.y) / data.y
    i = int(np.nanargmax(ape))
    return {
        "label": data.labels[i],
        "measured_s": float(data.y[i]),
        "predicted_s": float(pred[i]),
        "ape": float(ape[i]),
    }


def _holdout_validation(data: PhaseData, candidates: tuple[str, ...] = CANDIDATES) -> CrossValidation:
    """Predict the held-out points from candidates fitted on all the others."""
    train = np.flatnonzero(~data.holdout)
    test = np.flatnonzero(data.holdout)
    cv = CrossValidation([(train, test)])
    for kind in candidates:
        pred = np.full(len(data), np.nan)
        cand = Candidate(kind, data.subset(train))
        pred[test] = cand.predict(data.features[test], data.coords[test])
        cv.predictions[kind] = pred
    return cv


def fit_phase(
    data: PhaseData, folds: int = 5, seed: int = 0, candidates: tuple[str, ...] = CANDIDATES
) -> tuple[dict[str, Any], CrossValidation]:
    """Fit the candidates, choose on held-out error, refit the choice on all fitting points.

    With points flagged ``holdout`` (a kernel-database import writes them), candidates are
    fitted on the others and judged on those; the held-out points are never fitted. Without,
    every point is held out once in a k-fold split. An import's ``components`` predictor is
    judged beside these afterwards (:func:`_add_components`); the generic interpolation is not
    tried on it (``candidates=("physical",)``): the components interpolate the same samples."""
    has_holdout = bool(data.holdout.any()) and bool((~data.holdout).any())
    if not has_holdout:
        candidates = CANDIDATES
    cv = _holdout_validation(data, candidates) if has_holdout else cross_validate(data, folds, seed)
    judged = data.holdout if has_holdout else np.ones(len(data), dtype=bool)
    held: dict[str, dict[str, Any]] = {}
    for kind in candidates:
        summary: dict[str, Any] = dict(ape_summary(data.y[judged], cv.predictions[kind][judged]))
        summary["worst_point"] = _worst(data, cv.predictions[kind])
        held[kind] = summary
    chosen = "physical"
    if cv.splits and "interpolation" in held:
        phys, interp = held["physical"]["mean_ape"], held["interpolation"]["mean_ape"]
        if interp < phys * (1.0 - TIE_MARGIN) - 1e-12:
            chosen = "interpolation"
    fitting = data.subset(np.flatnonzero(~data.holdout)) if has_holdout else data
    # Physical coefficients (and, when interpolation is a candidate, residuals) on the fitting points.
    final = Candidate("interpolation" if "interpolation" in candidates else "physical", fitting)
    if chosen == "interpolation":
        in_sample = final.predict(fitting.features, fitting.coords)
    else:
        in_sample = _physical_floor(linear_terms(fitting.features, final.coef))
    finite_power = fitting.power_w[np.isfinite(fitting.power_w)]
    spec: dict[str, Any] = {
        "chosen": chosen,
        "criterion": CRITERION,
        "n_points": len(fitting),
        "n_held_out": int(judged.sum()) if has_holdout else len(data),
        "held_out_kind": "held-out compositions (never fitted)" if has_holdout else f"{len(cv.splits)}-fold by grid point",
        "folds": len(cv.splits),
        "physical": {
            "features": list(data.feature_names),
            "coefficients": {n: float(c) for n, c in zip(data.feature_names, final.coef, strict=True)},
            "units": {n: FEATURE_UNITS[n] for n in data.feature_names},
            "bound": {n: FEATURE_BOUND[n] for n in data.feature_names},
        },
        "interpolation": {
            "coordinates": list(data.coord_names),
            "points": fitting.coords.tolist(),
            "log_residuals": final.residuals.tolist(),
            "kind": final.interp.kind if final.interp is not None else None,
        },
        "held_out": held,
        "held_out_error": {k: held[chosen][k] for k in ("median_ape", "p95_ape", "max_ape", "mean_ape")},
        "worst_point": held[chosen]["worst_point"],
        "in_sample_error": ape_summary(fitting.y, in_sample),
        "power_w": None
        if finite_power.size == 0
        else {
            "median": float(np.median(finite_power)),
            "min": float(finite_power.min()),
            "max": float(finite_power.max()),
            "n_points": int(finite_power.size),
        },
    }
    return spec, cv


@dataclass
class FitResult:
    """What :func:`fit_measured` produced: the ``fit.json`` content plus what the report needs."""

    fit: dict[str, Any]
    data: dict[str, PhaseData]
    cv: dict[str, CrossValidation]
    meta: dict[str, Any]
    folder: Path | None = None


#: End-to-end validation results of a profile (written by ``simdisagg validate --record``).
VALIDATION_FILE = "validation.json"


def _validation_section(folder: Path | None) -> list[str]:
    """The report's end-to-end section, from ``validation.json`` beside the fit when present."""
    if folder is None or not (Path(folder) / VALIDATION_FILE).is_file():
        return []
    try:
        record = json.loads((Path(folder) / VALIDATION_FILE).read_text())
    except (OSError, json.JSONDecodeError):
        return []
    out = [
        "",
        "## End-to-end error on measured deployments",
        "",
        (
            f"{record['rows']} rows of `{record['source']}` simulated on this profile (with the framework's fitted "
            f"overheads) by `{record['command']}` on {record['date']}; absolute % error:"
        ),
        "",
        "| metric | mean (MAPE) | median | p90 |",
        "|---|---|---|---|",
    ]
    for metric in ("ttft", "tpot"):
        e = record["error"]
        out.append(
            f"| {metric.upper()} | {_pct_value(e[f'{metric}_mape_pct'])} | {_pct_value(e[f'{metric}_median_ape_pct'])} "
            f"| {_pct_value(e[f'{metric}_p90_ape_pct'])} |"
        )
    return out


def _pct_value(x: float | None) -> str:
    return "n/a" if x is None or not math.isfinite(x) else f"{x:.1f} %"


def refresh_report(folder: Path, profiles_dir: Path | None = None) -> Path:
    """Rewrite ``fit_report.md`` from ``fit.json``, ``meta.yaml`` and ``validation.json``
    (no refit; the plot is not redrawn)."""
    folder = Path(folder)
    fit = json.loads((folder / "fit.json").read_text())
    meta = yaml.safe_load((folder / "meta.yaml").read_text())
    plot = "fit_plot.png" if (folder / "fit_plot.png").is_file() else None
    report = folder / "fit_report.md"
    _atomic_write(report, render_report(FitResult(fit, {}, {}, meta, folder), plot, profiles_dir))
    return report


def _load_gpu(name: str, profiles_dir: Path | None) -> Any:
    from simdisagg.hardware import ProfileStore

    try:
        return ProfileStore(profiles_dir).gpu(name)
    except ConfigError:
        return None


def _weight_read(data: dict[str, PhaseData], shard: ShardShape, phases: Mapping[str, Any]) -> dict[str, Any]:
    """Time of one pass over the shard's weights, from the measured copy bandwidth."""
    consts = [phases[p]["physical"]["coefficients"]["const"] for p in ("prefill", "decode") if p in phases]
    d2d = data.get("transfer_d2d")
    if d2d is not None and len(d2d):
        nbytes = d2d.features[:, 1]
        threshold = min(64 * 2**20, float(nbytes.max()))
        big = nbytes >= threshold
        # A copy reads and writes every byte: HBM traffic is twice the message size.
        bw = float(np.max(2.0 * nbytes[big] / d2d.y[big]))
        return {
            "weight_bytes": shard.weight_bytes,
            "hbm_copy_bandwidth_bytes_per_s": bw,
            "weight_read_s": shard.weight_bytes / bw,
            "source": "measured: weight bytes / device-to-device copy bandwidth "
            f"(2 x bytes / time, best of messages >= {_human_bytes(threshold)})",
        }
    upper = float(min(consts)) if consts else 0.0
    return {
        "weight_bytes": shard.weight_bytes,
        "hbm_copy_bandwidth_bytes_per_s": None,
        "weight_read_s": upper,
        "source": "no copy measurement: the smaller fixed term of prefill and decode (an upper bound)",
    }


#: Columns of a kernel-database import that split each iteration by op family.
COMPONENT_COLUMNS: tuple[str, ...] = ("gemm_s", "attention_s", "small_ops_s", "allreduce_s", "lm_head_s")


def _number(value: Any) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


def _sig(value: float) -> float:
    """``value`` to seven significant digits (the samples carry six)."""
    return float(f"{value:.7g}")


def components_spec(rows: list[dict[str, Any]], meta: Mapping[str, Any]) -> dict[str, Any] | None:
    """Tables of the ``components`` predictor (:mod:`simdisagg.costmodel.components`) from the
    fitting rows of a kernel-database import, or ``None`` when raw.csv has no breakdown or
    its grid is incomplete. Held-out rows are never used."""
    grid = meta.get("grid") or {}
    keys = ("prefill_new_tokens", "prefill_prompts", "prefill_cached_tokens", "decode_mean_context")
    if any(k not in grid for k in keys):
        return None
    fitting = [r for r in rows if not _holdout([r])[0]]
    if not fitting or any(not math.isfinite(_number(fitting[0].get(c))) for c in COMPONENT_COLUMNS):
        return None
    dp = int((meta.get("parallelism") or {}).get("dp", 1))
    linear: dict[float, list[float]] = {}
    linear_by_ranks: dict[int, dict[float, list[float]]] = {}
    head: dict[float, list[float]] = {}
    attention: dict[tuple[int, int, int], float] = {}
    dec_linear: dict[float, list[float]] = {}
    dec_attention: dict[tuple[int, int], float] = {}
    for r in fitting:
        part = {c: _number(r[c]) for c in COMPONENT_COLUMNS}
        if r["phase"] == "prefill":
            new = _parse_list(r["new_tokens_list"])
            cached = _parse_list(r["cached_tokens_list"]) or [0] * len(new)
            per_token = part["gemm_s"] + part["small_ops_s"] + part["allreduce_s"]
            ranks = min(dp, len(new))
            linear_by_ranks.setdefault(ranks, {}).setdefault(float(sum(new)), []).append(per_token)
            if ranks == dp:
                linear.setdefault(float(sum(new)), []).append(per_token)
            head.setdefault(float(len(new)), []).append(part["lm_head_s"])
            if len(set(new)) == 1 and len(set(cached)) == 1:
                attention[(new[0], len(new), cached[0])] = part["attention_s"] / len(new)
        elif r["phase"] == "decode":
            b = int(float(r["batch_size"]))
            total = sum(part.values())
            dec_linear.setdefault(float(b), []).append(total - part["attention_s"])
            ctx = int(round(float(r["context_tokens"]) / b))
            dec_attention[(b, ctx)] = part["attention_s"]
    new_axis = [int(v) for v in grid["prefill_new_tokens"]]
    prompt_axis = [int(v) for v in grid["prefill_prompts"]]
    cached_axis = [int(v) for v in grid["prefill_cached_tokens"]]
    ctx_axis = [int(v) for v in grid["decode_mean_context"]]
    batch_axis = sorted({b for (b, _c) in dec_attention if all((b, c) in dec_attention for c in ctx_axis)})
    try:
        prefill_attention = [
            [[_sig(attention[(n, p, c)]) for c in cached_axis] for p in prompt_axis] for n in new_axis
        ]
        decode_attention = [[_sig(dec_attention[(b, c)]) for c in ctx_axis] for b in batch_axis]
    except KeyError:
        return None
    if not batch_axis:
        return None

    def curve(samples: dict[float, list[float]]) -> dict[str, list[float]]:
        xs = sorted(samples)
        return {"x": xs, "y": [_sig(float(np.mean(samples[x]))) for x in xs]}

    by_ranks = None
    if dp > 1:
        counts = sorted(r for r, samples in linear_by_ranks.items() if len(samples) > 1)
        by_ranks = {"ranks": counts, "curves": [curve(linear_by_ranks[r]) for r in counts]}
    return {
        "description": "iteration = per-token part(T) + per-prompt part(P) + each prompt's attention share "
        "(prefill); per-sequence part(B) + attention(B, mean context) (decode); tabulated from the "
        "import's fitting rows (simdisagg.costmodel.components)"
        + ("; the per-token part per count of busy attention-DP ranks, min(dp, P)" if dp > 1 else ""),
        "dp": dp,
        "prefill": {
            **({"linear_by_ranks": by_ranks} if by_ranks else {}),
            "linear": curve(linear),
            "head": curve(head),
            "attention": {
                "new_tokens": new_axis,
                "prompts": prompt_axis,
                "cached_tokens": cached_axis,
                "seconds": prefill_attention,
            },
        },
        "decode": {
            "linear": curve(dec_linear),
            "attention": {"batch_size": batch_axis, "mean_context": ctx_axis, "seconds": decode_attention},
        },
    }


def _components_predictions(model: Any, rows: list[dict[str, Any]], phase: str) -> np.ndarray:
    """The components predictor's time for every raw row of ``phase``, in raw order."""
    out = []
    for r in rows:
        if r["phase"] != phase:
            continue
        if phase == "prefill":
            new = _parse_list(r["new_tokens_list"])
            cached = _parse_list(r["cached_tokens_list"]) or [0] * len(new)
            out.append(model.prefill_s(new, cached)[0])
        else:
            out.append(model.decode_s(float(r["batch_size"]), float(r["context_tokens"])))
    return np.array(out, dtype=np.float64)


def _add_components(
    phases: dict[str, Any], data: dict[str, PhaseData], rows: list[dict[str, Any]], spec: dict[str, Any]
) -> None:
    """Judge the components predictor on each phase's held-out points beside the other
    candidates, and choose it where it is best."""
    from simdisagg.costmodel.components import ComponentsModel

    model = ComponentsModel(spec)
    for phase in ("prefill", "decode"):
        d, p = data[phase], phases[phase]
        pred = _components_predictions(model, rows, phase)
        judged = d.holdout if d.holdout.any() else np.ones(len(d), dtype=bool)
        summary: dict[str, Any] = dict(ape_summary(d.y[judged], pred[judged]))
        masked = np.where(judged, pred, np.nan)
        summary["worst_point"] = _worst(d, masked)
        p["held_out"]["components"] = summary
        p["components_in_sample_error"] = ape_summary(d.y[~d.holdout], pred[~d.holdout])
        best = min((k for k in p["held_out"] if k != "components"), key=lambda k: p["held_out"][k]["mean_ape"])
        if summary["mean_ape"] < p["held_out"][best]["mean_ape"]:
            p["chosen"] = "components"
            p["held_out_error"] = {k: summary[k] for k in ("median_ape", "p95_ape", "max_ape", "mean_ape")}
            p["worst_point"] = summary["worst_point"]
            p["in_sample_error"] = p["components_in_sample_error"]


def _composed_weight_read(rows: list[dict[str, Any]], shard: ShardShape) -> dict[str, Any]:
    """One pass over the shard's weights, from a kernel-database import: the GEMMs (LM head
    included) of its one-sequence decode steps, which read every weight once and compute
    almost nothing."""
    gemm = [
        float(r["gemm_s"]) + float(r.get("lm_head_s") or 0.0)
        for r in rows
        if r["phase"] == "decode" and int(float(r["batch_size"])) == 1 and r.get("gemm_s") not in (None, "")
    ]
    if not gemm:
        return {"weight_bytes": shard.weight_bytes, "hbm_copy_bandwidth_bytes_per_s": None, "weight_read_s": 0.0,
                "source": "no one-sequence decode step in raw.csv"}
    t = min(gemm)
    return {
        "weight_bytes": shard.weight_bytes,
        "hbm_copy_bandwidth_bytes_per_s": shard.weight_bytes / t,
        "weight_read_s": t,
        "source": "measured: the GEMM and LM-head kernels of a one-sequence decode step (every weight read once)",
    }


def _kernels_per_iteration(rows: list[dict[str, Any]]) -> dict[str, float]:
    """Median kernels launched per prefill and per decode iteration (``kernels`` column of a
    kernel-database import; zero when raw.csv does not say)."""
    out: dict[str, float] = {}
    for phase in ("prefill", "decode"):
        counts = [float(r["kernels"]) for r in rows if r["phase"] == phase and r.get("kernels") not in (None, "")]
        counts = [c for c in counts if math.isfinite(c)]
        out[phase] = float(np.median(counts)) if counts else 0.0
    return out


def fit_measured(folder: Path, *, profiles_dir: Path | None = None, folds: int = 5, seed: int = 0) -> FitResult:
    """Fit every phase of ``folder/raw.csv`` (see module docstring); writes nothing."""
    folder = Path(folder)
    rows, meta = load_raw(folder)
    shard = ShardShape.from_dict(meta["shard"])
    data = phase_datasets(rows, shard)
    for needed in ("prefill", "decode"):
        if needed not in data:
            raise CalibrationError(f"{folder / 'raw.csv'}: no {needed} points")
    components = components_spec(rows, meta)
    phases: dict[str, Any] = {}
    cvs: dict[str, CrossValidation] = {}
    for name, d in data.items():
        candidates = ("physical",) if components is not None and name in ("prefill", "decode") else CANDIDATES
        phases[name], cvs[name] = fit_phase(d, folds, seed, candidates)
    if components is not None:
        _add_components(phases, data, rows, components)
    for spec in phases.values():
        if spec["chosen"] != "interpolation":
            # Only the chosen predictor's tables are needed at run time; the others' held-out
            # errors stay in the report.
            spec["interpolation"] = {k: v for k, v in spec["interpolation"].items() if k not in ("points", "log_residuals")}
    gpu_profile = str(meta["gpu_profile"])
    allreduce = None
    if shard.tp > 1 and (meta.get("source") or {}).get("kind") != "kernel database":
        gpu = _load_gpu(gpu_profile, profiles_dir)
        if gpu is not None:
            allreduce = {
                "provenance": "modelled",
                "intra_node_bandwidth_bytes_per_s": gpu.intra_node_bandwidth_bytes_per_s.value,
                "latency_s": ALLREDUCE_LATENCY_S,
                "source": f"ring all-reduce, 2 per layer, over {gpu_profile} intra_node_bandwidth_bytes_per_s "
                f"({gpu.intra_node_bandwidth_bytes_per_s.source}); not measured",
            }
    raw_path = raw_samples_path(folder)
    raw_bytes = raw_path.read_bytes()
    source = meta.get("source") or {}
    from_database = source.get("kind") == "kernel database"
    precision = meta.get("precision") or {"weights": "bf16", "kv_cache": "bf16"}
    framework = meta.get("framework")
    profile = None
    if framework:
        from simdisagg.costmodel.fitted import profile_folder_name

        profile = profile_folder_name(
            shard.model, shard.tp, precision["weights"], precision["kv_cache"], framework,
            shard.dp, shard.ep, precision.get("experts"),
        )
    fit: dict[str, Any] = {
        "schema_version": FIT_SCHEMA_VERSION,
        "provenance": "measured",
        "device": str(meta["device"]),
        "gpu": gpu_profile,
        "gpu_name": meta.get("gpu_name"),
        "profile": profile,
        "precision": precision,
        "framework": framework,
        "source": source,
        "shard": shard.to_dict(),
        "created_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "raw_file": raw_path.name,
        "raw_csv_sha256": hashlib.sha256(raw_bytes).hexdigest(),
        "measured_at": meta.get("date"),
        "cross_validation": {
            "folds": folds,
            "seed": seed,
            "split": "held-out compositions flagged in raw.csv" if any(d.holdout.any() for d in data.values())
            else "k-fold by grid point",
            "criterion": CRITERION,
        },
        "phases": phases,
        "components": components,
        "weight_read": _composed_weight_read(rows, shard) if from_database else _weight_read(data, shard, phases),
        "allreduce": allreduce,
        "allreduce_in_samples": from_database,
        "kernels_per_iteration": _kernels_per_iteration(rows),
        "extrapolations": meta.get("extrapolations"),
        "notes": "Times are for one iteration of the whole shard. held_out_error values are fractions "
        "(0.05 = 5 %) measured on points left out of the fit.",
    }
    fit["label"] = fit_label(fit)
    return FitResult(fit, data, cvs, meta, folder)


# -- outputs ---------------------------------------------------------------------------------
def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def _pct(x: float | None) -> str:
    return "n/a" if x is None or not math.isfinite(x) else f"{100.0 * x:.1f} %"


def _implied_rates(fit: Mapping[str, Any], gpu: Any) -> list[str]:
    lines = []
    for phase in ("prefill", "decode"):
        coef = fit["phases"][phase]["physical"]["coefficients"]
        for name in ("gemm_flops", "attn_flops"):
            c = coef.get(name, 0.0)
            if c > 0:
                rate = 1.0 / c
                peak = f" ({100 * rate / gpu.dense_bf16_flops_per_s.value:.0f} % of datasheet peak)" if gpu else ""
                lines.append(f"- {phase} `{name}`: {rate / 1e12:.1f} TFLOP/s{peak}")
        c = coef.get("kv_bytes", 0.0)
        if c > 0:
            rate = 1.0 / c
            peak = f" ({100 * rate / gpu.hbm_bandwidth_bytes_per_s.value:.0f} % of datasheet HBM)" if gpu else ""
            lines.append(f"- {phase} `kv_bytes`: {rate / 1e9:.0f} GB/s{peak}")
        lines.append(f"- {phase} fixed term `const`: {coef['const'] * 1e3:.3f} ms per iteration")
    return lines


def render_report(result: FitResult, plot_name: str | None, profiles_dir: Path | None = None) -> str:
    """The ``fit_report.md`` text."""
    fit, meta = result.fit, result.meta
    gpu = _load_gpu(fit["gpu"], profiles_dir) if fit["device"] == "cuda" else None
    out = [f"# Fit report: `{fit['label']}`", ""]
    if fit["device"] != "cuda":
        out += [f"> **device={fit['device']}: test data, not a GPU profile.**", ""]
    source = fit.get("source") or {}
    if source.get("kind") == "kernel database":
        ext = fit.get("extrapolations") or {}
        out += [
            (
                f"- measured kernels: {source.get('database')}, {source.get('framework')} {source.get('version')} "
                f"tables of {source.get('device_name')} ({source.get('gpu_folder')}), source commit "
                f"`{source.get('source_commit')}`, licence {source.get('licence')}"
            ),
            (
                f"- precision: {fit['precision']['weights']} weights"
                + (f", {fit['precision']['experts']} experts" if fit["precision"].get("experts") else "")
                + f", {fit['precision']['kv_cache']} KV cache; "
                f"imported {meta.get('date')} by `{meta.get('command') or 'simdisagg calibrate import'}`"
            ),
            (
                f"- composed: {meta.get('method', {}).get('composition', '')}; kernels per iteration "
                f"{fit.get('kernels_per_iteration', {}).get('decode', 0):.0f}"
            ),
            *_moe_method_lines(meta),
            (
                f"- beyond the tables: {ext.get('points', 0)} of {ext.get('of_points', 0)} points needed one of "
                + (", ".join(f"{k} ({v} lookups)" for k, v in (ext.get("lookups") or {}).items()) or "none")
                + " (meanings in meta.yaml `extrapolations`)"
            ),
            "- framework overheads are not in these samples: they are fitted on end-to-end measurements "
            "(hardware_profiles/frameworks/) and added at run time",
        ]
    else:
        out += [
            (
                f"- measured: {meta.get('date')} on {meta.get('gpu_name')} (device {fit['device']}), "
                f"torch {meta.get('torch_version')}, CUDA {meta.get('cuda_version')}, driver {meta.get('driver_version')}"
            ),
            (
                f"- grid: {meta.get('grid', {}).get('name')}; layers timed {meta.get('layers_timed')} of "
                f"{fit['shard']['num_layers']}, scaled (see meta.yaml `method`)"
            ),
        ]
    out += [
        f"- {fit.get('raw_file', 'raw.csv')} sha256 `{fit['raw_csv_sha256'][:16]}...`; fitted {fit['created_at']}",
        (
            f"- held-out split: {fit['cross_validation']['split']}; choice: lowest mean held-out absolute "
            "percentage error"
        ),
        "",
        "## Held-out error per phase (absolute percentage error)",
        "",
        "| phase | points | candidate | median | p95 | max | chosen | largest error at |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, spec in fit["phases"].items():
        for kind in (k for k in REPORTED_CANDIDATES if k in spec["held_out"]):
            h = spec["held_out"][kind]
            worst = h.get("worst_point")
            where = f"{worst['label']} ({worst['measured_s'] * 1e3:.3g} ms)" if worst else "n/a"
            mark = "**yes**" if kind == spec["chosen"] else ""
            out.append(
                f"| {name} | {spec['n_points']} | {kind} | {_pct(h['median_ape'])} | {_pct(h['p95_ape'])} | "
                f"{_pct(h['max_ape'])} | {mark} | {where} |"
            )
    out += ["", "## Physical coefficients", ""]
    for name, spec in fit["phases"].items():
        coefs = ", ".join(
            f"`{k}` = {v:.4g} {spec['physical']['units'][k]}" for k, v in spec["physical"]["coefficients"].items()
        )
        out.append(f"- **{name}**: {coefs}")
    out += ["", "Implied rates:", ""] + _implied_rates(fit, gpu)
    if gpu is not None:
        floors = physical_floors(fit, gpu)
        out += ["", "## Physical floors (kernels only, before framework overheads)", ""]
        out += [
            f"- {f['what']}: {f['predicted_s'] * 1e3:.3f} ms >= floor {f['floor_s'] * 1e3:.3f} ms "
            f"({f['basis']}): {'ok' if f['ok'] else '**violated**'}"
            for f in floors
        ]
    wr = fit["weight_read"]
    out += [
        "",
        "## Shared terms",
        "",
        (
            f"- weight read per iteration: {wr['weight_read_s'] * 1e3:.3f} ms for {wr['weight_bytes'] / 1e9:.2f} GB "
            f"({wr['source']}); "
            + (
                "mixed (chunked-prefill) steps are composed from the parts: the layers see prefill and decode tokens "
                "as one batch"
                if fit["phases"]["prefill"]["chosen"] == "components"
                else "mixed steps subtract it once"
            )
        ),
    ]
    if fit.get("allreduce_in_samples"):
        if fit["shard"]["tp"] > 1:
            out.append(f"- all-reduce (tp={fit['shard']['tp']}): measured, in the composed samples")
    elif fit["allreduce"]:
        out.append(f"- all-reduce (tp={fit['shard']['tp']}): **modelled**, {fit['allreduce']['source']}")
    elif fit["shard"]["tp"] > 1:
        out.append("- all-reduce: GPU profile not found at fit time; pass the GPU profile when loading")
    power = [(n, s["power_w"]) for n, s in fit["phases"].items() if s["power_w"]]
    if power:
        out += ["", "## Measured power (NVML)", ""]
        out += [f"- {n}: median {p['median']:.0f} W (min {p['min']:.0f}, max {p['max']:.0f})" for n, p in power]
    out += _validation_section(result.folder)
    if plot_name:
        out += ["", "## Measured vs held-out predicted", "", f"![measured vs predicted]({plot_name})"]
    out += [
        "",
        f"Regenerate with `simdisagg fit <this folder>`; {fit.get('raw_file', 'raw.csv')} and meta.yaml are the "
        "measurement and never edited.",
        "",
    ]
    return "\n".join(out)


def _moe_method_lines(meta: Mapping[str, Any]) -> list[str]:
    """Report lines of a mixture-of-experts / latent-attention import: parallelism, attention,
    experts, their load imbalance and how dispatch and combine were timed (measured or the
    link model)."""
    method = meta.get("method") or {}
    labels = (
        ("instance", "instance"),
        ("attention", "attention"),
        ("experts", "experts"),
        ("expert_load_distribution", "expert load imbalance (moe_perf distribution)"),
        ("dispatch_combine", "expert dispatch/combine"),
    )
    lines = []
    par = meta.get("parallelism")
    if par and (par.get("dp", 1) > 1 or par.get("ep", 1) > 1):
        lines.append(f"- parallelism: tp {par['tp']} per attention rank, dp {par['dp']} ranks, ep {par['ep']}")
    for key, label in labels:
        if key in method:
            lines.append(f"- {label}: {method[key]}")
    if "link_bandwidth_bytes_per_s" in method:
        lines.append(f"- link model bandwidth: {method['link_bandwidth_bytes_per_s'] / 1e9:.0f} GB/s per GPU "
                     "(the GPU profile's intra_node_bandwidth_bytes_per_s)")
    return lines


def physical_floors(fit: Mapping[str, Any], gpu: Any) -> list[dict[str, Any]]:
    """The fitted kernels against the GPU's datasheet limits: a decode step reads every weight
    of the shard (``weight bytes / HBM bandwidth``; of a MoE shard's experts, those its tokens
    are routed to), a long prefill does its GEMM FLOPs
    (``FLOPs / dense peak`` at the weights' precision)."""
    from simdisagg.costmodel.fitted import FittedCostModel
    from simdisagg.hardware import peak_flops_per_s

    model = FittedCostModel(fit, gpu=gpu)
    shard = model.shard
    weights = (fit.get("precision") or {}).get("weights", "bf16")
    bandwidth = gpu.hbm_bandwidth_bytes_per_s.value
    peak = peak_flops_per_s(gpu, weights)
    out = []
    for batch in (1, 8):
        # A MoE shard's decode step reads only the experts its tokens are routed to.
        read = shard.read_weight_bytes(batch)
        floor = read / bandwidth
        predicted = model.decode_step_time_s(batch, batch * 16)
        out.append({
            "what": f"decode step, batch {batch}",
            "predicted_s": predicted,
            "floor_s": floor,
            "basis": f"{read / 1e9:.2f} GB of weights read / {bandwidth / 1e12:.2f} TB/s",
            "ok": predicted >= floor,
        })
    for tokens in (8192, 32768):
        flops = 2.0 * shard.num_layers * shard.layer_params * tokens
        floor = flops / peak
        predicted = model.prefill_time_s([tokens], [0])
        out.append({
            "what": f"prefill of {tokens} tokens",
            "predicted_s": predicted,
            "floor_s": floor,
            "basis": f"{flops / 1e12:.1f} TFLOP of GEMMs / {peak / 1e12:.0f} TFLOP/s",
            "ok": predicted >= floor,
        })
    return out


def plot_fit(result: FitResult, path: Path) -> None:
    """Measured vs held-out predicted time per phase, log-log (matplotlib, imported here)."""
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    names = list(result.data)
    cols = min(3, len(names))
    rows = -(-len(names) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.8 * rows), squeeze=False)
    for ax, name in zip(axes.flat, names, strict=False):
        d, spec = result.data[name], result.fit["phases"][name]
        for kind, marker in (("physical", "o"), ("interpolation", "x")):
            pred = result.cv[name].predictions.get(kind)
            if pred is None or np.isnan(pred).all():
                continue
            label = f"{kind}{' (chosen)' if kind == spec['chosen'] else ''}"
            ax.scatter(d.y * 1e3, pred * 1e3, s=14, marker=marker, label=label, alpha=0.8)
        lo, hi = float(d.y.min()) * 1e3 / 1.5, float(d.y.max()) * 1e3 * 1.5
        ax.plot([lo, hi], [lo, hi], color="grey", lw=0.8)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_title(f"{name} (held-out median {_pct(spec['held_out_error']['median_ape'])})", fontsize=9)
        ax.set_xlabel("measured (ms)")
        ax.set_ylabel("predicted (ms)")
        ax.legend(fontsize=7)
    for ax in list(axes.flat)[len(names) :]:
        ax.set_visible(False)
    fig.suptitle(result.fit["label"], fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_fit(folder: Path, result: FitResult, *, plot: bool = True, profiles_dir: Path | None = None) -> list[Path]:
    """Write ``fit.json``, ``fit_report.md`` and (optionally) ``fit_plot.png`` into ``folder``."""
    folder = Path(folder)
    written = []
    fit_path = folder / "fit.json"
    _atomic_write(fit_path, json.dumps(result.fit, indent=1, allow_nan=True) + "\n")
    written.append(fit_path)
    plot_name = None
    if plot:
        plot_path = folder / "fit_plot.png"
        plot_fit(result, plot_path)
        written.append(plot_path)
        plot_name = plot_path.name
    report = folder / "fit_report.md"
    _atomic_write(report, render_report(result, plot_name, profiles_dir))
    written.append(report)
    return written


# -- synthetic measurements (tests and examples) ----------------------------------------------
def synthetic_points(kv_capacity_tokens: float = 4.0e5) -> dict[str, list[Any]]:
    """A grid like ``calibrate/grids/default.yaml``: prefill batches ``(new, cached)``, decode
    batches ``(B, C)`` and copy sizes, with decode points beyond the KV capacity left out."""
    prefill: list[tuple[list[int], list[int]]] = []
    prefill += [([n], [0]) for n in (64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384, 32768)]
    prefill += [
        ([n], [c]) for n, c in ((64, 1024), (256, 4096), (1024, 8192), (4096, 4096), (512, 16384), (2048, 30720))
    ]
    prefill += [
        ([n] * b, [0] * b) for b, n in ((4, 64), (16, 64), (64, 64), (4, 512), (16, 512), (32, 1024), (8, 4096))
    ]
    prefill += [([64, 512, 2048], [0, 0, 0]), ([1024, 4096, 16384], [0, 0, 0]), ([256, 2048], [8192, 1024])]
    decode = [
        (b, b * c)
        for b in (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)
        for c in (128, 512, 2048, 8192, 32768)
        if b * c <= kv_capacity_tokens
    ]
    sizes = [65536 * 4**i for i in range(8)]
    return {"prefill": prefill, "decode": decode, "transfer": sizes}


def synthetic_measurement(
    folder: Path,
    shard: ShardShape,
    coefficients: Mapping[str, Mapping[str, float]],
    *,
    noise: float = 0.01,
    seed: int = 0,
    distortion: Mapping[str, Any] | None = None,
    device: str = "synthetic",
    gpu_profile: str = "h100-sxm",
) -> Path:
    """Write a ``raw.csv`` + ``meta.yaml`` whose times follow the physical model with the given
    per-phase ``coefficients`` (phases ``prefill``, ``decode``, ``transfer_<kind>``), times
    log-normal noise of relative size ``noise``, times ``distortion[phase](coords)`` if given.

    For tests and examples: ``device`` defaults to ``synthetic`` so the result can never pass
    for a GPU measurement."""
    import csv

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(np.random.SeedSequence(seed))
    pts = synthetic_points()
    rows: list[dict[str, Any]] = []

    def timed(phase: str, features: np.ndarray, coords: np.ndarray, names: tuple[str, ...]) -> float:
        coef = np.array([coefficients[phase].get(n, 0.0) for n in names])
        t = float(linear_terms(features, coef)[0]) * float(np.exp(noise * rng.standard_normal()))
        if distortion and phase in distortion:
            t *= float(distortion[phase](coords[0]))
        return t

    def row(phase: str, t: float, **cols: Any) -> dict[str, Any]:
        base: dict[str, Any] = {c: "" for c in RAW_REQUIRED_COLUMNS}
        base.update(device=device, phase=phase, n_reps=10, median_s=t, p10_s=t, p90_s=t, mean_s=t, std_s=0.0)
        base.update(power_w_mean="nan", transfer_kind="", bytes=0, context_tokens=0, batch_size=1)
        base.update(cols)
        return base

    for new, cached in pts["prefill"]:
        tt, cc, pairs, p = prefill_aggregates(np.array(new), np.array(cached))
        x = prefill_features(shard, np.array([tt]), np.array([cc]), np.array([pairs]), np.array([p]))
        t = timed("prefill", x, prefill_coords(np.array([tt]), np.array([cc]), np.array([p])), PREFILL_FEATURES)
        rows.append(
            row(
                "prefill",
                t,
                batch_size=len(new),
                new_tokens_list=";".join(map(str, new)),
                cached_tokens_list=";".join(map(str, cached)),
            )
        )
    for b, c in pts["decode"]:
        x = decode_features(shard, np.array([b]), np.array([c]))
        t = timed("decode", x, decode_coords(np.array([b]), np.array([c])), DECODE_FEATURES)
        rows.append(row("decode", t, batch_size=b, context_tokens=c))
    for kind in TRANSFER_KINDS:
        phase = f"transfer_{kind}"
        if phase not in coefficients:
            continue
        for size in pts["transfer"]:
            x = transfer_features(np.array([size]))
            t = timed(phase, x, transfer_coords(np.array([size])), TRANSFER_FEATURES)
            rows.append(row("transfer", t, transfer_kind=kind, bytes=size))
    with (folder / "raw.csv").open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(RAW_REQUIRED_COLUMNS))
        writer.writeheader()
        writer.writerows(rows)
    meta = {
        "schema_version": 1,
        "kind": "simdisagg-calibration",
        "device": device,
        "gpu_profile": gpu_profile,
        "gpu_name": f"synthetic ({gpu_profile})",
        "date": "1970-01-01T00:00:00+00:00",
        "shard": shard.to_dict(),
        "tp": shard.tp,
        "layers_timed": shard.num_layers,
        "grid": {"name": "synthetic"},
        "warning": "synthetic data from a known physical model, for tests",
    }
    (folder / "meta.yaml").write_text(yaml.safe_dump(meta, sort_keys=False))
    return folder
