"""Text metrics and the evaluation plumbing of icl_mech.icv (tiny models, no generation)."""

import math

import pandas as pd
import pytest
import torch
import torch.nn.functional as F

from icl_mech import IclMechError, tasks
from icl_mech.batching import TextBatch
from icl_mech.icv import paraphrase_prompt, text_metrics
from icl_mech.icv.evaluate import first_line, split_pairs, style_scores
from icl_mech.icv.results import StyleEvaluation
from icl_mech.icv.settings import Settings
from icl_mech.report import markdown
from icl_mech.threads import torch_threads


@pytest.fixture(autouse=True)
def one_thread():
    with torch_threads(1):
        yield


def test_sentiment_and_offensiveness_separate_the_bundled_pairs():
    for name, metric in (("negative_positive", "sentiment"), ("rude_polite", "offensiveness")):
        pairs = tasks.load_pairs(name)
        score = getattr(text_metrics, metric)
        sources = sum(score([x for x, _ in pairs])) / len(pairs)
        targets = sum(score([y for _, y in pairs])) / len(pairs)
        assert (targets > sources) if metric == "sentiment" else (targets < sources)


def test_bleu_against_source():
    same = text_metrics.bleu(["the cat sat on the mat"], ["the cat sat on the mat"])
    assert same == pytest.approx(100)
    assert text_metrics.sentence_bleu(["a b c d"], ["w x y z"]) == [0.0]
    with pytest.raises(IclMechError, match="2 outputs but 1 sources"):
        text_metrics.bleu(["a", "b"], ["a"])


def test_perplexity_equals_a_plain_computation(tiny):
    texts = ["The food was cold.", "Rude staff", "x", ""]
    ours = text_metrics.perplexity(tiny, texts, batch_size=3)
    for text, value in zip(texts, ours):
        if not text:
            assert math.isnan(value)
            continue
        tokens = TextBatch.from_texts(tiny, [text]).tokens
        if tokens.shape[1] < 2:
            assert math.isnan(value)
            continue
        with torch.no_grad():
            logits = tiny(tokens)[0, :-1]
        expected = math.exp(F.cross_entropy(logits, tokens[0, 1:]).item())
        assert value == pytest.approx(expected, rel=1e-4)
    corpus = text_metrics.corpus_perplexity(tiny, texts[:2])
    assert min(ours[:2]) <= corpus <= max(ours[:2])


def test_prompts_and_helpers(tiny_llama):
    demos = [("bad food", "good food")]
    plain = paraphrase_prompt(tiny_llama, "cold soup", demos, chat=False)
    assert plain.splitlines() == [
        "Please paraphrase the following sentence. Sentence: bad food, paraphrase: good food",
        "Please paraphrase the following sentence. Sentence: cold soup, paraphrase:",
    ]
    with pytest.raises(IclMechError, match="chat template"):
        paraphrase_prompt(tiny_llama, "cold soup", chat=True)
    assert first_line("\n  Great food!\nMore") == "Great food!"
    assert first_line("") == ""
    assert style_scores("rude_polite", [0.5], [0.25]) == [0.75]
    with pytest.raises(IclMechError, match="no style metric"):
        style_scores("unknown", [], [])
    demos, _, test = split_pairs(tasks.load_pairs("rude_polite"), 3, 2, seed=0)
    assert len(demos) == 3 and len(test) == 2 and not set(demos) & set(test)
    with pytest.raises(IclMechError, match="only 72 pairs"):
        split_pairs(tasks.load_pairs("rude_polite"), 70, 5, seed=0)


def test_summary_of_scored_rows():
    rows = pd.DataFrame(
        {
            "condition": ["none", "icv", "icl"],
            "strength": [0.0, 0.1, 0.0],
            "source": ["a b c", "a b c", "a b c"],
            "target": ["a b d", "a b d", "a b d"],
            "output": ["a b c", "", "a b d"],
            "style": [0.1, 0.9, 0.5],
            "sentiment": [0.1, 0.9, 0.5],
            "offensive": [0.0, 0.0, 0.0],
            "log_likelihood": [-2.0, 0.0, -4.0],
            "ppl_tokens": [2, 0, 2],
        }
    )
    summary = StyleEvaluation("negative_positive", "sentiment", [], rows).to_frame()
    assert list(summary.condition) == ["none", "icv", "icl"]
    assert summary.loc[0, "perplexity"] == pytest.approx(math.e)
    assert math.isnan(summary.loc[1, "perplexity"]) and summary.loc[1, "empty"] == 1
    assert "| pair_set |" in markdown(summary)


def test_reproduce_options_are_checked():
    assert Settings.quick(strengths=(0.1,)).strengths == (0.1,)
    assert Settings.parse("strengths", "0.1, 0.2") == (0.1, 0.2)
    with pytest.raises(IclMechError, match="unknown setting"):
        Settings.quick(**{"lambda": 0.1})
    with pytest.raises(IclMechError, match="pair_sets"):
        Settings.quick(pair_sets=("happy_sad",))
    with pytest.raises(IclMechError, match="finite"):
        Settings.quick(strengths=(float("nan"),))
