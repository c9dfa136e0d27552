"""What a user of the command line can count on: help with defaults and an example for every
command, ``--version`` and ``-h``, the settings said before a run, honest comparisons, output
folders that are one consistent unit, labels printed as written, and SIGTERM like Ctrl-C."""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from simdisagg.cli import app

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "traces" / "mooncake-conversation-5min.jsonl"
AGENTIC = ROOT / "traces" / "agentic-example.jsonl"
runner = CliRunner()


def _run(*args: object) -> object:
    return runner.invoke(app, [str(a) for a in args], env={"COLUMNS": "200"})


def _commands() -> list[tuple[str, ...]]:
    from typer.main import get_command

    root = get_command(app)
    paths: list[tuple[str, ...]] = []
    for name, command in root.commands.items():  # type: ignore[attr-defined]
        subs = getattr(command, "commands", None)
        paths += [(name, sub) for sub in subs] if subs else [(name,)]
    return paths


@pytest.mark.parametrize("path", _commands(), ids=" ".join)
def test_every_command_has_an_example_and_says_its_defaults(path: tuple[str, ...]) -> None:
    """``-h`` works, the help ends with an example, and every option either shows its default,
    says it in words, or is a switch or required."""
    from typer.main import get_command

    res = _run(*path, "-h")
    assert res.exit_code == 0, res.output
    assert "Example: simdisagg" in res.output
    command = get_command(app)
    for part in path:
        command = command.commands[part]  # type: ignore[attr-defined]
    for param in command.params:
        if param.param_type_name != "option" or param.name == "help":
            continue
        said = "default" in (param.help or "").lower()
        shown = param.default is not None and param.show_default is not False
        assert said or shown or param.is_flag or param.required, f"{' '.join(path)} {param.opts}: no default shown"


def test_version_and_short_help() -> None:
    """``--version`` prints the version; ``-h`` is ``--help``."""
    from simdisagg import __version__

    res = _run("--version")
    assert res.exit_code == 0 and res.output.strip() == f"simdisagg {__version__}"
    assert _run("-h").exit_code == 0 and "run" in _run("-h").output


def test_run_header_says_every_setting_before_the_table(tmp_path: Path) -> None:
    """The header names the trace, model, precision, framework, SLO, link, router and cost
    model; flags set them (``--router``), and they are the ones the run used."""
    res = _run(EXAMPLE, "--no-compare") if False else _run(
        "run", EXAMPLE, "--no-compare", "--slo-ttft", "1.5s", "--slo-tpot", "80ms", "--router", "kv_aware/kv_aware",
        "--link", "roce-200", "--out", tmp_path / "o",
    )  # fmt: skip
    assert res.exit_code == 0, res.output
    head = res.output.split("┏")[0]
    for needle in ("trace: Trace(", "model: llama-3.1-8b (bf16 weights, bf16 KV cache)", "framework: vllm",
                   "SLO: TTFT <= 1.5 s and TPOT <= 80 ms", "link: roce-200 (fifo)",
                   "router: kv_aware (prefill) / kv_aware (decode)"):  # fmt: skip
        assert needle in head, needle
    summary = json.loads((tmp_path / "o" / "summary.json").read_text())
    assert f"cost model: {summary['cost_model']}" in head  # the one the run used
    config = json.loads((tmp_path / "o" / "config.json").read_text())["config"]
    assert config["router"] == {**config["router"], "prefill_policy": "kv_aware", "decode_policy": "kv_aware"}
    assert config["slo"]["ttft_s"] == 1.5 and config["slo"]["tpot_s"] == 0.08


def test_plan_header_says_its_settings(tmp_path: Path) -> None:
    """``plan`` says the SLO, link, router, cost models, precision and framework it searches with."""
    from simdisagg.trace import load_jsonl

    trace = load_jsonl(EXAMPLE).subset(range(60))
    path = tmp_path / "t.jsonl"
    from simdisagg.trace import write_jsonl

    write_jsonl(trace, path)
    res = _run("plan", path, "--gpus", "2", "--workers", "1", "--no-plots", "--out", tmp_path / "p",
               "--slo-ttft", "3s", "--slo-tpot", "120ms")  # fmt: skip
    assert res.exit_code == 0, res.output
    for needle in ("SLO: TTFT <= 3 s and TPOT <= 120 ms", "link: ib-ndr-400", "router: least_outstanding_tokens",
                   "cost model: ", "h100-sxm/llama-3.1-8b-tp1", "bf16 weights", "framework: vllm"):  # fmt: skip
        assert needle in res.output, needle


