"""Running one cell: load (or reuse) its model, compute, turn the result into rows with the
cell's config, and store them; failures are logged and retried up to a bound per run.

This module runs in the sweep's own process (local executor) and in Ray workers alike; its
model cache keeps the last model a process loaded, so cells of one model reuse it.
"""

from __future__ import annotations

import json
import random
import threading
import time
import traceback
from collections import OrderedDict
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch

from icl_mech.errors import IclMechError
from icl_mech.report import Report, flatten
from icl_mech.sweeps.grid import Cell
from icl_mech.sweeps.placement import Load, load_named
from icl_mech.sweeps.store import Store
from icl_mech.version import __version__

CONFIG_COLUMNS = ("method", "model", "task", "seed")
PROVENANCE_COLUMNS = (
    "model_name", "model_arch", "model_seed", "model_path", "model_load", "settings", "table",
    "icl_mech",
    "cell",
)  # fmt: skip
TIMING_COLUMNS = ("cell_seconds",)
MODELS_KEPT = 1  # per process: a second model would double the memory of a big-model sweep

_models: OrderedDict[tuple[str, Load], object] = OrderedDict()
_models_lock = threading.Lock()


def model_for(name: str, load: Load = ()):
    """The model named by a grid (loaded once per process while cells keep asking for it)."""
    key = (name, load)
    with _models_lock:
        if key not in _models:
            while len(_models) >= MODELS_KEPT:
                _models.popitem(last=False)
            _models[key] = load_named(name, load)
        _models.move_to_end(key)
        return _models[key]


def compute(cell: Cell) -> pd.DataFrame:
    """The cell's rows: its result (headline as one row, or a report table) and its config.
    Seeded from the cell alone, without changing the caller's random state."""
    model = model_for(cell.model, cell.load) if cell.spec.needs_model else None
    python_state, numpy_state = random.getstate(), np.random.get_state()
    start = time.perf_counter()
    try:
        with torch.random.fork_rng(devices=[]):
            random.seed(cell.seed)
            np.random.seed(cell.seed)
            torch.manual_seed(cell.seed)
            result = cell.spec.compute(model, cell.settings)
    finally:
        random.setstate(python_state)
        np.random.set_state(numpy_state)
    seconds = time.perf_counter() - start
    rows = result_rows(result, cell.table)

    config = {
        "method": cell.method,
        "model": cell.model,
        "task": cell.task,
        "seed": cell.seed,
        "model_name": getattr(getattr(model, "cfg", None), "model_name", None),
        **cell.provenance(),
        "settings": json.dumps(cell.settings.as_dict(), sort_keys=True),
        "table": cell.table,
        "icl_mech": __version__,
        "cell": cell.key,
        "cell_seconds": seconds,
    }
    clashes = {c: f"{c} (result)" for c in rows.columns if c in config}
    rows = rows.rename(columns=clashes)
    for position, (name, value) in enumerate(config.items()):
        rows.insert(position, name, [value] * len(rows))
    return rows


def result_rows(result, table: str) -> pd.DataFrame:
    """A Report's headline as one row (nested keys joined by " / ", ``x_ci`` pairs as
    ``x_low``/``x_high``, other lists as JSON), or its table ``table``."""
    if isinstance(result, pd.DataFrame):
        frame = result
    elif table != "headline":
        tables = result.tables if isinstance(result, Report) else {}
        if table not in tables:
            raise IclMechError(f"the report has no table {table!r}; its tables: {list(tables)}")
        frame = tables[table]
    else:
        headline = result.headline if isinstance(result, Report) else result
        if not isinstance(headline, dict):
            raise IclMechError(
                f"a sweep method returns a Report, a dict or a DataFrame, got {type(result)}"
            )
        frame = pd.DataFrame([_headline_row(headline)])
    if not isinstance(frame.index, pd.RangeIndex):
        frame = frame.reset_index()
    return frame.reset_index(drop=True)


def _headline_row(headline: dict) -> dict:
    row = {}
    for key, value in flatten(headline).items():
        if key.endswith("_ci") and isinstance(value, (list, tuple)) and len(value) == 2:
            base = key.removesuffix("_ci")
            row[f"{base}_low"], row[f"{base}_high"] = value
        elif isinstance(value, (list, tuple)):
            row[key] = json.dumps(list(value), default=str)
        else:
            row[key] = value
    return row


@dataclass(frozen=True)
class Outcome:
    """What one call of :func:`run_cell` did: ``state`` is ``computed`` (after ``attempts``
    tries), ``skipped`` (already done), ``failed`` (no tries left) or ``busy`` (locked)."""

    key: str
    state: str
    attempts: int = 0


def run_cell(cell: Cell, store: Store, run: str, attempts: int, wait: bool) -> Outcome:
    """Compute and store ``cell`` unless it is done; ``attempts`` bounds the tries of run
    ``run`` (including ones whose process died)."""
    with store.claim(cell.key, wait) as claimed:
        if not claimed:
            return Outcome(cell.key, "busy")
        frame, problem = store.inspect(cell.key)
        if frame is not None:
            return Outcome(cell.key, "skipped")
        if problem is not None:
            moved = store.quarantine(cell.key)
            store.record_failure(cell.key, run, 0, f"corrupt result moved to {moved}: {problem}",
                                 None)  # fmt: skip
        left = store.abandoned(cell.key)
        if left is not None:
            message = (
                f"the process running attempt {left.get('attempt')} (pid {left.get('pid')} on "
                f"{left.get('host')}) stopped before finishing: killed, crashed or interrupted"
            )
            store.record_failure(cell.key, left.get("run"), left.get("attempt"), message, None)
            store.clear_running(cell.key)
        tried = sum(1 for f in store.failures(cell.key) if f.get("run") == run and f["attempt"])
        for attempt in range(tried + 1, attempts + 1):
            store.mark_running(cell.key, run, attempt)
            try:
                frame = compute(cell)
            except Exception as error:
                store.record_failure(cell.key, run, attempt, f"{type(error).__name__}: {error}",
                                     traceback.format_exc())  # fmt: skip
                store.clear_running(cell.key)
                continue
            store.write(cell.key, frame, cell.config())
            store.clear_running(cell.key)
            return Outcome(cell.key, "computed", attempt)
        return Outcome(cell.key, "failed", max(0, attempts - tried))


def comparable(frame: pd.DataFrame) -> pd.DataFrame:
    """The results without timing columns (``cell_seconds`` and any column whose name mentions
    seconds or speed), which differ between runs of the same cell."""
    timing = [c for c in frame.columns if c in TIMING_COLUMNS or _is_timing(str(c))]
    return frame.drop(columns=timing)


def _is_timing(name: str) -> bool:
    return "seconds" in name.lower() or "speed" in name.lower()
