"""Bundled tasks, written for this project: ``names()`` lists them, ``load(name)`` builds one.

- classification (Wang et al.'s templates and label words): sentiment, question_type, topic,
  emotion;
- input→output tasks for task vectors, rendered ``{x} -> {y}``: see ``names("io")``;
- RAVEL-style city attributes as sentences (``city_continent``) and as JSON
  (``city_continent_json``: ``{"city": "Paris", "continent": "Europe``);
- paired sentences for in-context vectors: ``pair_names()``, ``load_pairs("negative_positive")``;
- splits: ``splits("antonym")`` -> ["common", "hard"]; ``load("antonym:hard")`` (or
  ``load("antonym", split="hard")``) is the hard split, a name every entry point takes;
- what each task is: ``about("antonym:hard")`` (size, how its items were chosen, how hard its
  words are: :mod:`icl_mech.tasks.difficulty`).

Your own data: ``from_file(path, ...)`` (JSON list, JSON lines, CSV) and
``from_records(name, records, ...)`` (:mod:`icl_mech.tasks.files`). ``resolve(item)`` turns a
bundled name, a task file (its options in a ``<stem>.task.json`` sidecar) or a ``Task`` into a
``Task``: every entry point (settings, ``--set tasks=...``, grids, ``icl-mech check``) uses it
(:mod:`icl_mech.tasks.resolve`).
"""

from __future__ import annotations

from icl_mech.prompts import Demonstration, Task
from icl_mech.tasks.bundled import all_texts, load, load_pairs, names, pair_names, splits
from icl_mech.tasks.difficulty import About, about, split_names
from icl_mech.tasks.files import from_file, from_records
from icl_mech.tasks.resolve import check_queries, checked, label, resolve, sidecar_path

__all__ = [
    "About",
    "Demonstration",
    "Task",
    "about",
    "all_texts",
    "check_queries",
    "checked",
    "from_file",
    "from_records",
    "label",
    "load",
    "load_pairs",
    "names",
    "pair_names",
    "resolve",
    "sidecar_path",
    "split_names",
    "splits",
]
