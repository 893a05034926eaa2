"""Reproduce Liu et al. 2023 (in-context vectors) on a model: the worked paraphrase example
and the λ sweep (style, content, fluency) against no steering and ICL prompting on the
bundled pair sets, through the runner."""

from __future__ import annotations

import pandas as pd

from icl_mech.icv.evaluate import evaluate
from icl_mech.icv.figures import examples_figure, layers_figure, sweep_figure
from icl_mech.icv.results import StyleEvaluation, StyleResults
from icl_mech.icv.settings import Settings
from icl_mech.icv.worked import PARAPHRASE_EXAMPLE, SENTIMENT_PAIRS, worked_example
from icl_mech.report import Report


def compute(model, settings: Settings, progress: bool = True) -> Report:
    paraphrase = worked_example(
        model,
        PARAPHRASE_EXAMPLE,
        SENTIMENT_PAIRS,
        settings.paraphrase_strengths,
        max_new_tokens=settings.max_new_tokens,
    )
    evaluations = evaluate(model, settings.pair_sets, settings, progress=progress)
    summary = evaluations.to_frame()
    examples = _example_tables(paraphrase, evaluations, settings)
    return Report(
        "icv",
        settings,
        tables={
            "sweep": summary,
            "generations": pd.concat(  # one row per generation, its pair set a column
                [e.rows for e in evaluations.values()], keys=list(evaluations), names=["pair_set"]
            ).reset_index(level="pair_set"),
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
        headline=headline(evaluations, paraphrase),
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


def headline(evaluations: StyleResults, paraphrase=None) -> dict:
    """Per pair set, condition and λ on the test sources: style, BLEU to the source, perplexity
    (with ``*_ci``) and the paired style gain (``{pair set}/{condition}/{metric}``); the same on
    the dev sources (``{pair set}/dev/...``), the λ chosen there (``{pair set}/chosen_strength``)
    and both splits' sizes; the worked paraphrase example's completions when given."""
    out = _numbers(evaluations.to_frame())
    for name, evaluation in evaluations.items():
        out[f"{name}/n_test"] = evaluation.settings.get("n_test", len(evaluation.rows))
        if evaluation.dev is not None:
            out[f"{name}/n_dev"] = evaluation.settings["n_dev"]
            out[f"{name}/chosen_strength"] = evaluation.chosen_strength
            out |= _numbers(evaluation.dev.to_frame(), "dev/")
    for lam, text in zip(paraphrase.strengths, paraphrase.completions) if paraphrase else ():
        out[f"paraphrase_example/λ={lam:g}"] = text
    return dict(sorted(out.items()))


def _numbers(summary: pd.DataFrame, split: str = "") -> dict:
    out: dict = {}
    for _, row in summary.iterrows():
        condition = row.condition if row.condition != "icv" else f"icv@{row.strength:g}"
        key = f"{row.pair_set}/{split}{condition}"
        for metric in ("style", "bleu_source", "perplexity"):
            out[f"{key}/{metric}"] = round(float(row[metric]), 3)
            if f"{metric}_low" in row:  # 95% bootstrap interval over the test sentences
                ci = [round(float(row[f"{metric}_{end}"]), 3) for end in ("low", "high")]
                out[f"{key}/{metric}_ci"] = ci
        if row.condition != "none":  # paired over the same sources
            out[f"{key}/style_gain"] = round(float(row.style_gain), 3)
            ci = [round(float(row[f"style_gain_{end}"]), 3) for end in ("low", "high")]
            out[f"{key}/style_gain_ci"] = ci
    return out
