"""Does each method work on this model? One rule per question, applied to headline numbers.

The rules read the headlines that the reproductions write (``<prefix>report.json``), so the
same rule judges a quick ``icl-mech check`` and the committed full runs (:func:`from_reports`).

Verdicts read intervals, never points. Each question has an effect with a 95% interval (two
effects make a box), and three regions of effect values fixed here, before any run: YES (the
method works), WEAK (an effect, but short of what counts) and NO (no effect, or the opposite).

``yes``: the interval lies in YES; ``weak``: in YES or WEAK, not in YES alone (the effect is
shown, its size is not); ``not enough evidence``: it reaches into both YES and NO; ``no``: it
reaches into NO but not into YES (what counts is excluded).

With [lo, hi] an interval's bounds, per verdict:

- ICL, gain g = ICL (k demonstrations) minus 0-shot accuracy on the input→output tasks of the
  task-vector section (paired over the same test queries, stratified by task; the same data on
  the card and in the committed runs). YES g ≥ 0.10, WEAK 0 < g < 0.10, NO g ≤ 0: yes lo ≥ 0.10,
  weak 0 < lo < 0.10, not enough evidence lo ≤ 0 ≤ 0.10 ≤ hi, no lo ≤ 0 and hi < 0.10.
- Flows, lead ℓ = the smallest of S_wp − S_pq over the shallow layers (the first third of the
  layers, at least one) and S_pq − S_wp over the deep layers (the last third), in shares of
  each layer's flow; ℓ's interval is [smallest low, smallest high] of the per-layer paired
  intervals. YES ℓ ≥ 0.10, WEAK 0 < ℓ < 0.10, NO ℓ ≤ 0; bounds as for ICL. A crossing in the
  deep layers only leaves S_wp ahead in some deep layer: ℓ's interval ends below zero, no.
- Isolation, hurt h = label loyalty under deep minus shallow isolation (paired). YES h ≥ 0.05,
  WEAK 0 < h < 0.05, NO h ≤ 0; bounds as for ICL.
- Task vectors, d = TV minus 0-shot accuracy (paired, stratified) and r = TV / ICL accuracy,
  r's interval [TV lo / ICL hi, TV hi / ICL lo]. YES d > 0 and r ≥ 0.5; WEAK d > 0, r < 0.5;
  NO d ≤ 0. yes d.lo > 0 and r.lo ≥ 0.5; weak d.lo > 0 and r.lo < 0.5; not enough evidence
  d.lo ≤ 0 < d.hi and r.hi ≥ 0.5; no otherwise.
- ICV, at the λ chosen on the dev sources, on the test sources: g = style gain over no
  steering (paired) and b = corpus BLEU to the source. YES g > 0 and b ≥ 30; WEAK g > 0 and
  b < 30 (style moves, content not kept); NO g ≤ 0. yes g.lo > 0 and b.lo ≥ 30; weak g.lo > 0
  and b.lo < 30; not enough evidence g.lo ≤ 0 < g.hi and b.hi ≥ 30; no otherwise. A run
  without a dev split chose no λ on held-out sources: not enough evidence.
"""

from __future__ import annotations

import json
import math
import textwrap
from dataclasses import asdict, dataclass, field
from pathlib import Path

import pandas as pd

from icl_mech.errors import IclMechError
from icl_mech.icv.settings import BLEU_FLOOR
from icl_mech.runner import REPRODUCTIONS

NOT_ENOUGH = "not enough evidence"
ANSWERS = ("yes", "weak", "no", NOT_ENOUGH)
ICL_MIN_GAIN = 0.10  # ICL works once it adds ten points of accuracy over 0-shot
FLOW_MARGIN = 0.10  # the leading flow's share exceeds the other's by this much, every layer
ISOLATION_MARGIN = 0.05  # shallow isolation costs this much more label loyalty than deep
RATIO_FLOOR = 0.5  # a task vector "works" once it reaches half of ICL's accuracy
ICL_QUESTION = "Does in-context learning beat 0-shot on input→output tasks?"
FLOWS_QUESTION = "Does S_wp lead in the shallow layers and S_pq in the deep ones?"


