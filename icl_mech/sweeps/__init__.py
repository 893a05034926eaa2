"""Resumable experiment sweeps: a grid of reproduction runs (method × models × tasks × seeds,
with settings overrides) into a store of one Parquet file per finished cell::

    sweep = Sweep("examples/task_vectors_grid.toml", store="runs/sweeps/tv")
    sweep.run()      # skips finished cells; executor="ray" runs one Ray task per cell
    sweep.status()   # one row per cell: done, pending, failed, corrupt or running
    sweep.results()  # every finished cell's rows, with its config, in grid order

Each row carries its cell's config (method, model, task, seed, the resolved settings as JSON),
the model's provenance (name; a tiny model's arch and seed; a folder's path), the package
version and the cell's key (sha256 of its canonical JSON config). ``results(timing=False)``
drops the timing columns, which differ between two runs of the same cell.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from icl_mech import validate
from icl_mech.sweeps import store_check
from icl_mech.sweeps.cells import CONFIG_COLUMNS, comparable
from icl_mech.sweeps.executors import EXECUTORS, RUNNERS, check_executor
from icl_mech.sweeps.grid import Cell, Grid
from icl_mech.sweeps.methods import Method
from icl_mech.sweeps.store import Store, missing_pyarrow

__all__ = ["Cell", "Grid", "Method", "RunSummary", "Store", "Sweep", "EXECUTORS", "comparable"]


@dataclass
class RunSummary:
    """What one ``Sweep.run`` did, by cell key."""

    computed: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    not_run: list[str] = field(default_factory=list)  # left for a later run by max_cells

    def __str__(self) -> str:
        counts = {k: len(getattr(self, k)) for k in ("computed", "skipped", "failed", "not_run")}
        return ", ".join(f"{n} {k.replace('_', ' ')}" for k, n in counts.items())


class Sweep:
    """A grid bound to a store and an executor (``"local"``, the default, or ``"ray"``;
    ``address`` joins a Ray cluster, ``workers`` sizes a local one). A failing cell is tried
    up to ``attempts`` times per run; its errors stay in the store (``status()``)."""

    def __init__(
        self,
        grid: str | Path | Mapping | Grid,
        store: str | Path | None = None,
        *,
        executor: str = "local",
        address: str | None = None,
        workers: int | None = None,
        attempts: int = 3,
        progress: bool = True,
        methods: Mapping[str, Method] | None = None,
    ):
        self.grid = Grid.load(grid, methods)
        check_executor(executor, address, workers)
        self.attempts = validate.count(attempts, "attempts")
        problem = missing_pyarrow()
        if problem is not None:
            raise problem
        if store is None:
            name = Path(grid).stem if isinstance(grid, (str, Path)) else self.grid.method
            store = Path("runs") / "sweeps" / name
        self.store = Store(store)
        self.executor, self.address, self.workers = executor, address, workers
        self.progress = progress

    def __repr__(self) -> str:
        return (
            f"Sweep({self.grid.method!r}, {len(self.grid.cells)} cells, {self.store!r}, "
            f"executor={self.executor!r})"
        )

    def run(self, max_cells: int | None = None) -> RunSummary:
        """Compute every cell not yet in the store (at most ``max_cells`` of them)."""
        if max_cells is not None:
            max_cells = validate.count(max_cells, "max_cells", minimum=0)
        self.store.prepare()
        summary = RunSummary()
        todo = []
        for cell in self.grid.cells:
            if self.store.read(cell.key) is not None:
                summary.skipped.append(cell.key)
            elif max_cells is not None and len(todo) >= max_cells:
                summary.not_run.append(cell.key)
            else:
                todo.append(cell)
        options = {"address": self.address, "workers": self.workers}
        if self.executor == "local":
            options = {}
        if not todo:  # nothing to do: no Ray cluster to start
            return summary
        run = uuid.uuid4().hex
        outcomes = RUNNERS[self.executor](todo, self.store, run, self.attempts, self.progress,
                                          **options)  # fmt: skip
        for outcome in outcomes:
            if outcome.state in ("computed", "skipped"):
                getattr(summary, outcome.state).append(outcome.key)
            else:
                summary.failed.append(outcome.key)
        return summary

    def status(self) -> pd.DataFrame:
        """One row per cell: its axes, key, state and failed attempts (with the last error)."""
        rows = []
        for cell in self.grid.cells:
            frame, problem = self.store.inspect(cell.key)
            failures = self.store.failures(cell.key)
            if frame is not None:
                state = "done"
            elif self.store.busy(cell.key):
                state = "running"
            elif problem is not None:
                state = "corrupt"
            else:
                state = "failed" if failures else "pending"
            rows.append({
                **{c: getattr(cell, c) for c in CONFIG_COLUMNS},
                "cell": cell.key,
                "state": state,
                "failures": len(failures),
                "last_error": failures[-1]["error"] if failures else (problem or None),
            })  # fmt: skip
        return pd.DataFrame(rows)

    def results(self, timing: bool = True) -> pd.DataFrame:
        """Every finished cell's rows in grid order; ``timing=False`` drops timing columns."""
        frames = [self.store.read(cell.key) for cell in self.grid.cells]
        frames = [f for f in frames if f is not None]
        if not frames:
            return pd.DataFrame(columns=list(CONFIG_COLUMNS))
        frame = pd.concat(frames, ignore_index=True)
        return frame if timing else comparable(frame)


def run_command(
    grid: str | Path,
    executor: str = "local",
    address: str | None = None,
    store: str | Path | None = None,
    dry_run: bool = False,
    check_store: bool = False,
) -> int:
    """``icl-mech sweep``: run the grid (or, with ``dry_run``, list its cells and their
    state; with ``check_store``, test the store folder's locks and rename: nothing runs).
    Exit status 1 if a cell or a check failed."""
    sweep = Sweep(grid, store, executor=executor, address=address)
    if check_store:
        return 0 if store_check.check_store(sweep.store.root) else 1
    if dry_run:
        status = sweep.status()
        print(f"{sweep.grid.source}: {len(status)} cells of {sweep.grid.method}, store "
              f"{sweep.store.root}")  # fmt: skip
        for row in status.itertuples(index=False):
            where = "" if row.model is None else f" model={row.model}"
            task = "" if row.task is None else f" task={row.task}"
            print(f"  {row.state:8s} {row.cell[:12]}{where}{task} seed={row.seed}")
        counts = status["state"].value_counts()
        print(", ".join(f"{n} {state}" for state, n in counts.items()))
        return 0
    summary = sweep.run()
    print(f"{sweep.grid.method}: {summary} ({len(sweep.grid.cells)} cells) in {sweep.store.root}")
    if summary.failed:
        for row in sweep.status().itertuples(index=False):
            if row.state != "done":
                print(f"  {row.state}: {row.cell[:12]} {row.last_error}")
        return 1
    return 0
