"""Nothing lost, nothing half-written: one seed validator everywhere a seed is taken (a bad grid
seed refused before any cell runs), names that are never paths in every catalogue, one file
lock helper (flock, msvcrt, or a refusal naming the platform), and ``--check-store``."""

from __future__ import annotations

import errno
import os
import shutil
import socket
import sys
import threading
import time
from dataclasses import dataclass

import numpy as np
import pytest

from icl_mech import IclMechError, cache, cli, locks, model_names, runner, tasks, validate
from icl_mech.settings import Settings
from icl_mech.sweeps import Method, Store, Sweep, executors, store_check
from icl_mech.sweeps.cells import Outcome
from icl_mech.task_vectors.plan import splits as task_vector_splits

LAST_SEED = 2**32 - 1
BAD_SEEDS = [-1, 2**32, True, 1.5, "3"]


@dataclass(frozen=True)
class ProbeSettings(Settings):
    tasks: tuple[str, ...] = ("a",)


METHODS = {"probe": Method(ProbeSettings, lambda model, s: {"v": 1}, "tasks", needs_model=False)}


@pytest.fixture
def cell_calls(monkeypatch) -> list:
    """Every cell the local executor is asked to run (none is run)."""
    calls = []

    def record(cell, store, run, attempts, wait):
        calls.append(cell)
        return Outcome(cell.key, "computed", 1)

    monkeypatch.setattr(executors, "run_cell", record)
    return calls


# --- seeds ---------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", [-1, 2**32, True], ids=["-1", "2**32", "True"])
def test_a_bad_grid_seed_is_refused_before_any_cell_runs(seed, cell_calls, tmp_path):
    grid = {"method": "probe", "tasks": ["a", "b"], "seeds": [0, seed]}
    with pytest.raises(IclMechError) as caught:
        Sweep(grid, tmp_path / "store", methods=METHODS, progress=False).run()
    message = str(caught.value)
    assert "seeds" in message and repr(seed) in message and str(LAST_SEED) in message
    assert cell_calls == [] and not (tmp_path / "store").exists()


def test_the_grid_runs_its_cells_when_its_seeds_are_in_range(cell_calls, tmp_path):
    grid = {"method": "probe", "tasks": ["a"], "seeds": [0, LAST_SEED]}
    Sweep(grid, tmp_path / "store", methods=METHODS, progress=False).run()
    assert [c.seed for c in cell_calls] == [0, LAST_SEED]  # the recorder sees every cell


def test_a_toml_grid_seed_out_of_range_fails_on_the_command_line(tmp_path, capsys, cell_calls):
    grid = tmp_path / "gd.toml"
    grid.write_text('method = "icl-gd"\nseeds = [0, -1]\n')
    assert cli.main(["sweep", str(grid), "--store", str(tmp_path / "store")]) == 2
    error = capsys.readouterr().err
    assert "seeds=-1" in error and str(LAST_SEED) in error and cell_calls == []


@pytest.mark.parametrize("seed", BAD_SEEDS, ids=repr)
def test_settings_refuse_a_bad_seed(seed):
    with pytest.raises(IclMechError, match="seed"):
        ProbeSettings(seed=seed)
    with pytest.raises(IclMechError, match="icl_gd|gd settings: seed"):
        runner.settings_for("icl-gd", quick=True, seed=seed)
    with pytest.raises(IclMechError, match="seed"):
        runner.settings_for("task-vectors", quick=True, seed=seed)


@pytest.mark.parametrize("seed", [0, LAST_SEED, np.int64(7)], ids=repr)
def test_settings_take_every_seed_in_range(seed):
    assert ProbeSettings(seed=seed).seed == seed
    assert runner.settings_for("icl-gd", quick=True, seed=seed).seed == seed
    assert runner.settings_for("anchors", quick=True, seed=seed).seeds == [seed]


def test_repeated_seeds_stay_in_range_and_threads_are_not_bools():
    with pytest.raises(IclMechError, match="n_seeds"):
        runner.settings_for("anchors", quick=True, seed=LAST_SEED, n_seeds=2)
    with pytest.raises(IclMechError, match="threads=True is a bool"):
        ProbeSettings(threads=True)


@pytest.mark.parametrize("seed", BAD_SEEDS, ids=repr)
def test_task_split_refuses_a_bad_seed(seed):
    with pytest.raises(IclMechError, match="split seed"):
        tasks.load("antonym").split(4, seed)


def test_task_split_takes_the_ends_of_the_range():
    task = tasks.load("antonym")
    for seed in (0, LAST_SEED):
        pool, test = task.split(4, seed)
        assert len(test.examples) == 4 and test.examples == task.split(4, seed)[1].examples
    assert task.split(4, 0)[1].examples != task.split(4, LAST_SEED)[1].examples
    train, dev, test = task_vector_splits(task, 4, 4, 2, 0, LAST_SEED)  # seed + 1 wraps
    assert len(dev.examples) == 4


