"""What each bundled task is: how its items were chosen and how hard its words are.

``about(name)`` (``"antonym"``, ``"antonym:hard"``, or ``about("antonym", split="hard")``)
returns an :class:`About`: the size, a one-line description of the selection (``SELECTION``,
written by hand) and a difficulty measure computed by :func:`difficulty` under the embedded
model's tokenizer, a rough frequency proxy that needs no model run: for the inputs and for the
answers, the mean number of tokens per word and the share of words that are one token
(a word is a run of letters or digits, tokenised with a leading space as inside a sentence;
each distinct word counts once). A common word is one token; a rare one splits into pieces
(the median, 1 on almost every task under a 49k vocabulary, would say nothing).

The numbers are stored in ``data/difficulty.jsonl`` (so ``about`` and ``icl-mech info`` load no
tokenizer), written by ``python -m icl_mech.task_difficulty --catalogue``; a test recomputes
them.
"""

from __future__ import annotations

import json
import re
import statistics
from dataclasses import dataclass
from functools import cache
from importlib import resources

from icl_mech.errors import IclMechError
from icl_mech.prompts import Task
from icl_mech.tasks.bundled import DEFAULT_SPLIT, load, names, split_name, splits

__all__ = ["SELECTION", "TOKENIZER", "About", "about", "catalogue", "difficulty", "split_names"]

TOKENIZER = "embedded (SmolLM2-135M-Instruct)"
CATALOGUE = "difficulty.jsonl"
_COMMON_WORDS = "very common everyday English words"
SELECTION: dict[str, str] = {
    "sentiment": "short movie and product reviews written for this project, plain wording",
    "question_type": "everyday questions written for this project, six TREC answer types",
    "topic": "news-style sentences written for this project, four AG News topics",
    "emotion": "three-turn chat snippets written for this project, four EmoContext labels",
    "animal_young": "well-known animals and their young, including rarer words (cygnet, cria)",
    "antonym": f"{_COMMON_WORDS} and their opposites (hot -> cold), most in both directions",
    "antonym:hard": "less common academic, technical and literary words and their opposites "
    "(abundant -> scarce), one direction each, no word shared with the common split",
    "city_to_country": "large, well-known cities and their countries",
    "comparative": f"{_COMMON_WORDS}: one-syllable and -y adjectives, a few with 'more'",
    "comparative:hard": "less common one-syllable and -y adjectives (shrewd -> shrewder), a few "
    "with 'more'; none in the common split",
    "past_tense:hard": "less common, formal or literary verbs (abdicate -> abdicated), a quarter "
    "irregular (forsake -> forsook); none in the common split",
    "plural:hard": "less common nouns: Latin and Greek plurals (nucleus -> nuclei), -ves, "
    "unchanged (species), -oes and rare regular nouns; none in the common split",
    "country_capital": "well-known countries of every continent and their capitals",
    "country_continent": "well-known countries of every continent",
    "country_language": "well-known countries and their main language",
    "english_french": f"{_COMMON_WORDS} (animals, colours, numbers, family) in French",
    "english_german": f"{_COMMON_WORDS} (animals, colours, numbers, family) in German",
    "english_spanish": f"{_COMMON_WORDS} (animals, colours, numbers, family) in Spanish",
    "first_letter": "common concrete nouns, about one per letter of the alphabet, and more",
    "last_letter": "common concrete nouns (the first-letter words)",
    "next_letter": "the letters a-y and A-Y",
    "number_word": "the numbers 1 to 100 in digits",
    "past_tense": f"{_COMMON_WORDS}: regular verbs and the most frequent irregular ones",
    "plural": f"{_COMMON_WORDS}: regular nouns, -es/-ies/-ves and the classic irregulars",
    "previous_letter": "the letters b-z and B-Z",
    "uppercase": "common nouns and adjectives",
    "city_country": "large, well-known cities of every continent (the RAVEL-style city set)",
    "city_continent": "large, well-known cities of every continent (the RAVEL-style city set)",
    "city_language": "large, well-known cities of every continent (the RAVEL-style city set)",
    "city_country_json": "the city set as JSON prompts",
    "city_continent_json": "the city set as JSON prompts",
    "city_language_json": "the city set as JSON prompts",
}
_WORD = re.compile(r"\w+")


