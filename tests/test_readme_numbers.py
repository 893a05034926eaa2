"""Every number the README quotes with an interval comes from a committed file named where it is
quoted: in the same bullet or paragraph, or else in its section (``## ...``). A number is backed
when a named file holds it, as text (``0.60 [0.52, 0.68]``), as a JSON value with its ``*_ci``,
or as a CSV row with ``x``, ``x_low`` and ``x_high``. The committed full runs' headline cells must
also be quoted in the section that names their table."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import pandas as pd
import pytest

ROOT = Path(__file__).resolve().parents[1]
INTERVAL = re.compile(r"[-+]?\d+\.\d+ \[-?\d+\.\d+, -?\d+\.\d+\]")
FILE = re.compile(r"(?:figures|benchmarks/results)/[\w*./-]*[\w*]")


def normalised(text: str) -> str:
    """One line, the typographic minus as ``-``."""
    return " ".join(text.replace("−", "-").split())


@dataclass(frozen=True)
class Block:
    section: str
    text: str
    files: tuple[Path, ...]  # named in the block, else in its section


def _named(text: str) -> list[Path]:
    found = []
    for pattern in dict.fromkeys(m.rstrip(".") for m in FILE.findall(text)):
        matches = sorted(ROOT.glob(pattern)) or sorted(ROOT.glob(pattern + "*"))
        found += [p for p in matches if p.is_file()]
        found += [f for p in matches if p.is_dir() for f in sorted(p.rglob("*")) if f.is_file()]
    return found


def blocks(readme: str) -> list[Block]:
    """The README's bullets and paragraphs with the files each may quote from."""
    out = []
    for section in re.split(r"\n(?=## )", readme):
        heading = section.splitlines()[0].lstrip("# ").strip()
        in_section = _named(section)
        for part in re.split(r"\n\s*\n|\n(?=- )", section):
            own = _named(part)
            out.append(Block(heading, normalised(part), tuple(own or in_section)))
    return out


@cache
def _values(path: Path) -> tuple[str, list[tuple[float, float, float]]]:
    """A file's text and every (value, low, high) triple it holds."""
    text = normalised(path.read_text(errors="ignore"))
    triples: list[tuple[float, float, float]] = []
    if path.suffix == ".json":
        _walk(json.loads(path.read_text()), triples)
    elif path.suffix == ".csv":
        frame = pd.read_csv(path)
        for column in frame.columns:
            low, high = f"{column}_low", f"{column}_high"
            if low not in frame and {"low", "high"} <= set(frame.columns):
                low, high = "low", "high"  # a tidy table: one value column, its bounds beside
            numeric = pd.api.types.is_numeric_dtype(frame[column])
            if numeric and low in frame and high in frame and column not in (low, high):
                rows = frame[[column, low, high]].dropna().itertuples(index=False)
                triples += [tuple(map(float, row)) for row in rows]
    return text, triples


def _walk(value, triples: list) -> None:
    if isinstance(value, dict):
        for key, item in value.items():
            bounds = value.get(f"{key}_ci")
            if isinstance(item, (int, float)) and isinstance(bounds, list) and len(bounds) == 2:
                triples.append((float(item), float(bounds[0]), float(bounds[1])))
            _walk(item, triples)
    elif isinstance(value, list):
        if len(value) == 3 and all(isinstance(v, (int, float)) for v in value):
            triples.append(tuple(float(v) for v in value))
        for item in value:
            _walk(item, triples)


def backed(quoted: str, files: tuple[Path, ...]) -> bool:
    shown = quoted.lstrip("+")
    parts = re.findall(r"-?\d+\.\d+", shown)
    places = len(parts[0].split(".")[1])  # compare at the rounding the README shows

    def same(triple) -> bool:
        return [f"{v:.{places}f}" for v in triple] == [f"{float(x):.{places}f}" for x in parts]

    for path in files:
        text, triples = _values(path)
        if shown in text or any(same(t) for t in triples):
            return True
    return False


README_BLOCKS = blocks((ROOT / "README.md").read_text())
QUOTED = [(block, m.group()) for block in README_BLOCKS for m in INTERVAL.finditer(block.text)]


@pytest.mark.parametrize("block, quoted", QUOTED, ids=[f"{b.section[:30]}: {q}" for b, q in QUOTED])
def test_every_quoted_interval_is_in_a_file_named_where_it_is_quoted(block, quoted):
    assert block.files, f"{quoted!r} in {block.section!r} names no committed file: {block.text!r}"
    names = [str(p.relative_to(ROOT)) for p in block.files]
    assert backed(quoted, block.files), f"{quoted!r} ({block.section!r}) is in none of {names}"


# --- the committed full runs' headline cells are quoted in the section naming their table ----


