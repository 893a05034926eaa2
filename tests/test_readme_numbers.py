"""The README's results quote the committed full runs: every number it states with an interval
is read here from the run's own table, so a regenerated figure or an edited README that no
longer agree fail."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

ROOT = Path(__file__).resolve().parents[1]
# prose wraps lines and uses the typographic minus
README = " ".join((ROOT / "README.md").read_text().replace("−", "-").split())


def _table(name: str) -> pd.DataFrame:
    return pd.read_csv(ROOT / "figures" / f"{name}.csv")


def _quoted(cell: str) -> bool:
    return cell in README or f"+{cell}" in README


def _cells() -> list[tuple[str, str]]:
    cells = []
    effect = _table("anchors_isolation_effect")
    rows = effect[(effect["isolated"] == "label") & (effect["metric"] == "label_loyalty")]
    cells += [(f"isolation {r.task}", r.effect) for r in rows.itertuples()]
    compression = _table("anchor_apps_table2_compression")
    for row in compression[compression["method"] != "ICL"].to_dict("records"):
        for column in ("label loyalty (%)", "word loyalty (%)", "accuracy (%)"):
            cells.append((f"table 2 {row['method']} {column}", row[column]))
    reweighting = _table("anchor_apps_table1_reweighting").set_index("task").loc["all tasks"]
    for column in ("vanilla 1-shot", "re-weighted 1-shot", "gain (re-weighted - vanilla 1-shot)"):
        cells.append((f"table 1 {column}", reweighting[column]))
    vectors = _table("task_vectors_accuracy").set_index("task").loc["mean"]
    conditions = ("baseline", "icl", "tv_replace", "tv_add")
    cells += [(f"task vectors {c}", vectors[c]) for c in conditions]
    functions = _table("function_vectors_accuracy").set_index("task").loc["mean"]
    conditions += ("icl_shuffled", "fv_add", "fv_shuffled")
    cells += [(f"function vectors {c}", functions[c]) for c in conditions]
    contrasts = _table("function_vectors_effects")
    means = contrasts[contrasts["task"] == "mean"].set_index("contrast")["effect"]
    for name in ("icl - baseline", "fv_add - baseline", "fv_add - tv_replace",
                 "fv_shuffled - icl_shuffled"):  # fmt: skip
        cells.append((f"function vectors {name}", means[name]))
    return cells


@pytest.mark.parametrize("what, cell", _cells(), ids=[w for w, _ in _cells()])
def test_the_readme_quotes_the_committed_run(what, cell):
    assert _quoted(cell), f"{what}: the committed run says {cell!r}, the README does not"
