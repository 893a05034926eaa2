"""Reports are whole or absent (icl_mech.atomic_output): a reproduction killed at any point
leaves no report or a complete one, a second run into the same folder is refused, a re-run
replaces a partial report, and ``check`` and the demo write all or nothing too."""

import json
import multiprocessing
import os
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from icl_mech import IclMechError, atomic_output, cli, demo
from icl_mech.atomic_output import verify_report
from icl_mech.check import CheckSettings, ReportCard
from icl_mech.output_lock import lock_path, output_lock
from icl_mech.runner import Report, settings_for

GD_JSON = "icl_gd_report.json"
# icl-gd needs no language model; these sizes make a run a second or two (tests/test_cli.py)
GD_SETS = dict(linear_steps=20, linear_batch=64, kernel_steps=20, kernel_batch=64,
               eval_every=10, monitor_tasks=32, test_tasks=64, threads=1)  # fmt: skip
# the CLI in a child process (``argv``, output to ``log``), each rename of the swap slowed so
# that kills land inside the swap too
SLOW_SWAP = """
import os, sys, threading, time
import tqdm
sys.stdout = sys.stderr = open(log, "a", buffering=1)
tqdm.tqdm.set_lock(threading.RLock())  # not tqdm's semaphore, which a killed run would leak
from icl_mech import cli
rename = os.replace
def slow(source, target):
    time.sleep(0.1)
    rename(source, target)
os.replace = slow
sys.exit(cli.main(argv))
"""
# the CLI in a child process whose icl-gd waits (holding the lock) until the file ``gate`` exists
GATED = """
import dataclasses, sys, time
from pathlib import Path
sys.stdout = sys.stderr = open(log, "a", buffering=1)
from icl_mech import cli, runner
reproduction = runner.REPRODUCTIONS["icl-gd"]
def gated(*args, **kwargs):
    while not Path(gate).exists():
        time.sleep(0.05)
    return reproduction.run(*args, **kwargs)
runner.REPRODUCTIONS["icl-gd"] = dataclasses.replace(reproduction, run=gated)
sys.exit(cli.main(argv))
"""


@pytest.fixture(scope="module")
def forks():
    """Child processes forked from a server that imported icl_mech once (a fresh interpreter
    per run would spend seconds importing torch)."""
    if "forkserver" not in multiprocessing.get_all_start_methods():
        pytest.skip("no forkserver start method here (Windows)")
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(["icl_mech.cli"])
    return context


def start(forks, code: str, log: Path, **names) -> multiprocessing.Process:
    process = forks.Process(target=exec, args=(code, {"log": str(log), **names}))
    process.start()
    return process


def gd_command(out: Path) -> list[str]:
    sets = [f"--set={key}={value}" for key, value in GD_SETS.items()]
    return ["reproduce", "icl-gd", "--quick", "--out", str(out), *sets]


