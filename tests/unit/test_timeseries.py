"""Per-window time series: window counts add up to the run's totals, time means over the
windows give back the run's utilisation, sampling leaves the run unchanged, the parquet file
has the documented schema, and ``--plots`` draws it."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
from hypothesis import given, settings
from strategies import run_configs, traces
from typer.testing import CliRunner

from simdisagg.cli import app
from simdisagg.config import ConstantCost, RunConfig, TimeSeriesConfig
from simdisagg.hardware import ProfileStore
from simdisagg.importers import load_trace
from simdisagg.metrics import pool_utilisation
from simdisagg.sim.engine import simulate
from simdisagg.sim.recorder import STATUS_COMPLETED, STATUS_REJECTED, TIME_COLUMNS
from simdisagg.sim.timeseries import (
    DEFAULT_WINDOWS,
    INSTANCE_STATES,
    timeseries_frame,
    window_width_s,
)
from simdisagg.trace import Trace

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "traces" / "mooncake-conversation-5min.jsonl"
STORE = ProfileStore()


def _totals_match(frame: pd.DataFrame, result: object) -> None:
    rec = result.recorder  # type: ignore[attr-defined]
    assert frame["arrivals"].sum() == np.count_nonzero(~np.isnan(rec.times["arrival_at"]))
    assert frame["completions"].sum() == np.count_nonzero(rec.status == STATUS_COMPLETED)
    assert frame["rejections"].sum() == np.count_nonzero(
        (rec.status == STATUS_REJECTED) & ~np.isnan(rec.times["arrival_at"])
    )
    # Windows tile the run: contiguous, from the first arrival to the end.
    assert np.all(frame["window_end_s"].to_numpy() > frame["window_start_s"].to_numpy())
    assert np.array_equal(frame["window_start_s"].to_numpy()[1:], frame["window_end_s"].to_numpy()[:-1])
    assert frame["window_end_s"].iloc[-1] == rec.end_at


@settings(max_examples=30, deadline=None)
@given(trace=traces(max_requests=10), cfg=run_configs())
def test_window_counts_add_up_to_the_run(trace: Trace, cfg: RunConfig) -> None:
    """Arrivals, completions and rejections per window sum to the run's totals, for any
    trace and cluster; instance counts by state cover every instance (a fixed cluster: all
    serving)."""
    result = simulate(cfg, trace, store=STORE)
    frame = timeseries_frame(result)
    if len(frame) == 0:  # every request rejected at its arrival, at one instant
        assert result.recorder.end_at == np.nanmin(result.recorder.times["arrival_at"])
        return
    _totals_match(frame, result)
    pools = ("aggregated",) if cfg.mode == "aggregated" else ("prefill", "decode")
    for pool in pools:
        count = cfg.aggregated_pool().count if cfg.mode == "aggregated" else getattr(cfg, pool).count
        assert (frame[f"{pool}_serving"] == count).all()
        for state in INSTANCE_STATES[1:]:
            assert (frame[f"{pool}_{state}"] == 0).all()
        for column in ("busy_fraction", "batch_occupancy", "kv_occupancy"):
            values = frame[f"{pool}_{column}"].to_numpy()
            assert np.all((values >= -1e-9) & (values <= 1 + 1e-9)), (pool, column, values)


def test_window_means_give_back_the_run_utilisation() -> None:
    """Busy fraction, batch and KV occupancy averaged over the windows (weighted by their
    width) equal the run's figures: the windows split the same integrals."""
    trace = load_trace(EXAMPLE)
    for mode in ("disaggregated", "aggregated"):
        cfg = RunConfig(mode=mode)
        result = simulate(cfg, trace, store=STORE)
        frame = timeseries_frame(result)
        _totals_match(frame, result)
        run = pool_utilisation(result)
        width = (frame["window_end_s"] - frame["window_start_s"]).to_numpy()
        span = width.sum()
        for pool in ("aggregated",) if mode == "aggregated" else ("prefill", "decode"):
            for column in ("busy_fraction", "batch_occupancy", "kv_occupancy"):
                mean = float((frame[f"{pool}_{column}"].to_numpy() * width).sum() / span)
                assert mean == pytest.approx(run[f"{pool}_{column}"], rel=1e-9, abs=1e-12), (mode, pool, column)
        # About DEFAULT_WINDOWS over the arrivals, more for the drain after them (at most twice
        # as many: then they merge in pairs).
        assert DEFAULT_WINDOWS <= len(frame) <= 2 * DEFAULT_WINDOWS


