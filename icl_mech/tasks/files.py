"""Bring your own data: a ``Task`` from records (``from_records``) or a file (``from_file``).

A file is a JSON list of objects (``.json``), one JSON object per line (``.jsonl``,
``.ndjson``), or a CSV file with a header row (``.csv``); ``format=`` overrides the suffix.
Every record needs an input and an output (keys ``input_key`` / ``output_key``), both strings.

- ``classes=None``: an input -> output task (first-token accuracy, task vectors, ...);
- ``classes=[...]``: a classification task whose label words are the given outputs, in
  that order (class index = position); every output must be one of them;
- ``classes="infer"``: classification over the sorted distinct outputs.

Exact duplicate records are dropped with an ``IclMechWarning``; the same input with two
different outputs is an error (a split could put the two on both sides).
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

from icl_mech import validate
from icl_mech.errors import IclMechError
from icl_mech.prompts import Demonstration, Task

__all__ = ["FORMATS", "from_file", "from_records"]

FORMATS = {".json": "json", ".jsonl": "jsonl", ".ndjson": "jsonl", ".csv": "csv"}


def from_records(
    name: str,
    records: Iterable[Mapping],
    template: str = "{x} ->",
    input_key: str = "input",
    output_key: str = "output",
    classes: Sequence[str] | str | None = None,
    answer_prefix: str = " ",
    separator: str = "\n",
    *,
    source: str | None = None,
) -> Task:
    """A task from mappings such as ``{"input": "hot", "output": "cold"}`` (see the module).

    ``source`` names where the records came from in error messages and in the task's
    provenance (``Task.source``; ``from_file`` passes the path); rows are numbered from 1.
    """
    where = source or f"records of task {name!r}"
    examples: list[Demonstration] = []
    rows: list[int] = []
    seen: dict[str, tuple[str, int]] = {}
    dropped: list[int] = []
    for row, record in enumerate(records, start=1):
        if not isinstance(record, Mapping):
            raise IclMechError(
                f"{where}, row {row}: expected an object with keys {input_key!r} and "
                f"{output_key!r}, got {validate.shown(record)}"
            )
        values = []
        for key in (input_key, output_key):
            if key not in record:
                raise IclMechError(
                    f"{where}, row {row}: no key {key!r} (keys: {sorted(map(str, record))}); "
                    "choose the columns with input_key= / output_key="
                )
            value = record[key]
            if not isinstance(value, str):
                raise IclMechError(
                    f"{where}, row {row}: {key}={validate.shown(value)} is "
                    f"{type(value).__name__}, not a string; quote it in the file"
                )
            if not value.strip():
                raise IclMechError(f"{where}, row {row}: {key} is empty")
            values.append(value)
        x, y = values
        if x in seen:
            earlier, first_row = seen[x]
            if earlier != y:
                raise IclMechError(
                    f"{where}, row {row}: input {x!r} already appears in row {first_row} with "
                    f"output {earlier!r}, here with {y!r}; keep one output per input"
                )
            dropped.append(row)
            continue
        seen[x] = (y, row)
        rows.append(row)
        examples.append(Demonstration(x, y))
    if not examples:
        raise IclMechError(f"{where}: no records")
    if dropped:
        validate.warn(f"{where}: dropped {len(dropped)} exact duplicate rows {dropped[:10]}")
    if isinstance(classes, str):
        if classes != "infer":
            raise IclMechError(
                f"{where}: classes={classes!r}; give a list of label words, 'infer' or None"
            )
        classes = sorted({e.y for e in examples})
    if classes is not None:
        classes = tuple(classes)
        for row, example in zip(rows, examples):
            if example.y not in classes:
                raise IclMechError(
                    f"{where}, row {row}: label {example.y!r} is not among the classes "
                    f"{list(classes)}"
                )
    return Task(name, tuple(examples), template, classes, answer_prefix, separator, source)


def from_file(
    path: str | Path,
    template: str = "{x} ->",
    input_key: str = "input",
    output_key: str = "output",
    classes: Sequence[str] | str | None = None,
    answer_prefix: str = " ",
    separator: str = "\n",
    *,
    name: str | None = None,
    format: str | None = None,
) -> Task:
    """A task from a JSON, JSON-lines or CSV file (``format``: "json", "jsonl" or "csv";
    default from the suffix). The task is named after the file's stem unless ``name`` is given.
    """
    path = Path(path)
    if format is None:
        if path.suffix.lower() not in FORMATS:
            raise IclMechError(
                f"{path}: cannot tell the format from the suffix {path.suffix!r}; "
                f"use one of {sorted(FORMATS)} or pass format='json' | 'jsonl' | 'csv'"
            )
        format = FORMATS[path.suffix.lower()]
    validate.choice(format, "from_file format", ("json", "jsonl", "csv"))
    if not path.is_file():
        raise IclMechError(f"{path}: no such file")
    text = path.read_text(encoding="utf-8-sig")
    if not text.strip():
        raise IclMechError(f"{path}: the file is empty")
    records = {"json": _json, "jsonl": _jsonl, "csv": _csv}[format](text, path)
    return from_records(
        name or path.stem,
        records,
        template,
        input_key,
        output_key,
        classes,
        answer_prefix,
        separator,
        source=str(path),
    )


def _json(text: str, path: Path) -> list:
    try:
        records = json.loads(text)
    except json.JSONDecodeError as error:
        raise IclMechError(f"{path}: malformed JSON at line {error.lineno}: {error.msg}") from None
    if not isinstance(records, list):
        raise IclMechError(
            f"{path}: expected a JSON list of objects, got a {type(records).__name__}"
            + ("; for one object per line use format='jsonl'" if isinstance(records, dict) else "")
        )
    return records


def _jsonl(text: str, path: Path) -> list:
    records = []
    for row, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError as error:
            raise IclMechError(f"{path}, line {row}: malformed JSON: {error.msg}") from None
    return records


def _csv(text: str, path: Path) -> list:
    reader = csv.DictReader(io.StringIO(text, newline=""), strict=True)
    records = []
    try:
        for record in reader:
            if None in record or None in record.values():
                raise IclMechError(
                    f"{path}, row {len(records) + 1} (line {reader.line_num}): "
                    f"{len(reader.fieldnames or [])} columns in the header, a different number here"
                )
            records.append(record)
    except csv.Error as error:
        raise IclMechError(f"{path}, line {reader.line_num}: malformed CSV: {error}") from None
    return records
