"""The shared bootstrap: intervals that behave like intervals should."""

import math

import numpy as np
import pandas as pd
import pytest

from icl_mech import IclMechError
from icl_mech.stats import Estimate, bootstrap, bootstrap_statistic, paired, summarise


def test_interval_matches_the_normal_approximation_for_a_proportion():
    values = np.random.default_rng(1).random(400) < 0.6
    estimate = bootstrap(values)
    half = 1.96 * math.sqrt(estimate.value * (1 - estimate.value) / 400)
    assert estimate.low < estimate.value < estimate.high
    assert (estimate.high - estimate.low) / 2 == pytest.approx(half, rel=0.15)
    assert estimate.n == 400


def test_constant_values_have_no_spread():
    estimate = bootstrap([0.5] * 10)
    assert (estimate.value, estimate.low, estimate.high) == (0.5, 0.5, 0.5)


def test_clusters_keep_repeated_queries_together():
    values = np.random.default_rng(2).random(50)
    alone = bootstrap(values)
    repeated = np.repeat(values, 3)  # the same queries under three seeds
    naive = bootstrap(repeated)
    clustered = bootstrap(repeated, clusters=np.repeat(np.arange(50), 3))
    assert clustered == alone  # same units, same draws
    assert naive.high - naive.low < 0.8 * (alone.high - alone.low)  # rows as units: too narrow


def test_paired_difference_sees_a_shift_that_unpaired_intervals_hide():
    rng = np.random.default_rng(3)
    base = rng.random(60)
    shifted = base + 0.05 + 0.01 * rng.standard_normal(60)
    gain = paired(shifted, base)
    assert gain.low > 0.04 and gain.high < 0.06 and not gain.includes_zero
    one, two = bootstrap(shifted), bootstrap(base)
    assert one.low < two.high  # the marginal intervals overlap
    assert paired(base, base).includes_zero


def test_any_statistic_agrees_with_the_mean_path():
    values = np.random.default_rng(4).random(80)
    fast = bootstrap(values, n_resamples=1000)
    slow = bootstrap_statistic(lambda index: float(values[index].mean()), 80, n_resamples=1000)
    assert slow.value == fast.value
    assert slow.low == pytest.approx(fast.low, abs=1e-12)


def test_summarise_and_formatting():
    frame = pd.DataFrame({"task": ["a"] * 4 + ["b"] * 4, "correct": [1, 1, 0, 1, 0, 0, 0, 1]})
    table = summarise(frame, "correct", ["task"])
    assert list(table.columns) == ["task", "correct", "correct_low", "correct_high", "n"]
    assert table["correct"].tolist() == [0.75, 0.25]
    assert str(Estimate(0.6, 0.52, 0.68, 10)) == "0.60 [0.52, 0.68]"


def test_bad_input_is_refused():
    for call in (
        lambda: bootstrap([]),
        lambda: bootstrap([1.0, math.nan]),
        lambda: bootstrap([1.0, 2.0], clusters=[0]),
        lambda: paired([1.0], [1.0, 2.0]),
        lambda: bootstrap([1.0], confidence=1.5),
    ):
        with pytest.raises(IclMechError):
            call()