def test_sampling_leaves_the_run_unchanged() -> None:
    """The same run with windows of very different widths gives identical request columns
    and instance counters (sampling only reads state)."""
    trace = load_trace(EXAMPLE)
    base = RunConfig(cost=ConstantCost(prefill_s=0.05, decode_step_s=0.01))
    a = simulate(base, trace, store=STORE)
    b = simulate(base.model_copy(update={"timeseries": TimeSeriesConfig(window_s=0.37)}), trace, store=STORE)
    for name in TIME_COLUMNS:
        assert np.array_equal(a.recorder.times[name], b.recorder.times[name], equal_nan=True), name
    assert a.events == b.events
    assert [x.busy_s for x in a.recorder.instances] == [x.busy_s for x in b.recorder.instances]
    frame = timeseries_frame(b)
    assert np.allclose(np.diff(frame["window_start_s"].to_numpy()), 0.37)
    _totals_match(frame, b)


def test_merged_windows_are_the_wider_windows(monkeypatch: pytest.MonkeyPatch) -> None:
    """A run that outlasts its window budget merges windows in pairs: the result is exactly
    the series sampled with the final, wider width from the start."""
    from simdisagg.sim import engine

    trace = load_trace(EXAMPLE)
    cfg = RunConfig(timeseries=TimeSeriesConfig(window_s=0.5))
    monkeypatch.setattr(engine, "MAX_SET_WINDOWS", 8)
    merged = timeseries_frame(simulate(cfg, trace, store=STORE))
    monkeypatch.undo()
    width = float(merged["window_end_s"].iloc[0] - merged["window_start_s"].iloc[0])
    assert 4 <= len(merged) <= 8 and width > 0.5 and math.log2(width / 0.5) == int(math.log2(width / 0.5))
    wide = timeseries_frame(simulate(cfg.model_copy(update={"timeseries": TimeSeriesConfig(window_s=width)}), trace,
                                     store=STORE))  # fmt: skip
    pd.testing.assert_frame_equal(merged, wide)


def test_a_long_drain_keeps_few_windows() -> None:
    """Arrivals within 10 ms, a run of minutes: the windows merge instead of numbering
    tens of thousands."""
    from strategies import build_trace

    trace = build_trace([(k * 0.001, 4000, 400) for k in range(10)])
    result = simulate(RunConfig(cost=ConstantCost(prefill_s=5.0, decode_step_s=0.05)), trace, store=STORE)
    frame = timeseries_frame(result)
    assert len(frame) <= 2 * DEFAULT_WINDOWS
    _totals_match(frame, result)


def test_window_width() -> None:
    """Set: as given; else the arrivals' span over DEFAULT_WINDOWS; one burst: a fallback."""
    assert window_width_s(2.5, 0.0, 100.0) == 2.5
    assert window_width_s(None, 10.0, 110.0) == pytest.approx(100.0 / DEFAULT_WINDOWS)
    assert window_width_s(None, 5.0, 5.0) > 0


#: The columns of timeseries.parquet (disaggregated run) and their Arrow types.
EXPECTED_SCHEMA = {
    "window_start_s": "double", "window_end_s": "double",
    "arrivals": "int64", "completions": "int64", "rejections": "int64",
    "p50_ttft_ms": "double", "p95_ttft_ms": "double", "p50_itl_ms": "double", "p95_itl_ms": "double",
    **{f"{pool}_{state}": "int64" for pool in ("prefill", "decode") for state in INSTANCE_STATES},
    **{f"{pool}_{m}": "double" for pool in ("prefill", "decode")
       for m in ("busy_fraction", "batch_occupancy", "kv_occupancy")},
    **{f"{pool}_queue_length": "int64" for pool in ("prefill", "decode")},
    "router_queue_length": "int64",
}  # fmt: skip


def test_out_writes_the_parquet_schema_and_plots_draw_it(tmp_path: Path) -> None:
    """``run --out`` writes timeseries.parquet (and baseline_timeseries.parquet) with the
    documented columns and types; ``--plots`` writes timeseries.png."""
    res = CliRunner().invoke(app, ["run", str(EXAMPLE), "--out", str(tmp_path / "o"), "--plots", str(tmp_path / "f")])
    assert res.exit_code == 0, res.output
    schema = pq.read_schema(tmp_path / "o" / "timeseries.parquet")
    types = {name: str(schema.field(name).type) for name in schema.names}
    assert set(types) == set(EXPECTED_SCHEMA), set(types) ^ set(EXPECTED_SCHEMA)
    assert {k: types[k] for k in EXPECTED_SCHEMA} == EXPECTED_SCHEMA
    frame = pd.read_parquet(tmp_path / "o" / "timeseries.parquet")
    summary = json.loads((tmp_path / "o" / "summary.json").read_text())
    assert frame["completions"].sum() == summary["completed"] == 918
    baseline = pd.read_parquet(tmp_path / "o" / "baseline_timeseries.parquet")
    assert "aggregated_serving" in baseline and baseline["arrivals"].sum() == 918
    manifest = json.loads((tmp_path / "o" / "manifest.json").read_text())
    assert {"timeseries.parquet", "baseline_timeseries.parquet"} <= set(manifest["files"])
    png = tmp_path / "f" / "timeseries.png"
    assert png.is_file() and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 20_000
