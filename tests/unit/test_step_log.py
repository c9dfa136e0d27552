"""The decode step log: exact while small, a bounded histogram past its limit.

The inter-token latency percentiles come from this log, so a folded log must give the same
percentiles as the exact one to within a bucket's relative width, the same mean, and the
same cancellation of negative weights."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from simdisagg.metrics import weighted_percentiles
from simdisagg.sim.recorder import StepLog

QS = (1.0, 50.0, 90.0, 99.0, 100.0)


def _fill(log: StepLog, runs: list[tuple[np.ndarray, int]]) -> None:
    for values, weight in runs:
        log.add(values, weight)


def _random_runs(rng: np.random.Generator, count: int) -> list[tuple[np.ndarray, int]]:
    runs = []
    for _ in range(count):
        first = rng.lognormal(np.log(0.02), 0.8)
        steps = int(rng.integers(1, 400))
        # A decode run: step times grow slowly with the context, as the cost models' do.
        runs.append((first + rng.uniform(0, 1e-6) * np.arange(steps), int(rng.integers(1, 64))))
    return runs


def test_exact_below_the_limit_keeps_every_entry() -> None:
    log = StepLog(exact_limit=1000)
    log.add(np.array([0.01, 0.02, 0.03]), 4)
    log.add_weighted(np.array([0.01, 0.5]), np.array([-1, 1]))
    assert log.exact and len(log) == 5
    values, weights = log.distribution()
    assert values.tolist() == [0.01, 0.02, 0.03, 0.01, 0.5]
    assert weights.tolist() == [4, 4, 4, -1, 1]


@pytest.mark.parametrize("bits", [8, 14])
def test_folded_percentiles_within_a_bucket_and_mean_exact(bits: int) -> None:
    rng = np.random.default_rng(7)
    runs = _random_runs(rng, 3000)
    exact, folded = StepLog(exact_limit=1 << 30), StepLog(exact_limit=5000, mantissa_bits=bits)
    _fill(exact, runs)
    _fill(folded, runs)
    assert exact.exact and not folded.exact
    assert len(folded) == len(exact) == sum(len(v) for v, _ in runs)
    ev, ew = exact.distribution()
    fv, fw = folded.distribution()
    assert ew.sum() == fw.sum()
    assert (fv * fw).sum() / fw.sum() == pytest.approx((ev * ew).sum() / ew.sum(), rel=1e-12)
    width = 2.0**-bits
    for want, got in zip(weighted_percentiles(ev, ew, QS), weighted_percentiles(fv, fw, QS), strict=True):
        assert abs(got - want) <= width * want
    # Bounded: one entry per non-empty bucket, however many steps were logged.
    assert len(fv) < len(ev)


def test_negative_weights_cancel_in_a_folded_log() -> None:
    """A step replaced by a longer gap (weight -1 at its value, +1 at the gap) leaves the
    replaced value's count one lower, folded or not."""
    log = StepLog(exact_limit=4)
    log.add(np.array([0.010, 0.011, 0.012, 0.013, 0.014]), 2)
    values, weights = log.distribution(np.array([0.010, 0.250]), np.array([-1, 1]))
    assert not log.exact
    by_value = dict(zip(np.round(values, 6).tolist(), weights.tolist(), strict=True))
    assert by_value[0.01] == 1 and by_value[0.25] == 1 and sum(weights) == 10
    # distribution() does not change the log.
    again = log.distribution()
    assert again[1].sum() == 10


def test_histogram_memory_is_bounded_by_the_range_not_the_count() -> None:
    log = StepLog(exact_limit=10_000, mantissa_bits=14)
    rng = np.random.default_rng(1)
    for _ in range(200):
        log.add(rng.uniform(0.01, 0.04, 50_000), 8)
    assert len(log) == 10_000_000
    # Two octaves of durations: at most 2 * 2**14 buckets (plus one) whatever the count.
    values, _ = log.distribution()
    assert len(values) <= 2 * 2**14 + 1
    assert log._folded is not None and len(log._folded.w) <= 2 * 2**14 + 1


