"""Offline evaluation of ICV steering on a bundled pair set: none vs ICL vs ICV(λ).

The pairs are shuffled with ``seed``; the first ``n_demonstrations`` are the demonstrations,
the next ``n_test`` sources are the test inputs. Each source is put in a paraphrase request
and completed greedily in three ways:

- ``none``: the request alone;
- ``icl``: the same demonstrations given before it as solved paraphrase requests;
- ``icv``: the request alone, steered by the ICV of the same demonstrations, for each λ
  (every λ and the no-steering rows run as one batch, with a per-row strength).

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

import math
import random
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import torch

from icl_mech import stats
from icl_mech.errors import IclMechError
from icl_mech.icv import text_metrics
from icl_mech.icv.extract import ICV, extract_icv
from icl_mech.icv.generation import generate
from icl_mech.icv.steering import ICVSteering
from icl_mech.tasks import load_pairs

PARAPHRASE = "Please paraphrase the following sentence. Sentence: {x}, paraphrase:"
CHAT_PARAPHRASE = "Please paraphrase the following sentence. Sentence: {x}"
STYLE_METRICS = {"negative_positive": "sentiment", "rude_polite": "inoffensiveness"}
CONDITIONS = ("none", "icl", "icv")


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


@dataclass
class StyleEvaluation:
    """Scored completions of one pair set; ``to_frame()`` summarises per condition and λ."""

    pair_set: str
    style_metric: str
    demonstrations: list[tuple[str, str]]
    rows: pd.DataFrame  # one row per (condition, strength, source)
    icv: ICV | None = None
    settings: dict = field(default_factory=dict)

    def to_frame(self) -> pd.DataFrame:
        """Per condition and λ: style, BLEU (to the source and to the target), perplexity with
        95% bootstrap intervals over sentences (``*_low``, ``*_high``; none for perplexity),
        ``style_gain``: the paired style difference to ``none`` over the same sources, and the
        formatted columns ``style_ci`` and ``gain_ci``."""
        groups = self.rows.groupby(["condition", "strength"], sort=False)
        summary = groups.apply(_summarise, include_groups=False).reset_index()
        summary.insert(0, "pair_set", self.pair_set)
        summary.insert(3, "style_metric", self.style_metric)
        gains = [self.style_gain(c, s) for c, s in zip(summary.condition, summary.strength)]
        summary["style_gain"] = [g.value for g in gains]
        summary["style_gain_low"] = [g.low for g in gains]
        summary["style_gain_high"] = [g.high for g in gains]
        summary["style_ci"] = stats.with_intervals(summary, "style")
        summary["gain_ci"] = [
            "" if c == "none" or math.isnan(g.value) else str(g)
            for c, g in zip(summary.condition, gains)
        ]
        return summary

    def style_gain(self, condition: str, strength: float) -> stats.Estimate:
        """Style of (condition, λ) minus style without steering, paired over the sources."""
        rows = self.rows
        none = rows[rows.condition == "none"].groupby("source")["style"].first()
        chosen = rows[(rows.condition == condition) & (rows.strength == strength)]
        chosen = chosen[chosen.source.isin(none.index)]
        if not len(chosen):
            return stats.Estimate(math.nan, math.nan, math.nan, 0)
        return stats.paired(chosen["style"].to_numpy(), none.loc[chosen.source].to_numpy())

    def examples(self, strength: float | None = None) -> pd.DataFrame:
        """Source, no-steering, ICL and ICV(λ) outputs side by side (λ: best style if None)."""
        summary = self.to_frame()
        icv = summary[summary.condition == "icv"]
        if strength is None:
            strength = float(icv.loc[icv["style"].idxmax(), "strength"])
        table = self.rows.pivot_table(
            index="source", columns=["condition", "strength"], values="output", aggfunc="first"
        )
        out = pd.DataFrame({"source": table.index})
        out["none"] = table[("none", 0.0)].values
        out["icl"] = table[("icl", 0.0)].values
        out[f"icv λ={strength:g}"] = table[("icv", strength)].values
        return out


def corpus_bleu_interval(
    outputs: Sequence[str], references: Sequence[str], **options
) -> stats.Estimate:
    """Corpus BLEU (``text_metrics.bleu``) with a 95% bootstrap interval over sentences: each
    resample sums the drawn sentences' n-gram statistics and recomputes the corpus BLEU
    (``stats.bootstrap_statistic``, 1000 resamples)."""
    point = text_metrics.bleu(outputs, references)
    sacrebleu = text_metrics._sacrebleu()
    sentences = [sacrebleu.sentence_bleu(o, [r]) for o, r in zip(outputs, references)]
    table = np.array([[s.sys_len, s.ref_len, *s.counts, *s.totals] for s in sentences])
    compute = sacrebleu.BLEU.compute_bleu

    def statistic(index: np.ndarray) -> float:
        t = table[index].sum(0)
        correct, total = t[2:6].tolist(), t[6:10].tolist()
        return compute(correct, total, int(t[0]), int(t[1]), smooth_method="exp").score

    estimate = stats.bootstrap_statistic(statistic, len(table), **options)
    return stats.Estimate(point, estimate.low, estimate.high, estimate.n)


def _summarise(group: pd.DataFrame) -> pd.Series:
    count = group["ppl_tokens"].sum()
    style = stats.bootstrap(group["style"].to_numpy())
    source = corpus_bleu_interval(list(group["output"]), list(group["source"]))
    target = corpus_bleu_interval(list(group["output"]), list(group["target"]))
    return pd.Series(
        {
            "style": group["style"].mean(),
            "style_low": style.low,
            "style_high": style.high,
            "bleu_source": source.value,
            "bleu_source_low": source.low,
            "bleu_source_high": source.high,
            "bleu_target": target.value,
            "bleu_target_low": target.low,
            "bleu_target_high": target.high,
            "perplexity": math.exp(-group["log_likelihood"].sum() / count) if count else math.nan,
            "sentiment": group["sentiment"].mean(),
            "offensive": group["offensive"].mean(),
            "empty": int((group["output"] == "").sum()),
            "n": len(group),
        }
    )


def split_pairs(
    pairs: Sequence[tuple[str, str]], n_demonstrations: int, n_test: int, seed: int
) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    if n_demonstrations < 1 or n_test < 1:
        raise IclMechError(
            f"need at least one demonstration and one test pair, got {n_demonstrations} "
            f"and {n_test}"
        )
    if n_demonstrations + n_test > len(pairs):
        raise IclMechError(
            f"{n_demonstrations} demonstrations + {n_test} test pairs asked, "
            f"only {len(pairs)} pairs available"
        )
    order = list(pairs)
    random.Random(seed).shuffle(order)
    return order[:n_demonstrations], order[n_demonstrations : n_demonstrations + n_test]


def evaluate_pairs(
    model,
    pair_set: str,
    strengths: Sequence[float] = (0.02, 0.04, 0.06, 0.08, 0.1, 0.12),
    *,
    n_demonstrations: int = 16,
    n_test: int = 16,
    chat: bool | None = None,
    template: str | None = None,
    max_new_tokens: int = 24,
    batch_size: int = 64,
    seed: int = 0,
    progress: bool = True,
) -> StyleEvaluation:
    """No steering vs ICL prompting vs ICV over a λ sweep on a bundled pair set."""
    if not strengths:
        raise IclMechError("evaluate_pairs: no strengths to sweep")
    demos, test = split_pairs(load_pairs(pair_set), n_demonstrations, n_test, seed)
    icv = extract_icv(model, demos, seed=seed)
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
        chat=chat,
        template=template,
        max_new_tokens=max_new_tokens,
        seed=seed,
    )
    return StyleEvaluation(pair_set, STYLE_METRICS[pair_set], demos, rows, icv, settings)


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
    model,
    pair_sets: Sequence[str] = ("negative_positive", "rude_polite"),
    strengths: Sequence[float] = (0.02, 0.04, 0.06, 0.08, 0.1, 0.12),
    **options,
) -> dict[str, StyleEvaluation]:
    """``evaluate_pairs`` on each pair set."""
    return {name: evaluate_pairs(model, name, strengths, **options) for name in pair_sets}
