"""Bundled tasks, written for this project: ``names()`` lists them, ``load(name)`` builds one.

- classification (Wang et al.'s templates and label words): sentiment, question_type, topic,
  emotion;
- input→output tasks for task vectors, rendered ``{x} -> {y}``: see ``names("io")``;
- RAVEL-style city attributes as sentences (``city_continent``) and as JSON
  (``city_continent_json``: ``{"city": "Paris", "continent": "Europe``);
- paired sentences for in-context vectors: ``load_pairs("negative_positive")``.

Your own data: ``from_file(path, ...)`` (JSON list, JSON lines, CSV) and
``from_records(name, records, ...)`` (:mod:`icl_mech.tasks.files`).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from functools import cache
from importlib import resources

from icl_mech.errors import IclMechError
from icl_mech.prompts import Demonstration, Task
from icl_mech.tasks.files import from_file, from_records

__all__ = [
    "Demonstration",
    "Task",
    "all_texts",
    "from_file",
    "from_records",
    "load",
    "load_pairs",
    "names",
]

CLASSIFICATION: dict[str, tuple[str, tuple[str, ...]]] = {
    "sentiment": ("Review: {x}\nSentiment:", ("positive", "negative")),
    "question_type": (
        "Question: {x}\nAnswer Type:",
        ("abbreviation", "entity", "description", "person", "location", "number"),
    ),
    "topic": ("Article: {x}\nAnswer:", ("world", "sports", "business", "technology")),
    "emotion": ("Dialogue: {x}\nEmotion:", ("others", "happy", "sad", "angry")),
}
IO_TEMPLATE = "{x} ->"
CITY_TEMPLATES: dict[str, tuple[str, str]] = {
    "country": ("{x} is a city in the country of", " "),
    "continent": ("{x} is a city on the continent of", " "),
    "language": ("In {x}, most people speak", " "),
}
CITY_JSON_TEMPLATE = '{{"city": "{x}", "{attribute}": "'


def _data():
    return resources.files("icl_mech.tasks") / "data"


def _read_jsonl(path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line]


def _io_names() -> list[str]:
    return sorted(
        p.name[: -len(".jsonl")] for p in (_data() / "io").iterdir() if p.name.endswith(".jsonl")
    )


def names(kind: str = "all") -> list[str]:
    """Task names of one kind: "classification", "io", "city", or "all"."""
    city = [f"city_{a}" for a in CITY_TEMPLATES] + [f"city_{a}_json" for a in CITY_TEMPLATES]
    groups = {"classification": list(CLASSIFICATION), "io": _io_names(), "city": city}
    if kind == "all":
        return [n for group in groups.values() for n in group]
    if kind not in groups:
        raise IclMechError(f"unknown task kind {kind!r}; choose one of {list(groups) + ['all']}")
    return groups[kind]


@cache
def load(name: str) -> Task:
    if name in CLASSIFICATION:
        template, classes = CLASSIFICATION[name]
        rows = _read_jsonl(_data() / "classification" / f"{name}.jsonl")
        examples = tuple(Demonstration(r["text"], r["label"]) for r in rows)
        return Task(name, examples, template, classes)
    if name in names("city"):
        return _city_task(name)
    if name in _io_names():
        rows = _read_jsonl(_data() / "io" / f"{name}.jsonl")
        return Task(name, tuple(Demonstration(r["input"], r["output"]) for r in rows), IO_TEMPLATE)
    raise IclMechError(f"unknown task {name!r}; known tasks: {', '.join(names())}")


def _city_task(name: str) -> Task:
    attribute = name.removeprefix("city_").removesuffix("_json")
    if attribute not in CITY_TEMPLATES:
        raise IclMechError(f"unknown city task {name!r}; known: {names('city')}")
    rows = _read_jsonl(_data() / "cities.jsonl")
    examples = tuple(Demonstration(r["city"], r[attribute]) for r in rows)
    if name.endswith("_json"):
        template = CITY_JSON_TEMPLATE.replace("{attribute}", attribute).replace("{{", "{")
        return Task(name, examples, template, answer_prefix="", separator="\n")
    template, prefix = CITY_TEMPLATES[attribute]
    return Task(name, examples, template, answer_prefix=prefix, separator=". ")


def load_pairs(name: str) -> list[tuple[str, str]]:
    """(source, target) sentence pairs: "negative_positive" or "rude_polite"."""
    path = _data() / "pairs" / f"{name}.jsonl"
    if not path.is_file():
        known = sorted(p.name[: -len(".jsonl")] for p in (_data() / "pairs").iterdir())
        raise IclMechError(f"unknown pair set {name!r}; known: {known}")
    return [(r["source"], r["target"]) for r in _read_jsonl(path)]


def all_texts() -> Iterator[str]:
    """Every bundled text (used to train the tiny tokenizer of the test models)."""
    for folder in ("classification", "io", "pairs"):
        for path in sorted((_data() / folder).iterdir(), key=lambda p: p.name):
            if path.name.endswith(".jsonl"):
                for row in _read_jsonl(path):
                    yield " ".join(str(v) for v in row.values())
    for row in _read_jsonl(_data() / "cities.jsonl"):
        yield " ".join(row.values())
    for template, classes in CLASSIFICATION.values():
        yield template + " " + " ".join(classes)