@settings(max_examples=60, deadline=None)
@given(
    values=st.lists(st.floats(1e-7, 1e3), min_size=1, max_size=200),
    weight=st.integers(1, 256),
    limit=st.integers(1, 50),
)
def test_folded_distribution_is_sorted_and_within_buckets(values: list[float], weight: int, limit: int) -> None:
    log = StepLog(exact_limit=limit, mantissa_bits=10)
    log.add(np.array(values), weight)
    fv, fw = log.distribution()
    assert (fw > 0).all() and fw.sum() == weight * len(values)
    if not log.exact:
        assert (np.diff(fv) > 0).all()
        ev = np.sort(np.array(values))
        for want, got in zip(
            weighted_percentiles(ev, np.full(len(ev), weight), QS), weighted_percentiles(fv, fw, QS), strict=True
        ):
            assert abs(got - want) <= 2.0**-10 * want


def _cost_models() -> list[object]:
    from simdisagg.costmodel.reference import ConstantCostModel
    from simdisagg.costmodel.roofline import RooflineCostModel
    from simdisagg.costmodel.scaled import ScaledCostModel
    from simdisagg.hardware import ProfileStore

    store = ProfileStore()
    roofline = RooflineCostModel(store.model("llama-3.1-8b"), store.gpu("h100-sxm"), 2)
    constant = ConstantCostModel(0.1, 0.013, decode_step_s_per_context_token=3.1e-8)
    return [roofline, constant, ScaledCostModel(roofline, 1.1), ScaledCostModel(constant, 0.9)]


@pytest.mark.parametrize("index", range(4))
def test_short_runs_and_bulk_steps_match_the_vectorised_run_bit_for_bit(index: int) -> None:
    """A short run computed in plain floats, and steps recomputed in bulk from run records,
    equal ``decode_run_times_s`` element by element (fast-forward's identical-timestamps
    guarantee and the step log both rest on it)."""
    from simdisagg.costmodel.base import decode_times_bulk_s, short_run_times

    cost = _cost_models()[index]
    rng = np.random.default_rng(index)
    draws = [(int(b), int(rng.integers(b, b * 200_000)), int(rng.integers(1, 400))) for b in rng.integers(1, 2000, 50)]
    # Roofline runs that are compute-bound throughout, and that cross from compute to memory.
    fixed = [(4000, 4000, 50), (1000, 100_000, 400), (300, 30_000, 100)]
    for batch, context, steps in fixed + draws:
        run = cost.decode_run_times_s(batch, context, steps)  # type: ignore[attr-defined]
        assert short_run_times(cost)(batch, context, steps) == run.tolist()  # type: ignore[arg-type]
        bulk = decode_times_bulk_s(cost, np.full(steps, batch), context + batch * np.arange(steps))  # type: ignore[arg-type]
        assert np.array_equal(bulk, run)


@pytest.mark.parametrize("limit", [1 << 30, 700])
def test_run_records_give_the_steps_the_runs_had(limit: int) -> None:
    """Logging runs as records and as their step durations gives the same distribution,
    exact below the limit and within a bucket above it; runs of two cost models are kept
    apart."""
    roofline, constant = _cost_models()[:2]
    by_record, by_value = StepLog(exact_limit=limit), StepLog(exact_limit=1 << 30)
    keys = [by_record.cost_key(roofline), by_record.cost_key(constant)]
    assert by_record.cost_key(roofline) == keys[0] and keys[0] != keys[1]
    rng = np.random.default_rng(3)
    for _ in range(200):
        which = int(rng.integers(0, 2))
        cost = (roofline, constant)[which]
        batch, steps = int(rng.integers(1, 64)), int(rng.integers(1, 30))
        context = int(rng.integers(batch, batch * 50_000))
        by_record.add_run(keys[which], batch, context, steps)
        by_value.add(cost.decode_run_times_s(batch, context, steps), batch)  # type: ignore[attr-defined]
    by_record.add_weighted(np.array([0.5]), np.array([3]))
    by_value.add_weighted(np.array([0.5]), np.array([3]))
    assert len(by_record) == len(by_value)
    rv, rw = by_record.distribution()
    vv, vw = by_value.distribution()
    assert rw.sum() == vw.sum()
    if by_record.exact:
        order_r, order_v = np.lexsort((rw, rv)), np.lexsort((vw, vv))
        assert np.array_equal(rv[order_r], vv[order_v]) and np.array_equal(rw[order_r], vw[order_v])
    else:
        for want, got in zip(weighted_percentiles(vv, vw, QS), weighted_percentiles(rv, rw, QS), strict=True):
            assert abs(got - want) <= 2.0**-14 * want
