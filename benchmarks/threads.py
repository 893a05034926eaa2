"""Intra-op threads: the default policy (the free cores) against fixed counts, quiet and loaded.

Two commands, each run as its own process writing into a temporary folder: ``icl-mech check
--quick`` and ``icl-mech reproduce anchors --quick`` (the quickest reproduction with a language
model: 20 s in notebook 01's output; ``icv --quick`` generates text for two pair sets and takes
minutes; ``--reproduction`` picks another). Each at ``--set threads=N`` for N = 1, 2 and all
cores (on a 2-core machine 2 is all cores and is measured once) and at the default policy (no
threads setting, and ``ICL_MECH_THREADS`` removed from the command's environment).

Conditions: ``quiet`` is the machine as it is (run it on a quiet machine); ``loaded`` starts one
busy-loop process per core, waits ``--warm-up`` seconds (20) and stops them afterwards, always
(``try/finally``; a worker also stops when this script dies). The policy samples the cores
busy now from the kernel's counters (where a system has none it falls back to the 1-minute load
average, which lags; ``--warm-up`` and ``--settle`` matter there). In the quiet condition each
round first waits (at most ``--settle`` seconds) for the load average to fall back, so the
printed load at start stays comparable.

Each measurement is the command's wall-clock seconds (Python start-up and model loading
included: what a user waits for), with the run's own seconds from its report beside it; the
median over ``--repeats``. The table gives, per condition and command, each setting's seconds
and its ratio to the best setting there; the goal: the default within 1.2x of the best.

``--quick``: the smallest sizes, a smoke run; its record is written only with ``--record``.
Otherwise the record goes to ``benchmarks/results/threads.json`` (or ``--record FOLDER``).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

import _results

from icl_mech.threads import ENV, cores, free_cores

GOAL = 1.2  # the default's seconds over the best setting's, at most
COMMANDS = ("check", "reproduce")
CONDITIONS = ("quiet", "loaded")
# --quick: the smallest sizes each command accepts (one task, one or two queries)
SMALLEST = {
    "check": dict(
        icl_tasks="sentiment",
        icl_n_test="2",
        anchor_n_test="2",
        tv_n_dev="1",
        tv_n_test="1",
        icv_n_test="1",
        icv_n_dev="1",
        icv_n_demonstrations="2",
        max_new_tokens="2",
    ),  # fmt: skip
    "anchors": dict(tasks="sentiment", n_test="2", k="1"),
    "icv": dict(
        n_test="1",
        n_dev="1",
        n_demonstrations="3",
        strengths="0.1",
        max_new_tokens="3",
        paraphrase_strengths="0.1",
    ),  # fmt: skip
}


def icl_mech() -> list[str]:
    script = Path(sys.executable).parent / "icl-mech"
    return [str(script)] if script.exists() else [sys.executable, "-m", "icl_mech.cli"]


def command_line(command: str, reproduction: str, quick: bool, out: str) -> list[str]:
    words = ["check"] if command == "check" else ["reproduce", reproduction]
    small = SMALLEST.get(words[-1], {}) if quick else {}
    sets = [f"--set={key}={value}" for key, value in small.items()]
    return [*icl_mech(), *words, "--quick", "--out", out, *sets]


def environment() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != ENV}  # the default is the policy's
    return env | {"TQDM_DISABLE": "1", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
                  "TOKENIZERS_PARALLELISM": "false"}  # fmt: skip


def load() -> float:
    return os.getloadavg()[0] if hasattr(os, "getloadavg") else 0.0


def settle(level: float, timeout: float) -> None:
    """Wait until the rounded load average is at most ``level``'s, or ``timeout`` seconds."""
    start = time.perf_counter()
    while round(load()) > round(level) and time.perf_counter() - start < timeout:
        time.sleep(2)
    if time.perf_counter() - start > 1:
        print(f"  (waited {time.perf_counter() - start:.0f} s for the load average: {load():.2f})")


