"""Every notebook runs top to bottom in quick mode, and is committed with its outputs."""

from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

NOTEBOOKS = sorted((Path(__file__).parent.parent / "notebooks").glob("*.ipynb"))
MAX_BYTES = 1_500_000  # figures at the default inline resolution; a flood of output is larger


def errors_of(notebook) -> list:
    return [
        o
        for cell in notebook.cells
        for o in cell.get("outputs", [])
        if o.get("output_type") == "error"
    ]


def test_there_are_notebooks():
    assert len(NOTEBOOKS) >= 6


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_is_committed_with_outputs(path):
    """`make notebooks` executed it: every code cell ran, figures show, nothing failed."""
    notebook = nbformat.read(path, as_version=4)
    code = [cell for cell in notebook.cells if cell.cell_type == "code"]
    not_run = [i for i, cell in enumerate(code) if cell.get("execution_count") is None]
    assert not not_run, f"code cells {not_run} have no execution count: run `make notebooks`"
    counts = [cell.execution_count for cell in code]
    assert counts == list(range(1, len(code) + 1)), f"not executed top to bottom: {counts}"
    images = [o for cell in code for o in cell.outputs if "image/png" in o.get("data", {})]
    assert images, "no figure output: run `make notebooks`"
    assert not errors_of(notebook)
    assert path.stat().st_size < MAX_BYTES, f"{path.name} is {path.stat().st_size} bytes"
    text = path.read_text()
    leaked = [marker for marker in ("site-packages", str(Path.home()), "/tmp/") if marker in text]
    assert not leaked, f"{path.name} outputs show machine paths {leaked}"


@pytest.mark.notebook
@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_runs(path, tmp_path, monkeypatch):
    monkeypatch.setenv("ICL_MECH_QUICK", "1")
    monkeypatch.setenv("ICL_MECH_FIGURES", str(tmp_path))
    notebook = nbformat.read(path, as_version=4)
    client = NotebookClient(
        notebook,
        timeout=600,
        kernel_name="python3",
        resources={"metadata": {"path": str(tmp_path)}},
    )
    client.execute()
    assert not errors_of(notebook)
