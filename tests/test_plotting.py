"""The one figure style: every figure with whiskers or bands says what they are (one wording,
with its unit and n), and a bar of height 0 is drawn visibly, outlined and with its value."""

from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import torch
from matplotlib.patches import Rectangle

from icl_mech import IclMechError, stats
from icl_mech.anchors.aucroc import AnchorAuc
from icl_mech.anchors.figures import auc_figure, flows_figure, loyalty_figure
from icl_mech.anchors.flows import Flows
from icl_mech.anchors.loyalty import CONDITIONS, Loyalty
from icl_mech.plotting import accuracy_figure, condition_bars, figure, grouped_bars, interval_note


def _texts(fig) -> str:
    """Every title, suptitle and legend text of a figure, as one string."""
    parts = [fig.get_suptitle()]
    for ax in fig.axes:
        parts += [ax.get_title(loc) for loc in ("left", "center", "right")]
        legend = ax.get_legend()
        parts += [t.get_text() for t in legend.get_texts()] if legend else []
    return "\n".join(parts)


def _zero_bars(ax) -> list[Rectangle]:
    return [p for p in ax.patches if isinstance(p, Rectangle) and p.get_height() == 0]


def _assert_visible(ax, label: str = "0.00") -> None:
    zeros = _zero_bars(ax)
    assert zeros, "no bar of height 0 drawn"
    for bar in zeros:
        assert bar.get_visible() and bar.get_linewidth() > 0 and bar.get_edgecolor()[3] > 0
    assert label in [t.get_text() for t in ax.texts], "the zero is not written on the chart"


def test_one_wording_with_unit_and_n():
    assert interval_note("queries", 64) == "whiskers: 95% bootstrap interval over queries, n = 64"
    note = interval_note("sentences", [16, 12, 16.0], per="pair set", mark="bands")
    assert note == "bands: 95% bootstrap interval over sentences, n = 12–16 per pair set"
    assert interval_note("prompts", 8, mark=None).startswith("95% bootstrap interval over")
    with pytest.raises(IclMechError, match="queries"):
        interval_note("queries", [])


def _long_frame() -> pd.DataFrame:
    rows = []
    for task, n in (("antonym", 32), ("plural", 26), ("mean", 58)):
        for condition, value in (("baseline", 0.0), ("icl", 0.5)):
            low, high = max(0.0, value - 0.1), value + 0.1
            rows.append(dict(task=task, condition=condition, accuracy=value, accuracy_low=low,
                             accuracy_high=high, n=n))  # fmt: skip
    return pd.DataFrame(rows)


def test_condition_bars_say_what_the_whiskers_are_and_draw_zero():
    fig = condition_bars(_long_frame(), {"icl": "ICL"}, "Accuracy")
    text = _texts(fig)
    assert "whiskers: 95% bootstrap interval over queries, n = 26–32 per task" in text
    assert "58 in the mean" in text
    _assert_visible(fig.axes[0])


def test_grouped_bars_draw_zero_visibly():
    fig, ax = figure(4, 3)
    grouped_bars(ax, pd.DataFrame({"a": [0.0, 0.4], "b": [0.3, 0.0]}, index=["x", "y"]), "value")
    assert len(_zero_bars(ax)) == 2
    _assert_visible(ax)


def test_icl_accuracy_figure_states_its_intervals():
    def result(task, shots, n):
        hits = np.arange(n) % 3 == 0
        estimate = stats.bootstrap(hits.astype(float))
        return SimpleNamespace(task=task, n_demonstrations=shots, n_classes=2, seed=0,
                               estimate=lambda: estimate)  # fmt: skip

    fig = accuracy_figure([result("sentiment", 0, 64), result("sentiment", 1, 64)], "tiny")
    assert "whiskers: 95% bootstrap interval over queries, n = 64 per task" in _texts(fig)


def test_anchor_figures_state_their_intervals():
    generator = torch.Generator().manual_seed(0)
    queries = [f"q{i // 2}" for i in range(8)]  # two seeds per query: 4 units
    flows = Flows(torch.rand(8, 3, 3, generator=generator), [0, 1, 2], "sentiment", queries)
    assert "bands: 95% bootstrap interval over queries, n = 4 per task" in _texts(
        flows_figure([flows])
    )
    label = torch.zeros(8, len(CONDITIONS))  # loyalty 0 everywhere: bars of height 0
    loyalty = Loyalty(label, torch.rand(8, len(CONDITIONS), generator=generator),
                      list(CONDITIONS), 1, "sentiment", queries)  # fmt: skip
    fig = loyalty_figure([loyalty])
    assert "whiskers: 95% bootstrap interval over queries, n = 4 per task" in _texts(fig)
    _assert_visible(fig.axes[0])
    scores = torch.rand(8, 3, 2, generator=generator)
    auc = AnchorAuc(scores, torch.arange(8) % 2, [0, 1, 2], "sentiment", queries=queries)
    assert "band: 95% bootstrap interval over queries, n = 4 per task" in _texts(auc_figure([auc]))
