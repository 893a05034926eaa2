"""The anchor applications end to end: ``run`` on a tiny model, exactness on the embedded one."""

import pandas as pd
import pytest
import torch

from icl_mech import IclMechError, PromptBatch, tasks
from icl_mech.anchors.compression import (
    anchor_keep,
    answer,
    encode_context,
    split_prompts,
)
from icl_mech.anchors.compression_experiment import (
    METHODS,
    METRICS,
    compare_methods,
    one_demonstration_each,
)
from icl_mech.anchors.readout import target_logits
from icl_mech.anchors.reweighting_experiment import ALL_TASKS, GAIN
from icl_mech.evaluation import build_prompts
from icl_mech.report import plain
from icl_mech.runner import reproduce
from icl_mech.threads import torch_threads

TINY_RUN = dict(
    tasks=("sentiment",), n_test=4, n_seeds=1, epochs=1, n_draws=2, timing_queries=1, rounds=1,
    diagnosis_tasks=("topic",), diagnosis_n_test=8, scan=True,
)  # fmt: skip


@pytest.fixture(autouse=True)
def _one_thread():
    with torch_threads(1):
        yield


def test_run_writes_the_numbers_it_returns(tiny_llama, tmp_path):
    report = reproduce("anchor-applications", tiny_llama, quick=True, out=tmp_path,
                       progress=False, **TINY_RUN)  # fmt: skip
    for name in ("table1_reweighting", "table2_compression", "table3_speedup", "diagnosis"):
        written = pd.read_csv(tmp_path / f"anchor_apps_{name}.csv")
        returned = plain(report.tables[name])  # named index levels as columns, no row numbers
        pd.testing.assert_frame_equal(written, returned, check_dtype=False, atol=1e-9)
        markdown = (tmp_path / f"anchor_apps_{name}.md").read_text()
        assert markdown.startswith("|") and len(markdown.splitlines()) == len(returned) + 2
    for name in ("reweighting", "compression", "speedup", "diagnosis"):
        assert (tmp_path / f"anchor_apps_{name}.png").stat().st_size > 10_000
    # the headline says what the tables say
    table1, table2 = report.tables["table1_reweighting"], report.tables["table2_compression"]
    headline = report.headline
    assert headline["table1 gain"] == table1.loc[ALL_TASKS, GAIN]
    overall = table1.loc[ALL_TASKS]
    assert overall["gain"] == pytest.approx(
        overall["reweighted_1_shot"] - overall["vanilla_1_shot"]
    )
    assert headline["table1 gain per task"] == {"sentiment": table1.loc["sentiment", GAIN]}
    assert list(headline["table2"]) == list(table2.index) == list(METHODS)
    for method, row in headline["table2"].items():
        assert row["kept"] == table2.loc[method, "kept"]
        for metric in METRICS:
            value, low, high = (
                table2.loc[method, f"{metric}{end}"] for end in ("", "_low", "_high")
            )
            assert row[metric] == f"{value:.1f} [{low:.1f}, {high:.1f}]"
            assert low <= value <= high
    assert headline["table3 speed-up"]["sentiment"] == round(
        float(report.tables["table3_speedup"].loc["sentiment", "speedup"]), 2
    )
    assert "diagnosis topic" in headline


def test_run_rejects_unknown_options(tiny_llama, tmp_path):
    with pytest.raises(IclMechError, match="unknown setting"):
        reproduce("anchor-applications", tiny_llama, quick=True, n_tests=3)
    with pytest.raises(IclMechError, match="n_test"):
        reproduce("anchor-applications", tiny_llama, quick=True, n_test=-3)


@pytest.mark.embedded
def test_compression_is_exact_on_the_embedded_model(embedded):
    """SmolLM2 (rotary, grouped-query attention): the full cache reproduces the full prompt,
    and Hidden_anchor equals the full prompt whose query cannot see the dropped entries."""
    task = tasks.load("topic")
    pool, test = task.split(3, seed=0)
    batch = PromptBatch.from_prompts(embedded, build_prompts(pool, 1, test.examples, seed=0))
    context, queries = split_prompts(batch)
    cache = encode_context(embedded, context)
    keep = anchor_keep(cache)
    with torch.no_grad():
        full = target_logits(embedded, batch)
        torch.testing.assert_close(answer(embedded, cache, queries), full, atol=1e-4, rtol=0)
        compressed = answer(embedded, cache.select(keep), queries)
    assert (compressed - full).abs().max() > 0.1
    assert int(keep.sum()) < int(cache.attention_mask.sum()) / 2


@pytest.mark.embedded
def test_hidden_anchor_stays_more_loyal_than_random_entries(embedded):
    prompts = one_demonstration_each(tasks.load("sentiment"), 12, seed=0)
    rows = dict(compare_methods(embedded, prompts, 1, top_k=5, seed=0))
    variant = "label + formatting"
    anchor, random_draw = (
        sum(r["word_loyalty"] for r in rows[f"{method} ({variant})"]) / len(prompts)
        for method in ("Hidden_anchor", "Hidden_random")
    )
    assert anchor > random_draw + 0.2
