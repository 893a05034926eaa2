"""Offline evaluation of ICV steering on a bundled pair set: none vs ICL vs ICV(λ).

The pairs are shuffled with ``seed``; the first ``n_demonstrations`` are the demonstrations,
the next ``n_test`` sources are the test inputs and the ``n_dev`` after them the dev inputs
(three disjoint slices of one shuffle, so adding a dev split leaves the test draw as it was).
Each test source is put in a paraphrase request and completed greedily in three ways:

- ``none``: the request alone;
- ``icl``: the same demonstrations given before it as solved paraphrase requests;
- ``icv``: the request alone, steered by the ICV of the same demonstrations, for each λ
  (every λ and the no-steering rows run as one batch, with a per-row strength).

The dev sources run without steering and at every λ (no ICL); the λ that the verdict checks on
the test split is chosen there (``results.choose_strength``), never on the test sources.

With ``chat=True`` (the default when the tokenizer has a chat template, as the embedded
instruct model does) requests are user turns and ICL demonstrations are earlier
user/assistant turns; otherwise they are plain text lines (``PARAPHRASE``).

The completion's first line is scored: style (``negative_positive``: mean VADER sentiment;
``rude_polite``: 1 − mean probability of offensive language; higher = more target style),
content (corpus BLEU against the source, and against the held-out target) and fluency
(token-level perplexity of the output alone under the unsteered model).

Intervals (95%, percentile bootstrap over the test sentences, ``icl_mech.stats``): the mean
style score per condition and λ; corpus BLEU by resampling sentences and recomputing the
corpus BLEU from their summed n-gram statistics (``corpus_bleu_interval``); ``style_gain``, the
paired difference to ``none`` over the same source sentences.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import replace

import pandas as pd
import torch

from icl_mech.errors import IclMechError
from icl_mech.icv import text_metrics
from icl_mech.icv.extract import extract_icv
from icl_mech.icv.generation import generate
from icl_mech.icv.results import StyleEvaluation, StyleResults, choose_strength
from icl_mech.icv.settings import STYLE_METRICS, Settings
from icl_mech.icv.steering import ICVSteering
from icl_mech.tasks import load_pairs

PARAPHRASE = "Please paraphrase the following sentence. Sentence: {x}, paraphrase:"
CHAT_PARAPHRASE = "Please paraphrase the following sentence. Sentence: {x}"
CONDITIONS = ("none", "icl", "icv")
DEFAULT_SETTINGS = Settings()


def style_scores(pair_set: str, sentiments: Sequence[float], offensive: Sequence[float]):
    """Per-text style score of a pair set (higher = closer to the target style)."""
    if pair_set not in STYLE_METRICS:
        raise IclMechError(f"no style metric for pair set {pair_set!r}; known: {STYLE_METRICS}")
    if STYLE_METRICS[pair_set] == "sentiment":
        return list(sentiments)
    return [1.0 - p for p in offensive]


def first_line(completion: str) -> str:
    lines = [line.strip() for line in completion.strip().splitlines()]
    return lines[0] if lines else ""


def uses_chat(model, chat: bool | None) -> bool:
    has_template = bool(getattr(model.tokenizer, "chat_template", None))
    if chat and not has_template:
        raise IclMechError(
            f"chat=True but the tokenizer of {model.cfg.model_name} has no chat template"
        )
    return has_template if chat is None else chat


def paraphrase_prompt(
    model,
    source: str,
    demonstrations: Sequence[tuple[str, str]] = (),
    chat: bool | None = None,
    template: str | None = None,
) -> str:
    """A paraphrase request for ``source``, after the solved ``demonstrations`` (ICL)."""
    if uses_chat(model, chat):
        template = template or CHAT_PARAPHRASE
        turns = []
        for x, y in demonstrations:
            turns += [{"role": "user", "content": template.format(x=x)}]
            turns += [{"role": "assistant", "content": y}]
        turns.append({"role": "user", "content": template.format(x=source)})
        return model.tokenizer.apply_chat_template(
            turns, tokenize=False, add_generation_prompt=True
        )
    template = template or PARAPHRASE
    solved = [f"{template.format(x=x)} {y}" for x, y in demonstrations]
    return "\n".join([*solved, template.format(x=source)])


def split_pairs(
    pairs: Sequence[tuple[str, str]], n_demonstrations: int, n_test: int, seed: int, n_dev: int = 0
) -> tuple[list[tuple[str, str]], list[tuple[str, str]], list[tuple[str, str]]]:
    """(demonstrations, dev, test): disjoint slices of one seeded shuffle, in the order
    demonstrations, test, dev (the test draw does not depend on ``n_dev``)."""
    if n_demonstrations < 1 or n_test < 1 or n_dev < 0:
        raise IclMechError(
            f"need at least one demonstration and one test pair and n_dev >= 0, got "
            f"{n_demonstrations}, {n_test} and {n_dev}"
        )
    if n_demonstrations + n_test + n_dev > len(pairs):
        raise IclMechError(
            f"{n_demonstrations} demonstrations + {n_test} test + {n_dev} dev pairs asked, "
            f"only {len(pairs)} pairs available"
        )
    order = list(pairs)
    random.Random(seed).shuffle(order)
    end = n_demonstrations + n_test
    return order[:n_demonstrations], order[end : end + n_dev], order[n_demonstrations:end]


def evaluate_pairs(
    model,
    pair_set: str,
    strengths: Sequence[float] = (0.02, 0.04, 0.06, 0.08, 0.1, 0.12),
    *,
    n_demonstrations: int = 16,
    n_test: int = 16,
    n_dev: int = 0,
    chat: bool | None = None,
    template: str | None = None,
    max_new_tokens: int = 24,
    batch_size: int = 64,
    seed: int = 0,
    progress: bool = True,
) -> StyleEvaluation:
    """No steering vs ICL prompting vs ICV over a λ sweep on a bundled pair set; with
    ``n_dev`` dev sources, the λ chosen on them (``StyleEvaluation.dev``, ``.chosen_strength``).
    """
    if not strengths:
        raise IclMechError("evaluate_pairs: no strengths to sweep")
    demos, dev, test = split_pairs(load_pairs(pair_set), n_demonstrations, n_test, seed, n_dev)
    icv = replace(extract_icv(model, demos), seed=seed)  # the seed drew the demonstrations
    chat = uses_chat(model, chat)
    generation = dict(
        max_new_tokens=max_new_tokens, stop_at=("\n",), batch_size=batch_size, progress=progress
    )
    sources = [x for x, _ in test]
    records = _steered_records(model, icv, sources, strengths, chat, template, generation)
    records += _icl_records(model, demos, sources, chat, template, generation)
    rows = _score(model, pair_set, records, dict(test), batch_size)
    settings = dict(
        strengths=list(strengths),
        n_demonstrations=n_demonstrations,
        n_test=n_test,
        n_dev=n_dev,
        chat=chat,
        template=template,
        max_new_tokens=max_new_tokens,
        seed=seed,
    )
    evaluation = StyleEvaluation(pair_set, STYLE_METRICS[pair_set], demos, rows, icv, settings)
    if dev:  # a separate batch: the test rows are generated exactly as without a dev split
        sources = [x for x, _ in dev]
        records = _steered_records(model, icv, sources, strengths, chat, template, generation)
        dev_rows = _score(model, pair_set, records, dict(dev), batch_size)
        evaluation.dev = StyleEvaluation(pair_set, STYLE_METRICS[pair_set], demos, dev_rows)
        evaluation.chosen_strength = choose_strength(evaluation.dev.to_frame())
    return evaluation


def _steered_records(model, icv, sources, strengths, chat, template, generation) -> list[tuple]:
    """λ = 0 ("none") and every λ ("icv") as one batch with a per-row strength."""
    lambdas = [0.0, *(float(s) for s in strengths if s != 0)]
    rows = [(lam, source) for lam in lambdas for source in sources]
    steering = ICVSteering(icv, torch.tensor([[lam] for lam, _ in rows]))
    prompts = [paraphrase_prompt(model, source, (), chat, template) for _, source in rows]
    completions = generate(model, prompts, steering, **generation).completions
    return [
        ("none" if lam == 0 else "icv", lam, source, text)
        for (lam, source), text in zip(rows, completions)
    ]


def _icl_records(model, demos, sources, chat, template, generation) -> list[tuple]:
    prompts = [paraphrase_prompt(model, source, demos, chat, template) for source in sources]
    completions = generate(model, prompts, **generation).completions
    return [("icl", 0.0, source, text) for source, text in zip(sources, completions)]


def _score(model, pair_set, records, targets: dict, batch_size: int) -> pd.DataFrame:
    rows = pd.DataFrame(records, columns=["condition", "strength", "source", "completion"])
    rows["output"] = [first_line(c) for c in rows["completion"]]
    rows["target"] = [targets[s] for s in rows["source"]]
    outputs = list(rows["output"])
    rows["sentiment"] = text_metrics.sentiment(outputs)
    rows["offensive"] = text_metrics.offensiveness(outputs)
    rows["style"] = style_scores(pair_set, rows["sentiment"], rows["offensive"])
    rows["bleu_source"] = text_metrics.sentence_bleu(outputs, list(rows["source"]))
    likelihoods = text_metrics.token_log_likelihoods(model, outputs, batch_size)
    rows["log_likelihood"] = [total for total, _ in likelihoods]
    rows["ppl_tokens"] = [count for _, count in likelihoods]
    return rows


def evaluate(
    model, pair_sets: Sequence[str], settings: Settings = DEFAULT_SETTINGS, progress: bool = True
) -> StyleResults:
    """No steering vs ICL prompting vs ICV over the λ sweep ``settings.strengths`` on each pair
    set (``evaluate_pairs`` with the settings' sizes and seed)."""
    if isinstance(pair_sets, str):
        pair_sets = (pair_sets,)
    settings = settings.replace(pair_sets=tuple(pair_sets))
    evaluations = {
        name: evaluate_pairs(
            model,
            name,
            settings.strengths,
            n_demonstrations=settings.n_demonstrations,
            n_test=settings.n_test,
            n_dev=settings.n_dev,
            max_new_tokens=settings.max_new_tokens,
            seed=settings.seed,
            progress=progress,
        )
        for name in settings.pair_sets
    }
    return StyleResults(evaluations, settings)