def test_the_command_line_seed_is_checked_before_any_model(capsys, monkeypatch, tmp_path):
    monkeypatch.setattr(cli, "_model", lambda name: pytest.fail("a model was loaded"))
    for argv in (
        ["reproduce", "icl-gd", "--quick", "--seed", "-1"],
        ["demo", "--only-accuracy", "--seed", str(2**32), "--out", str(tmp_path)],
    ):
        assert cli.main(argv) == 2
        assert "--seed=" in capsys.readouterr().err


def test_the_seed_validator():
    assert validate.seed(0, "s") == 0 and validate.seed(np.uint32(LAST_SEED), "s") == LAST_SEED
    for bad in BAD_SEEDS:
        with pytest.raises(IclMechError, match=r"my seed=.*0 \.\. 2\*\*32 - 1"):
            validate.seed(bad, "my seed")


# --- names ---------------------------------------------------------------------------------

PATH_NAMES = ["../something", "pairs/../../x", "../../etc/passwd", "/etc/passwd", "..",
              "a\\b", "a\0b", "antonym/../antonym", "C:\\Windows\\x"]  # fmt: skip


@pytest.mark.parametrize("name", PATH_NAMES, ids=repr)
def test_every_catalogue_refuses_a_path_as_a_name(name):
    lookups = {
        "task": (lambda: tasks.load(name), "icl_mech.tasks.names()"),
        "split": (lambda: tasks.load("antonym", split=name), "common"),
        "splits": (lambda: tasks.splits(name), "icl_mech.tasks.names()"),
        "about": (lambda: tasks.about(name), "icl_mech.tasks.names()"),
        "pair set": (lambda: tasks.load_pairs(name), "negative_positive"),
        "icv pair_sets": (
            lambda: runner.settings_for("icv", quick=True, pair_sets=(name,)), "rude_polite"),
        "reproduction": (lambda: runner.settings_for(name), "task-vectors"),
        "reproduce": (lambda: runner.reproduce(name, settings=ProbeSettings()), "icl-gd"),
        "model": (lambda: model_names.check_name(name), "tiny-gpt2"),
    }  # fmt: skip
    for what, (lookup, known) in lookups.items():
        with pytest.raises(IclMechError) as caught:
            lookup()
        assert known in str(caught.value), what


@pytest.mark.parametrize("name", ["../something", "/etc/passwd", "a\0b", "tasks/../x.csv"])
def test_resolve_takes_only_names_or_existing_task_files(name):
    with pytest.raises(IclMechError, match="icl_mech.tasks.names()"):
        tasks.resolve(name)


def test_a_path_shaped_name_is_called_a_name(tmp_path):
    with pytest.raises(IclMechError, match="a pair set is a name, never a path"):
        tasks.load_pairs("../negative_positive")
    with pytest.raises(IclMechError, match="did you mean 'antonym'"):
        tasks.load("../antonym")
    # an explicit task file stays a task file
    path = tmp_path / "upper.jsonl"
    path.write_text('{"input": "a", "output": "A"}\n{"input": "b", "output": "B"}\n')
    assert tasks.resolve(str(path)).name == "upper"


# --- locks ---------------------------------------------------------------------------------


class FakeMsvcrt:
    """``msvcrt.locking`` on POSIX: a byte range held by one open file at a time."""

    LK_UNLCK, LK_LOCK, LK_NBLCK = 0, 1, 2

    def __init__(self):
        self.held: dict[tuple, int] = {}
        self.calls: list[tuple[int, int, int]] = []
        self.guard = threading.Lock()

    def locking(self, fd: int, mode: int, nbytes: int) -> None:
        offset, info = os.lseek(fd, 0, os.SEEK_CUR), os.fstat(fd)
        key = (info.st_dev, info.st_ino, offset)
        with self.guard:
            self.calls.append((mode, offset, nbytes))
            if mode == self.LK_NBLCK:
                if key in self.held:
                    raise OSError(errno.EACCES, "Permission denied")
                self.held[key] = fd
            elif mode == self.LK_UNLCK:
                assert self.held.pop(key) == fd


@pytest.fixture
def no_fcntl(monkeypatch):
    monkeypatch.setitem(sys.modules, "fcntl", None)  # `import fcntl` raises ImportError
    monkeypatch.setitem(sys.modules, "msvcrt", None)


