"""One resolver for tasks at every entry point (Python settings, ``--set``, grids, the card).

``resolve(item)`` takes

- a ``Task``: itself;
- a bundled name (``names()``), optionally with a split (``"antonym:hard"``): ``load(name)``;
- a task file (``.csv``, ``.json``, ``.jsonl``, ``.ndjson``, or another existing file whose
  sidecar gives its ``format``; a relative path is relative to the current directory):
  ``from_file(path, **options)``, with the options read from a **sidecar** next to it, the
  file's stem + ``.task.json`` (``succ.csv`` ->
  ``succ.task.json``), a JSON object of ``from_file``'s keyword arguments, e.g.
  ``{"template": "Q: {x}\\nA:", "classes": "infer", "input_key": "text"}``. Without a sidecar
  the defaults apply (an input -> output task rendered ``{x} ->``, columns input and output).

Settings keep bundled names as names and hold files as the ``Task`` read from them, so a run's
provenance (``Settings.as_dict()``) records a file's path and a sha256 of its content
(``Task.provenance()``), and a sweep cell's key changes when the file does.
"""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path

from icl_mech.errors import IclMechError, unknown
from icl_mech.prompts import Task
from icl_mech.tasks.bundled import NAMES_HINT, is_bundled, load, names, pair_names
from icl_mech.tasks.files import FORMATS, from_file

__all__ = [
    "SIDECAR",
    "SIDECAR_KEYS",
    "check_queries",
    "checked",
    "label",
    "resolve",
    "sidecar_path",
]

SIDECAR = ".task.json"
SIDECAR_KEYS = ("template", "input_key", "output_key", "classes", "answer_prefix", "separator",
                "name", "format")  # fmt: skip
NEEDS = {"classification": "classification", "io": "input->output"}


def resolve(item) -> Task:
    """A ``Task`` from a bundled name, a task file (with its sidecar options) or a ``Task``."""
    if isinstance(item, Task):
        return item
    if is_bundled(item):
        return load(item)  # a name, or a name with its split ("antonym:hard")
    if isinstance(item, (str, os.PathLike)) and _is_path(item):
        return _from_path(Path(item).expanduser())
    if not isinstance(item, str):
        raise IclMechError(
            f"a task is a bundled name, a task file or an icl_mech.prompts.Task, "
            f"got {type(item).__name__} {item!r}"
        )
    if item in pair_names():
        raise IclMechError(
            f"{item!r} is a pair set (for in-context vectors), not a task; "
            f"use icl_mech.tasks.load_pairs({item!r}) or the icv reproduction's pair_sets"
        )
    raise unknown("task", item, names(), hint=NAMES_HINT)


def label(item) -> str:
    """The name a task item shows in tables and headlines (a file: the task's name)."""
    return item.name if isinstance(item, Task) else str(item)


def sidecar_path(path: str | os.PathLike) -> Path:
    """Where the options of a task file live: ``succ.csv`` -> ``succ.task.json``."""
    path = Path(path)
    return path.with_name(path.name.split(".")[0] + SIDECAR)


def checked(
    items, where: str, setting: str, need: str | None = None, empty_ok: bool = False
) -> tuple:
    """A settings' tuple of task items, checked before any model work: each resolves, is of
    kind ``need`` ("classification" or "io"), and no two share a name. Names stay names;
    files become the ``Task`` read from them (so the settings carry their content)."""
    if isinstance(items, (str, Task, os.PathLike)):
        items = (items,)
    if not items and not empty_ok:
        raise IclMechError(f"{where}: {setting} is empty; give bundled names or task files")
    out, seen = [], {}
    for item in items:
        task = _resolve_in(item, where, setting)
        check_kind(task, need, where, setting)
        if task.name in seen:
            raise IclMechError(
                f"{where}: {setting} holds two tasks named {task.name!r} ({seen[task.name]!r} "
                f"and {label(item)!r}); rename one (from_file(name=...), or 'name' in its sidecar)"
            )
        seen[task.name] = label(item)
        out.append(item if is_bundled(item) else task)
    return tuple(out)


