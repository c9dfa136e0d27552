"""``simdisagg run --compare-fixed``: the autoscaled run beside fixed clusters of about the same
GPU-hours, in one command."""

from __future__ import annotations

from pathlib import Path

from typer.testing import CliRunner

from simdisagg.cli import app
from simdisagg.config import RunConfig
from simdisagg.dynamic import bracketing_fixed, fixed_equivalent

ROOT = Path(__file__).resolve().parents[2]
TRACE = ROOT / "traces" / "mooncake-conversation-5min.jsonl"
runner = CliRunner()

CONFIG = """\
model: llama-3.1-8b
prefill: {count: 2}
decode: {count: 2}
cost: {kind: constant, prefill_s: 0.05, prefill_s_per_token: 2.0e-5, decode_step_s: 0.02}
autoscale:
  interval_s: 5
  prefill: {min_instances: 1, max_instances: 6, cooldown_s: 10}
  decode: {min_instances: 1, max_instances: 6, cooldown_s: 10}
  cold_start: {warmup_s: 5}
"""


def test_compare_fixed_reports_gpu_hours_and_p95_side_by_side(tmp_path: Path) -> None:
    config = tmp_path / "run.yaml"
    config.write_text(CONFIG)
    result = runner.invoke(app, ["run", str(TRACE), "--config", str(config), "--compare-fixed"], env={"COLUMNS": "240"})
    assert result.exit_code == 0, result.output
    out = result.output
    assert "autoscaled (from 2P(tp1)+2D(tp1))" in out and "fixed " in out
    assert "GPU-hours" in out and "P95 TTFT | P95 ITL (ms)" in out
    verdict = [line for line in out.splitlines() if "GPU-h," in line]
    assert len(verdict) >= 2 and verdict[0].startswith("autoscaled")


def test_compare_fixed_needs_autoscale_settings(tmp_path: Path) -> None:
    result = runner.invoke(app, ["run", str(TRACE), "--prefill", "1", "--decode", "1", "--compare-fixed"])
    assert result.exit_code != 0
    assert "--compare-fixed: the config has no autoscale settings" in result.output


def test_fixed_equivalents_bracket_the_mean_counts() -> None:
    cfg = RunConfig.model_validate({"prefill": {"count": 2}, "decode": {"count": 2},
                                    "autoscale": {"prefill": {}, "decode": {}}})  # fmt: skip
    means = {"prefill": 3.15, "decode": 1.12}
    near = fixed_equivalent(cfg, means)
    assert (near.prefill.count, near.decode.count, near.autoscale) == (3, 1, None)
    up = bracketing_fixed(cfg, near, means, below=True)
    assert (up.prefill.count, up.decode.count) == (4, 1)
    down = bracketing_fixed(cfg, fixed_equivalent(cfg, {"prefill": 2.7, "decode": 1.6}), {"prefill": 2.7, "decode": 1.6}, below=False)
    assert (down.prefill.count, down.decode.count) == (3, 1)