@dataclass(frozen=True)
class About:
    """One task (split): its size, how its items were chosen and how hard its words are."""

    name: str  # "antonym" or "antonym:hard"
    split: str
    examples: int
    selection: str
    input_tokens_per_word: float  # mean over the distinct words of the inputs
    input_single_token: float  # share of those words that are one token
    output_tokens_per_word: float
    output_single_token: float
    tokenizer: str = TOKENIZER

    def difficulty(self) -> dict[str, float]:
        """The measured numbers, as :func:`difficulty` returns them."""
        return {k: getattr(self, k) for k in MEASURES}

    def line(self) -> str:
        """``inputs 1.00 tok/word, 100% one token; answers ...`` (for ``icl-mech info``)."""
        return (
            f"inputs {self.input_tokens_per_word:.2f} tok/word, "
            f"{self.input_single_token:.0%} one token; answers "
            f"{self.output_tokens_per_word:.2f} tok/word, {self.output_single_token:.0%} one token"
        )


MEASURES = ("input_tokens_per_word", "input_single_token", "output_tokens_per_word",
            "output_single_token")  # fmt: skip


def difficulty(task: Task, tokenizer) -> dict[str, float]:
    """Mean tokens per word and share of one-token words, of the inputs and of the answers
    (each distinct word once; ``" " + word`` without special tokens), rounded to 3 places."""
    out = {}
    for side, texts in (("input", [e.x for e in task.examples]),
                        ("output", [e.y for e in task.examples])):  # fmt: skip
        words = sorted({w for text in texts for w in _WORD.findall(text)})
        if not words:
            raise IclMechError(f"task {task.name!r}: no words in its {side}s to measure")
        counts = [len(tokenizer(" " + w, add_special_tokens=False)["input_ids"]) for w in words]
        out[f"{side}_tokens_per_word"] = round(statistics.fmean(counts), 3)
        out[f"{side}_single_token"] = round(sum(c == 1 for c in counts) / len(counts), 3)
    return out


def split_names() -> list[str]:
    """Every bundled task and split by name: ``"antonym"``, ``"antonym:hard"``, ..."""
    return [n if s == DEFAULT_SPLIT else f"{n}:{s}" for n in names() for s in splits(n)]


def catalogue(tokenizer) -> list[dict]:
    """The stored records (``data/difficulty.jsonl``) recomputed under ``tokenizer``."""
    return [
        {"task": name, "examples": len(load(name).examples), **difficulty(load(name), tokenizer)}
        for name in split_names()
    ]


def table() -> list[str]:
    """``icl-mech info``'s table: a heading, then per task and split (indented) its name,
    examples, tokens per word and one-token share of the inputs -> of the answers, and how its
    items were chosen."""
    lines = [
        "task splits and difficulty (a split by name: antonym:hard; under the "
        f"{TOKENIZER} tokenizer:",
        "mean tokens per word and share of one-token words, inputs -> answers):",
        f"  {'task':20s} {'examples':>8s}  {'inputs':>10s} -> {'answers':10s}  selection",
    ]
    for name in split_names():
        a = about(name)
        inputs = f"{a.input_tokens_per_word:.2f} {a.input_single_token:4.0%}"
        answers = f"{a.output_tokens_per_word:.2f} {a.output_single_token:4.0%}"
        lines.append(f"  {name:20s} {a.examples:8d}  {inputs:>10s} -> {answers:10s}  {a.selection}")
    return lines


@cache
def _stored() -> dict[str, dict]:
    path = resources.files("icl_mech.tasks") / "data" / CATALOGUE
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line]
    return {row["task"]: row for row in rows}


def about(name: str, split: str | None = None) -> About:
    """The catalogue entry of a bundled task (and split): size, selection, difficulty."""
    task, split = split_name(name, split)
    key = task if split == DEFAULT_SPLIT else f"{task}:{split}"
    row = _stored().get(key)
    if row is None or key not in SELECTION:
        raise IclMechError(
            f"task {key!r} has no catalogue entry; describe its selection in "
            "icl_mech.tasks.difficulty.SELECTION and run "
            "python -m icl_mech.task_difficulty --catalogue"
        )
    return About(key, split, row["examples"], SELECTION[key], *(row[k] for k in MEASURES))
