"""The README's worked example on SN40L decode runs as written and prints what the README says.

The ``simdisagg plan`` command of the example is run with its own flags (its ``--out`` moved to
a temporary folder) and its candidates file checked against the README's table; the roofline
snippet is run and its output compared line by line with the README's block.
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pandas as pd
import pytest

ROOT = Path(__file__).resolve().parents[2]
TITLE = "### Example: does SN40L decode run 2x a B200-only deployment?"


def _section() -> str:
    text = (ROOT / "README.md").read_text()
    assert TITLE in text, "the README lost the SN40L example"
    return text.split(TITLE, 1)[1].split("\n## ", 1)[0]


def _blocks(section: str, lang: str) -> list[str]:
    """The fenced blocks of the section in language ``lang`` ("" for plain ones), in order."""
    fenced = re.findall(r"^```(\w*)\n(.*?)^```$", section, re.DOTALL | re.MULTILINE)
    return [body for tag, body in fenced if tag == lang]


def test_readme_roofline_snippet_prints_the_readme_output(capsys: pytest.CaptureFixture[str]) -> None:
    section = _section()
    code = _blocks(section, "python")[0]
    printed = [block for block in _blocks(section, "") if block.startswith("MBU")][0]
    exec(compile(code, "README.md", "exec"), {"__name__": "readme_sn40l"})
    assert capsys.readouterr().out.splitlines() == printed.splitlines()


@pytest.mark.slow
def test_readme_sn40l_plan_command_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from typer.testing import CliRunner

    from simdisagg.cli import app

    command = [block for block in _blocks(_section(), "") if block.startswith("simdisagg plan")][0]
    args = shlex.split(command.replace("\\\n", " "))[1:]
    out = tmp_path / "plan-sn40l"
    args[args.index("--out") + 1] = str(out)
    monkeypatch.chdir(ROOT)
    result = CliRunner().invoke(app, args, env={"COLUMNS": "160"})
    assert result.exit_code == 0, result.output
    rows = pd.read_csv(out / "candidates.csv").set_index("label")
    goodput = rows["goodput_rps"]
    # The README's table.
    assert goodput["3P:1D b200 tp8 / b200 tp8 b256 ib-ndr-400"] == pytest.approx(6.99, abs=0.01)
    assert goodput["2P:2D b200 tp8 / b200 tp8 b256 ib-ndr-400"] == pytest.approx(5.07, abs=0.01)
    assert goodput["2P:1D b200 tp8 / sn40l tp16 b256 ib-ndr-400"] == pytest.approx(1.05, abs=0.01)
    per_user = rows["tokens_per_s_per_user"]
    assert per_user["2P:1D b200 tp8 / sn40l tp16 b256 ib-ndr-400"] == pytest.approx(82, abs=1)
    assert per_user["2P:2D b200 tp8 / b200 tp8 b256 ib-ndr-400"] == pytest.approx(208, abs=1)
    pruned = rows[rows["decode_gpu"].eq("sn40l") & rows["decode_tp"].eq(8)]
    assert len(pruned) == 3 and (pruned["status"] == "pruned").all()
    assert "no peer-link cost" in result.output
