"""Intervals on the reproductions' numbers: the right units, the right pairing, the right
statistic (each checked against an independent computation)."""

import numpy as np
import pandas as pd
import pytest
import torch
from sklearn.metrics import roc_auc_score

from icl_mech import stats
from icl_mech.anchors.aucroc import AnchorAuc, weighted_roc_auc
from icl_mech.anchors.flows import Flows
from icl_mech.anchors.loyalty import CONDITIONS, Loyalty
from icl_mech.evaluation import AccuracyResult
from icl_mech.icv import text_metrics
from icl_mech.icv.results import StyleEvaluation, corpus_bleu_interval


def _loyalty(n, seed=0, repeats=1):
    generator = torch.Generator().manual_seed(seed)
    label = (torch.rand(n, 4, generator=generator) < 0.7).float()
    word = torch.rand(n, 4, generator=generator)
    queries = [f"q{i}" for i in range(n)]
    return Loyalty(
        label.repeat(repeats, 1), word.repeat(repeats, 1), list(CONDITIONS), 2, "t",
        queries * repeats,
    )  # fmt: skip


def test_loyalty_repeated_across_seeds_counts_each_query_once():
    one = _loyalty(30).summary()
    two = Loyalty.concat([_loyalty(30), _loyalty(30)]).summary()  # the same queries, 2 seeds
    columns = ["label_loyalty", "label_loyalty_low", "label_loyalty_high", "word_loyalty_low"]
    pd.testing.assert_frame_equal(one[columns], two[columns])
    assert (two["n"] == 30).all()
    rows_as_units = Loyalty.concat([_loyalty(30), _loyalty(30)])
    rows_as_units.queries = None  # 60 "independent" rows: a narrower, wrong interval
    naive = rows_as_units.summary()

    def width(s):
        return s.word_loyalty_high - s.word_loyalty_low

    assert (width(naive) < width(two)).all()


def test_loyalty_summary_points_are_the_means_and_intervals_narrow_with_more_queries():
    small, large = _loyalty(20), _loyalty(400, seed=1)
    summary = small.summary()
    for c, (depth, words) in enumerate(CONDITIONS):
        row = summary[(summary.depth == depth) & (summary.isolated == words)].iloc[0]
        assert row.word_loyalty == pytest.approx(float(small.word[:, c].mean()))
        assert row.word_loyalty_low <= row.word_loyalty <= row.word_loyalty_high
        low, high = row.word_loyalty_low, row.word_loyalty_high
        assert row.word == f"{row.word_loyalty:.2f} [{low:.2f}, {high:.2f}]"
    width = lambda s: (s.word_loyalty_high - s.word_loyalty_low).mean()  # noqa: E731
    assert width(large.summary()) < 0.5 * width(summary)


def test_isolation_effect_is_the_paired_shallow_minus_deep_difference():
    loyalty = _loyalty(50)
    shallow, deep = CONDITIONS.index(("shallow", "label")), CONDITIONS.index(("deep", "label"))
    effect = loyalty.effect("word", "label")
    expected = float(loyalty.word[:, shallow].mean() - loyalty.word[:, deep].mean())
    assert effect.value == pytest.approx(expected)
    assert effect == stats.paired(loyalty.word[:, shallow], loyalty.word[:, deep], loyalty.queries)
    # a constant shift between the conditions has no spread once paired
    loyalty.word[:, deep] = loyalty.word[:, shallow] - 0.25
    shifted = loyalty.effect("word", "label")
    assert shifted.low == pytest.approx(0.25) and shifted.high == pytest.approx(0.25)
    table = loyalty.effects()
    assert set(table.isolated) == {"label", "random"} and set(table.metric) == {
        "label_loyalty",
        "word_loyalty",
    }


