"""The anchor applications end to end: ``run`` on a tiny model, exactness on the embedded one."""

import pytest
import torch

from icl_mech import IclMechError, PromptBatch, tasks
from icl_mech.anchors.compression import (
    ANCHOR_ROLES,
    anchor_keep,
    answer,
    encode_context,
    split_prompts,
)
from icl_mech.anchors.compression_experiment import compare_methods, one_demonstration_each
from icl_mech.anchors.readout import target_logits
from icl_mech.evaluation import build_prompts
from icl_mech.models import torch_threads
from icl_mech.runner import reproduce

TINY_RUN = dict(
    tasks=("sentiment",), n_test=4, n_seeds=1, epochs=1, n_draws=2, timing_queries=1, rounds=1,
    diagnosis_tasks=("topic",), diagnosis_queries=8, scan=True,
)  # fmt: skip


@pytest.fixture(autouse=True)
def _one_thread():
    with torch_threads(1):
        yield


def test_run_writes_tables_and_figures(tiny_llama, tmp_path):
    report = reproduce("anchor-applications", tiny_llama, quick=True, out=tmp_path,
                       progress=False, **TINY_RUN)  # fmt: skip
    for name in ("table1_reweighting", "table2_compression", "table3_speedup", "diagnosis"):
        assert (tmp_path / f"anchor_apps_{name}.csv").exists()
        assert (tmp_path / f"anchor_apps_{name}.md").read_text().startswith("|")
    for name in ("reweighting", "compression", "speedup", "diagnosis"):
        assert (tmp_path / f"anchor_apps_{name}.png").stat().st_size > 10_000
    assert report.headline["table2"]["ICL"]["label_loyalty"] == 100.0
    assert report.headline["table2"]["ICL"]["word_loyalty"] == 100.0
    assert report.headline["table3 speed-up"]["sentiment"] > 0
    assert "diagnosis topic" in report.headline


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
    rows = dict(compare_methods(embedded, prompts, 1, ANCHOR_ROLES, top_k=5, seed=0))
    assert rows["Hidden_anchor"]["word_loyalty"] > rows["Hidden_random"]["word_loyalty"] + 0.2