@dataclass(frozen=True)
class Verdict:
    """One question about one method, its answer and the numbers behind it."""

    method: str
    question: str
    answer: str  # "yes" | "weak" | "no" | "not enough evidence"
    evidence: str
    numbers: dict = field(default_factory=dict)

    def __post_init__(self):
        if self.answer not in ANSWERS:
            raise IclMechError(f"verdict answer must be one of {ANSWERS}, got {self.answer!r}")


def answer(inside_yes: bool, clear_of_no: bool, meets_yes: bool) -> str:
    """The answer from where the interval lies: inside YES, clear of NO, reaching YES."""
    if inside_yes:
        return "yes"
    if clear_of_no:
        return "weak"
    return NOT_ENOUGH if meets_yes else "no"


def one_sided(low: float, high: float, yes_at: float) -> str:
    """NO = (-inf, 0], WEAK = (0, yes_at), YES = [yes_at, inf)."""
    return answer(low >= yes_at, low > 0, high >= yes_at)


def _ci(section: dict, key: str) -> tuple[float, float, float]:
    low, high = section[f"{key}_ci"]
    return section[key], low, high


def _fmt(value: float, low: float, high: float, signed: bool = False) -> str:
    sign = "+" if signed else ""
    return f"{value:{sign}.2f} [{low:.2f}, {high:.2f}]"


def _why(found: str, short: str) -> str:
    """What a non-"yes" answer means, ``short``: what the yes region asks for."""
    return {
        "yes": "",
        "weak": f"; the effect is shown, not {short}",
        NOT_ENOUGH: f"; the interval spans both yes ({short}) and no: not enough evidence",
        "no": f"; the interval excludes {short}",
    }[found]


def icl_works(headlines: dict) -> Verdict:
    """ICL minus 0-shot accuracy on the task-vector section's tasks, paired over the same test
    queries, stratified by task (the card and the full task-vector run alike)."""
    tv = headlines["task-vectors"]
    mean = tv["mean"]
    gain = _ci(mean, "icl - baseline")
    found = one_sided(gain[1], gain[2], ICL_MIN_GAIN)
    text = (
        f"ICL {_fmt(*_ci(mean, 'icl'))} vs 0-shot {_fmt(*_ci(mean, 'baseline'))} over "
        f"{tv['n_tasks']} input→output tasks × {tv['n_test_per_task']} test queries; gain "
        f"{_fmt(*gain, signed=True)}{_why(found, f'a gain of {ICL_MIN_GAIN:.2f} or more')}"
    )
    return Verdict("ICL", ICL_QUESTION, found, text, {"gain": list(gain)})


def _weakest(rows) -> tuple[float, float, float]:
    """The smallest of several (value, low, high): each bound's minimum."""
    return tuple(min(r[i] for r in rows) for i in range(3))


def _layers(layers: list[int]) -> str:
    return f"{layers[0]}-{layers[-1]}" if len(layers) > 1 else f"{layers[0]}"


