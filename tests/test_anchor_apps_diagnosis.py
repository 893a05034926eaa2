"""Anchor-distance error diagnosis (icl_mech.anchors.diagnosis)."""

import random

import numpy as np
import pandas as pd
import pytest
import torch

from icl_mech import Capture, IclMechError, PromptBatch, tasks
from icl_mech.anchors.diagnosis import (
    actual_confusion,
    anchor_geometry,
    confusable_pairs,
    diagnose,
    predicted_confusion,
)
from icl_mech.anchors.readout import target_logits
from icl_mech.icl_prompt import ICLPrompt
from icl_mech.threads import torch_threads

CLASSES = ("a", "b", "c", "d")


@pytest.fixture(autouse=True)
def _one_thread():
    with torch_threads(1):
        yield


def _queries(n=200, seed=0):
    """Queries varying along dimensions 0 and 1 only (dimension 2 constant)."""
    generator = torch.Generator().manual_seed(seed)
    spread = torch.randn(n, 2, generator=generator) * torch.tensor([3.0, 1.0])
    return torch.cat([spread, torch.full((n, 1), 5.0)], dim=1)


def test_nearest_pair_on_the_query_directions_comes_first():
    keys = torch.tensor(
        [
            [0.0, 0.0, 0.0],
            [0.2, 0.1, 9.0],  # near class a where the queries vary; far along dimension 2
            [2.0, 0.0, 0.0],
            [0.0, 3.0, 0.0],
        ]
    )
    predicted = predicted_confusion(keys, _queries(), n_components=2)
    pairs = confusable_pairs(predicted, CLASSES)
    assert pairs[0][:2] == ("a", "b")
    assert torch.cdist(keys, keys)[0, 1] > torch.cdist(keys, keys)[0, 2]  # raw distance disagrees
    assert torch.allclose(predicted, predicted.T) and torch.equal(predicted.diag(), torch.ones(4))
    assert float(predicted.max()) == 1.0 and float(predicted.min()) >= 0


def test_predicted_confusion_against_numpy_and_what_its_values_mean():
    """Independent reference: numpy SVD of the centred queries, keys projected on the top
    directions times their singular values, distances over the largest distance. The most
    distinct pair is 1; the most confusable pair is the smallest value, not 0."""
    generator = torch.Generator().manual_seed(1)
    keys, queries = torch.randn(4, 6, generator=generator), torch.randn(50, 6, generator=generator)
    predicted = predicted_confusion(keys, queries, n_components=3).numpy()
    centred = (queries - queries.mean(0)).double().numpy()
    _, singular, directions = np.linalg.svd(centred, full_matrices=False)
    projected = keys.double().numpy() @ directions[:3].T * singular[:3]
    distance = np.linalg.norm(projected[:, None] - projected[None], axis=-1)
    expected = distance / distance.max()
    np.fill_diagonal(expected, 1.0)
    np.testing.assert_allclose(predicted, expected, atol=1e-6)
    off = predicted[np.triu_indices(4, k=1)]
    assert off.max() == pytest.approx(1.0) and off.min() > 0.05
    nearest = confusable_pairs(torch.tensor(predicted), CLASSES)[0]
    assert nearest[2] == pytest.approx(off.min())