def measure(words: list[str], threads: int | None) -> dict:
    """One run: wall-clock seconds, the report's own seconds, the load and policy at start."""
    with tempfile.TemporaryDirectory(prefix="icl_mech_threads_") as out:
        words = [out if w == "{out}" else w for w in words]
        words += [] if threads is None else [f"--set=threads={threads}"]
        at_start, policy = load(), free_cores()  # what the command reads a moment later
        start = time.perf_counter()
        done = subprocess.run(words, env=environment(), capture_output=True, text=True)
        wall = time.perf_counter() - start
        if done.returncode != 0:
            print(done.stdout[-2000:], done.stderr[-4000:], sep="\n", file=sys.stderr)
            raise SystemExit(f"failed ({done.returncode}): {' '.join(words[1:])}")
        reports = sorted(Path(out).glob("*report.json"))
        run = json.loads(reports[0].read_text())["seconds"] if reports else None
    return {"wall_s": wall, "run_s": run, "load_at_start": at_start,
            "threads": policy if threads is None else threads}  # fmt: skip


def _spin(parent: int) -> None:
    """Busy loop until stopped, or until the benchmark that started it is gone."""
    while os.getppid() == parent:
        for _ in range(200_000):
            pass


@contextmanager
def background_load(workers: int, warm_up: float):
    """``workers`` busy-loop processes for the block, after ``warm_up`` seconds; always stopped."""
    methods = multiprocessing.get_all_start_methods()
    context = multiprocessing.get_context("fork" if "fork" in methods else None)
    started = []
    try:
        for _ in range(workers):
            process = context.Process(target=_spin, args=(os.getpid(),), daemon=True)
            process.start()
            started.append(process)
        print(f"load: {workers} busy-loop processes; {warm_up:.0f} s for the load average "
              f"to rise (from {load():.2f})", flush=True)  # fmt: skip
        time.sleep(warm_up)
        print(f"load average now {load():.2f}", flush=True)
        yield
    finally:
        for process in started:
            process.terminate()
        for process in started:
            process.join(timeout=10)
        print(f"load stopped ({sum(p.is_alive() for p in started)} still alive)", flush=True)


def condition_runs(condition, commands, counts, args, baseline) -> dict:
    """{command: {setting: [measurement per repeat]}} for one condition."""
    found = {c: {s: [] for s in ("default", *map(str, counts))} for c in commands}
    for _ in range(args.repeats):
        for command in commands:
            words = command_line(command, args.reproduction, args.quick, "{out}")
            for setting in found[command]:
                if setting == "default" and condition == "quiet":
                    settle(baseline, args.settle)
                threads = None if setting == "default" else int(setting)
                result = measure(words, threads)
                found[command][setting].append(result)
                run = "" if result["run_s"] is None else f", run {result['run_s']:.1f} s"
                print(f"  {condition:6s} {command:9s} {setting:>7s}: {result['wall_s']:6.1f} s"
                      f"{run}, {result['threads']} threads, load at start "
                      f"{result['load_at_start']:.2f}", flush=True)  # fmt: skip
    return found


def summary(runs: dict) -> tuple[list[dict], dict]:
    """Table rows (medians, ratio to the best) and, per condition and command, the verdict."""
    rows, verdicts = [], {}
    for condition, by_command in runs.items():
        for command, by_setting in by_command.items():
            medians = {
                s: statistics.median(m["wall_s"] for m in ms) for s, ms in by_setting.items()
            }
            best = min(medians.values())
            for setting, ms in by_setting.items():
                run = [m["run_s"] for m in ms if m["run_s"] is not None]
                rows.append({"condition": condition, "command": command, "setting": setting,
                             "threads": [m["threads"] for m in ms],
                             "median_wall_s": medians[setting],
                             "median_run_s": statistics.median(run) if run else None,
                             "wall_s": [m["wall_s"] for m in ms],
                             "load_at_start": [m["load_at_start"] for m in ms],
                             "ratio_to_best": medians[setting] / best})  # fmt: skip
            ratio = medians["default"] / best
            fastest = min(medians, key=medians.get)
            verdicts.setdefault(condition, {})[command] = {
                "default / best": ratio,
                "best": fastest,
                "goal_met": ratio <= GOAL,
            }
    return rows, verdicts


