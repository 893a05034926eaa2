"""Every notebook runs top to bottom, and is committed with its outputs. CI runs the notebooks at
smoke size (ICL_MECH_QUICK=smoke: the same cells, smaller sizes); `make notebooks` runs them
at quick size (ICL_MECH_QUICK=1), and its outputs are the committed ones."""

import re
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

NOTEBOOKS = sorted((Path(__file__).parent.parent / "notebooks").glob("*.ipynb"))
MAX_BYTES = 1_500_000  # figures at the default inline resolution; a flood of output is larger
PROGRESS = ("%|", "it/s]", "s/it]")  # a tqdm bar: "Loading weights:   0%|   | 0/272 [...it/s]"


def errors_of(notebook) -> list:
    return [
        o
        for cell in notebook.cells
        for o in cell.get("outputs", [])
        if o.get("output_type") == "error"
    ]


def progress_debris(notebook) -> list[str]:
    """Outputs that are progress bars (tqdm's text or widget, frozen where the run left it)."""
    found = []
    for cell in notebook.cells:
        for output in cell.get("outputs", []):
            text = output.get("text", "") + output.get("data", {}).get("text/plain", "")
            if any(mark in text for mark in PROGRESS):
                found.append(text.strip().splitlines()[0][:80])
    return found


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
    checkout = str(Path(__file__).resolve().parents[1])  # a warning prints its source file
    markers = ("site-packages", str(Path.home()), "/tmp/", checkout)
    leaked = [marker for marker in markers if marker in text]
    assert not leaked, f"{path.name} outputs show machine paths {leaked}"
    located = re.search(r"\.py:\d+: \w*Warning", text)  # a warning printed with its file
    where = text[located.start() - 60 : located.end()] if located else ""
    assert not located, f"{path.name} shows where a warning was raised: ...{where}"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_committed_notebook_has_no_progress_bars(path):
    """No frozen progress bar in a committed output (`make notebooks` runs without them)."""
    notebook = nbformat.read(path, as_version=4)
    debris = progress_debris(notebook)
    assert not debris, f"{path.name} has progress-bar outputs {debris}: run `make notebooks`"
    assert "widgets" not in notebook.metadata, f"{path.name} keeps progress widgets' state"


@pytest.mark.notebook
@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_runs(path, tmp_path, monkeypatch):
    monkeypatch.setenv("ICL_MECH_QUICK", "smoke")  # smaller than `make notebooks` (quick)
    monkeypatch.setenv("ICL_MECH_FIGURES", str(tmp_path))
    for name in ("TQDM_DISABLE", "HF_HUB_DISABLE_PROGRESS_BARS"):  # as `make notebooks` runs
        monkeypatch.setenv(name, "1")
    notebook = nbformat.read(path, as_version=4)
    client = NotebookClient(
        notebook,
        timeout=600,
        kernel_name="python3",
        resources={"metadata": {"path": str(tmp_path)}},
    )
    client.execute()
    assert not errors_of(notebook)
    assert not progress_debris(notebook)
