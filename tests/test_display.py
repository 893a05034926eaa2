"""Rich notebook display: each card shows its object's own numbers (intervals as
``0.60 [0.52, 0.68]``) and n, an inline PNG picture, nothing fetched, every text escaped; the
figures a card makes are released, a report keeps its own; plain ``repr`` stays one line."""

import base64
import functools
import html
import io
import re

import numpy as np
import pandas as pd
import pytest
import torch
from matplotlib import image, pyplot
from matplotlib.figure import Figure

from icl_mech.anchors.aucroc import AnchorAuc
from icl_mech.anchors.flows import FLOWS, Flows
from icl_mech.anchors.loyalty import CONDITIONS, Loyalty
from icl_mech.icv.vector import ICV
from icl_mech.report import Report
from icl_mech.runner import settings_for
from icl_mech.show import cards
from icl_mech.task_vectors.results import CONDITIONS as TV_CONDITIONS
from icl_mech.task_vectors.results import TaskResult, TaskVectorResults
from icl_mech.task_vectors.settings import Settings as TaskVectorSettings
from icl_mech.task_vectors.sweep import LayerSweep
from icl_mech.task_vectors.vector import TaskVector

SNEAKY = "<b>sneaky</b>"  # a label word, task or model name: shown as text, never as markup
ESCAPED = html.escape(SNEAKY)
PNG_URI = '<img src="data:image/png;base64,'


def interval(value, low, high) -> str:
    return f"{value:.2f} [{low:.2f}, {high:.2f}]"


def number(value) -> str:
    return f"{value:.4g}"


def text_of(page: str) -> str:
    """The card's text: tags dropped, entities decoded, whitespace collapsed."""
    return " ".join(html.unescape(re.sub(r"<[^>]+>", " ", page)).split())


def queries(n_examples: int, n_queries: int) -> list[str]:
    return [f"query {i % n_queries}" for i in range(n_examples)]


def make_flows(n_layers=6, seed=0) -> Flows:
    values = torch.rand(12, n_layers, 3, generator=torch.Generator().manual_seed(seed))
    return Flows(values.double(), list(range(n_layers)), SNEAKY, queries(12, 6))


def make_loyalty() -> Loyalty:
    generator = torch.Generator().manual_seed(1)
    label = (torch.rand(10, 4, generator=generator) > 0.3).float()
    word = torch.rand(10, 4, generator=generator)
    return Loyalty(label, word, list(CONDITIONS), 2, SNEAKY, queries(10, 5))


def make_auc() -> AnchorAuc:
    generator = torch.Generator().manual_seed(2)
    predicted = torch.arange(16) % 2
    scores = torch.rand(16, 5, 2, generator=generator)
    scores[torch.arange(16), :, predicted] += torch.linspace(0, 1, 5)  # deeper, more telling
    return AnchorAuc(scores, predicted, [0, 1, 2, 3, 4], SNEAKY, "pooled", queries(16, 8))


def make_task_vector() -> TaskVector:
    values = torch.randn(3, 5, 16, generator=torch.Generator().manual_seed(3))
    return TaskVector(values, range(5), {"task": SNEAKY, "model": "tiny", "seed": 7})


def make_icv() -> ICV:
    generator = torch.Generator().manual_seed(4)
    vector, mean, component = torch.randn(3, 4, 8, generator=generator)
    return ICV(vector, mean, component, (0, 1, 2, 3), SNEAKY, 4, 8, n_pairs=5,
               explained_variance=0.4321)  # fmt: skip


def task_result(name: str, n_test: int, seed: int) -> TaskResult:
    rng = np.random.default_rng(seed)
    rates = dict(zip(TV_CONDITIONS, (0.2, 0.8, 0.4, 0.5)))
    correct = {c: (rng.random(n_test) < rate).tolist() for c, rate in rates.items()}
    accuracy = {c: float(np.mean(v)) for c, v in correct.items()}
    curves = [
        LayerSweep(name, mode, split, [0, 1, 2], 3, [0.1, 0.5, 0.3], n_test)
        for mode in ("replace", "add")
        for split in ("dev", "test")
    ]
    mean_difference = TaskVector(torch.ones(1, 3, 4), (0, 1, 2), {"kind": "mean-difference"})
    return TaskResult(name, 3, 8, n_test, 1, 1, accuracy, dict(accuracy), curves,
                      pd.DataFrame(), mean_difference, 0.1, correct)  # fmt: skip