def show(rows: list[dict], verdicts: dict, all_cores: int) -> None:
    print(f"\n{'condition':9s} {'command':9s} {'setting':>12s} {'threads':>8s} {'seconds':>8s} "
          f"{'run s':>7s} {'x best':>7s}")  # fmt: skip
    for row in rows:
        setting = row["setting"] + (" (all)" if row["setting"] == str(all_cores) else "")
        run = "-" if row["median_run_s"] is None else f"{row['median_run_s']:.1f}"
        used = ",".join(map(str, sorted(set(row["threads"]))))
        print(f"{row['condition']:9s} {row['command']:9s} {setting:>12s} {used:>8s} "
              f"{row['median_wall_s']:8.1f} {run:>7s} {row['ratio_to_best']:6.2f}x")  # fmt: skip
    for condition, by_command in verdicts.items():
        for command, v in by_command.items():
            verdict = "OK" if v["goal_met"] else "ABOVE GOAL"
            print(f"{condition} / {command}: the default is {v['default / best']:.2f}x the best "
                  f"(threads={v['best']}); goal <= {GOAL}x  {verdict}")  # fmt: skip


def write_record(folder: Path | None, payload: dict) -> None:
    """Through ``_results`` into ``folder`` (default benchmarks/results); the command kept in
    the record leaves out ``--record`` (a local path)."""
    argv, default_folder = sys.argv, _results.FOLDER
    kept, skip = [], False
    for word in argv:
        if not skip and not word.startswith("--record"):
            kept.append(word)
        skip = word == "--record"
    sys.argv, _results.FOLDER = kept, folder or default_folder
    try:
        print(f"wrote {_results.write('threads', payload)}")
    finally:
        sys.argv, _results.FOLDER = argv, default_folder


def arguments(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=1, help="median of this many runs")
    parser.add_argument("--commands", default=",".join(COMMANDS), help="check, reproduce")
    parser.add_argument("--conditions", default=",".join(CONDITIONS), help="quiet, loaded")
    parser.add_argument("--reproduction", default="anchors", help="the reproduction measured")
    parser.add_argument("--quick", action="store_true", help="smallest sizes (a smoke run)")
    parser.add_argument("--warm-up", type=float, default=20.0, help="seconds of load first")
    parser.add_argument("--settle", type=float, default=None,
                        help="at most this many seconds waiting for the load average to fall "
                        "back before the default (quiet); default 180, --quick 10")  # fmt: skip
    parser.add_argument("--record", type=Path, default=None,
                        help="folder for threads.json (default benchmarks/results; none with "
                        "--quick unless given)")  # fmt: skip
    args = parser.parse_args(argv)
    for name, allowed in (("commands", COMMANDS), ("conditions", CONDITIONS)):
        chosen = [w.strip() for w in getattr(args, name).split(",") if w.strip()]
        if not chosen or set(chosen) - set(allowed):
            parser.error(f"--{name}: choose from {', '.join(allowed)}, got {getattr(args, name)}")
        setattr(args, name, chosen)
    if args.repeats < 1:
        parser.error("--repeats must be at least 1")
    args.settle = args.settle if args.settle is not None else (10.0 if args.quick else 180.0)
    return args


def main(argv=None) -> None:
    args = arguments(argv)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # so the load is stopped too
    baseline, all_cores = load(), cores()
    counts = sorted({1, 2, all_cores})
    print(f"{all_cores} cores, load average {baseline:.2f}, policy now {free_cores()} threads; "
          f"settings: default, {', '.join(map(str, counts))} threads"
          + (f" (on this {all_cores}-core machine 2 threads are all cores: measured once)"
             if all_cores == 2 else ""), flush=True)  # fmt: skip
    if "quiet" in args.conditions and round(baseline) > 0:
        print(f"note: the 'quiet' machine is busy (load average {baseline:.2f})", flush=True)
    runs = {}
    for condition in args.conditions:
        if condition == "quiet":
            runs[condition] = condition_runs(condition, args.commands, counts, args, baseline)
        else:
            with background_load(all_cores, args.warm_up):
                runs[condition] = condition_runs(condition, args.commands, counts, args, baseline)
    rows, verdicts = summary(runs)
    show(rows, verdicts, all_cores)
    settings = {"repeats": args.repeats, "commands": args.commands, "quick": args.quick,
                "conditions": args.conditions, "reproduction": args.reproduction,
                "warm_up_s": args.warm_up, "settle_s": args.settle, "load_workers": all_cores,
                "cores": all_cores, "thread_counts": counts, "goal": GOAL,
                "load_at_start": baseline}  # fmt: skip
    if args.quick and args.record is None:
        print("smoke run (--quick): no record written; --record FOLDER writes one")
        return
    write_record(args.record, {"settings": settings, "results": rows, "verdicts": verdicts})


if __name__ == "__main__":
    main()
