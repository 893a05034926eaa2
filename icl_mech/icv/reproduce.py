"""Reproduce Liu et al. 2023 (in-context vectors) on a model: the worked paraphrase example
and the λ sweep (style, content, fluency) against no steering and ICL prompting on the
bundled pair sets, through the runner."""

from __future__ import annotations

import math
from dataclasses import dataclass

import pandas as pd

from icl_mech import settings as base
from icl_mech.errors import IclMechError
from icl_mech.icv.evaluate import STYLE_METRICS, StyleEvaluation, evaluate
from icl_mech.icv.figures import examples_figure, layers_figure, sweep_figure
from icl_mech.icv.worked import PARAPHRASE_EXAMPLE, SENTIMENT_PAIRS, worked_example
from icl_mech.runner import Report


@dataclass(frozen=True)
class Settings(base.Settings):
    """Per pair set: the first ``n_demonstrations`` pairs (after a seeded shuffle) make the ICV
    and the ICL prompt, the next ``n_test`` sources are paraphrased greedily with no steering,
    with ICL and with the ICV at each λ in ``strengths``."""

    QUICK = dict(n_test=4, n_demonstrations=8, strengths=(0.04, 0.08), max_new_tokens=16)
    pair_sets: tuple[str, ...] = tuple(STYLE_METRICS)
    n_test: int = 16
    n_demonstrations: int = 16
    strengths: tuple[float, ...] = (0.02, 0.04, 0.06, 0.08, 0.1, 0.12)
    max_new_tokens: int = 24
    example_strength: float = 0.06  # the λ shown in the before/after table (else the largest)
    paraphrase_strengths: tuple[float, ...] = (0.05, 0.1)  # of the worked example

    def check(self) -> None:
        base.known(self, "pair_sets", STYLE_METRICS)
        base.positive(self, "n_test", "n_demonstrations", "max_new_tokens")
        for name in ("strengths", "paraphrase_strengths"):
            values = getattr(self, name)
            if not values or not all(math.isfinite(v) for v in values):
                raise IclMechError(f"icv settings: {name} must be finite numbers, got {values}")


def compute(model, settings: Settings, progress: bool = True) -> Report:
    paraphrase = worked_example(
        model,
        PARAPHRASE_EXAMPLE,
        SENTIMENT_PAIRS,
        settings.paraphrase_strengths,
        max_new_tokens=settings.max_new_tokens,
    )
    evaluations = evaluate(
        model,
        settings.pair_sets,
        settings.strengths,
        n_demonstrations=settings.n_demonstrations,
        n_test=settings.n_test,
        max_new_tokens=settings.max_new_tokens,
        seed=settings.seed,
        progress=progress,
    )
    summary = pd.concat([e.to_frame() for e in evaluations.values()], ignore_index=True)
    examples = _example_tables(paraphrase, evaluations, settings)
    return Report(
        "icv",
        settings,
        tables={
            "sweep": summary,
            "generations": pd.concat(
                [e.rows for e in evaluations.values()], keys=list(evaluations)
            ),
            "examples": pd.DataFrame(
                [
                    {"example": title, "condition": label, "output": text}
                    for title, rows in examples.items()
                    for label, text in rows
                ]
            ),  # fmt: skip
        },
        figures={
            "sweep": sweep_figure(evaluations),
            "examples": examples_figure(examples),
            "layers": layers_figure(paraphrase.icv),
        },
        headline=headline(summary, paraphrase),
    )


def _example_tables(paraphrase, evaluations: dict[str, StyleEvaluation], settings: Settings):
    tables = {
        f"paraphrase example (5 sentiment pairs): {PARAPHRASE_EXAMPLE}": [
            (f"λ={lam:g}", text) for lam, text in zip(paraphrase.strengths, paraphrase.completions)
        ]
    }
    for name, evaluation in evaluations.items():
        strength = settings.example_strength
        if strength not in settings.strengths:
            strength = max(settings.strengths)
        examples = evaluation.examples(strength)
        for _, row in examples.head(2).iterrows():
            tables[f"{name}: {row['source']}"] = [
                (column, row[column]) for column in examples.columns if column != "source"
            ]
    return tables


def headline(summary: pd.DataFrame, paraphrase=None) -> dict:
    """Per pair set, condition and λ: style, BLEU to the source, perplexity (with ``*_ci``) and
    the paired style gain; the worked paraphrase example's completions when given."""
    out: dict = {}
    for _, row in summary.iterrows():
        condition = row.condition if row.condition != "icv" else f"icv@{row.strength:g}"
        for metric in ("style", "bleu_source", "perplexity"):
            out[f"{row.pair_set}/{condition}/{metric}"] = round(float(row[metric]), 3)
            if f"{metric}_low" in row:  # 95% bootstrap interval over the test sentences
                ci = [round(float(row[f"{metric}_{end}"]), 3) for end in ("low", "high")]
                out[f"{row.pair_set}/{condition}/{metric}_ci"] = ci
        if row.condition != "none":  # paired over the same sources
            out[f"{row.pair_set}/{condition}/style_gain"] = round(float(row.style_gain), 3)
            ci = [round(float(row[f"style_gain_{end}"]), 3) for end in ("low", "high")]
            out[f"{row.pair_set}/{condition}/style_gain_ci"] = ci
    for lam, text in zip(paraphrase.strengths, paraphrase.completions) if paraphrase else ():
        out[f"paraphrase_example/λ={lam:g}"] = text
    return out