def make_task_vector_results() -> TaskVectorResults:
    tasks = [task_result(SNEAKY, 20, 5), task_result("antonyms", 20, 6)]
    return TaskVectorResults(tasks, TaskVectorSettings.quick(n_test=20))


def make_report() -> Report:
    figures = {}
    for name in ("curve", "bars"):
        figures[name] = Figure(figsize=(3, 2))
        figures[name].subplots().plot([0, 1, 2], [1, 3, 2])
    headline = {
        "loss_ratio": 1.0123,
        "accuracy": 0.6,
        "accuracy_ci": [0.52, 0.68],
        "diagnosis": {"most confused": f"{SNEAKY}/negative", "auc": 0.71, "auc_ci": [0.6, 0.8]},
    }
    tables = {"results": pd.DataFrame({"a": [1, 2, 3], "b": [4.0, 5.0, 6.0]})}
    return Report("icl-gd", settings_for("icl-gd", quick=True), tables, figures, headline,
                  model="tiny", seconds=3.0)  # fmt: skip


MAKERS = [make_flows, make_loyalty, make_auc, make_task_vector, make_icv,
          make_task_vector_results, make_report]  # fmt: skip


@functools.cache
def rendered(make) -> tuple[object, str]:
    """An object and its card (made once per test session)."""
    shown = make()
    return shown, shown._repr_html_()


@pytest.mark.parametrize("make", MAKERS, ids=lambda make: make.__name__.removeprefix("make_"))
def test_card_is_self_contained_escaped_with_a_picture_and_repr_is_one_line(make):
    shown, page = rendered(make)
    assert "\n" not in repr(shown) and type(shown).__name__ in repr(shown)
    assert len(repr(shown)) < 200
    assert not re.search(r"<(script|style|link|iframe|object|embed)\b", page, re.IGNORECASE)
    assert not re.search(r"\son\w+\s*=", page)  # no event handlers
    sources = re.findall(r"""\b(?:src|href)\s*=\s*["']?([^"'\s>]*)""", page, re.IGNORECASE)
    assert sources and all(s.startswith("data:image/png;base64,") for s in sources)
    assert "http" not in "".join(sources)
    assert PNG_URI in page
    assert SNEAKY not in page and ESCAPED in page
    for source in sources:  # every picture is a PNG with something drawn on it
        drawn = image.imread(io.BytesIO(base64.b64decode(source.split(",", 1)[1])), "png")
        assert drawn.shape[0] > 50 and drawn.shape[1] > 50 and drawn[..., :3].std() > 0.05


def test_flows_card_shows_each_layers_shares_with_intervals_and_n():
    flows, page = rendered(make_flows)
    text = text_of(page)
    summary = flows.summary()
    assert len(summary) == 6 * len(FLOWS)
    for row in summary.itertuples():
        assert interval(row.normalised, row.normalised_low, row.normalised_high) in text
    assert summary["n"].eq(6).all() and len(set(flows.units())) == 6
    assert "examples 12 n (queries) 6" in text


def test_long_tables_show_evenly_spaced_rows_first_and_last_kept():
    flows = make_flows(n_layers=30, seed=1)
    text = text_of(flows._repr_html_())
    wide = flows.summary().pivot(index="layer", columns="flow", values="share")
    assert "12 of 30 rows shown (evenly spaced)" in text
    for layer in (0, 29):
        assert " ".join([str(layer), *wide.loc[layer, list(FLOWS)]]) in text
    shown = [layer for layer in range(30) if " ".join(wide.loc[layer, list(FLOWS)]) in text]
    assert len(shown) == 12


def test_loyalty_card_shows_each_condition_and_the_effects():
    loyalty, page = rendered(make_loyalty)
    text = text_of(page)
    for row in loyalty.summary().itertuples():
        label = interval(row.label_loyalty, row.label_loyalty_low, row.label_loyalty_high)
        word = interval(row.word_loyalty, row.word_loyalty_low, row.word_loyalty_high)
        assert f"{row.depth} {row.isolated} {label} {word} {row.n}" in text
    for words in ("label", "random"):
        for metric in ("label", "word"):
            effect = loyalty.effect(metric, words)
            shown = interval(effect.value, effect.low, effect.high)
            assert f"{words} {metric}_loyalty {shown} {effect.n}" in text