def test_context_window_overflow_is_said_before_the_run(tmp_path: Path) -> None:
    """Requests longer than the model's context window are announced in the header, then
    rejected with the reason (never served)."""
    trace = tmp_path / "long.jsonl"
    trace.write_text('{"timestamp": 0, "input_length": 200000, "output_length": 5}\n'
                     '{"timestamp": 1, "input_length": 100, "output_length": 5}\n')  # fmt: skip
    res = _run("run", trace, "--no-compare", "--out", tmp_path / "o")
    assert res.exit_code == 0, res.output
    assert "1 requests need more than llama-3.1-8b's context window of 131,072 tokens" in res.output
    summary = json.loads((tmp_path / "o" / "summary.json").read_text())
    assert summary["rejected"] == 1 and summary["completed"] == 1


def test_baseline_on_fewer_gpus_is_said_on_the_verdict_line(tmp_path: Path) -> None:
    """3 prefill + 4 decode GPUs at TP 1 against an aggregated TP 2 baseline: 6 of 7 GPUs.
    The verdict says it is NOT the same GPUs, and why."""
    config = tmp_path / "c.yaml"
    config.write_text("prefill: {count: 3}\ndecode: {count: 4}\naggregated: {tp: 2}\n")
    res = _run("run", EXAMPLE, "--config", config)
    assert res.exit_code == 0, res.output
    assert "NOT the same GPUs" in res.output and "uses 6 of the 7 GPUs: TP 2 does not divide 7" in res.output
    assert "Same GPUs, same trace" not in res.output


def test_baseline_that_cannot_run_is_named_not_dropped() -> None:
    """A router policy the aggregated mode lacks leaves no baseline: the output says so."""
    res = _run("run", EXAMPLE, "--router", "shared_queue")
    assert res.exit_code == 0, res.output
    assert "no aggregated baseline: router.prefill_policy 'shared_queue' applies to disaggregated" in res.output


def test_summary_keys_do_not_depend_on_the_mode(tmp_path: Path) -> None:
    """summary.json and baseline_summary.json have the same keys (null where a pool is absent),
    for a trace with prefix hashes and agent sessions; the table shows the prefix hit fraction
    and the session slowdown."""
    out = tmp_path / "o"
    res = _run("run", AGENTIC, "--model", "qwen2.5-7b-instruct-1m", "--tp", "2", "--prefill", "3", "--decode", "1",
               "--out", out)  # fmt: skip
    assert res.exit_code == 0, res.output
    main = json.loads((out / "summary.json").read_text())
    base = json.loads((out / "baseline_summary.json").read_text())
    assert list(main) == list(base)
    assert main["aggregated_busy_fraction"] is None and base["prefill_busy_fraction"] is None
    assert main["prompt_prefix_hit_fraction"] > 0 and base["prompt_prefix_hit_fraction"] > 0
    assert "prefix hit fraction" in res.output and "session slowdown mean / p90" in res.output


def test_same_run_twice_gives_byte_identical_files(tmp_path: Path) -> None:
    """summary.json and the per-request files do not change between identical runs; the wall
    time lives in manifest.json only."""
    a, b = tmp_path / "a", tmp_path / "b"
    for out in (a, b):
        assert _run("run", EXAMPLE, "--seed", "3", "--out", out).exit_code == 0
    for name in ("summary.json", "baseline_summary.json", "requests.csv", "requests.parquet", "config.json"):
        assert (a / name).read_bytes() == (b / name).read_bytes(), name
    assert "wall_s" not in json.loads((a / "summary.json").read_text())
    manifest = json.loads((a / "manifest.json").read_text())
    assert set(manifest["wall_s"]) == {"disagg 1P(tp1)+1D(tp1)", "aggregated 2x tp1"}


def test_output_folder_is_one_unit(tmp_path: Path) -> None:
    """The manifest lists exactly the folder's files with their SHA-256; a later run without a
    baseline removes the earlier run's baseline files; an unrelated file is left alone."""
    import hashlib

    out = tmp_path / "o"
    assert _run("run", EXAMPLE, "--out", out).exit_code == 0
    (out / "notes.txt").write_text("mine")
    assert (out / "baseline_summary.json").is_file()
    assert _run("run", EXAMPLE, "--no-compare", "--out", out).exit_code == 0
    manifest = json.loads((out / "manifest.json").read_text())
    files = set(manifest["files"])
    assert files == {"summary.json", "requests.parquet", "requests.csv", "config.json", "timeseries.parquet"}
    assert {p.name for p in out.iterdir()} == files | {"manifest.json", "notes.txt"}
    for name, entry in manifest["files"].items():
        assert hashlib.sha256((out / name).read_bytes()).hexdigest() == entry["sha256"]
    assert manifest["command"].startswith("simdisagg ") and manifest["versions"]["simdisagg"]


