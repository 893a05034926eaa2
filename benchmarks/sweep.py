"""Sweep executors side by side: the grid of 2 tiny models x 2 tasks x 2 seeds (task vectors,
tiny settings) on the local executor and on a local Ray cluster with 2 workers, in one run.

Ray is timed cold (fresh workers import torch and build their models) and warm (a second sweep
into a fresh store, workers and their cached models reused); starting the cluster is timed
apart. The tables of both executors are checked equal.

``--embedded`` adds the cost of one quick cell per method on the embedded model (one task each).
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import _results
import pandas as pd

from icl_mech.sweeps import Sweep

TINY_GRID = {
    "method": "task-vectors",
    "models": ["tiny-gpt2", "tiny-llama"],
    "tasks": ["country_capital", "antonym"],
    "seeds": [0, 1],
    "quick": True,
    "settings": {
        "pairs": [["country_continent", "country_capital"]],
        "n_dev": 3,
        "n_test": 3,
        "n_demonstrations": 2,
        "max_new_tokens": 1,
        "batch_size": 4,
        "groups": 2,
    },
}
# one quick cell per method on the embedded model; tasks axis: one task (none for icl-gd)
EMBEDDED_CELLS = {
    "task-vectors": {"tasks": ["country_capital"], "settings": {"pairs": []}},
    "function-vectors": {"tasks": ["country_capital"]},
    "anchors": {"tasks": ["sentiment"]},
    "anchor-applications": {"tasks": ["sentiment"]},
    "icv": {"tasks": ["negative_positive"]},
    "icl-gd": {},
}


def timed(action) -> tuple[float, object]:
    start = time.perf_counter()
    result = action()
    return time.perf_counter() - start, result


def executors(folder: Path) -> dict:
    import ray

    from icl_mech.sweeps.cells import model_for

    for name in TINY_GRID["models"]:
        model_for(name)  # the tokenizer is trained and cached once, outside the timings
    local = Sweep(TINY_GRID, folder / "local", progress=False)
    local_seconds, _ = timed(local.run)
    start_seconds, _ = timed(lambda: ray.init(num_cpus=2, include_dashboard=False,
                                              log_to_driver=False))  # fmt: skip
    try:
        cold = Sweep(TINY_GRID, folder / "ray-cold", executor="ray", progress=False)
        cold_seconds, _ = timed(cold.run)
        warm = Sweep(TINY_GRID, folder / "ray-warm", executor="ray", progress=False)
        warm_seconds, _ = timed(warm.run)
    finally:
        ray.shutdown()
    expected = local.results(timing=False)
    for sweep in (cold, warm):
        pd.testing.assert_frame_equal(sweep.results(timing=False), expected, check_exact=True)
    per_cell = local.results()["cell_seconds"].median()
    cells = len(local.grid.cells)
    print(f"grid: {cells} cells (2 tiny models x 2 tasks x 2 seeds), task-vectors, tiny settings")
    print(f"local executor:                      {local_seconds:6.1f} s  (median cell "
          f"{per_cell:.2f} s of compute)")  # fmt: skip
    print(f"ray cluster start (2 CPUs):          {start_seconds:6.1f} s  (not in the ratios)")
    print(f"ray executor, 2 workers, cold:       {cold_seconds:6.1f} s  "
          f"ratio ray/local {cold_seconds / local_seconds:.2f}")  # fmt: skip
    print(f"ray executor, 2 workers, warm:       {warm_seconds:6.1f} s  "
          f"ratio ray/local {warm_seconds / local_seconds:.2f}")  # fmt: skip
    print("tables: local == ray (cold and warm), exactly")
    return {
        "cells": cells,
        "local_s": local_seconds,
        "median_cell_s": per_cell,
        "ray_start_s": start_seconds,
        "ray_cold_s": cold_seconds,
        "ray_warm_s": warm_seconds,
        "ray cold / local": cold_seconds / local_seconds,
        "ray warm / local": warm_seconds / local_seconds,
        "tables_equal": True,
    }


def embedded(folder: Path) -> dict:
    from icl_mech.sweeps.cells import model_for

    load_seconds, _ = timed(lambda: model_for("embedded"))
    print(f"\nembedded model: loaded in {load_seconds:.1f} s; one quick cell per method:")
    total, record = 0.0, {"load_s": load_seconds, "cells_s": {}, "failed": []}
    for method, axes in EMBEDDED_CELLS.items():
        grid = {"method": method, "quick": True, **axes}
        if method != "icl-gd":
            grid["models"] = ["embedded"]
        sweep = Sweep(grid, folder / method, progress=False)
        seconds, summary = timed(sweep.run)
        total += seconds
        state = "ok" if not summary.failed else f"FAILED: {sweep.status()['last_error'][0]}"
        print(f"  {method:20s} {seconds:7.1f} s  {state}")
        record["cells_s"][method] = seconds
        if summary.failed:
            record["failed"].append(method)
    print(f"  {'total':20s} {total:7.1f} s")
    record["total_s"] = total
    return record


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--embedded", action="store_true", help="also time one quick cell per "
                        "method on the embedded model")  # fmt: skip
    args = parser.parse_args()
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    with tempfile.TemporaryDirectory(prefix="icl_mech-sweep-bench-") as folder:
        payload = {"executors": executors(Path(folder))}
        if args.embedded:
            payload["embedded"] = embedded(Path(folder))
    grid = {k: v for k, v in TINY_GRID.items() if k != "settings"}
    payload["settings"] = {"grid": grid, "tiny_settings": TINY_GRID["settings"]}
    payload["settings"]["ray_workers"] = 2
    payload["settings"]["embedded"] = args.embedded
    _results.write("sweep", payload, packages=("ray", "pyarrow"))


if __name__ == "__main__":
    main()
