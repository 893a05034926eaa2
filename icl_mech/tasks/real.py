"""Loaders for the papers' real datasets through the optional ``datasets`` package.

They need the model hub (or local files in the same schema, passed as ``data_files``), and
return a ``Task`` with the same template and label words as the bundled task of that kind.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from icl_mech import tasks
from icl_mech.errors import IclMechError
from icl_mech.prompts import Demonstration, Task


@dataclass(frozen=True)
class Schema:
    hub_id: str
    text: str  # column of the input text
    label: str  # column of the integer label
    names: tuple[str, ...]  # label word of each integer label
    bundled: str  # the bundled task whose template and label words are used


SCHEMAS = {
    "sst2": Schema("stanfordnlp/sst2", "sentence", "label", ("negative", "positive"), "sentiment"),
    "trec": Schema(
        "CogComp/trec",
        "text",
        "coarse_label",
        ("abbreviation", "entity", "description", "person", "location", "number"),
        "question_type",
    ),
    "agnews": Schema(
        "fancyzhx/ag_news", "text", "label", ("world", "sports", "business", "technology"), "topic"
    ),
    "emocontext": Schema(
        "SemEvalWorkshop/emo", "text", "label", ("others", "happy", "sad", "angry"), "emotion"
    ),
}


def load_real(
    name: str,
    split: str = "train",
    data_files: str | list[str] | None = None,
    limit: int | None = None,
) -> Task:
    """SST-2, TREC, AG News or EmoContext as a Task.

    ``data_files``: local json/jsonl/csv files with the hub dataset's columns, read instead
    of the hub (EmoContext's three turns may be given as ``turn1``..``turn3`` columns).
    """
    if name not in SCHEMAS:
        raise IclMechError(f"unknown dataset {name!r}; choose one of {sorted(SCHEMAS)}")
    try:
        import datasets  # optional: the datasets extra, for the real datasets only
    except ImportError:
        raise IclMechError(
            "real datasets need the optional 'datasets' package: pip install 'icl_mech[datasets]'"
        ) from None
    schema = SCHEMAS[name]
    if data_files is None:
        rows = datasets.load_dataset(schema.hub_id, split=split)
    else:
        first = data_files if isinstance(data_files, str) else data_files[0]
        builder = "csv" if first.endswith(".csv") else "json"
        rows = datasets.load_dataset(builder, data_files=data_files, split="train")
    if limit is not None:
        rows = rows.select(range(min(limit, len(rows))))
    files = [data_files] if isinstance(data_files, str) else data_files
    return _to_task(name, schema, rows, ", ".join(files) if files else schema.hub_id)


def _to_task(name: str, schema: Schema, rows, source: str) -> Task:
    columns = set(rows.column_names)
    turns = [c for c in ("turn1", "turn2", "turn3") if c in columns]
    if schema.text not in columns and not turns or schema.label not in columns:
        raise IclMechError(
            f"dataset {name!r} needs columns {schema.text!r} and "
            f"{schema.label!r}; found {sorted(columns)}"
        )
    examples = []
    for row in rows:
        text = row[schema.text] if schema.text in columns else " | ".join(row[t] for t in turns)
        label = row[schema.label]
        if not 0 <= label < len(schema.names):
            raise IclMechError(
                f"dataset {name!r}: label {label} outside 0..{len(schema.names) - 1}"
            )
        examples.append(Demonstration(text.strip(), schema.names[label]))
    # the bundled task's template and label words, under the dataset's own name and source, so
    # a run holding both (an atlas of bundled and real tasks) tells them apart
    bundled = tasks.load(schema.bundled).with_examples(examples)
    return dataclasses.replace(bundled, name=name, source=source)