def test_auc_card_shows_auc_with_intervals_r_and_n():
    auc, page = rendered(make_auc)
    text = text_of(page)
    frame = auc.to_frame()
    assert not frame["R"].isna().any()
    for row in frame.itertuples():
        assert f"{row.layer} {interval(row.auc, row.auc_low, row.auc_high)} {number(row.R)}" in text
    assert f"n (queries) {frame['n'][0]}" in text and frame["n"][0] == 8


def test_task_vector_card_shows_norms_and_agreement_per_layer():
    vector, page = rendered(make_task_vector)
    text = text_of(page)
    for i, layer in enumerate(vector.layers):
        at = vector.values[:, i]
        norm = float(sum(v.norm() for v in at) / len(at))
        pairs = [(a, b) for a in range(3) for b in range(3) if a != b]
        cosine = sum(float(torch.cosine_similarity(at[a], at[b], 0)) for a, b in pairs) / 6
        assert f"{layer} {number(norm)} {number(cosine)}" in text
    assert "sets 3" in text and "model tiny" in text and "seed 7" in text


def test_icv_card_shows_its_frame_and_explained_variance():
    icv, page = rendered(make_icv)
    text = text_of(page)
    for row in icv.to_frame().itertuples(index=False):
        assert " ".join([str(row[0]), *map(number, row[1:])]) in text
    assert "explained variance 0.4321" in text and "from 5 demonstration pairs" in text


def test_task_vector_results_card_shows_every_task_and_the_mean_with_intervals():
    results, page = rendered(make_task_vector_results)
    text = text_of(page)
    for row in results.to_frame().to_dict("records"):
        cells = [interval(row[c], row[f"{c}_low"], row[f"{c}_high"]) for c in TV_CONDITIONS]
        assert " ".join([row["task"], str(row["n_test"]), *cells]) in text
    means = results.intervals()
    cells = [interval(means[c].value, means[c].low, means[c].high) for c in TV_CONDITIONS]
    assert " ".join(["mean", "40", *cells]) in text
    summary = results.summary()
    assert f"tv_replace / icl {number(summary['tv_replace_over_icl'])}" in text
    assert f"tv_add / icl {number(summary['tv_add_over_icl'])}" in text


def test_report_card_shows_headline_intervals_and_keeps_its_figures():
    report, page = rendered(make_report)
    text = text_of(page)
    assert report.summary().splitlines()[0] in text
    assert f"accuracy {interval(0.6, 0.52, 0.68)}" in text
    assert f"diagnosis / auc {interval(0.71, 0.6, 0.8)}" in text
    assert f"loss_ratio {number(1.0123)}" in text
    assert "_ci" not in text  # each interval beside its value, not as a row of its own
    assert "table results 3 × 2" in text
    assert page.count(PNG_URI) == len(report.figures) and "curve" in text and "bars" in text
    assert all(figure.axes for figure in report.figures.values())  # still the report's


def test_cards_release_the_figures_they_make(monkeypatch):
    made = []
    init = Figure.__init__

    def recording(self, *args, **kwargs):
        init(self, *args, **kwargs)
        made.append(self)

    monkeypatch.setattr(Figure, "__init__", recording)
    for make in MAKERS[:-1]:
        shown = make()
        made.clear()
        shown._repr_html_()
        assert made and not any(figure.axes for figure in made), make.__name__
    open_before = pyplot.get_fignums()
    figure = pyplot.figure()
    figure.subplots().plot([0, 1], [1, 0])
    assert PNG_URI in cards.figure(figure, "a pyplot figure")
    assert pyplot.get_fignums() == open_before


def test_intervals_fold_into_one_column_and_undefined_ones_show_the_value():
    frame = pd.DataFrame({"x": [0.6, 0.5], "x_low": [0.52, np.nan], "x_high": [0.68, np.nan]})
    folded = cards.fold_intervals(frame)
    assert list(folded.columns) == ["x"] and list(folded["x"]) == ["0.60 [0.52, 0.68]", "0.5"]
    assert (
        cards.interval(0.25, None, None) == "0.25"
        and cards.interval(1, 0, 2) == "1.00 [0.00, 2.00]"
    )
    assert cards.layer_span(range(3, 8)) == "3..7" and cards.layer_span([0, 5]) == "0, 5"
