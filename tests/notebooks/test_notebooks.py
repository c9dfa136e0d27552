"""Every notebook in ``notebooks/`` runs top to bottom without an error, and is committed clean.

Execution uses nbclient with the ``python3`` kernel (ipykernel provides it) in ``notebooks/``,
the folder a reader opens them from, so their relative paths (``../traces/...``) resolve. The
kernel is a separate process: the repository root is put on its ``PYTHONPATH`` so that
``simdisagg`` imports from this checkout even when the package is not installed.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
NOTEBOOK_DIR = ROOT / "notebooks"
NOTEBOOKS = sorted(NOTEBOOK_DIR.glob("*.ipynb"))
CELL_TIMEOUT_S = 300


def test_notebooks_exist() -> None:
    """The folder holds at least one notebook (an empty glob would silently run nothing)."""
    assert NOTEBOOKS, f"no notebooks in {NOTEBOOK_DIR}"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_committed_without_outputs(path: Path) -> None:
    """Committed notebooks carry no outputs or execution counts: CI produces them."""
    nb = json.loads(path.read_text())
    dirty = [
        i for i, cell in enumerate(nb["cells"])
        if cell["cell_type"] == "code" and (cell.get("outputs") or cell.get("execution_count") is not None)
    ]
    assert not dirty, f"{path.name}: clear the outputs of code cells {dirty}"


@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_runs(path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Executing every cell in order raises no error (nbclient stops at the first one)."""
    reason = 'notebook tests need the test extras: pip install -e ".[test]" (nbformat, nbclient, ipykernel)'
    nbformat = pytest.importorskip("nbformat", reason=reason)
    nbclient = pytest.importorskip("nbclient", reason=reason)
    pytest.importorskip("ipykernel", reason=reason)

    # The kernel inherits this environment; jupyter_client runs the python3 kernelspec's
    # "python" with this interpreter, so both see the same packages.
    path_entries = [str(ROOT), os.environ.get("PYTHONPATH", "")]
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(e for e in path_entries if e))
    nb = nbformat.read(path, as_version=4)
    client = nbclient.NotebookClient(
        nb,
        timeout=CELL_TIMEOUT_S,
        kernel_name="python3",
        resources={"metadata": {"path": str(NOTEBOOK_DIR)}},
    )
    client.execute()  # raises CellExecutionError, naming the cell and its traceback