def test_without_fcntl_or_msvcrt_a_lock_is_refused_naming_the_platform(no_fcntl, tmp_path):
    for take in (lambda: locks.backend(), lambda: locks.hold(tmp_path / "x.lock").__enter__(),
                 lambda: Store(tmp_path).claim("k", wait=False).__enter__(),
                 lambda: cache.folder_lock(tmp_path / "model").__enter__()):  # fmt: skip
        with pytest.raises(IclMechError, match=f"this platform \\({sys.platform!r}\\)"):
            take()


def test_without_fcntl_msvcrt_locks_past_the_holder_text(no_fcntl, monkeypatch, tmp_path):
    fake = FakeMsvcrt()
    monkeypatch.setitem(sys.modules, "msvcrt", fake)
    path = tmp_path / "cell.lock"
    assert locks.backend().name == "msvcrt.locking"
    with locks.hold(path):
        assert locks.is_held(path)
        with pytest.raises(locks.Busy) as caught:
            with locks.try_hold(path):
                pytest.fail("took a held lock")
        assert caught.value.pid == os.getpid() and str(os.getpid()) in str(caught.value)
    assert not locks.is_held(path) and fake.held == {}
    assert {offset for _, offset, _ in fake.calls} == {locks.WINDOWS_BYTE}
    with locks.try_hold(path, remove=True):
        assert path.exists()
    assert not path.exists()


def test_a_waiting_msvcrt_lock_takes_over_on_release(no_fcntl, monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "msvcrt", FakeMsvcrt())
    path, taken = tmp_path / "cell.lock", threading.Event()

    def holder():
        with locks.hold(path):
            taken.set()
            time.sleep(0.3)

    thread = threading.Thread(target=holder)
    thread.start()
    taken.wait(5)
    start = time.monotonic()
    with locks.hold(path):
        waited = time.monotonic() - start
    thread.join()
    assert waited > 0.15


def test_the_lock_excludes_another_process_and_is_released_after_an_error(tmp_path):
    path = tmp_path / "cell.lock"
    with pytest.raises(RuntimeError):
        with locks.hold(path):
            taken, seen = store_check.in_other_process(path)
            assert not taken and seen == f"pid {os.getpid()} on {socket.gethostname()}"
            assert "pid" in locks.holder(path)
            raise RuntimeError("the block failed")
    assert not locks.is_held(path)
    assert store_check.in_other_process(path) == (True, "free")


def test_the_store_claims_a_cell_once_and_the_cache_lock_leaves_no_file(tmp_path):
    store = Store(tmp_path / "store")
    with store.claim("k", wait=False) as first:
        assert first and store.busy("k")
        with store.claim("k", wait=False) as second:
            assert not second
    assert not store.busy("k")
    with cache.folder_lock(tmp_path / "model"):
        assert (tmp_path / ".model.lock").exists()
    assert not (tmp_path / ".model.lock").exists()


# --- --check-store -------------------------------------------------------------------------


@pytest.fixture
def gd_grid(tmp_path):
    grid = tmp_path / "gd.toml"
    grid.write_text('method = "icl-gd"\n')
    return grid


def test_check_store_passes_on_a_local_folder_and_leaves_it_as_found(gd_grid, tmp_path, capsys):
    store = tmp_path / "runs" / "store"
    assert cli.main(["sweep", str(gd_grid), "--store", str(store), "--check-store"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split()[:3] for line in lines] == [["OK", "advisory", "locks"],
                                                    ["OK", "atomic", "rename"]]  # fmt: skip
    assert not (tmp_path / "runs").exists()
    store.mkdir(parents=True)
    assert cli.main(["sweep", str(gd_grid), "--store", str(store), "--check-store"]) == 0
    assert list(store.iterdir()) == []


def test_check_store_fails_when_locks_do_not_lock(gd_grid, tmp_path, capsys, monkeypatch):
    ignored = locks.Backend("ignored", lambda fd, wait: True, lambda fd: None, True)
    monkeypatch.setattr(locks, "backend", lambda: ignored)
    assert cli.main(["sweep", str(gd_grid), "--store", str(tmp_path / "s"), "--check-store"]) == 1
    out = capsys.readouterr().out
    assert out.startswith("FAILED advisory locks") and "took the lock while" in out
    assert "OK     atomic rename" in out


def test_check_store_fails_when_rename_is_not_atomic(gd_grid, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(store_check.os, "replace", lambda a, b: shutil.copyfile(a, b))
    assert store_check.check_store(tmp_path / "s") is False
    out = capsys.readouterr().out
    assert "OK     advisory locks" in out and "FAILED atomic rename" in out
    assert not (tmp_path / "s").exists()


def test_check_store_reports_a_platform_without_locks(no_fcntl, tmp_path, capsys):
    assert store_check.check_store(tmp_path) is False
    assert sys.platform in capsys.readouterr().out