def test_directions_are_weighted_by_how_much_the_queries_vary():
    keys = torch.tensor([[0.0, 0.0, 0.0], [1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
    predicted = predicted_confusion(keys, _queries(), n_components=2)
    # a-c differ along the low-variance direction: more confusable than a-b
    assert confusable_pairs(predicted, CLASSES[:3])[0][:2] == ("a", "c")


def test_actual_confusion_is_pairwise_auc():
    gold = torch.tensor([0, 0, 1, 1, 2, 2])
    logits = torch.tensor(
        [[2.0, 0, 1], [3, 0, 2], [0, 2, 1], [0, 3, 2], [1, 0, 0], [1, 0, 0]]
    )  # classes 0 and 1 are told apart; class 2's queries have class 0's margin
    confusion = actual_confusion(logits, gold)
    assert confusion[0, 1] == confusion[1, 0] == confusion[1, 2] == 1.0
    assert confusion[0, 2] == confusion[2, 0] == 0.5
    assert torch.equal(confusion.diag(), torch.ones(3))
    assert confusable_pairs(confusion, CLASSES[:3])[0][:2] == ("a", "c")


def test_keys_and_queries_reproduce_the_attention_scores(tiny):
    """<q, k_class> summed over heads equals the model's attention scores at (q, label word)."""
    task = tasks.load("question_type")
    demos = task.sample_demonstrations(1, random.Random(0))
    queries = list(task.examples[:5])
    layer = 1
    keys, at_q, _, _ = anchor_geometry(tiny, task, demos, queries, [layer])
    batch = PromptBatch.from_prompts(tiny, [ICLPrompt.build(task, demos, q) for q in queries])
    capture = Capture(f"blocks.{layer}.attn.hook_attn_scores")
    with torch.no_grad():
        target_logits(tiny, batch, capture)
    scores = next(iter(capture.activations.values()))
    scale = tiny.cfg.d_head**0.5  # both tiny architectures scale scores by sqrt(d_head)
    for b, row in enumerate(batch.rows):
        for tokens, label in zip(row.labels, batch.demo_labels[b]):
            model_score = scores[b, :, row.target, tokens[0]].sum()
            ours = (at_q[layer][b] * keys[layer][label]).sum() / scale
            torch.testing.assert_close(ours, model_score, atol=1e-4, rtol=1e-4)


def test_diagnose_on_a_tiny_model(tiny_llama):
    task = tasks.load("topic")
    pool, test = task.split(12, seed=0)
    demos = pool.sample_demonstrations(1, random.Random(0))
    result = diagnose(tiny_llama, task, demos, test.examples, layers=[1, 2], scan=True)
    one_head = diagnose(tiny_llama, task, demos, test.examples, layers=[1, 2], heads=[0])
    assert torch.equal(one_head.actual, result.actual)
    assert not torch.allclose(one_head.predicted, result.predicted)
    assert result.predicted.shape == result.actual.shape == (4, 4)
    assert sorted(result.per_layer) == [0, 1, 2] and result.layers == [1, 2]
    assert len(result.to_frame()) == 6
    # the correlations, against numpy / pandas on the same 6 class pairs
    upper = np.triu_indices(4, k=1)
    predicted, actual = result.predicted.numpy()[upper], result.actual.numpy()[upper]
    assert result.correlation == pytest.approx(np.corrcoef(predicted, actual)[0, 1], abs=1e-6)
    ranks = pd.Series(predicted).corr(pd.Series(actual), method="spearman")
    assert result.spearman == pytest.approx(ranks, abs=1e-6)
    frame = result.to_frame()
    assert frame["predicted"].corr(frame["actual"]) == pytest.approx(result.correlation, abs=1e-6)
    for layer in (1, 2):  # the scan's value is the correlation of that layer's own diagnosis
        alone = diagnose(tiny_llama, task, demos, test.examples, layers=[layer])
        assert result.per_layer[layer] == pytest.approx(alone.correlation, abs=1e-6)
    assert (
        result.most_confused("predicted") == confusable_pairs(result.predicted, task.classes)[0][:2]
    )


def test_clear_errors(tiny_llama):
    with pytest.raises(IclMechError, match="must share d"):
        predicted_confusion(torch.zeros(3, 4), torch.zeros(5, 3))
    with pytest.raises(IclMechError, match="coincide"):
        predicted_confusion(torch.ones(3, 3), _queries())
    task = tasks.load("sentiment")
    with pytest.raises(IclMechError, match="3 or more classes"):
        diagnose(tiny_llama, task, task.examples[:2], task.examples[2:6])
    topic = tasks.load("topic")
    with pytest.raises(IclMechError, match=r"missing \['sports'\]"):
        diagnose(
            tiny_llama,
            topic,
            [e for e in topic.examples if e.y != "sports"][:3],
            topic.examples[:4],
        )
    with pytest.raises(IclMechError, match="heads"):
        diagnose(tiny_llama, topic, topic.examples[:4], topic.examples[4:8], heads=[4])
    with pytest.raises(IclMechError, match="out of range"):
        diagnose(tiny_llama, topic, topic.examples[:4], topic.examples[4:8], layers=[7])
