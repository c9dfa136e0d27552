"""End-to-end CLI tests on the shipped example traces, and the one-line errors for bad input."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
from typer.testing import CliRunner

from simdisagg.cli import app

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "traces" / "mooncake-conversation-5min.jsonl"
runner = CliRunner()


def _run(*args: str) -> object:
    return runner.invoke(app, [str(a) for a in args])


def test_run_prints_both_modes_and_writes_stable_files(tmp_path: Path) -> None:
    """`simdisagg run` prints the disaggregated and aggregated columns and writes the result files."""
    res = _run("run", EXAMPLE, "--prefill", "2", "--decode", "2", "--out", tmp_path)
    assert res.exit_code == 0, res.output
    assert "disagg 2P(tp1)+2D(tp1)" in res.output and "aggregated 4x tp1" in res.output
    for name in ("summary.json", "requests.parquet", "requests.csv", "config.json", "baseline_summary.json"):
        assert (tmp_path / name).is_file(), name
    summary = json.loads((tmp_path / "summary.json").read_text())
    for key in ("mean_ttft_ms", "p99_tpot_ms", "request_throughput", "output_throughput", "completed", "rejected"):
        assert key in summary
    frame = pd.read_parquet(tmp_path / "requests.parquet")
    assert len(frame) == summary["completed"] + summary["rejected"] == 918
    assert (frame["status"] == "completed").all()
    cfg = json.loads((tmp_path / "config.json").read_text())
    assert cfg["config"]["prefill"]["count"] == 2
    assert not list(tmp_path.glob(".*.tmp")), "no temporary files left behind"


def test_same_seed_same_files(tmp_path: Path) -> None:
    """Same inputs and seed → byte-identical per-request results."""
    a, b = tmp_path / "a", tmp_path / "b"
    for out in (a, b):
        assert _run("run", EXAMPLE, "--no-compare", "--seed", "3", "--out", out).exit_code == 0
    assert (a / "requests.csv").read_bytes() == (b / "requests.csv").read_bytes()


def test_config_file_and_flag_override(tmp_path: Path) -> None:
    """A YAML config is the base; flags override it."""
    cfg = tmp_path / "cluster.yaml"
    cfg.write_text("model: llama-3.1-8b\nprefill: {count: 3}\ndecode: {count: 1, max_batch_size: 64}\n")
    res = _run("run", EXAMPLE, "--config", cfg, "--decode", "2", "--no-compare", "--out", tmp_path / "o")
    assert res.exit_code == 0, res.output
    resolved = json.loads((tmp_path / "o" / "config.json").read_text())["config"]
    assert resolved["prefill"]["count"] == 3
    assert resolved["decode"]["count"] == 2 and resolved["decode"]["max_batch_size"] == 64


@pytest.mark.parametrize(
    ("line", "field"),
    [
        ('{"timestamp": 0, "input_length": -5, "output_length": 3}', "input_length"),
        ('{"timestamp": 0, "output_length": 3}', "input_length"),
        ('{"timestamp": "x", "input_length": 5, "output_length": 3}', "timestamp"),
        ('{"timestamp": 0, "input_length": 5, "output_length": 3, "wait_for": ["nope"]}', "wait_for"),
        ('{"timestamp": 0, "input_length": 5, "output_length": 3', None),
    ],
)
def test_bad_trace_line_names_file_line_field(tmp_path: Path, line: str, field: str | None) -> None:
    """A malformed line gives one line naming file, line and field, and exit status 1."""
    trace = tmp_path / "bad.jsonl"
    trace.write_text('{"timestamp": 0, "input_length": 10, "output_length": 2}\n' + line + "\n")
    res = _run("run", trace, "--no-compare")
    assert res.exit_code == 1
    msg = res.output.strip().splitlines()[-1]
    assert msg.startswith("error: ") and f"{trace}:2:" in msg
    if field:
        assert f"'{field}'" in msg
    assert "Traceback" not in res.output


def test_wait_for_cycle_and_later_request_rejected(tmp_path: Path) -> None:
    """A request that waits for itself or for a later line is an error, not a silent result."""
    trace = tmp_path / "cycle.jsonl"
    trace.write_text(
        '{"request_id": "a", "timestamp": 0, "input_length": 5, "output_length": 2, "wait_for": ["b"]}\n'
        '{"request_id": "b", "timestamp": 0, "input_length": 5, "output_length": 2, "wait_for": ["a"]}\n'
    )
    res = _run("run", trace, "--no-compare")
    assert res.exit_code == 1 and f"{trace}:1: field 'wait_for'" in res.output


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (("--gpu", "h999"), "unknown gpu 'h999'"),
        (("--model", "gpt-9"), "unknown model 'gpt-9'"),
        (("--link", "carrier-pigeon"), "unknown link"),
        (("--prefill", "0"), "prefill"),
        (("--slo-ttft", "fast"), "--slo-ttft"),
        (("--rate-scale", "-1"), "--rate-scale"),
    ],
)
def test_bad_config_values(args: tuple[str, ...], needle: str) -> None:
    """Unknown names and out-of-range values give a one-line error and exit status 1."""
    res = _run("run", EXAMPLE, "--no-compare", *args)
    assert res.exit_code == 1, res.output
    assert needle in res.output and "Traceback" not in res.output


def test_request_larger_than_kv_memory_is_reported_rejected(tmp_path: Path) -> None:
    """A request that can never fit a decode instance's KV memory is rejected, not lost."""
    trace = tmp_path / "big.jsonl"
    trace.write_text(
        '{"timestamp": 0, "input_length": 100, "output_length": 5}\n'
        '{"timestamp": 1, "input_length": 60000, "output_length": 5}\n'
        '{"timestamp": 2, "input_length": 900000, "output_length": 5}\n'
    )
    config = tmp_path / "small-kv.yaml"
    config.write_text("decode: {count: 1, kv_capacity_tokens: 50000}\n")
    res = _run("run", trace, "--config", config, "--no-compare", "--out", tmp_path / "o")
    assert res.exit_code == 0, res.output
    summary = json.loads((tmp_path / "o" / "summary.json").read_text())
    assert summary["completed"] == 1 and summary["rejected"] == 2
    frame = pd.read_csv(tmp_path / "o" / "requests.csv")
    assert "KV blocks" in frame.loc[1, "reject_reason"]
    assert "context window" in frame.loc[2, "reject_reason"]


def test_profiles_listing() -> None:
    """`simdisagg profiles` lists the shipped GPUs, links and models."""
    res = _run("profiles")
    assert res.exit_code == 0
    for name in ("h100-sxm", "h200", "ib-ndr-400", "llama-3.1-70b"):
        assert name in res.output
