"""Where cells run: ``local`` (this process, one cell after another) or ``ray`` (one Ray task
per cell; each worker process keeps its last model between cells, see
:mod:`icl_mech.sweeps.cells`).

Both make two passes: every cell without waiting for its lock, then the cells another sweep
held, waiting for that sweep to finish them (they are then skipped) or to let them go.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from tqdm import tqdm

from icl_mech.errors import IclMechError
from icl_mech.sweeps.cells import Outcome, run_cell
from icl_mech.sweeps.grid import Cell
from icl_mech.sweeps.placement import gpus_per_cell
from icl_mech.sweeps.store import Store

EXECUTORS = ("local", "ray")


def check_executor(executor: str, address: str | None, workers: int | None) -> None:
    if executor not in EXECUTORS:
        raise IclMechError(f"unknown executor {executor!r}; choose one of {list(EXECUTORS)}")
    if executor == "local" and (address is not None or workers is not None):
        raise IclMechError(
            "address and workers are Ray options; add executor='ray' (--executor ray)"
        )
    if workers is not None and address is not None:
        raise IclMechError(
            "workers sizes a local Ray cluster; with address=, the cluster has its own"
        )
    if workers is not None and (isinstance(workers, bool) or not isinstance(workers, int)
                                or workers < 1):  # fmt: skip
        raise IclMechError(f"workers={workers!r} must be a whole number >= 1")
    if executor == "ray":
        import_ray()


def import_ray():
    try:
        import ray  # optional: the ray extra, for the ray executor only
    except ImportError:
        raise IclMechError(
            "the ray executor needs Ray: pip install 'icl_mech[ray]' (or use --executor local)"
        ) from None
    return ray


def run_local(
    cells: Sequence[Cell], store: Store, run: str, attempts: int, progress: bool
) -> list[Outcome]:
    outcomes = []
    with tqdm(total=len(cells), desc="sweep", unit="cell", disable=not (progress and cells)) as bar:
        for cell in cells:
            outcomes.append(run_cell(cell, store, run, attempts, wait=False))
            bar.update(outcomes[-1].state != "busy")
        for position, outcome in enumerate(outcomes):
            if outcome.state == "busy":
                outcomes[position] = run_cell(cells[position], store, run, attempts, wait=True)
                bar.update()
    return outcomes


def _ray_cell(cell: Cell, root: str, run: str, attempts: int, wait: bool) -> Outcome:
    return run_cell(cell, Store(root), run, attempts, wait)


def run_ray(
    cells: Sequence[Cell],
    store: Store,
    run: str,
    attempts: int,
    progress: bool,
    address: str | None = None,
    workers: int | None = None,
) -> list[Outcome]:
    """One task per cell. A task whose worker dies is retried by Ray (``max_retries``) and its
    abandoned attempt counts against ``attempts``. The store must be a folder every node sees."""
    ray = import_ray()
    started = not ray.is_initialized()
    if started:
        ray.init(address=address, num_cpus=workers, include_dashboard=False)
    try:
        gpus = gpus_per_cell(cells[0].load) if cells else 0
        task = ray.remote(num_cpus=1, num_gpus=gpus, max_retries=max(0, attempts - 1))(_ray_cell)
        with tqdm(
            total=len(cells), desc="sweep (ray)", unit="cell", disable=not (progress and cells)
        ) as bar:
            outcomes = _gather(ray, task, cells, store, run, attempts, False, bar)
            busy = [i for i, o in enumerate(outcomes) if o.state == "busy"]
            by_position = dict(enumerate(outcomes))
            again = _gather(ray, task, [cells[i] for i in busy], store, run, attempts, True, bar)
            by_position.update(zip(busy, again))
        return [by_position[i] for i in range(len(cells))]
    finally:
        if started:
            ray.shutdown()


def _gather(ray, task, cells, store: Store, run: str, attempts: int, wait: bool, bar):
    pending = {
        task.remote(cell, str(store.root.resolve()), run, attempts, wait): position
        for position, cell in enumerate(cells)
    }
    outcomes: dict[int, Outcome] = {}
    while pending:
        ready, _ = ray.wait(list(pending), num_returns=1)
        position = pending.pop(ready[0])
        try:
            outcomes[position] = ray.get(ready[0])
        except ray.exceptions.RayError as error:  # the task's retries are spent
            outcomes[position] = _lost(cells[position], store, run, error)
        bar.update(outcomes[position].state != "busy")
    return [outcomes[i] for i in range(len(cells))]


def _lost(cell: Cell, store: Store, run: str, error: Exception) -> Outcome:
    with store.claim(cell.key, wait=True):
        if store.read(cell.key) is not None:  # finished before its worker was lost
            return Outcome(cell.key, "computed")
        left = store.abandoned(cell.key) or {}
        attempt = left.get("attempt", -1)
        store.record_failure(cell.key, run, attempt, f"Ray gave up on the task: {error}", None)
        store.clear_running(cell.key)
    return Outcome(cell.key, "failed")


RUNNERS: dict[str, Callable[..., list[Outcome]]] = {"local": run_local, "ray": run_ray}