def wait_for_lock(process: multiprocessing.Process, out: Path, timeout: float = 90) -> float:
    """When ``process`` holds ``out``'s lock (its pid is in the lock file)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if lock_path(out).read_text().split()[:1] == [str(process.pid)]:
                return time.monotonic()
        except FileNotFoundError:
            pass
        assert process.is_alive(), f"the run ended ({process.exitcode}) before locking"
        time.sleep(0.005)
    raise AssertionError(f"no lock on {out} after {timeout} s")


def report_state(out: Path, json_name: str = GD_JSON) -> str:
    """The report's state in ``out``: "none" (no JSON of that name) or "complete" (verified);
    anything partial fails."""
    if not (out / json_name).exists():
        return "none"
    verify_report(out, json_name)
    return "complete"


def staged_leftovers(out: Path) -> list[Path]:
    return sorted(out.parent.glob(f".{out.name}.partial-*"))


def test_a_killed_reproduction_leaves_no_report_or_a_complete_one(tmp_path, forks):
    out, log = tmp_path / "icl_gd", tmp_path / "runs.log"
    reference = start(forks, SLOW_SWAP, log, argv=gd_command(out))
    locked = wait_for_lock(reference, out)
    reference.join(timeout=120)
    duration = time.monotonic() - locked  # the run after taking its lock: train, write, swap
    assert reference.exitcode == 0, log.read_text()[-2000:]
    assert report_state(out) == "complete"
    delays = [duration * f for f in (0.05, 0.3, 0.55, 0.75, 0.88, 0.95, 0.99)]
    states = []
    for delay in delays:
        process = start(forks, SLOW_SWAP, log, argv=gd_command(out))
        time.sleep(max(0.0, wait_for_lock(process, out) + delay - time.monotonic()))
        process.kill()  # SIGKILL
        process.join(timeout=30)
        states.append(report_state(out))  # raises on a partial report
    print(f"killed {[round(d, 2) for d in delays]} s after the lock: {states}")
    rerun = start(forks, SLOW_SWAP, log, argv=gd_command(out))
    rerun.join(timeout=120)
    assert rerun.exitcode == 0, log.read_text()[-2000:]
    verify_report(out)
    assert not staged_leftovers(out) and not lock_path(out).exists()


def test_a_second_run_into_the_same_folder_is_refused(tmp_path, forks):
    out, gate, log = tmp_path / "shared", tmp_path / "go", tmp_path / "first.log"
    first = start(forks, GATED, log, argv=gd_command(out), gate=str(gate))
    wait_for_lock(first, out)
    second = subprocess.run([sys.executable, "-m", "icl_mech.cli", *gd_command(out)],
                            cwd=tmp_path, capture_output=True, text=True)  # fmt: skip
    assert second.returncode == 2 and len(second.stderr.splitlines()) == 1, second.stderr
    assert second.stderr.startswith("icl-mech: error: output folder")
    assert str(out) in second.stderr and f"pid {first.pid}" in second.stderr
    assert report_state(out) == "none"
    gate.touch()
    first.join(timeout=120)
    assert first.exitcode == 0, log.read_text()[-2000:]
    verify_report(out)
    assert not lock_path(out).exists()


def test_the_lock_is_taken_before_the_model_loads(tmp_path, monkeypatch, capsys):
    out = tmp_path / "out"

    def load(name):
        assert lock_path(out).exists(), "the model was loaded before the lock"
        raise IclMechError("no model here")

    monkeypatch.setattr(cli, "_model", load)
    assert cli.main(["reproduce", "anchors", "--quick", "--out", str(out)]) == 2
    assert "no model here" in capsys.readouterr().err and not lock_path(out).exists()


def test_the_lock_is_reentrant_in_one_run_and_released_on_an_error(tmp_path):
    out = tmp_path / "out"
    with pytest.raises(RuntimeError), output_lock(out), output_lock(out):
        assert lock_path(out).read_text().split()[0] == str(os.getpid())
        raise RuntimeError("interrupted")
    assert not lock_path(out).exists()
    with output_lock(out):  # taken again
        pass


def small_report() -> Report:
    table = pd.DataFrame({"variant": ["linear"], "eta": [0.5]})
    return Report("icl-gd", settings_for("icl-gd", quick=True), tables={"results": table},
                  headline={"loss_ratio": 1.0})  # fmt: skip


def test_a_rerun_replaces_a_partial_report_and_keeps_other_files(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    leftover = tmp_path / ".out.partial-99999-abc123"  # a killed run's staging folder
    leftover.mkdir()
    (leftover / "icl_gd_results.csv").write_text("half")
    (out / "notes.txt").write_text("mine")  # not the run's: kept
    (tmp_path / "outside.txt").write_text("mine too")
    (out / "icl_gd_results.csv").write_text("stale")
    (out / "icl_gd_old.csv").write_text("listed by the old report only")
    old = {"reproduction": "icl-gd", "files": {"icl_gd_old.csv": {}, "../outside.txt": {}}}
    (out / GD_JSON).write_text(json.dumps(old))  # no "complete": a partial report
    with pytest.raises(IclMechError, match="complete"):
        verify_report(out)
    paths = small_report().write(out)
    assert paths[-1] == out / GD_JSON and all(p.parent == out for p in paths)
    verify_report(out)
    record = json.loads((out / GD_JSON).read_text())
    assert record["complete"] is True
    assert set(record["files"]) == {"icl_gd_results.csv", "icl_gd_results.md"}
    assert len(record["files"]["icl_gd_results.csv"]["sha256"]) == 64
    assert not leftover.exists() and not (out / "icl_gd_old.csv").exists()
    assert (out / "notes.txt").exists() and (tmp_path / "outside.txt").exists()
    (out / "icl_gd_results.md").write_text("edited")  # a checksum that no longer matches
    with pytest.raises(IclMechError, match="icl_gd_results.md differs"):
        verify_report(out)
    small_report().write(out)
    verify_report(out)


def test_every_step_of_the_swap_leaves_the_old_report_none_or_the_new(tmp_path, monkeypatch):
    """A kill between any two renames of the swap: checked before each one."""
    out = tmp_path / "out"
    small_report().write(out)
    old = (out / GD_JSON).read_text()
    newer = small_report()
    newer.tables["more"] = pd.DataFrame({"x": [1]})
    seen, rename = [], os.replace

    def checked(source, target):
        state = report_state(out)
        if state == "complete":  # only the old report may be whole before the last rename
            assert (out / GD_JSON).read_text() == old
        seen.append(state)
        rename(source, target)

    monkeypatch.setattr(atomic_output.os, "replace", checked)
    newer.write(out)
    monkeypatch.undo()
    assert seen and set(seen) == {"none"}  # the old JSON left before the first rename
    verify_report(out)
    assert "icl_gd_more.csv" in json.loads((out / GD_JSON).read_text())["files"]


def fake_card() -> ReportCard:
    return ReportCard("tiny", CheckSettings.quick(), headlines={"icl": {}}, verdicts=[])


def test_check_writes_both_files_or_neither(tmp_path, monkeypatch, capsys):
    out = tmp_path / "check"
    card = fake_card()
    monkeypatch.setattr(ReportCard, "html", lambda self: "<html>first</html>")
    assert card.write(out) == [out / "report.json", out / "report.html"]
    verify_report(out)

    def lock_held(name):
        assert list(tmp_path.glob(".*.lock")), "the model was loaded before the lock"
        return "model"

    def broken(self):
        raise RuntimeError("killed while drawing the card")

    monkeypatch.setattr(cli, "_model", lock_held)
    monkeypatch.setattr(cli, "run_check", lambda model, settings: card)
    monkeypatch.setattr(ReportCard, "html", broken)
    with pytest.raises(RuntimeError, match="drawing"):
        cli.main(["check", "--quick", "--out", str(out)])
    verify_report(out)  # the first card, whole
    assert (out / "report.html").read_text() == "<html>first</html>"
    fresh = tmp_path / "fresh"
    with pytest.raises(RuntimeError, match="drawing"):
        cli.main(["check", "--quick", "--out", str(fresh)])
    assert not (fresh / "report.html").exists() and not (fresh / "report.json").exists()
    assert not staged_leftovers(fresh) and not lock_path(fresh).exists()


def test_the_demo_writes_all_or_nothing(tmp_path, monkeypatch, tiny_llama, capsys):
    monkeypatch.setattr(demo, "DEMO_TASKS", ("sentiment", "topic"))
    monkeypatch.setattr(demo, "N_TEST", 8)
    monkeypatch.setattr(cli, "_model", lambda name: tiny_llama)
    out = tmp_path / "demo"
    assert cli.main(["demo", "--only-accuracy", "--out", str(out)]) == 0
    verify_report(out)
    first = (out / "report.json").read_text()

    def broken(*args, **kwargs):
        raise RuntimeError("killed before the index")

    monkeypatch.setattr(demo, "write_index", broken)  # after the figure and table were staged
    with pytest.raises(RuntimeError, match="index"):
        cli.main(["demo", "--only-accuracy", "--out", str(out)])
    verify_report(out)
    assert (out / "report.json").read_text() == first
    fresh = tmp_path / "fresh"
    with pytest.raises(RuntimeError, match="index"):
        cli.main(["demo", "--only-accuracy", "--out", str(fresh)])
    assert not list(fresh.iterdir()) and not staged_leftovers(fresh)