def test_a_write_killed_midway_leaves_no_manifest_and_the_next_run_clears_it(tmp_path: Path,
                                                                             monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    """If writing stops after some files were moved in, the folder has no manifest (so it is
    visibly incomplete); the next run removes what the killed one left."""
    out = tmp_path / "o"
    assert _run("run", EXAMPLE, "--out", out).exit_code == 0
    real_replace = os.replace
    moved = []

    def replace(src: object, dst: object) -> None:
        if len(moved) == 2:
            raise KeyboardInterrupt
        moved.append(dst)
        real_replace(src, dst)  # type: ignore[arg-type]

    monkeypatch.setattr(os, "replace", replace)
    res = _run("run", EXAMPLE, "--no-compare", "--seed", "7", "--out", out)
    assert res.exit_code == 130 and "interrupted" in res.output
    assert not (out / "manifest.json").exists()
    monkeypatch.setattr(os, "replace", real_replace)
    assert _run("run", EXAMPLE, "--no-compare", "--out", out).exit_code == 0
    assert {p.name for p in out.iterdir()} == {"summary.json", "requests.parquet", "requests.csv", "config.json",
                                               "timeseries.parquet", "manifest.json"}  # fmt: skip
    assert not list(out.glob(".simdisagg-staging-*"))


def test_plots_are_written(tmp_path: Path) -> None:
    """``--plots DIR`` writes the latency CDFs and the per-pool timelines (with a manifest);
    into the --out folder, they join its unit."""
    res = _run("run", EXAMPLE, "--plots", tmp_path / "fig")
    assert res.exit_code == 0, res.output
    assert {p.name for p in (tmp_path / "fig").iterdir()} == {
        "latency_cdf.png", "timeline.png", "timeseries.png", "manifest.json"
    }
    res = _run("run", EXAMPLE, "--no-compare", "--out", tmp_path / "o", "--plots", tmp_path / "o")
    assert res.exit_code == 0, res.output
    assert {"latency_cdf.png", "timeline.png", "timeseries.png", "timeseries.parquet", "summary.json"} <= set(json.loads((tmp_path / "o" / "manifest.json").read_text())["files"])


def test_labels_keep_their_brackets(tmp_path: Path) -> None:
    """Text in brackets is printed as written, not eaten as rich markup: a file named
    ``t[1].jsonl`` in the title, a cost-model label such as ``fitted:...[device=cpu]``."""
    from rich.console import Console

    from simdisagg.cli.common import setting_lines
    from simdisagg.config import RunConfig
    from simdisagg.output import summary_table

    trace = tmp_path / "t[1].jsonl"
    trace.write_bytes(EXAMPLE.read_bytes())
    res = _run("run", trace, "--no-compare")
    assert res.exit_code == 0 and "t[1].jsonl" in res.output
    buffer = io.StringIO()
    console = Console(file=buffer, width=200)
    for line in setting_lines(RunConfig(), [("a", "fitted:h100-sxm/llama-3.1-8b-tp1[device=cpu]")]):
        console.print(line, markup=False)
    console.print(summary_table({"fitted[device=cpu]": {"completed": 1, "rejected": 0}}, "x[y]"))
    text = buffer.getvalue()
    assert "[device=cpu]" in text and "fitted[device=cpu]" in text and "x[y]" in text


def test_progress_bar_shows_on_a_terminal() -> None:
    """The progress display shows requests finished and simulated time once a run lasts
    longer than its delay, and only on a terminal."""
    from rich.console import Console

    from simdisagg.cli.common import ProgressDisplay

    buffer = io.StringIO()
    display = ProgressDisplay(Console(file=buffer, force_terminal=True, width=120), delay_s=0.0)
    display("disagg 1P(tp1)+1D(tp1)", 12.0, 40, 100)
    display.close()
    assert "40/100" in buffer.getvalue() and "12 s" in buffer.getvalue()
    quiet = io.StringIO()
    display = ProgressDisplay(Console(file=quiet, force_terminal=False), delay_s=0.0)
    display("x", 1.0, 1, 2)
    display.close()
    assert quiet.getvalue() == ""


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")
def test_sigterm_is_handled_like_ctrl_c(tmp_path: Path) -> None:
    """SIGTERM during a run ends it like Ctrl-C: one line, exit 143, and the result folder of
    the earlier run left whole (its manifest and files unchanged)."""
    out = tmp_path / "o"
    assert _run("run", EXAMPLE, "--no-compare", "--out", out).exit_code == 0
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    big = tmp_path / "big.jsonl"
    from simdisagg.generate import generate_trace
    from simdisagg.trace import write_jsonl

    write_jsonl(generate_trace("chat", num_requests=60_000, seed=1), big)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "simdisagg", "run", str(big), "--out", str(out), "--rate-scale", "50"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, text=True,
    )  # fmt: skip
    assert proc.stdout is not None
    for line in proc.stdout:  # the header is printed once everything is checked, before simulating
        if line.startswith("cost model:"):
            break
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 143, err
    assert err.strip() == "terminated (SIGTERM)"
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
