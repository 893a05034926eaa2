"""Results of the ICV evaluation: one pair set's scored completions (``StyleEvaluation``) and
every pair set's (``StyleResults``), with intervals over the test sentences."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from icl_mech import stats
from icl_mech.errors import IclMechError
from icl_mech.icv import text_metrics
from icl_mech.icv.settings import BLEU_FLOOR, Settings
from icl_mech.icv.vector import ICV


@dataclass
class StyleEvaluation:
    """Scored completions of one pair set; ``to_frame()`` summarises per condition and λ."""

    pair_set: str
    style_metric: str
    demonstrations: list[tuple[str, str]]
    rows: pd.DataFrame  # one row per (condition, strength, source)
    icv: ICV | None = None
    settings: dict = field(default_factory=dict)
    dev: StyleEvaluation | None = None  # the dev sources' scored completions (no ICL rows)
    chosen_strength: float | None = None  # the λ chosen on ``dev`` (``choose_strength``)

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


def choose_strength(dev_summary: pd.DataFrame, floor: float = BLEU_FLOOR) -> float:
    """The λ to confirm on the test split, chosen on the dev split's summary (``to_frame()``):
    the λ whose weaker criterion is best supported, the larger of min(style gain, BLEU to the
    source minus ``floor``) with each margin in units of its interval's half-width (ties: the
    smaller λ)."""
    icv = dev_summary[dev_summary.condition == "icv"]
    if not len(icv):
        raise IclMechError("choose_strength: no ICV rows in the dev summary")

    def margin(value, low, high) -> float:
        score = value / max((high - low) / 2, 1e-9)
        return -math.inf if math.isnan(score) else score

    scores = [
        min(
            margin(r.style_gain, r.style_gain_low, r.style_gain_high),
            margin(r.bleu_source - floor, r.bleu_source_low, r.bleu_source_high),
        )
        for r in icv.itertuples()
    ]
    best = max(range(len(scores)), key=lambda i: (scores[i], -icv.strength.iloc[i]))
    return float(icv.strength.iloc[best])


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


class StyleResults(dict):
    """``StyleEvaluation`` per pair set (a dict by name), with the settings that made them."""

    def __init__(self, evaluations: dict[str, StyleEvaluation], settings: Settings):
        super().__init__(evaluations)
        self.settings = settings

    def to_frame(self) -> pd.DataFrame:
        """Every pair set's ``StyleEvaluation.to_frame()``, one after the other."""
        return pd.concat([e.to_frame() for e in self.values()], ignore_index=True)