def test_weighted_auc_equals_sklearn_with_ties_and_nan():
    rng = np.random.default_rng(0)
    scores = rng.integers(0, 5, 40).astype(float)  # many ties
    scores[3] = np.nan
    positive = rng.random(40) < 0.4
    keep = ~np.isnan(scores)
    expected = roc_auc_score(positive[keep], scores[keep])
    assert weighted_roc_auc(scores, positive, np.ones((1, 40)))[0] == pytest.approx(expected)
    counts = rng.integers(0, 3, 40).astype(float)  # a resample: observation i drawn counts[i] times
    index = np.repeat(np.arange(40), counts.astype(int))
    index = index[keep[index]]
    expected = roc_auc_score(positive[index], scores[index])
    assert weighted_roc_auc(scores, positive, counts[None])[0] == pytest.approx(expected)


def test_auc_interval_equals_the_generic_bootstrap_statistic_over_queries():
    generator = torch.Generator().manual_seed(0)
    scores = torch.rand(24, 2, 3, generator=generator)
    scores[5, 1, 2] = float("nan")
    predicted = torch.randint(0, 3, (24,), generator=generator)
    queries = [f"q{i % 12}" for i in range(24)]  # each query under two seeds
    auc = AnchorAuc(scores, predicted, [0, 1], "t", queries=queries)
    fast = auc.intervals(n_resamples=200)

    def statistic(layer):
        def at(index):
            part = AnchorAuc(scores[index], predicted[index], [0, 1])
            return float(part.auc()[layer])

        return at

    for layer in (0, 1):
        slow = stats.bootstrap_statistic(statistic(layer), 24, queries, n_resamples=200)
        assert fast[layer].value == pytest.approx(float(auc.auc()[layer]))
        assert (fast[layer].low, fast[layer].high) == pytest.approx((slow.low, slow.high))
        assert fast[layer].n == 12


def test_flow_intervals_are_bootstrap_means_per_layer_and_flow():
    values = torch.rand(10, 3, 3, dtype=torch.float64)
    values[2, 1, 0] = float("nan")  # an empty pair set is left out, as in the mean
    flows = Flows(values, [0, 1, 2], "t", [f"q{i % 5}" for i in range(10)])
    summary = flows.summary()
    row = summary[(summary.layer == 1) & (summary.flow == "S_wp")].iloc[0]
    column = values[:, 1, 0].numpy()
    keep = ~np.isnan(column)
    expected = stats.bootstrap(column[keep], [f"q{i % 5}" for i in range(10) if keep[i]])
    assert row.value == pytest.approx(float(np.nanmean(column)))
    assert row.n == 5 and row.value_low <= row.value <= row.value_high
    assert expected.value == pytest.approx(row.value)
    other = summary[(summary.layer == 0) & (summary.flow == "S_pq")].iloc[0]
    exact = stats.bootstrap(values[:, 0, 1].numpy(), [f"q{i % 5}" for i in range(10)])
    assert (other.value_low, other.value_high) == pytest.approx((exact.low, exact.high))


def test_stratified_mean_over_tasks():
    rng = np.random.default_rng(5)
    a, b = (rng.random(40) < 0.8).astype(float), (rng.random(10) < 0.2).astype(float)
    values, strata = np.concatenate([a, b]), ["a"] * 40 + ["b"] * 10
    estimate = stats.stratified(values, strata)
    assert estimate.value == pytest.approx((a.mean() + b.mean()) / 2)  # unweighted over tasks
    assert estimate.low < estimate.value < estimate.high and estimate.n == 50
    one = stats.stratified(a, ["a"] * 40)
    assert one.value == pytest.approx(a.mean()) and one.high - one.low > 0.1
    more = stats.stratified(np.tile(values, 4), strata * 4)
    assert more.high - more.low < 0.7 * (estimate.high - estimate.low)


def test_bootstrap_columns_equals_bootstrap_column_by_column():
    values = np.random.default_rng(6).random((30, 4))
    clusters = np.arange(30) // 3
    mean, low, high, n = stats.bootstrap_columns(values, clusters)
    for j in range(4):
        single = stats.bootstrap(values[:, j], clusters)
        assert (mean[j], low[j], high[j]) == pytest.approx((single.value, single.low, single.high))
    assert n == 10