def check_kind(task: Task, need: str | None, where: str, setting: str) -> None:
    """``need`` "classification" / "io": a task of the other kind is an error saying so."""
    if need is None or (need == "classification") == task.is_classification:
        return
    what = NEEDS[need]
    has = (
        f"a classification task (label words {list(task.classes)})"
        if task.is_classification
        else "an input->output task (no label words)"
    )
    fix = (
        "give classes=[...] or 'infer' (from_file, or 'classes' in its sidecar)"
        if need == "classification"
        else "use an input->output task (from_file without classes)"
    )
    raise IclMechError(f"{where}: {setting} needs {what} tasks; {task.name!r} is {has}; {fix}")


def _resolve_in(item, where: str, setting: str) -> Task:
    try:
        return resolve(item)
    except IclMechError as error:
        raise IclMechError(f"{where}: {setting}: {error}") from None


def _is_path(item) -> bool:
    text = os.fspath(item)
    return (
        isinstance(item, os.PathLike)
        or Path(text).suffix.lower() in FORMATS
        or any(sep in text for sep in ("/", "\\"))
        or text.startswith(("~", "."))
        or Path(text).is_file()
    )


def _from_path(path: Path) -> Task:
    if not path.is_file():
        where = "" if path.is_absolute() else f" (relative to {Path.cwd()})"
        raise IclMechError(
            f"task file {str(path)!r} does not exist{where}; a bundled task is given by its name, "
            "never a path (see icl_mech.tasks.names())"
        )
    options = _sidecar(path)
    if path.suffix.lower() not in FORMATS and "format" not in options:
        raise IclMechError(
            f"{str(path)!r} is not a task file: its suffix {path.suffix!r} is none of "
            f"{sorted(FORMATS)} and no sidecar {sidecar_path(path).name} gives its format; a "
            "bundled task is given by its name, never a path (see icl_mech.tasks.names())"
        )
    return from_file(path.resolve(), **options)


def _sidecar(path: Path) -> dict:
    side = sidecar_path(path)
    if not side.is_file():
        return {}
    try:
        options = json.loads(side.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise IclMechError(f"task sidecar {side}: not valid JSON ({error})") from None
    if not isinstance(options, dict):
        raise IclMechError(
            f"task sidecar {side}: expected a JSON object of from_file options such as "
            f'{{"template": "{{x}} ->", "classes": "infer"}}, got {type(options).__name__}'
        )
    bad = [k for k in options if k not in SIDECAR_KEYS]
    if bad:
        close = unknown("option", bad[0], SIDECAR_KEYS)
        raise IclMechError(f"task sidecar {side}: {close}")
    return options


def check_queries(task: Task, n: int, seeds, where: str, setting: str, per_class: int = 1) -> None:
    """``n`` held-out queries (``Task.split`` under each seed) still leave ``per_class``
    demonstrations of every class (of any answer, for an input->output task); else an error
    naming ``setting`` and the largest value that fits."""
    if _queries_fit(task, n, tuple(seeds), per_class):
        return
    best = next(
        (k for k in range(min(n, len(task.examples)) - 1, 0, -1)
         if _queries_fit(task, k, tuple(seeds), per_class)),
        None,
    )  # fmt: skip
    need = f"{per_class} demonstration(s)" + (" per class" if task.is_classification else "")
    advice = f"lower {setting} to {best}" if best else "give a larger task (more examples)"
    raise IclMechError(
        f"{where}: task {task.name!r} ({len(task.examples)} examples) is too small for "
        f"{setting}={n} held-out queries plus {need}; {advice}"
    )


def _queries_fit(task: Task, n: int, seeds: tuple, per_class: int) -> bool:
    if n > len(task.examples):
        return False
    for seed in seeds:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # a split that is not class-balanced
            pool, _ = task.split(n, seed)
        counts = [len(v) for v in pool.by_class().values()] if task.is_classification else []
        if min(counts or [len(pool.examples)]) < per_class:
            return False
    return True
