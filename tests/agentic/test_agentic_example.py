"""The shipped agentic example runs, as documented, with every request served in both modes.

``traces/agentic-example.jsonl`` holds prompts of up to 586,004 tokens (resumed sessions of
1M-context models, as in the recorded kv-cache-tester sessions), so it runs on a model with
a 1M-token window, Qwen2.5-7B-Instruct-1M, at TP 2 on H100s: the longest prompt's KV
(586,004 × 57,344 bytes = 33.6 GB) fits a prefill instance's in-flight share (half of
2 × 80 GB × 0.9 − 15.2 GB of weights = 64.4 GB), where one H100 (28.4 GB) would reject it.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from simdisagg.cli import app
from simdisagg.hardware import ProfileStore

ROOT = Path(__file__).resolve().parents[2]
AGENTIC_EXAMPLE = ROOT / "traces" / "agentic-example.jsonl"
#: The documented command line, after ``simdisagg``.
COMMAND = ["run", str(AGENTIC_EXAMPLE), "--model", "qwen2.5-7b-instruct-1m", "--tp", "2", "--prefill", "7", "--decode", "1"]


def test_long_context_model_profile_matches_its_published_shape() -> None:
    """Qwen2.5-7B-Instruct-1M: the model card's 7.61B parameters (biases not modelled), and
    KV of 2 (K, V) × 28 layers × 4 KV heads × 128 × 2 bytes = 57,344 bytes per token."""
    model = ProfileStore().model("qwen2.5-7b-instruct-1m")
    assert model.total_params == pytest.approx(7.61e9, rel=0.02)
    assert model.kv_bytes_per_token == 57_344
    assert model.head_dim * model.num_heads == model.hidden_size


def test_documented_agentic_command_serves_every_request_in_both_modes(tmp_path: Path) -> None:
    """The README's agentic command: 459 requests completed, none rejected, on 16 H100s
    disaggregated (7 prefill + 1 decode instances of TP 2) and aggregated (8 × TP 2)."""
    result = CliRunner().invoke(app, [*COMMAND, "--out", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert "disagg 7P(tp2)+1D(tp2)" in result.output and "aggregated 8x tp2" in result.output
    assert "rejected, e.g." not in result.output
    for name in ("summary.json", "baseline_summary.json"):
        summary = json.loads((tmp_path / name).read_text())
        assert summary["completed"] == 459 and summary["rejected"] == 0, name
        assert summary["gpus"] == 16