def _table(name: str) -> pd.DataFrame:
    return pd.read_csv(ROOT / "figures" / f"{name}.csv")


def _cells() -> list[tuple[str, str, str]]:
    """(what, the table it comes from, the cell as the README must quote it)."""
    cells = []
    effect = _table("anchors_isolation_effect")
    rows = effect[(effect["isolated"] == "label") & (effect["metric"] == "label_loyalty")]
    cells += [
        (f"isolation {r.task}", "anchors_isolation_effect", r.effect) for r in rows.itertuples()
    ]
    compression = _table("anchor_apps_table2_compression")
    for row in compression[compression["method"] != "ICL"].to_dict("records"):
        for column in ("label loyalty (%)", "word loyalty (%)", "accuracy (%)"):
            what = f"table 2 {row['method']} {column}"
            cells.append((what, "anchor_apps_table2_compression", row[column]))
    reweighting = _table("anchor_apps_table1_reweighting").set_index("task").loc["all tasks"]
    for column in ("vanilla 1-shot", "re-weighted 1-shot", "gain (re-weighted - vanilla 1-shot)"):
        cells.append((f"table 1 {column}", "anchor_apps_table1_reweighting", reweighting[column]))
    vectors = _table("task_vectors_accuracy").set_index("task").loc["mean"]
    conditions = ("baseline", "icl", "tv_replace", "tv_add")
    cells += [(f"task vectors {c}", "task_vectors_", vectors[c]) for c in conditions]
    functions = _table("function_vectors_accuracy").set_index("task").loc["mean"]
    conditions += ("icl_shuffled", "fv_add", "fv_shuffled")
    cells += [(f"function vectors {c}", "function_vectors_", functions[c]) for c in conditions]
    contrasts = _table("function_vectors_effects")
    means = contrasts[contrasts["task"] == "mean"].set_index("contrast")["effect"]
    for name in ("icl - baseline", "fv_add - baseline", "fv_add - tv_replace",
                 "fv_shuffled - icl_shuffled"):  # fmt: skip
        cells.append((f"function vectors {name}", "function_vectors_", means[name]))
    for folder in ("", "vector_atlas_gemma-3-270m/"):
        summary = _table(f"{folder}vector_atlas_summary")
        for row in summary.itertuples():
            what = f"vector atlas {folder or 'SmolLM2 '}{row.kind} {row.condition}"
            cells.append((what, f"{folder}vector_atlas_summary", row.accuracy_ci))
    return cells


def _quoting(table: str) -> list[Block]:
    """The README blocks whose named files include the table (``folder/name`` in that folder)."""
    folder, _, name = table.rpartition("/")
    inside = ROOT / "figures" / folder
    return [b for b in README_BLOCKS
            if any(p.name.startswith(name) and p.parent == inside for p in b.files)]  # fmt: skip


@pytest.mark.parametrize("what, table, cell", _cells(), ids=[w for w, _, _ in _cells()])
def test_the_readme_quotes_the_committed_run_where_it_names_it(what, table, cell):
    cell = normalised(cell)
    where = _quoting(table)
    assert where, f"no README block names figures/{table}*"
    assert any(cell in b.text or f"+{cell}" in b.text for b in where), (
        f"{what}: the committed run says {cell!r}; no README block naming figures/{table}* "
        "quotes it"
    )


# --- the checks themselves ---------------------------------------------------------------------


def test_a_number_quoted_away_from_its_file_is_not_backed(tmp_path):
    table = tmp_path / "t.csv"
    pd.DataFrame({"acc": [0.61], "acc_low": [0.5], "acc_high": [0.7]}).to_csv(table, index=False)
    assert backed("0.61 [0.50, 0.70]", (table,))
    assert not backed("0.61 [0.50, 0.71]", (table,))
    assert not backed("0.61 [0.50, 0.70]", ())
    record = tmp_path / "r.json"
    record.write_text(json.dumps({"x": {"acc": 0.25, "acc_ci": [-0.1, 0.4]}}))
    assert backed("+0.25 [-0.10, 0.40]", (record,))
    assert not backed("0.26 [-0.10, 0.40]", (record,))


def test_files_are_taken_from_the_block_before_the_section():
    readme = (
        "## A\nSee `figures/anchors_flows.csv`.\n\n- one 0.10 [0.00, 0.20] "
        "(`figures/task_vectors_accuracy.csv`)\n- two 0.30 [0.20, 0.40]\n"
    )
    first, second = [b for b in blocks(readme) if INTERVAL.search(b.text)]
    assert [p.name for p in first.files] == ["task_vectors_accuracy.csv"]
    assert {p.name for p in second.files} == {"anchors_flows.csv", "task_vectors_accuracy.csv"}