def flows_cross(headlines: dict, task: str) -> Verdict:
    """S_wp leads in every shallow layer (the first third) and S_pq in every deep layer (the
    last third), read from the per-layer paired intervals of S_wp − S_pq (``S_wp_lead``)."""
    h = headlines["anchors"][task]
    if "S_wp_lead" not in h:
        text = f"{task}: this headline has no per-layer intervals of S_wp − S_pq"
        return Verdict("label words: flows", FLOWS_QUESTION, NOT_ENOUGH, text)
    layers, k = h["flow_layers"], max(1, len(h["flow_layers"]) // 3)
    rows = [(v, lo, hi) for v, (lo, hi) in zip(h["S_wp_lead"], h["S_wp_lead_ci"])]
    shallow = _weakest(rows[:k])
    deep = _weakest([(-v, -hi, -lo) for v, lo, hi in rows[-k:]])
    lead = _weakest([shallow, deep])
    found = one_sided(lead[1], lead[2], FLOW_MARGIN)
    text = (
        f"{task}: S_wp − S_pq ≥ {_fmt(*shallow, signed=True)} in layers {_layers(layers[:k])}, "
        f"S_pq − S_wp ≥ {_fmt(*deep, signed=True)} in layers {_layers(layers[-k:])} (shares "
        f"of the flow, weakest layer; n={h['n']} prompts); S_pq leads every layer from "
        f"{h['S_pq_dominant_from']} on{_why(found, f'a lead of {FLOW_MARGIN:.2f} in each')}"
    )
    numbers = {"shallow": list(shallow), "deep": list(deep), "layers": [layers[:k], layers[-k:]]}
    return Verdict("label words: flows", FLOWS_QUESTION, found, text, numbers)


def shallow_isolation_hurts_more(headlines: dict, task: str) -> Verdict:
    """Label loyalty under shallow minus deep isolation of the label words, paired."""
    h = headlines["anchors"][task]
    effect = h["isolation_effect"]["label_loyalty_shallow_minus_deep"]
    diff = _ci(effect, "value")
    found = one_sided(-diff[2], -diff[1], ISOLATION_MARGIN)
    loyalty = h["loyalty"]
    text = (
        f"{task}: label loyalty {_fmt(*_ci(loyalty['shallow_label'], 'label'))} with shallow "
        f"vs {_fmt(*_ci(loyalty['deep_label'], 'label'))} with deep isolation; difference "
        f"{_fmt(*diff, signed=True)}{_why(found, f'a cost of {ISOLATION_MARGIN:.2f} or more')}"
    )
    return Verdict(
        "label words: isolation",
        "Does shallow label isolation hurt more than deep?",
        found,
        text,
        {"shallow_minus_deep": list(diff)},
    )


def _ratio(a: float, b: float) -> float:
    return a / b if b > 0 else (math.inf if a > 0 else 0.0)


def task_vector_works(headlines: dict, group: str) -> Verdict:
    """TV (replace, layer chosen on dev) minus zero-shot on test, stratified over the tasks of
    ``group`` ("city" or "io"), and TV over ICL accuracy (bounds from the two intervals)."""
    mean = headlines["task-vectors"][f"{group}_tasks_mean"]
    diff = _ci(mean, "tv_replace - baseline")
    tv, icl = _ci(mean, "tv_replace"), _ci(mean, "icl")
    ratio = (_ratio(tv[0], icl[0]), _ratio(tv[1], icl[2]), _ratio(tv[2], icl[1]))
    label = {"city": "city attribute tasks", "io": "input→output tasks"}[group]
    floor = RATIO_FLOOR
    shown, may = diff[1] > 0 and ratio[1] >= floor, diff[2] > 0 and ratio[2] >= floor
    found = answer(shown, diff[1] > 0, may)
    text = (
        f"{label}: TV {_fmt(*tv)} vs 0-shot {_fmt(*_ci(mean, 'baseline'))} (difference "
        f"{_fmt(*diff, signed=True)}); TV reaches {ratio[0]:.0%} [{ratio[1]:.0%}, "
        f"{min(ratio[2], 9.99):.0%}] of ICL accuracy {_fmt(*icl)}"
    )
    text += {
        "yes": "",
        "weak": f"; it beats 0-shot, but reaching {floor:.0%} of ICL is not shown",
        NOT_ENOUGH: "; the intervals span both yes and no: not enough evidence at this n",
        "no": "; the method does not work on this model at this size for these tasks",
    }[found]
    return Verdict(
        "task vectors",
        f"Does the best-layer task vector beat 0-shot on {label}?",
        found,
        text,
        {"tv_minus_baseline": list(diff), "tv_over_icl": list(ratio)},
    )


def icv_steers(headlines: dict, pair_set: str) -> Verdict:
    """At the λ chosen on the dev sources, on the test sources: the style gain's interval above
    zero and the BLEU-to-source interval's lower bound at the floor or above."""
    icv, question = headlines["icv"], "Does the ICV move the style score while keeping the content?"
    if not any(k.startswith(f"{pair_set}/icv@") for k in icv):
        raise IclMechError(f"no ICV results for pair set {pair_set!r} in the headline")
    lam = icv.get(f"{pair_set}/chosen_strength")
    if lam is None:
        text = f"{pair_set}: this run has no dev split, so no λ was chosen on held-out sources"
        return Verdict("ICV", question, NOT_ENOUGH, text)
    key = f"{pair_set}/icv@{lam:g}"
    gain, bleu = _ci(icv, f"{key}/style_gain"), _ci(icv, f"{key}/bleu_source")
    found = answer(gain[1] > 0 and bleu[1] >= BLEU_FLOOR, gain[1] > 0,
                   gain[2] > 0 and bleu[2] >= BLEU_FLOOR)  # fmt: skip
    text = (
        f"{pair_set}: λ={lam:g} chosen on {icv[f'{pair_set}/n_dev']} dev sources; on "
        f"{icv[f'{pair_set}/n_test']} test sources style gain {_fmt(*gain, signed=True)} with "
        f"BLEU to the source {bleu[0]:.1f} [{bleu[1]:.1f}, {bleu[2]:.1f}] (floor {BLEU_FLOOR:g})"
    )
    text += {
        "yes": "",
        "weak": "; the style moves, but BLEU's lower bound is below the floor",
        NOT_ENOUGH: "; the intervals span both yes and no: not enough evidence at this n",
        "no": "; no style gain is shown where the content could be kept",
    }[found]
    numbers = {"strength": lam, "style_gain": list(gain), "bleu_source": list(bleu)}
    return Verdict("ICV", question, found, text, numbers)


def judge(headlines: dict, anchor_task: str = "sentiment", pair_set: str = "negative_positive"):
    """Every verdict the headlines allow, in the order of the report card."""
    out = [icl_works(headlines)] if "task-vectors" in headlines else []
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
    flows = Path(folder) / f"{REPRODUCTIONS['anchors'].prefix}flows.csv"
    for task, h in headlines.get("anchors", {}).items():  # runs from before ``S_wp_lead``
        if "S_wp_lead" not in h and flows.exists():
            h |= flow_leads(pd.read_csv(flows), task)
    return judge(headlines, **options)


def flow_leads(flows: pd.DataFrame, task: str) -> dict:
    """``S_wp_lead`` from the anchors' flows table: S_wp − S_pq shares per layer, bounds from
    the two flows' own intervals (S_wp low − S_pq high, S_wp high − S_pq low; not paired)."""
    t = flows[flows.task == task].pivot(index="layer", columns="flow")
    lead = t["normalised", "S_wp"] - t["normalised", "S_pq"]
    low = t["normalised_low", "S_wp"] - t["normalised_high", "S_pq"]
    high = t["normalised_high", "S_wp"] - t["normalised_low", "S_pq"]
    pairs = [[round(a, 3), round(b, 3)] for a, b in zip(low, high)]
    return {"flow_layers": [int(x) for x in t.index], "S_wp_lead": list(lead.round(3)),
            "S_wp_lead_ci": pairs}  # fmt: skip


def to_frame(verdicts: list[Verdict]) -> pd.DataFrame:
    return pd.DataFrame([{k: v for k, v in asdict(x).items() if k != "numbers"} for x in verdicts])


def table(verdicts: list[Verdict], width: int = 100) -> str:
    """The verdicts for a terminal: method, answer, evidence (wrapped)."""
    lines, wide = [], max([5, *(len(v.answer) for v in verdicts)])
    for v in verdicts:
        head = f"{v.method:<24s} {v.answer.upper():<{wide}s} "
        body = textwrap.wrap(v.evidence, width - len(head)) or [""]
        lines.append(head + body[0])
        lines += [" " * len(head) + rest for rest in body[1:]]
    return "\n".join(lines)
