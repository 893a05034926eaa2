"""How hard the bundled tasks are: the difficulty catalogue and the antonym splits table.

``python -m icl_mech.task_difficulty --catalogue`` rewrites the stored difficulty of every task
and split (``icl_mech/tasks/data/difficulty.jsonl``: tokens per word and one-token share under
the embedded tokenizer; see :mod:`icl_mech.tasks.difficulty`).
``python -m icl_mech.task_difficulty --out figures`` measures, on each model, the common and the
hard antonym split: 5-shot ICL accuracy (``icl_accuracy``) and the task-vector protocol
(zero-shot baseline, ICL and the replacement vector at the layer chosen on dev) with 95%
bootstrap intervals over the test queries, and writes the tidy table ``antonym_splits.csv`` /
``.md`` (model, split, protocol, condition, accuracy, low, high, n, layer).
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from pathlib import Path

import pandas as pd
from transformers import AutoTokenizer

from icl_mech import models, task_vectors
from icl_mech.evaluation import icl_accuracy
from icl_mech.report import writable_folder, write_table
from icl_mech.tasks import difficulty, load, splits

__all__ = ["CATALOGUE_PATH", "antonym_splits", "embedded_tokenizer", "main", "write_catalogue"]

CATALOGUE_PATH = Path(__file__).parent / "tasks" / "data" / difficulty.CATALOGUE
MODELS = ("embedded", "gemma-3-270m")
TABLE = "antonym_splits"
# first-token accuracy only (max_new_tokens=1: no greedy continuation for exact match)
TV_SETTINGS = task_vectors.Settings(tasks=("antonym",), n_dev=16, n_test=32, max_new_tokens=1,
                                    test_curves=False)  # fmt: skip


def embedded_tokenizer():
    """The embedded model's tokenizer (no model weights are loaded)."""
    return AutoTokenizer.from_pretrained(str(models.embedded_folder()))


def write_catalogue(path: Path = CATALOGUE_PATH, tokenizer=None) -> Path:
    """Recompute every task's difficulty (``tasks.difficulty.catalogue``); write JSON lines."""
    rows = difficulty.catalogue(tokenizer or embedded_tokenizer())
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return path


def _row(model: str, split: str, protocol: str, condition: str, estimate, layer=None) -> dict:
    return dict(model=model, split=split, protocol=protocol, condition=condition,
                accuracy=estimate.value, low=estimate.low, high=estimate.high, n=estimate.n,
                layer=layer)  # fmt: skip


def antonym_splits(
    model,
    model_name: str,
    task: str = "antonym",
    n_icl: int = 64,
    settings: task_vectors.Settings | None = None,
    progress: bool = False,
    only: Sequence[str] | None = None,
) -> pd.DataFrame:
    """The tidy rows of one model: per split of ``task``, 5-shot ICL over ``n_icl`` held-out
    queries, then the task-vector protocol's baseline, ICL and replacement vector (the layer
    chosen on a disjoint dev split) on its own test queries; intervals: 95% bootstrap.
    ``only``: these splits (default: every split of ``task``)."""
    rows = []
    for split in only or splits(task):
        name = task if split == splits(task)[0] else f"{task}:{split}"
        result = icl_accuracy(model, load(name), n_demonstrations=5, n_test=n_icl,
                              progress=progress)  # fmt: skip
        rows.append(_row(model_name, split, "icl_accuracy", "icl", result.estimate()))
        tv_settings = settings or TV_SETTINGS
        (tv,) = task_vectors.evaluate(model, [name], tv_settings, progress=progress).tasks
        for condition in ("baseline", "icl", "tv_replace"):
            estimate = tv.estimate(condition)  # 95% bootstrap over the test queries
            layer = tv.layer_replace if condition == "tv_replace" else None
            rows.append(_row(model_name, split, "task_vectors", condition, estimate, layer))
    return pd.DataFrame(rows)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m icl_mech.task_difficulty",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--catalogue", action="store_true", help="rewrite difficulty.jsonl")
    parser.add_argument("--out", type=Path, help="folder for antonym_splits.csv / .md (the "
                        "rows of models and splits not run are kept)")  # fmt: skip
    parser.add_argument("--models", default=",".join(MODELS), help="comma-separated models")
    parser.add_argument("--n-icl", type=int, default=64, help="ICL test queries per split")
    parser.add_argument("--splits", default=",".join(splits("antonym")), help="splits to run")
    args = parser.parse_args(argv)
    if not args.catalogue and args.out is None:
        parser.error("give --catalogue and/or --out FOLDER")
    if args.catalogue:
        print(f"wrote {write_catalogue()}")
    if args.out is not None:
        out = writable_folder(args.out)
        frames = []
        for name in [m.strip() for m in args.models.split(",") if m.strip()]:
            print(f"loading {name} ...", flush=True)
            model = models.load_model(name)
            only = [s.strip() for s in args.splits.split(",") if s.strip()]
            frames.append(antonym_splits(model, name, n_icl=args.n_icl, progress=True, only=only))
            print(frames[-1].to_string(index=False), flush=True)
        table = pd.concat(frames, ignore_index=True)
        if (out / f"{TABLE}.csv").is_file():  # keep the rows of the models and splits not run
            old = pd.read_csv(out / f"{TABLE}.csv")
            run = old.set_index(["model", "split"]).index.isin(
                table.set_index(["model", "split"]).index
            )
            table = pd.concat([old[~run], table], ignore_index=True)
        for path in write_table(table, out, TABLE):
            print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
