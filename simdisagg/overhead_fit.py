"""Fitting a framework's overheads on end-to-end measurements.

The terms of :mod:`simdisagg.overheads` are chosen to make simulated benchmarks match measured
ones: each validation row of the framework (:mod:`simdisagg.validate`) is simulated with
candidate overheads, and the candidates minimise the robust sum of squared log errors of TTFT
and TPOT (``soft_l1`` loss, scale 0.2: a row off by a factor of two weighs like a few rows off
by 20 %, so rows whose measurement the model cannot explain do not drag the rest) with
bounded, non-negative terms (a kernel-gap term may be negative: see :mod:`simdisagg.overheads`),
by damped Gauss-Newton steps with iteratively reweighted residuals (the ``soft_l1`` weights),
with slopes from finite differences of a fixed, physically sized step per term (a simulation is
piecewise constant in tiny steps: an event moves past another, so slopes from steps much
smaller than a microsecond per kernel would be noise).

The terms are **per framework, shared by every GPU, model and parallelism**: the fit sees many
rows per term, and the same numbers then serve every GPU the framework runs on. How well they
generalise is measured by leaving out one group of rows at a time (one model and TP degree),
fitting on the rest and predicting the group (:func:`cross_validate`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from simdisagg.errors import CalibrationError
from simdisagg.overheads import FrameworkOverheads
from simdisagg.validate import (
    RowResult,
    ValidationOptions,
    ValidationRow,
    simulate_rows,
)

#: Terms fitted by default, with (start, lower bound, upper bound, finite-difference step).
FIT_TERMS: dict[str, tuple[float, float, float, float]] = {
    "prefill_iteration_s": (2e-3, 0.0, 0.2, 2e-3),
    "decode_iteration_s": (1e-3, 0.0, 0.1, 2e-3),
    "decode_per_sequence_s": (5e-6, 0.0, 1e-3, 5e-6),
    "graph_kernel_gap_s": (0.0, -2e-5, 2e-5, 1e-6),
    "frontend_s": (5e-3, 0.0, 1.0, 5e-3),
}
#: Damped Gauss-Newton iterations (each simulates every row once per term, plus once).
GAUSS_NEWTON_ITERATIONS = 4
#: A row the simulation cannot finish counts as this log error (a factor of e^3 = 20x).
FAILED_ROW_LOG_ERROR = 3.0
#: ``soft_l1`` scale of the log errors.
LOSS_SCALE = 0.2


@dataclass
class FitOutcome:
    """Fitted overheads, the evaluations it took and the error on the fitted rows."""

    overheads: FrameworkOverheads
    evaluations: int
    results: list[RowResult]
    cost: float


def log_errors(rows: Sequence[ValidationRow], results: Sequence[RowResult]) -> np.ndarray:
    """``log(predicted / measured)`` of TTFT and TPOT, row by row (a failed row counts as
    :data:`FAILED_ROW_LOG_ERROR`)."""
    out: list[float] = []
    for row, res in zip(rows, results, strict=True):
        for metric in ("ttft", "tpot"):
            measured = row.numbers[f"silicon_{metric}_ms"]
            predicted = getattr(res, f"predicted_{metric}_ms")
            if metric == "tpot" and row.number("osl") <= 1:
                continue
            if res.status != "ok" or not math.isfinite(predicted) or predicted <= 0:
                out.append(FAILED_ROW_LOG_ERROR)
            else:
                out.append(math.log(predicted / measured))
    return np.array(out, dtype=np.float64)


def _soft_l1_weights(residuals: np.ndarray) -> np.ndarray:
    """IRLS weights of the ``soft_l1`` loss ``2 (sqrt(1 + (r/c)^2) - 1)``: 1 near zero, ``c/|r|`` far."""
    z = (residuals / LOSS_SCALE) ** 2
    return 1.0 / np.sqrt(np.sqrt(1.0 + z))


def robust_cost(residuals: np.ndarray) -> float:
    """Sum of the ``soft_l1`` loss of the log errors (what the fit minimises)."""
    z = (residuals / LOSS_SCALE) ** 2
    return float(np.sum(2.0 * (np.sqrt(1.0 + z) - 1.0)))


def fit_overheads(
    rows: Sequence[ValidationRow],
    base: FrameworkOverheads,
    options: ValidationOptions,
    *,
    terms: Sequence[str] = tuple(FIT_TERMS),
    workers: int = 1,
    max_evaluations: int = 40,
    start: FrameworkOverheads | None = None,
    progress: Callable[[int, float], None] | None = None,
) -> FitOutcome:
    """Fit ``terms`` of ``base`` on ``rows`` (all of ``base.framework``, all simulable)."""
    if not rows:
        raise CalibrationError(f"no simulable rows to fit the {base.framework} overheads on")
    unknown = [t for t in terms if t not in FIT_TERMS]
    if unknown:
        raise CalibrationError(f"unknown overhead term(s): {', '.join(unknown)} (known: {', '.join(FIT_TERMS)})")
    lower = np.array([FIT_TERMS[t][1] for t in terms])
    upper = np.array([FIT_TERMS[t][2] for t in terms])
    steps = np.array([FIT_TERMS[t][3] for t in terms])
    x = np.array([getattr(start, t) if start else FIT_TERMS[t][0] for t in terms], dtype=np.float64)
    x = np.clip(x, lower, upper)
    evaluations = [0]
    memo: dict[tuple[float, ...], tuple[np.ndarray, list[RowResult]]] = {}

    def candidate(v: np.ndarray) -> FrameworkOverheads:
        return base.model_copy(update={t: float(val) for t, val in zip(terms, v, strict=True)})

    def evaluate(v: np.ndarray) -> tuple[np.ndarray, list[RowResult]]:
        key = tuple(np.round(v, 15))
        if key not in memo:
            results = simulate_rows(rows, replace(options, overheads=candidate(v)), workers)
            memo[key] = (log_errors(rows, results), results)
            evaluations[0] += 1
            if progress:
                progress(evaluations[0], float(np.mean(np.abs(memo[key][0]))))
        return memo[key]

    r, _ = evaluate(x)
    damping = 1e-2
    while evaluations[0] + len(terms) + 1 <= max_evaluations:
        jac = np.empty((r.size, len(terms)))
        for j in range(len(terms)):
            h = steps[j] if x[j] + steps[j] <= upper[j] else -steps[j]
            probe = x.copy()
            probe[j] += h
            jac[:, j] = (evaluate(probe)[0] - r) / h
        w = _soft_l1_weights(r)
        a = jac * w[:, None]
        b = -r * w
        # Steps are measured in units of each term's finite-difference step, so the damping
        # treats the terms alike.
        a_scaled = a * steps[None, :]
        normal = a_scaled.T @ a_scaled
        improved = False
        for _attempt in range(4):
            delta = np.linalg.solve(normal + damping * np.diag(np.diag(normal) + 1e-12), a_scaled.T @ b) * steps
            trial = np.clip(x + delta, lower, upper)
            if evaluations[0] + 1 > max_evaluations:
                break
            r_trial, _ = evaluate(trial)
            if robust_cost(r_trial) < robust_cost(r):
                x, r = trial, r_trial
                damping = max(damping / 3.0, 1e-4)
                improved = True
                break
            damping *= 10.0
        if not improved:
            break
    errors, results = evaluate(x)
    return FitOutcome(candidate(x), evaluations[0], results, robust_cost(errors))


def row_group(row: ValidationRow) -> str:
    """The group a row is held out with: its model and tensor-parallel degree."""
    tp = row.fields.get("tp_size") or row.fields.get("decode_tp_size") or "?"
    return f"{row.fields['model_path']} tp{tp}"


def cross_validate(
    rows: Sequence[ValidationRow],
    base: FrameworkOverheads,
    options: ValidationOptions,
    fitted: FrameworkOverheads,
    *,
    terms: Sequence[str] = tuple(FIT_TERMS),
    workers: int = 1,
    max_evaluations: int = 12,
) -> dict[int, RowResult]:
    """Each group's rows predicted by overheads refitted without them, keyed by the row's line.

    The refit starts from ``fitted`` (the fit on every row) and takes ``max_evaluations``
    simulations of the remaining rows, two damped Gauss-Newton steps by default: leaving one
    group out moves the optimum a little, and the steps follow it there."""
    groups: dict[str, list[ValidationRow]] = {}
    for row in rows:
        groups.setdefault(row_group(row), []).append(row)
    out: dict[int, RowResult] = {}
    if len(groups) < 2:
        return out
    for held in groups.values():
        train = [r for r in rows if r not in held]
        outcome = fit_overheads(
            train, base, options, terms=terms, workers=workers, max_evaluations=max_evaluations, start=fitted
        )
        predicted = simulate_rows(held, replace(options, overheads=outcome.overheads), workers)
        for row, res in zip(held, predicted, strict=True):
            out[row.line] = res
    return out


def summary(rows: Sequence[ValidationRow], results: Sequence[RowResult]) -> dict[str, Any]:
    """Rows and absolute % errors (mean, median, p90) of TTFT and TPOT."""
    out: dict[str, Any] = {"rows": len(rows)}
    for metric in ("ttft", "tpot"):
        errs = []
        for row, res in zip(rows, results, strict=True):
            predicted = getattr(res, f"predicted_{metric}_ms")
            if res.status == "ok" and math.isfinite(predicted):
                errs.append(abs(predicted / row.numbers[f"silicon_{metric}_ms"] - 1.0) * 100.0)
        arr = np.array(errs)
        out[f"{metric}_mape_pct"] = float(arr.mean()) if arr.size else math.nan
        out[f"{metric}_median_ape_pct"] = float(np.median(arr)) if arr.size else math.nan
        out[f"{metric}_p90_ape_pct"] = float(np.percentile(arr, 90)) if arr.size else math.nan
    return out
