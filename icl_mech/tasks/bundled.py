"""The bundled catalogue: task names by kind, ``load(name)``, pair sets and ``load_pairs(name)``.

A lookup accepts only a name the catalogue lists (a file path is never built from an unchecked
name: ``"../x"``, ``"pairs/../../x"`` or ``"/etc/passwd"`` is an unknown name); a misspelt name
gets a did-you-mean, and a name from the sibling catalogue (a pair set given to ``load``, a task
given to ``load_pairs``) says which function takes it.

Splits: every task's default split is ``"common"`` (the bundled set); some input->output tasks
also have a ``"hard"`` split of less common words (``data/hard/<task>.jsonl``), loaded as
``load("antonym", split="hard")`` or by the name ``"antonym:hard"`` (the task's name), which
every entry point that takes task names accepts (``splits(name)`` lists a task's splits).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from functools import cache
from importlib import resources

from icl_mech.errors import IclMechError, looks_like_path, unknown
from icl_mech.prompts import Demonstration, Task

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
KINDS = ("classification", "io", "city")
NAMES_HINT = "icl_mech.tasks.names(), or give a task file (.csv, .json, .jsonl) or a Task"
DEFAULT_SPLIT = "common"
SPLIT_FOLDERS = ("hard",)  # data/<split>/<task>.jsonl: extra splits of input->output tasks


def _data():
    return resources.files("icl_mech.tasks") / "data"


def _read_jsonl(path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line]


def _stems(folder: str) -> list[str]:
    return sorted(
        p.name[: -len(".jsonl")] for p in (_data() / folder).iterdir() if p.name.endswith(".jsonl")
    )


def names(kind: str = "all") -> list[str]:
    """Task names of one kind: "classification", "io", "city", or "all"."""
    city = [f"city_{a}" for a in CITY_TEMPLATES] + [f"city_{a}_json" for a in CITY_TEMPLATES]
    groups = {"classification": list(CLASSIFICATION), "io": _stems("io"), "city": city}
    if kind == "all":
        return [n for group in groups.values() for n in group]
    if kind not in groups:
        raise unknown("task kind", kind, [*groups, "all"])
    return groups[kind]


def pair_names() -> list[str]:
    """The bundled ICV pair sets (``load_pairs``)."""
    return _stems("pairs")


def splits(name: str) -> list[str]:
    """The splits of bundled task ``name``: ``"common"`` (the default) first, then any other."""
    if not isinstance(name, str) or name not in names():
        raise unknown("task", name, names(), hint=NAMES_HINT)
    extra = [s for s in SPLIT_FOLDERS if (_data() / s / f"{name}.jsonl").is_file()]
    return [DEFAULT_SPLIT, *extra]


def is_bundled(item) -> bool:
    """``item`` names a bundled task, with or without a split (``"antonym"``, ``"antonym:hard"``;
    a misspelt split still counts: ``load`` says what is wrong with it)."""
    return isinstance(item, str) and item.partition(":")[0] in names()


def split_name(name: str, split: str | None = None) -> tuple[str, str]:
    """(task, split) of a name such as ``"antonym:hard"``, checked (did-you-mean on a typo)."""
    task, sep, named = name.partition(":") if isinstance(name, str) else (name, "", "")
    if sep and split is not None and split != named:
        raise IclMechError(f"task {name!r} names split {named!r}, but split={split!r} was given")
    split = named if sep else (DEFAULT_SPLIT if split is None else split)
    choices = splits(task)
    if split not in choices:
        raise IclMechError(f"task {task!r}: {unknown('split', split, choices)}")
    return task, split


def load(name: str, split: str | None = None) -> Task:
    """The bundled task ``name`` (``names()``) in ``split`` (default ``"common"``; also given as
    ``"antonym:hard"``); your own: ``from_file`` or ``resolve``."""
    if not isinstance(name, str):
        raise unknown("task", name, names(), hint=NAMES_HINT)
    if split is not None and not isinstance(split, str):
        raise IclMechError(f"task {name!r}: split={split!r} is not a split name ('hard')")
    return _load(name, split)


@cache
def _load(name: str, split: str | None) -> Task:
    if is_bundled(name):
        task, split = split_name(name, split)
        if split != DEFAULT_SPLIT:
            rows = _read_jsonl(_data() / split / f"{task}.jsonl")
            examples = tuple(Demonstration(r["input"], r["output"]) for r in rows)
            return Task(f"{task}:{split}", examples, IO_TEMPLATE)
        name = task
    if name not in names():
        if name in pair_names():
            raise IclMechError(
                f"{name!r} is a pair set (for in-context vectors), not a task; "
                f"use icl_mech.tasks.load_pairs({name!r})"
            )
        shown = name if looks_like_path(name) else name.partition(":")[0]
        raise unknown("task", shown, names(), hint=NAMES_HINT)
    if name in CLASSIFICATION:
        template, classes = CLASSIFICATION[name]
        rows = _read_jsonl(_data() / "classification" / f"{name}.jsonl")
        examples = tuple(Demonstration(r["text"], r["label"]) for r in rows)
        return Task(name, examples, template, classes)
    if name in names("city"):
        return _city_task(name)
    rows = _read_jsonl(_data() / "io" / f"{name}.jsonl")
    return Task(name, tuple(Demonstration(r["input"], r["output"]) for r in rows), IO_TEMPLATE)


def _city_task(name: str) -> Task:
    attribute = name.removeprefix("city_").removesuffix("_json")
    rows = _read_jsonl(_data() / "cities.jsonl")
    examples = tuple(Demonstration(r["city"], r[attribute]) for r in rows)
    if name.endswith("_json"):
        template = CITY_JSON_TEMPLATE.replace("{attribute}", attribute).replace("{{", "{")
        return Task(name, examples, template, answer_prefix="", separator="\n")
    template, prefix = CITY_TEMPLATES[attribute]
    return Task(name, examples, template, answer_prefix=prefix, separator=". ")


def load_pairs(name: str) -> list[tuple[str, str]]:
    """(source, target) sentence pairs of a bundled pair set (``pair_names()``)."""
    if not isinstance(name, str) or name not in pair_names():
        if isinstance(name, str) and name in names():
            raise IclMechError(
                f"{name!r} is a task, not a pair set; use icl_mech.tasks.load({name!r}) "
                f"(pair sets: {', '.join(pair_names())})"
            )
        raise unknown("pair set", name, pair_names(), hint="icl_mech.tasks.pair_names()")
    return [(r["source"], r["target"]) for r in _read_jsonl(_data() / "pairs" / f"{name}.jsonl")]


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
