"""Offline text metrics for steered generations.

- sentiment: VADER's compound score in [−1, 1] (``vaderSentiment``, ships its lexicon);
- offensiveness: probability of offensive language (``alt-profanity-check``, ships its model);
- content preservation: BLEU of the output against its source sentence (``sacrebleu``);
- fluency: perplexity of the output text on its own under a model (no prompt; BOS as the
  model's convention says). Texts with fewer than two tokens have no perplexity (NaN).

The three metric packages are the ``text-metrics`` extra, imported on first use.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from functools import cache

import torch
import torch.nn.functional as F

from icl_mech.batching import TextBatch, index_batches
from icl_mech.errors import IclMechError


def _missing(package: str, module: str) -> IclMechError:
    return IclMechError(
        f"text metrics need {package!r} (import {module!r} failed): "
        "pip install 'icl_mech[text-metrics]'"
    )


@cache
def _vader():
    try:
        # optional: the text-metrics extra
        from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer
    except ImportError:
        raise _missing("vaderSentiment", "vaderSentiment") from None
    return SentimentIntensityAnalyzer()


def sentiment(texts: Sequence[str]) -> list[float]:
    """VADER compound sentiment per text: −1 most negative, +1 most positive."""
    analyzer = _vader()
    return [float(analyzer.polarity_scores(t)["compound"]) for t in texts]


def offensiveness(texts: Sequence[str]) -> list[float]:
    """Probability that each text is offensive (alt-profanity-check)."""
    try:
        from profanity_check import predict_prob  # optional: the text-metrics extra
    except ImportError:
        raise _missing("alt-profanity-check", "profanity_check") from None
    if not texts:
        return []
    return [float(p) for p in predict_prob(list(texts))]


def bleu(outputs: Sequence[str], sources: Sequence[str]) -> float:
    """Corpus BLEU (0–100) of the outputs against their sources, one reference each."""
    sacrebleu = _sacrebleu()
    _same_length(outputs, sources)
    return float(sacrebleu.corpus_bleu(list(outputs), [list(sources)]).score)


def sentence_bleu(outputs: Sequence[str], sources: Sequence[str]) -> list[float]:
    sacrebleu = _sacrebleu()
    _same_length(outputs, sources)
    return [float(sacrebleu.sentence_bleu(o, [s]).score) for o, s in zip(outputs, sources)]


def _sacrebleu():
    try:
        import sacrebleu  # optional: the text-metrics extra
    except ImportError:
        raise _missing("sacrebleu", "sacrebleu") from None
    return sacrebleu


def _same_length(outputs, sources) -> None:
    if len(outputs) != len(sources):
        raise IclMechError(f"{len(outputs)} outputs but {len(sources)} sources")


def token_log_likelihoods(
    model, texts: Sequence[str], batch_size: int = 16
) -> list[tuple[float, int]]:
    """(sum of next-token log-probabilities, number of predicted tokens) per text."""
    out: list[tuple[float, int] | None] = [None] * len(texts)
    scorable = [i for i, t in enumerate(texts) if t.strip()]
    for i in set(range(len(texts))) - set(scorable):
        out[i] = (0.0, 0)
    for group in index_batches(len(scorable), batch_size, order=scorable):
        batch = TextBatch.from_texts(model, [texts[i] for i in group])
        with torch.no_grad():
            logits = model(batch.tokens, attention_mask=batch.attention_mask)
        log_probs = F.log_softmax(logits[:, :-1].float(), dim=-1)
        picked = log_probs.gather(-1, batch.tokens[:, 1:, None]).squeeze(-1)
        predicted = (batch.attention_mask[:, :-1] * batch.attention_mask[:, 1:]).bool()
        sums = (picked * predicted).sum(dim=1)
        for row, i in enumerate(group):
            out[i] = (float(sums[row]), int(predicted[row].sum()))
    return out


def perplexity(model, texts: Sequence[str], batch_size: int = 16) -> list[float]:
    """Per-text perplexity under the model (NaN for texts with fewer than two tokens)."""
    return [
        math.exp(-total / count) if count else math.nan
        for total, count in token_log_likelihoods(model, texts, batch_size)
    ]


def corpus_perplexity(model, texts: Sequence[str], batch_size: int = 16) -> float:
    """exp of the mean negative log-likelihood over every predicted token of all texts."""
    scores = token_log_likelihoods(model, texts, batch_size)
    count = sum(c for _, c in scores)
    return math.exp(-sum(t for t, _ in scores) / count) if count else math.nan
