"""Does each method work on this model? One rule per question, applied to headline numbers.

The rules read the headlines that the reproductions write (``<prefix>report.json``), so the
same rule judges a quick ``icl-mech check`` and the committed full runs
(:func:`from_reports`). An answer is ``"yes"`` only when the 95% interval of the effect
excludes zero in the claimed direction; ``"weak"`` when it does but the effect is too small to
call the method working; ``"no"`` otherwise. Every verdict carries its evidence as text.
"""

from __future__ import annotations

import json
import textwrap
from dataclasses import asdict, dataclass, field
from pathlib import Path

import pandas as pd

from icl_mech.errors import IclMechError
from icl_mech.runner import REPRODUCTIONS

ANSWERS = ("yes", "weak", "no")
RATIO_FLOOR = 0.5  # a task vector "works" once it reaches half of ICL's accuracy
BLEU_FLOOR = 30.0  # steering counts only at a λ that keeps this much BLEU to the source


@dataclass(frozen=True)
class Verdict:
    """One question about one method, its answer and the numbers behind it."""

    method: str
    question: str
    answer: str  # "yes" | "weak" | "no"
    evidence: str
    numbers: dict = field(default_factory=dict)

    def __post_init__(self):
        if self.answer not in ANSWERS:
            raise IclMechError(f"verdict answer must be one of {ANSWERS}, got {self.answer!r}")


def _ci(section: dict, key: str) -> tuple[float, float, float]:
    low, high = section[f"{key}_ci"]
    return section[key], low, high


def _fmt(value: float, low: float, high: float, signed: bool = False) -> str:
    sign = "+" if signed else ""
    return f"{value:{sign}.2f} [{low:.2f}, {high:.2f}]"


def _unshown(low: float, high: float) -> str:
    """What an answer "no" means when the interval straddles zero."""
    return "; the interval includes zero: no effect shown at this n" if low <= 0 <= high else ""


def icl_works(headlines: dict) -> Verdict:
    """k-shot minus 0-shot accuracy, paired over the same queries, pooled over tasks."""
    question = "Does in-context learning work (k-shot beats 0-shot)?"
    if "icl" in headlines:
        pooled = headlines["icl"]["all"]
        gain = _ci(pooled, "gain")
        text = (
            f"{pooled['shots']}-shot {_fmt(*_ci(pooled, 'few_shot'))} vs 0-shot "
            f"{_fmt(*_ci(pooled, 'zero_shot'))} on {', '.join(headlines['icl']['tasks'])}; "
            f"gain {_fmt(*gain, signed=True)}, n={pooled['n']} queries"
        )
    else:  # a full task-vector run: ICL vs the zero-shot baseline over its tasks
        mean = headlines["task-vectors"]["mean"]
        gain = _ci(mean, "icl - baseline")
        text = (
            f"ICL {_fmt(*_ci(mean, 'icl'))} vs 0-shot {_fmt(*_ci(mean, 'baseline'))} over "
            f"{headlines['task-vectors']['n_tasks']} input→output tasks; gain "
            f"{_fmt(*gain, signed=True)}"
        )
    answer = "yes" if gain[1] > 0 else "no"
    text += _unshown(*gain[1:])
    return Verdict("ICL", question, answer, text, {"gain": list(gain)})


def flows_cross(headlines: dict, task: str) -> Verdict:
    """S_wp dominates the shallow layers and S_pq every layer from some depth on."""
    h = headlines["anchors"][task]
    start, shallow = h["S_pq_dominant_from"], h["S_wp_dominant_layers"]
    crosses = start is not None and start > 0 and shallow != "none"
    text = (
        f"{task}: S_wp > S_pq in layers {shallow}; S_pq > S_wp in every layer from "
        f"{start} on (n={h['n']} prompts)"
        if crosses
        else f"{task}: S_pq never dominates every later layer (S_wp leads in {shallow})"
    )
    numbers = {"S_pq_dominant_from": start, "S_wp_dominant_layers": shallow}
    return Verdict(
        "label words: flows", "Do S_wp and S_pq cross?", "yes" if crosses else "no", text, numbers
    )


def shallow_isolation_hurts_more(headlines: dict, task: str) -> Verdict:
    """Label loyalty under shallow minus deep isolation of the label words, paired."""
    h = headlines["anchors"][task]
    effect = h["isolation_effect"]["label_loyalty_shallow_minus_deep"]
    diff = _ci(effect, "value")
    loyalty = h["loyalty"]
    text = (
        f"{task}: label loyalty {_fmt(*_ci(loyalty['shallow_label'], 'label'))} with shallow "
        f"vs {_fmt(*_ci(loyalty['deep_label'], 'label'))} with deep isolation; difference "
        f"{_fmt(*diff, signed=True)}{_unshown(*diff[1:])}"
    )
    return Verdict(
        "label words: isolation",
        "Does shallow label isolation hurt more than deep?",
        "yes" if diff[2] < 0 else "no",
        text,
        {"shallow_minus_deep": list(diff)},
    )


