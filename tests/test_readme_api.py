"""The README's Python API example runs as written, and uses only names ``simdisagg`` exports."""

from __future__ import annotations

import ast
import os
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _api_example() -> str:
    text = (ROOT / "README.md").read_text()
    section = text.split("## Python API", 1)[1]
    match = re.search(r"```python\n(.*?)```", section, re.DOTALL)
    assert match, "the Python API section has no python block"
    return match.group(1)


def test_readme_api_example_runs(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    """Load a trace, build a config, simulate, a per-request frame, a summary, a comparison and
    a plan: the example runs from the repository root and prints what it says it prints."""
    monkeypatch.chdir(ROOT)
    code = _api_example()
    exec(compile(code, "README.md", "exec"), {"__name__": "readme_example"})
    out = capsys.readouterr().out
    assert out.startswith("Trace('traces/mooncake-conversation-5min.jsonl': 918 requests")
    assert "p90 TTFT" in out and "Same GPUs, same trace" in out and "req/s within the SLO" in out


def test_readme_api_uses_exported_names_only() -> None:
    """Every ``sd.name`` the example uses is in ``simdisagg.__all__``."""
    import simdisagg

    used = {node.attr for node in ast.walk(ast.parse(_api_example()))
            if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == "sd"}  # fmt: skip
    assert used and used <= set(simdisagg.__all__), used - set(simdisagg.__all__)
    for name in simdisagg.__all__:
        assert getattr(simdisagg, name) is not None


def test_import_simdisagg_stays_cheap() -> None:
    """``import simdisagg`` does not import the planner, matplotlib, torch or ray."""
    import subprocess
    import sys

    probe = ("import sys, simdisagg; bad = [m for m in ('simdisagg.plan', 'matplotlib', 'torch', 'ray') "
             "if m in sys.modules]; print(bad)")  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, env=env, check=True)
    assert out.stdout.strip() == "[]"
