"""``simdisagg validate``: bad rows refused with file, line and column; the experiment a row
describes; a run on real rows of ../shared (skipped without it); shipped measured profiles."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
from typer.testing import CliRunner

from simdisagg.cli import app
from simdisagg.errors import ConfigError
from simdisagg.hardware import ProfileStore
from simdisagg.validate import (
    REQUIRED_COLUMNS,
    ValidationOptions,
    concurrency,
    parallelism,
    read_rows,
    row_config,
    row_trace,
)

SHARED = Path(__file__).resolve().parents[3] / "shared"
ROWS_CSV = SHARED / "validation" / "aic-silicon-h200.csv"
needs_shared = pytest.mark.skipif(not ROWS_CSV.is_file(), reason="../shared/validation is not beside the checkout")

HEADER = ",".join(REQUIRED_COLUMNS + ("tp_size", "gemm_quant_mode"))
GOOD = "meta-llama/Llama-3.1-70B,h200_sxm,vllm,fp8,agg,1024,1024,4,73.0,7.9,8,fp8"


def _csv(tmp_path: Path, *lines: str, header: str = HEADER) -> Path:
    path = tmp_path / "rows.csv"
    path.write_text("\n".join((header, *lines)) + "\n")
    return path


@pytest.mark.parametrize(
    ("line", "message"),
    [
        (GOOD.replace("h200_sxm", "h300_sxm"), r"rows\.csv:3: column 'system': unknown GPU system 'h300_sxm'"),
        (GOOD.replace("vllm", "tgi"), r"rows\.csv:3: column 'backend': unknown framework 'tgi'"),
        (GOOD.replace("meta-llama/Llama-3.1-70B", "acme/Foo-9B"), r"rows\.csv:3: column 'model_path': unknown model"),
        (GOOD.replace(",1024,1024,", ",1024,abc,"), r"rows\.csv:3: column 'osl': 'abc' is not a number"),
        (GOOD.replace(",73.0,", ",,"), r"rows\.csv:3: column 'silicon_ttft_ms': empty"),
        (GOOD.replace(",73.0,", ",-1,"), r"rows\.csv:3: column 'silicon_ttft_ms': -1 is not a finite, non-negative"),
        (GOOD.replace(",4,73.0", ",4.5,73.0"), r"rows\.csv:3: column 'batch_size': must be a whole number"),
        (GOOD.replace(",agg,", ",mixed,"), r"rows\.csv:3: column 'mode': 'mixed'"),
        (GOOD.replace(",fp8\n", ",fp16\n").rsplit(",", 1)[0] + ",fp16", r"rows\.csv:3: column 'gemm_quant_mode': unknown mode"),
    ],
)
def test_bad_rows_name_file_line_and_column(tmp_path: Path, line: str, message: str) -> None:
    path = _csv(tmp_path, GOOD, line)
    with pytest.raises(ConfigError, match=message):
        read_rows(path, ProfileStore())


def test_missing_column_and_empty_file(tmp_path: Path) -> None:
    path = _csv(tmp_path, GOOD.rsplit(",", 3)[0], header=HEADER.rsplit(",", 3)[0])
    with pytest.raises(ConfigError, match=r"rows\.csv:1: missing column silicon_tpot_ms$"):
        read_rows(path, ProfileStore())
    with pytest.raises(ConfigError, match="no rows"):
        read_rows(_csv(tmp_path), ProfileStore())


def test_cli_reports_a_bad_row_in_one_line(tmp_path: Path) -> None:
    path = _csv(tmp_path, GOOD.replace("vllm", "tgi"))
    res = CliRunner().invoke(app, ["validate", str(path), "--out", str(tmp_path / "out")])
    assert res.exit_code == 1
    assert res.output.strip().count("\n") == 0 and "column 'backend'" in res.output
    assert not (tmp_path / "out").exists()


def test_rows_not_simulable_keep_a_status(tmp_path: Path) -> None:
    no_shape = GOOD.replace("meta-llama/Llama-3.1-70B", "moonshotai/Kimi-K2.5")
    int4 = GOOD.rsplit(",", 1)[0] + ",int4_wo"
    fp4 = GOOD.rsplit(",", 1)[0] + ",nvfp4"
    rows = read_rows(_csv(tmp_path, GOOD, no_shape, int4, fp4), ProfileStore())
    assert [r.status.split(":")[0] for r in rows] == ["ok", "not modelled", "not modelled", "not modelled"]
    assert "mixture-of-experts" in rows[1].status and "int4" in rows[2].status and "FP4" in rows[3].status


MOE_HEADER = HEADER + ",attention_dp_size,moe_tp_size,moe_ep_size"


def test_moe_rows_resolve_their_shape_checkpoint_precision_and_parallelism(tmp_path: Path) -> None:
    """DeepSeek-V3's block-FP8 experts whatever GEMM mode the row names; attention DP and EP
    from the row; gpt-oss's "nvfp4" on H200 is its MXFP4 experts beside BF16 attention; an
    instance across nodes and an inconsistent MoE split keep a status."""
    deepseek = GOOD.replace("meta-llama/Llama-3.1-70B", "deepseek-ai/DeepSeek-V3").replace(",8,fp8", ",1,fp8")
    rows = read_rows(
        _csv(
            tmp_path,
            deepseek + ",8,1,8",
            GOOD.replace("meta-llama/Llama-3.1-70B", "openai/gpt-oss-120b").replace(",8,fp8", ",2,fp8").rsplit(",", 1)[0]
            + ",nvfp4,1,2,1",
            deepseek.replace(",1,fp8", ",16,fp8") + ",1,16,1",
            deepseek + ",8,2,8",
            header=MOE_HEADER,
        ),
        ProfileStore(),
    )
    first = rows[0]
    assert first.status == "ok" and first.model is not None and first.model.name == "deepseek-v3"
    assert (first.weights, first.experts, first.kv_cache) == ("fp8", "fp8_block", "fp8")
    assert parallelism(first) == (1, 8, 8) and concurrency(first) == 4 * 8
    cfg = row_config(first, ProfileStore(), ValidationOptions())
    pool = cfg.aggregated_pool()
    assert (pool.tp, pool.dp, pool.ep, pool.count) == (1, 8, 8, 1)
    assert cfg.precision.experts == "fp8_block"
    gpt = rows[1]
    assert gpt.status == "ok" and (gpt.weights, gpt.experts, gpt.kv_cache) == ("bf16", "mxfp4", "bf16")
    assert parallelism(gpt) == (2, 1, 1)
    assert rows[2].status.startswith("not modelled: an instance of 16 GPUs") and "spans nodes" in rows[2].status
    assert rows[3].status.startswith("not modelled: moe_tp x moe_ep = 16 differs")


def test_a_row_is_closed_loop_clients_of_fixed_lengths(tmp_path: Path) -> None:
    row = read_rows(_csv(tmp_path, GOOD), ProfileStore())[0]
    assert (row.model.name, row.gpu, row.framework, row.weights, row.kv_cache) == (  # type: ignore[union-attr]
        "llama-3.1-70b", "h200", "vllm", "fp8", "fp8"
    )
    options = ValidationOptions(requests_per_client=5, client_start="burst")
    cfg = row_config(row, ProfileStore(), options)
    assert cfg.mode == "aggregated" and cfg.aggregated_pool().count == 1 and cfg.aggregated_pool().tp == 8
    assert cfg.aggregated.chunked_prefill  # vLLM mixes prefill chunks into decode iterations
    assert cfg.precision.weights == "fp8" and cfg.framework == "vllm"
    trace = row_trace(row, options, cycle_s=4.0)
    assert len(trace) == concurrency(row) * 5 == 20
    assert set(trace.input_tokens.tolist()) == {1024} and set(trace.output_tokens.tolist()) == {1024}
    # burst: every first request at t=0, each client's second one offset by its phase.
    assert trace.timestamp_s.tolist() == [0.0] * 20
    assert sorted(set(trace.tool_wait_s.tolist())) == [0.0, 1.0, 2.0, 3.0]
    assert int(trace.closed_loop.sum()) == 16


@needs_shared
def test_validate_runs_on_shared_rows_and_keeps_every_row(tmp_path: Path) -> None:
    """A few dense and MoE rows simulated end to end on the shipped measured profiles, every
    input row kept in rows.csv (rows that cannot be simulated with their status)."""
    frame = pd.read_csv(ROWS_CSV)
    dense = frame[(frame["model_path"] == "meta-llama/Llama-3.1-70B") & (frame["batch_size"] <= 8)].head(3)
    moe = frame[(frame["model_path"] == "deepseek-ai/DeepSeek-R1") & frame["prefill_num_workers"].isna()
                & (frame["mode"] == "disagg")].head(2)
    subset = tmp_path / "subset.csv"
    pd.concat([dense, moe]).to_csv(subset, index=False)
    out = tmp_path / "out"
    res = CliRunner().invoke(
        app, ["validate", str(subset), "--out", str(out), "--workers", "1", "--requests-per-client", "4"]
    )
    assert res.exit_code == 0, res.output
    rows = pd.read_csv(out / "rows.csv")
    assert list(rows.columns[: len(frame.columns)]) == list(frame.columns)
    assert len(rows) == 5
    ok = rows[rows["status"] == "ok"]
    assert len(ok) == 3 and ok["cost_model"].str.startswith("measured:h200/llama-3.1-70b").all()
    assert (ok["predicted_ttft_ms"] > 0).all() and (ok["predicted_tpot_ms"] > 0).all()
    # TPOT of these low-concurrency rows within 25 % of the measurement.
    assert (ok["tpot_error_pct"].abs() < 25).all(), ok[["tpot_error_pct"]]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["rows"] == 5 and summary["simulated"] == 3
    assert any("without prefill_num_workers" in k for k in summary["status"])


@needs_shared
def test_validate_simulates_moe_rows_on_their_measured_profiles(tmp_path: Path) -> None:
    """MoE rows of the shared set (DeepSeek-R1 with latent attention, gpt-oss with sliding
    windows and MXFP4 experts, Qwen3-235B at attention DP 2) run on measured profiles."""
    frame = pd.read_csv(ROWS_CSV)
    picks = [
        frame[(frame["model_path"] == "deepseek-ai/DeepSeek-R1") & (frame["backend"] == "sglang")
              & (frame["mode"] == "agg")].head(1),
        frame[(frame["model_path"] == "openai/gpt-oss-120b") & (frame["backend"] == "vllm")].head(1),
        frame[(frame["model_path"] == "Qwen/Qwen3-235B-A22B-FP8") & (frame["backend"] == "vllm")
              & (frame["tp_size"] == 2)].head(1),
    ]
    subset = tmp_path / "moe.csv"
    pd.concat(picks).to_csv(subset, index=False)
    out = tmp_path / "out"
    res = CliRunner().invoke(
        app, ["validate", str(subset), "--out", str(out), "--workers", "1", "--requests-per-client", "3"]
    )
    assert res.exit_code == 0, res.output
    rows = pd.read_csv(out / "rows.csv")
    assert (rows["status"] == "ok").all(), rows["status"].tolist()
    assert rows["cost_model"].str.startswith("measured:h200/").all()
    assert rows["cost_model"].str.contains("deepseek-r1-tp8-fp8-fp8_blockexperts-kvfp8-sglang").any()
    assert rows["cost_model"].str.contains("gpt-oss-120b-tp").any()
    assert (rows["predicted_tpot_ms"] > 0).all() and (rows["predicted_ttft_ms"] > 0).all()
