"""Resumable sweeps: local and Ray executors give the same table, a killed worker, an
interrupted sweep, a corrupt cell file and two concurrent sweeps lose and duplicate nothing, and
a bad grid fails before any work.

``probe`` is a test-only method without a model: it logs every execution (one file each) so the
tests count them, and can kill its own process once or raise KeyboardInterrupt.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import pytest

from icl_mech import IclMechError, cli
from icl_mech.settings import Settings
from icl_mech.sweeps import Grid, Method, Sweep

TINY_TASK_VECTORS = {
    "method": "task-vectors",
    "models": ["tiny-gpt2", "tiny-llama"],
    "tasks": ["country_capital", "antonym"],
    "seeds": [0, 1],
    "quick": True,
    "table": "logit_lens",  # per-layer token probabilities: differ by model, task and seed
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

INTERRUPT = {"at": 0}  # the probe raises KeyboardInterrupt on this execution of a run (local)


@dataclass(frozen=True)
class ProbeSettings(Settings):
    tasks: tuple[str, ...] = ("a",)
    log: str = ""  # folder: one file per execution
    crash: str = ""  # kill the process on the first execution of this task
    fail: str = ""  # raise ValueError on the first fail_times executions of this task
    fail_times: int = 1
    sleep: float = 0.0


def probe(model, settings: ProbeSettings) -> dict:
    log, task = Path(settings.log), settings.tasks[0]
    (log / f"{task}-{settings.seed}.{uuid.uuid4().hex}.run").touch()
    marker = log / f"{task}-{settings.seed}.crashed"
    if task == settings.crash and not marker.exists():
        marker.touch()
        os.kill(os.getpid(), signal.SIGKILL)
    if task == settings.fail and len(list(log.glob(f"{task}-{settings.seed}.*.run"))) <= (
        settings.fail_times
    ):
        raise ValueError(f"probe failure of {task}")
    if INTERRUPT["at"] and len(list(log.glob("*.run"))) >= INTERRUPT["at"]:
        raise KeyboardInterrupt
    time.sleep(settings.sleep)
    return {"value": 100 * settings.seed + len(task), "nested": {"x": 0.5, "x_ci": [0.25, 0.75]}}


METHODS = {"probe": Method(ProbeSettings, probe, task_field="tasks", needs_model=False)}


def probe_grid(log: Path, tasks=("a", "bb"), seeds=(0, 1), **settings) -> dict:
    log.mkdir(exist_ok=True)
    values = {"log": str(log), **settings}
    return {"method": "probe", "tasks": list(tasks), "seeds": list(seeds), "settings": values}


def executions(log: Path) -> dict[str, int]:
    counts: dict[str, int] = {}
    for path in log.glob("*.run"):
        cell = path.name.split(".")[0]
        counts[cell] = counts.get(cell, 0) + 1
    return counts


@pytest.fixture(scope="module")
def ray_cluster():
    ray = pytest.importorskip("ray", reason="ray is not installed (pip install 'icl_mech[ray]')")
    # Ray workers import the probe from this module by value: pytest's module name is not
    # importable in a worker
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


def test_ray_and_local_give_the_same_table(ray_cluster, tmp_path):
    local = Sweep(TINY_TASK_VECTORS, tmp_path / "local", progress=False)
    remote = Sweep(TINY_TASK_VECTORS, tmp_path / "ray", executor="ray", progress=False)
    assert len(local.run().computed) == len(remote.run().computed) == 8
    order = ["cell", "layer", "rank"]
    expected = local.results(timing=False).sort_values(order, ignore_index=True)
    got = remote.results(timing=False).sort_values(order, ignore_index=True)
    pd.testing.assert_frame_equal(got, expected, check_exact=True)
    assert len(expected) == 8 * 15 and expected["cell"].nunique() == 8
    # the numbers depend on the model and on the seed, so a mixed-up cell would show
    lens = expected.set_index(["model", "task", "seed", "layer", "rank"])["p"]
    assert not lens.xs("tiny-gpt2").equals(lens.xs("tiny-llama"))
    assert not lens.xs(0, level="seed").equals(lens.xs(1, level="seed"))
    assert set(expected["model_arch"]) == {"gpt2", "llama"}
    assert set(expected["model_name"]) == {"tiny-gpt2-3L", "tiny-llama-3L"}
    assert (expected["model_seed"] == 0).all() and expected["icl_mech"].notna().all()
    assert json.loads(expected["settings"][0])["n_dev"] == 3
    assert "cell_seconds" in remote.results().columns


def test_a_killed_worker_loses_and_duplicates_nothing(ray_cluster, tmp_path):
    log = tmp_path / "log"
    sweep = Sweep(probe_grid(log, tasks=("a", "bb"), crash="bb"), tmp_path / "store",
                  executor="ray", methods=METHODS, progress=False)  # fmt: skip
    summary = sweep.run()
    assert sorted(summary.computed) == sorted(c.key for c in sweep.grid.cells)
    assert list(tmp_path.glob("log/*.crashed")), "no worker was killed"
    assert executions(log) == {"a-0": 1, "a-1": 1, "bb-0": 2, "bb-1": 2}
    results = sweep.results()
    assert sorted(results["cell"]) == sorted(c.key for c in sweep.grid.cells)
    assert sorted(results["value"]) == [1, 2, 101, 102]
    status = sweep.status().set_index("task")
    assert (status["state"] == "done").all()
    assert status.loc["bb", "failures"].tolist() == [1, 1]
    assert "stopped before finishing" in status.loc["bb", "last_error"].iloc[0]


def test_an_interrupted_sweep_resumes_with_the_missing_cells_only(tmp_path):
    log = tmp_path / "log"
    grid = probe_grid(log, tasks=("a", "bb", "ccc", "dddd"))
    sweep = Sweep(grid, tmp_path / "store", methods=METHODS, progress=False)
    assert len(sweep.run(max_cells=3).computed) == 3
    assert sum(executions(log).values()) == 3
    INTERRUPT["at"] = 5  # the second execution of the next run
    try:
        with pytest.raises(KeyboardInterrupt):
            sweep.run()
    finally:
        INTERRUPT["at"] = 0
    assert (sweep.status()["state"] == "done").sum() == 4
    again = Sweep(grid, tmp_path / "store", methods=METHODS, progress=False).run()
    assert len(again.skipped) == 4 and len(again.computed) == 4
    counts = executions(log)
    assert sum(counts.values()) == 3 + 2 + 4 and max(counts.values()) == 2
    interrupted = [k for k, n in counts.items() if n == 2]
    status = sweep.status()
    row = status[(status["task"] + "-" + status["seed"].astype(str)) == interrupted[0]]
    assert row["failures"].item() == 1 and "stopped before finishing" in row["last_error"].item()
    results = sweep.results()
    assert len(results) == 8 and results["cell"].is_unique
    assert results[["nested / x_low", "nested / x_high"]].iloc[0].tolist() == [0.25, 0.75]


def test_a_failing_cell_is_logged_and_retried_a_bounded_number_of_times(tmp_path):
    flaky, broken = tmp_path / "flaky", tmp_path / "broken"
    sweep = Sweep(probe_grid(flaky, fail="bb", fail_times=1), tmp_path / "a", attempts=3,
                  methods=METHODS, progress=False)  # fmt: skip
    assert len(sweep.run().computed) == 4
    assert executions(flaky) == {"a-0": 1, "a-1": 1, "bb-0": 2, "bb-1": 2}
    log = sweep.store.failures(sweep.grid.cells[2].key)
    assert len(log) == 1 and "probe failure of bb" in log[0]["error"]
    assert "Traceback" in log[0]["traceback"] and "ValueError" in log[0]["traceback"]

    sweep = Sweep(probe_grid(broken, fail="bb", fail_times=99), tmp_path / "b", attempts=2,
                  methods=METHODS, progress=False)  # fmt: skip
    summary = sweep.run()
    assert len(summary.computed) == 2 and len(summary.failed) == 2
    assert executions(broken) == {"a-0": 1, "a-1": 1, "bb-0": 2, "bb-1": 2}
    assert sweep.status()["state"].tolist() == ["done", "done", "failed", "failed"]
    assert len(sweep.results()) == 2
    sweep.run()  # a new run gives the failed cells a new budget, and skips the done ones
    assert executions(broken) == {"a-0": 1, "a-1": 1, "bb-0": 4, "bb-1": 4}
    assert sweep.status()["failures"].tolist() == [0, 0, 4, 4]


def test_a_corrupt_cell_file_is_rerun_not_read(tmp_path):
    import pyarrow.parquet as pq

    log = tmp_path / "log"
    sweep = Sweep(probe_grid(log), tmp_path / "store", methods=METHODS, progress=False)
    sweep.run()
    truncated, tampered, *_ = (sweep.store.result_path(c.key) for c in sweep.grid.cells)
    truncated.write_bytes(truncated.read_bytes()[: truncated.stat().st_size // 2])
    table = pq.read_table(tampered)
    frame = table.to_pandas().assign(value=-1)
    forged = type(table).from_pandas(frame, preserve_index=False)
    pq.write_table(forged.replace_schema_metadata(table.schema.metadata), tampered)

    states = sweep.status()["state"].tolist()
    assert states == ["corrupt", "corrupt", "done", "done"]
    assert len(sweep.results()) == 2 and -1 not in sweep.results()["value"].tolist()
    summary = sweep.run()
    assert len(summary.computed) == 2 and len(summary.skipped) == 2
    assert executions(log) == {"a-0": 2, "a-1": 2, "bb-0": 1, "bb-1": 1}
    assert sorted(sweep.results()["value"]) == [1, 2, 101, 102]
    assert len(list((tmp_path / "store" / "corrupt").glob("*.parquet"))) == 2


def test_two_sweeps_sharing_a_store_run_each_cell_once(tmp_path):
    log = tmp_path / "log"
    grid = probe_grid(log, tasks=("a", "bb", "ccc"), seeds=(0, 1, 2, 3), sleep=0.05)
    sweeps = [Sweep(grid, tmp_path / "store", methods=METHODS, progress=False) for _ in "ab"]
    summaries, errors = [None, None], []

    def run(position):
        try:
            summaries[position] = sweeps[position].run()
        except BaseException as error:  # surfaced below
            errors.append(error)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors
    keys = sorted(c.key for c in sweeps[0].grid.cells)
    computed = summaries[0].computed + summaries[1].computed
    assert sorted(computed) == keys, "a cell was computed twice or not at all"
    assert summaries[0].computed and summaries[1].computed, "the sweeps did not share the work"
    assert set(executions(log).values()) == {1} and len(executions(log)) == 12
    assert sorted(sweeps[1].results()["cell"]) == keys
    assert not list((tmp_path / "store").glob(".*.tmp"))


BAD_GRIDS = [
    (dict(method="nope"), ["'nope'", "task-vectors"]),
    (dict(tasks=["country_capital", "no_such_task"]), ["no_such_task", "tasks.names()"]),
    (dict(settings={"n_devv": 3}), ["n_devv", "n_dev"]),
    (dict(settings={"n_dev": "three"}), ["n_dev='three'", "int"]),
    (dict(seeds=[]), ["'seeds'", "empty"]),
    (dict(models=[]), ["'models'", "empty"]),
    (dict(models=["no-such-model-xyz"]), ["no-such-model-xyz", "tiny-gpt2"]),
    (dict(settings={"seed": 3}), ["seeds"]),
    (dict(colour="blue"), ["colour", "method"]),
    (dict(load={"dtype": "float8"}), ["dtype='float8'", "bfloat16"]),
    (dict(load={"device": "gpu0"}), ["device='gpu0'", "cuda"]),
    (dict(load={"n_devices": 2}), ["n_devices=2", "device = 'cuda'"]),
    (dict(load={"precision": 16}), ["precision", "dtype"]),
]


@pytest.mark.parametrize(("change", "fragments"), BAD_GRIDS, ids=lambda v: str(v)[:30])
def test_a_bad_grid_fails_before_any_work(change, fragments, tmp_path, monkeypatch):
    from icl_mech.sweeps import cells

    monkeypatch.setattr(cells, "model_for", lambda *args: pytest.fail("a model was loaded"))
    with pytest.raises(IclMechError) as caught:
        Sweep({**TINY_TASK_VECTORS, **change}, tmp_path / "store")
    for fragment in fragments:
        assert fragment in str(caught.value)
    assert not (tmp_path / "store").exists()


def model_dtype(model, settings: ProbeSettings) -> dict:
    return {"dtype": str(model.cfg.dtype), "w": model.W_U[0, 0].item()}


def test_a_load_table_loads_each_cells_model_so_and_keys_the_cell(tmp_path):
    from icl_mech.sweeps.placement import gpus_per_cell

    methods = {"dtype": Method(ProbeSettings, model_dtype, "tasks")}
    grid = {"method": "dtype", "models": ["tiny-llama"], "tasks": ["a"]}
    frames = []
    for load in ({}, {"dtype": "float64"}, {"dtype": "bfloat16", "device": "cpu"}):
        sweep = Sweep({**grid, "load": load}, tmp_path / "store", methods=methods, progress=False)
        assert len(sweep.run().computed) == 1  # another load is another cell
        frames.append(sweep.results())
    frame = pd.concat(frames, ignore_index=True)
    assert list(frame["dtype"]) == ["torch.float32", "torch.float64", "torch.bfloat16"]
    assert frame["cell"].is_unique
    assert frame["w"][1] == frame["w"][0] != frame["w"][2]  # the same weights, cast
    assert list(frame["model_load"])[1:] == ['{"dtype":"float64"}',
                                             '{"device":"cpu","dtype":"bfloat16"}']  # fmt: skip
    assert [gpus_per_cell(c.load) for c in Grid.load({**grid, "load": {"device": "cuda",
            "n_devices": 2}}, methods=methods).cells] == [2]  # fmt: skip


def test_the_example_grids_are_valid_without_loading_anything(monkeypatch):
    from icl_mech.sweeps import cells
    from icl_mech.sweeps.placement import gpus_per_cell

    monkeypatch.setattr(cells, "model_for", lambda *args: pytest.fail("a model was loaded"))
    examples = Path(__file__).resolve().parent.parent / "examples"
    embedded = Grid.load(examples / "task_vectors_grid.toml")
    paper = Grid.load(examples / "task_vectors_paper_grid.toml")  # no GPU needed to check it
    assert (len(embedded.cells), len(paper.cells)) == (72, 126)
    assert {gpus_per_cell(c.load) for c in paper.cells} == {1}
    assert {gpus_per_cell(c.load) for c in embedded.cells} == {0}


def test_icl_gd_refuses_a_tasks_axis():
    with pytest.raises(IclMechError, match="icl-gd has no task setting"):
        Grid.load({"method": "icl-gd", "tasks": ["sentiment"]})
    assert [c.task for c in Grid.load({"method": "icl-gd", "seeds": [0, 1]}).cells] == [None] * 2


def test_the_command_line(tmp_path, capsys):
    grid = tmp_path / "tiny.toml"
    grid.write_text(
        'method = "task-vectors"\nmodels = ["tiny-llama"]\ntasks = ["antonym"]\nseeds = [0, 1]\n'
        "quick = true\n[settings]\npairs = []\nn_dev = 3\nn_test = 3\nn_demonstrations = 2\n"
        "max_new_tokens = 1\nbatch_size = 4\ngroups = 2\n"
    )
    store = str(tmp_path / "store")
    assert cli.main(["sweep", str(grid), "--store", store, "--dry-run"]) == 0
    assert "2 pending" in capsys.readouterr().out and not Path(store).exists()
    assert cli.main(["sweep", str(grid), "--store", store]) == 0
    assert "2 computed" in capsys.readouterr().out
    assert cli.main(["sweep", str(grid), "--store", store, "--dry-run"]) == 0
    assert capsys.readouterr().out.count("  done ") == 2
    grid.write_text(grid.read_text().replace("n_dev = 3", "n_dve = 3"))
    for argv in ([str(grid)], [str(tmp_path / "missing.toml")]):
        assert cli.main(["sweep", *argv, "--store", store]) == 2
        error = capsys.readouterr().err
        assert error.count("\n") == 1 and error.startswith("icl-mech: error:")
        assert "n_dve" in error or "does not exist" in error
