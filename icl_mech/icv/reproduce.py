"""Reproduce Liu et al. 2023 (in-context vectors) on a model: the worked paraphrase example
and the λ sweep (style, content, fluency) against no steering and ICL prompting on the
bundled pair sets. Writes figures and tables into ``out_dir``; returns headline numbers."""

from __future__ import annotations

import dataclasses
import pathlib
import time
from collections.abc import Sequence
from dataclasses import dataclass

import pandas as pd

from icl_mech.errors import IclMechError
from icl_mech.icv.evaluate import StyleEvaluation, evaluate
from icl_mech.icv.figures import examples_figure, layers_figure, sweep_figure
from icl_mech.icv.worked import PARAPHRASE_EXAMPLE, SENTIMENT_PAIRS, worked_example
from icl_mech.models import torch_threads

PREFIX = "icv_"
PAIR_SETS = ("negative_positive", "rude_polite")


@dataclass(frozen=True)
class Settings:
    n_test: int
    n_demonstrations: int
    strengths: tuple[float, ...]
    max_new_tokens: int
    example_strength: float = 0.06  # the λ shown in the before/after table (else the largest)


QUICK = Settings(n_test=4, n_demonstrations=8, strengths=(0.04, 0.08), max_new_tokens=16)
FULL = Settings(
    n_test=16,
    n_demonstrations=16,
    strengths=(0.02, 0.04, 0.06, 0.08, 0.1, 0.12),
    max_new_tokens=24,
)
PARAPHRASE_STRENGTHS = (0.05, 0.1)


def run(
    model,
    out_dir: pathlib.Path,
    quick: bool = False,
    seed: int = 0,
    *,
    pair_sets: Sequence[str] = PAIR_SETS,
    threads: int | None = 1,
    progress: bool = True,
    tasks: Sequence[str] | None = None,
    n: int | None = None,
    **overrides,
) -> dict:
    """Run the reproduction; ``overrides`` replace fields of the QUICK/FULL ``Settings``.

    ``tasks`` (the CLI's ``--tasks``) names the pair sets, ``n`` (``--n``) the number of test
    sentences per pair set. ``threads``: intra-op threads during the run (1 is fastest on a
    busy shared CPU; None leaves torch's setting alone).
    """
    pair_sets = list(tasks) if tasks else list(pair_sets)
    if n is not None:
        overrides = {**overrides, "n_test": n}
    settings = _settings(quick, overrides)
    out_dir = pathlib.Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    with torch_threads(threads):
        paraphrase = worked_example(
            model,
            PARAPHRASE_EXAMPLE,
            SENTIMENT_PAIRS,
            PARAPHRASE_STRENGTHS,
            max_new_tokens=settings.max_new_tokens,
        )
        evaluations = evaluate(
            model,
            pair_sets,
            settings.strengths,
            n_demonstrations=settings.n_demonstrations,
            n_test=settings.n_test,
            max_new_tokens=settings.max_new_tokens,
            seed=seed,
            progress=progress,
        )
    summary = pd.concat([e.to_frame() for e in evaluations.values()], ignore_index=True)
    tables = _example_tables(paraphrase, evaluations, settings)
    _write(out_dir, summary, evaluations, tables, paraphrase)
    headline = _headline(summary, paraphrase)
    headline.update(seconds=round(time.perf_counter() - start, 1), quick=quick, seed=seed)
    return headline


def _settings(quick: bool, overrides: dict) -> Settings:
    base = QUICK if quick else FULL
    known = {f.name for f in dataclasses.fields(Settings)}
    unknown = sorted(set(overrides) - known)
    if unknown:
        raise IclMechError(f"icv reproduce: unknown options {unknown}; known: {sorted(known)}")
    if "strengths" in overrides:
        overrides = {**overrides, "strengths": tuple(overrides["strengths"])}
    return dataclasses.replace(base, **overrides)


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


def _write(out_dir, summary, evaluations, tables, paraphrase) -> None:
    summary.to_csv(out_dir / f"{PREFIX}sweep.csv", index=False)
    (out_dir / f"{PREFIX}sweep.md").write_text(markdown_table(summary.round(3)) + "\n")
    generations = pd.concat([e.rows for e in evaluations.values()], keys=list(evaluations))
    generations.to_csv(out_dir / f"{PREFIX}generations.csv")
    lines = []
    for title, rows in tables.items():
        lines += [f"### {title}", "", "| condition | output |", "|---|---|"]
        lines += [f"| {label} | {_cell(text)} |" for label, text in rows]
        lines.append("")
    (out_dir / f"{PREFIX}examples.md").write_text("\n".join(lines))
    figures = {
        "sweep": sweep_figure(evaluations),
        "examples": examples_figure(tables),
        "layers": layers_figure(paraphrase.icv),
    }
    for name, figure in figures.items():
        figure.savefig(out_dir / f"{PREFIX}{name}.png", dpi=120, bbox_inches="tight")


def _headline(summary: pd.DataFrame, paraphrase) -> dict:
    headline: dict = {}
    for _, row in summary.iterrows():
        condition = row.condition if row.condition != "icv" else f"icv@{row.strength:g}"
        for metric in ("style", "bleu_source", "perplexity"):
            headline[f"{row.pair_set}/{condition}/{metric}"] = round(float(row[metric]), 3)
    for lam, text in zip(paraphrase.strengths, paraphrase.completions):
        headline[f"paraphrase_example/λ={lam:g}"] = text
    return headline


def _cell(text: str) -> str:
    return (text or "(empty)").replace("|", "\\|").replace("\n", " ")


def markdown_table(frame: pd.DataFrame) -> str:
    header = "| " + " | ".join(str(c) for c in frame.columns) + " |"
    rule = "|" + "---|" * len(frame.columns)
    body = ["| " + " | ".join(_cell(str(v)) for v in row) + " |" for row in frame.values]
    return "\n".join([header, rule, *body])