def task_vector_works(headlines: dict, group: str) -> Verdict:
    """TV (replace, layer chosen on dev) minus zero-shot on test, stratified over the tasks of
    ``group`` ("city" or "io"); "yes" needs the interval above zero and TV accuracy at least
    ``RATIO_FLOOR`` of ICL's."""
    mean = headlines["task-vectors"][f"{group}_tasks_mean"]
    diff = _ci(mean, "tv_replace - baseline")
    ratio = mean["tv_replace_over_icl"]
    label = {"city": "city attribute tasks", "io": "input→output tasks"}[group]
    answer = "no" if diff[1] <= 0 else ("yes" if ratio >= RATIO_FLOOR else "weak")
    text = (
        f"{label}: TV {_fmt(*_ci(mean, 'tv_replace'))} vs 0-shot "
        f"{_fmt(*_ci(mean, 'baseline'))} (difference {_fmt(*diff, signed=True)}); TV reaches "
        f"{ratio:.0%} of ICL accuracy {_fmt(*_ci(mean, 'icl'))}"
    )
    if answer != "yes":
        text += "; the method does not work on this model at this size for these tasks"
    return Verdict(
        "task vectors",
        f"Does the best-layer task vector beat 0-shot on {label}?",
        answer,
        text,
        {"tv_minus_baseline": list(diff), "tv_over_icl": ratio},
    )


def icv_steers(headlines: dict, pair_set: str) -> Verdict:
    """Some λ moves the style score (paired gain above zero) with BLEU to the source ≥ floor."""
    icv = headlines["icv"]
    prefix = f"{pair_set}/icv@"
    strengths = sorted(
        {k[len(prefix) :].split("/")[0] for k in icv if k.startswith(prefix)}, key=float
    )
    if not strengths:
        raise IclMechError(f"no ICV results for pair set {pair_set!r} in the headline")
    rows = []
    for lam in strengths:
        gain = _ci(icv, f"{prefix}{lam}/style_gain")
        rows.append((lam, gain, icv[f"{prefix}{lam}/bleu_source"]))
    good = [r for r in rows if r[1][1] > 0 and r[2] >= BLEU_FLOOR]
    moved = [r for r in rows if r[1][1] > 0]
    best = good[-1] if good else (moved[0] if moved else rows[-1])
    answer = "yes" if good else ("weak" if moved else "no")
    text = (
        f"{pair_set}: at λ={best[0]} style gain {_fmt(*best[1], signed=True)} with BLEU to the "
        f"source {best[2]:.1f} (floor {BLEU_FLOOR:g})"
    )
    if answer == "weak":
        text += "; style moves only where BLEU falls below the floor"
    numbers = {"strength": float(best[0]), "style_gain": list(best[1]), "bleu_source": best[2]}
    return Verdict(
        "ICV", "Does the ICV move the style score while keeping the content?", answer, text, numbers
    )


def judge(headlines: dict, anchor_task: str = "sentiment", pair_set: str = "negative_positive"):
    """Every verdict the headlines allow, in the order of the report card."""
    out = []
    if "icl" in headlines or "task-vectors" in headlines:
        out.append(icl_works(headlines))
    if anchor_task in headlines.get("anchors", {}):
        out += [
            flows_cross(headlines, anchor_task),
            shallow_isolation_hurts_more(headlines, anchor_task),
        ]
    if "task-vectors" in headlines:
        groups = [g for g in ("city", "io") if f"{g}_tasks_mean" in headlines["task-vectors"]]
        out += [task_vector_works(headlines, g) for g in groups]
    if "icv" in headlines:
        out.append(icv_steers(headlines, pair_set))
    return out


def from_reports(folder: str | Path, **options) -> list[Verdict]:
    """The verdicts of the full runs whose ``*report.json`` lie in ``folder``."""
    headlines = {}
    for name, reproduction in REPRODUCTIONS.items():
        path = Path(folder) / f"{reproduction.prefix}report.json"
        if path.exists():
            headlines[name] = json.loads(path.read_text())["headline"]
    if not headlines:
        raise IclMechError(f"no reproduction report (*report.json) in {folder}")
    return judge(headlines, **options)


def to_frame(verdicts: list[Verdict]) -> pd.DataFrame:
    return pd.DataFrame([{k: v for k, v in asdict(x).items() if k != "numbers"} for x in verdicts])


def table(verdicts: list[Verdict], width: int = 100) -> str:
    """The verdicts for a terminal: method, answer, evidence (wrapped)."""
    lines = []
    for v in verdicts:
        head = f"{v.method:<24s} {v.answer.upper():<5s} "
        body = textwrap.wrap(v.evidence, width - len(head)) or [""]
        lines.append(head + body[0])
        lines += [" " * len(head) + rest for rest in body[1:]]
    return "\n".join(lines)
