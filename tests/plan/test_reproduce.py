"""Reproducible answers: ``simdisagg run --config`` takes the ``config.json`` that ``run --out``
writes (its run config sits under ``config``, beside the trace and versions that produced
it), and repeats the run exactly."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from simdisagg.cli import app
from simdisagg.config import load_config_file
from simdisagg.errors import ConfigError
from simdisagg.trace import TraceBuilder, write_jsonl


def test_run_config_json_repeats_the_run(tmp_path: Path) -> None:
    """A run with flags, written with --out, then run again from its config.json alone (no
    flags): the same config is resolved and every summary figure but the wall time is equal."""
    rng = np.random.default_rng(0)
    builder = TraceBuilder("t")
    for i in range(60):
        builder.add(line=i + 1, timestamp_s=0.05 * i, input_tokens=int(rng.integers(100, 2000)),
                    output_tokens=int(rng.integers(2, 50)))
    trace = tmp_path / "t.jsonl"
    write_jsonl(builder.build(), trace)
    first, second = tmp_path / "first", tmp_path / "second"
    args = ["run", str(trace), "--prefill", "2", "--decode", "1", "--slo-ttft", "300ms", "--rate-scale", "2",
            "--no-compare", "--out", str(first)]
    assert CliRunner().invoke(app, args).exit_code == 0
    again = CliRunner().invoke(app, ["run", str(trace), "--config", str(first / "config.json"), "--no-compare",
                                     "--out", str(second)])
    assert again.exit_code == 0, again.output
    record = json.loads((first / "config.json").read_text())
    assert json.loads((second / "config.json").read_text())["config"] == record["config"]
    assert record["config"]["prefill"]["count"] == 2 and record["config"]["rate_scale"] == 2.0
    # summary.json carries no wall time: the two runs' summaries are the same bytes.
    assert (first / "summary.json").read_bytes() == (second / "summary.json").read_bytes()


def test_a_recorded_config_needs_its_run_config(tmp_path: Path) -> None:
    """A recorded run whose ``config`` is not a mapping is an error naming the file and the
    field; a plain config (no ``config`` key) is returned as it is."""
    bad = tmp_path / "config.json"
    bad.write_text(json.dumps({"config": 3, "trace": "t.jsonl", "versions": {}}))
    with pytest.raises(ConfigError, match="config.json: field 'config'"):
        load_config_file(bad)
    plain = tmp_path / "plain.json"
    plain.write_text(json.dumps({"model": "llama-3.1-8b", "seed": 3}))
    assert load_config_file(plain) == {"model": "llama-3.1-8b", "seed": 3}