def test_corpus_bleu_interval_resamples_sentences():
    outputs = ["the cat sat on the mat", "", "a dog barks", "hello there my friend"] * 3
    sources = ["the cat sat on a mat", "nothing", "a big dog barks", "hi there friend"] * 3
    estimate = corpus_bleu_interval(outputs, sources, n_resamples=300)
    assert estimate.value == text_metrics.bleu(outputs, sources)
    assert estimate.low < estimate.value < estimate.high and estimate.n == 12
    same = corpus_bleu_interval(["a b c d e"] * 4, ["a b c d e"] * 4, n_resamples=50)
    assert same.low == same.high == pytest.approx(100.0)


def test_style_summary_has_intervals_and_a_paired_gain():
    sources = [f"s{i}" for i in range(12)]
    base = np.linspace(-0.5, 0.5, 12)
    rows = pd.DataFrame(
        {
            "condition": ["none"] * 12 + ["icv"] * 12,
            "strength": [0.0] * 12 + [0.1] * 12,
            "source": sources * 2,
            "target": ["a b c"] * 24,
            "output": ["a b c"] * 24,
            "style": np.concatenate([base, base + 0.3]),
            "sentiment": np.concatenate([base, base + 0.3]),
            "offensive": [0.0] * 24,
            "log_likelihood": [-1.0] * 24,
            "ppl_tokens": [1] * 24,
        }
    )
    summary = StyleEvaluation("negative_positive", "sentiment", [], rows).to_frame()
    icv = summary[summary.condition == "icv"].iloc[0]
    assert icv["style_gain"] == pytest.approx(0.3)
    assert icv["style_gain_low"] == pytest.approx(0.3) == icv["style_gain_high"]  # paired
    assert icv["style_low"] < icv["style"] < icv["style_high"]  # unpaired: the spread of texts
    assert summary.loc[0, "gain_ci"] == "" and icv["gain_ci"] == "0.30 [0.30, 0.30]"


def test_demo_accuracy_estimate():
    result = AccuracyResult("t", 1, 0, ["q"] * 40, [1] * 40, [1] * 30 + [0] * 10, 2)
    estimate = result.estimate()
    assert estimate.value == result.accuracy == 0.75 and estimate.n == 40
    assert 0.6 < estimate.low < 0.75 < estimate.high < 0.9
    assert str(estimate).startswith("0.75 [")


@pytest.mark.embedded
@pytest.mark.xfail(
    reason="the intervals overlap on this model: on this split (34 test queries) tv_replace 0.53 "
    "[0.38, 0.71] vs baseline 0.38 [0.24, 0.56]; in the full run (32 queries) 0.62 [0.47, 0.78] "
    "vs 0.41 [0.25, 0.56]",
    raises=AssertionError,
    strict=True,
)
def test_task_vector_beats_zero_shot_on_city_language(embedded):
    """City → language is where the task vector helps most on the embedded model; on the test
    split (34 queries: a third of the task) the two 95% intervals must not overlap, nor may the
    paired gain include zero."""
    from icl_mech import tasks
    from icl_mech.task_vectors import Settings, evaluate
    from icl_mech.threads import torch_threads

    protocol = Settings(n_dev=12, n_test=48, max_new_tokens=1, test_curves=False)
    with torch_threads(1):
        result = evaluate(embedded, [tasks.load("city_language")], protocol, progress=False)
    task = result.tasks[0]
    vector, baseline = task.estimate("tv_replace"), task.estimate("baseline")
    assert vector.n == task.n_test >= 30, vector
    print(vector, baseline, task.difference("tv_replace", "baseline"))
    assert vector.low > baseline.high, (vector, baseline)
    assert not task.difference("tv_replace", "baseline").includes_zero
