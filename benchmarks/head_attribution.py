"""Every head's indirect effect on the embedded model: exact patching vs attribution patching.

``indirect_effects(..., method="exact")`` (each head's mean output patched in, one cached pass
per layer over ``n_heads`` copies of the batch) against ``method="attribution"`` (its
first-order estimate: a prefix cache, one forward and one backward of the last token per
batch), for all 30 x 9 heads, on the function-vector reproduction's sizes: per task
``effect_prompts(task, 24, 5, seed=0)`` and batches of 8. Side by side:

1. forward-equivalents: the ``forwards`` field of each result (one pass of the model over a
   batch, a backward counting as two), checked against the count derived from the modules'
   docstrings, and a compute-weighted count from the same derivation: token-block evaluations
   (one token through one transformer block; a backward counts as two) of each pass over those
   of one full forward of the batch it belongs to (rows x padded length x layers); the
   unembedding and attention's cost per key are not counted;
2. wall-clock and process CPU time: per task, the two methods interleaved (exact, attribution)
   for ``--repeats`` rounds after one warm-up of each on the first task; the printed figure is
   the ratio of the medians (seconds are in the record only: the machine is shared and noisy);
3. peak memory, each measured once in a fresh subprocess (model loaded and prompts built
   first): the peak resident set above the level before the call (Linux
   ``/proc/self/clear_refs`` + ``VmHWM``; else the growth of ``ru_maxrss``) of (a) one plain
   forward of one batch of 8 shuffled prompts under ``torch.no_grad()`` (full logits), (b)
   ``method="attribution"`` and (c) ``method="exact"`` on one batch (8 clean, 8 shuffled);
4. agreement, for context: Spearman's rank correlation over all heads of the mean effects, and
   the overlap of the two top-10 heads.

The project's goals for attribution against exact: >= 20x fewer forward-equivalents, >= 10x
less wall time (all tasks: summed medians), peak memory <= 3x a forward; each printed as
reached or not. One torch thread. ``--quick``: one task, one batch of prompts, one round, a
smoke run that writes no record.

    python benchmarks/head_attribution.py [--tasks country_capital,antonym] [--repeats 3]
"""

from __future__ import annotations

import argparse
import ctypes
import json
import math
import os
import resource
import statistics
import subprocess
import sys
import time

import _results
import torch

from icl_mech import PromptBatch, load_model, scoring, tasks
from icl_mech.batching import batched
from icl_mech.correlation import spearman
from icl_mech.function_vectors import effect_prompts, indirect_effects
from icl_mech.threads import torch_threads

METHODS = ("exact", "attribution")
TASKS = ("country_capital", "antonym")  # english_french too: about 2 more minutes
N_PROMPTS, N_DEMONSTRATIONS, BATCH_SIZE, SEED, TOP = 24, 5, 8, 0, 10
GOALS = {"forwards": 20.0, "wall": 10.0, "memory": 3.0}
WEIGHTED = (
    "token-block evaluations (one token through one transformer block; a backward counts as "
    "two) of each pass over those of one full forward of the batch it belongs to (rows x "
    "padded length x layers); unembedding and attention's cost per key not counted"
)


def derived_counts(model, clean, shuffled, batch_size: int, method: str) -> tuple[int, float]:
    """(passes, compute-weighted forward-equivalents) of ``indirect_effects``, from the module
    docstrings of ``function_vectors.indirect`` and ``.attribution``.

    Both methods: one forward per batch of clean prompts for the mean head outputs (stopped
    after the deepest layer: all of them). Per batch of shuffled prompts, once for the whole
    batch and once more for its rows whose answers start with whitespace-only tokens (those
    tokens appended): the prefix (all but the last token, every block, once); then, on the
    last token and the appended ones only, exact: one unpatched pass and per layer l one pass
    of ``n_heads`` copies through blocks l..L-1; attribution: one forward and its backward."""
    n_layers, n_heads = model.cfg.n_layers, model.cfg.n_heads
    gold = scoring.golds(model, shuffled)
    passes = math.ceil(len(clean) / batch_size)
    weighted = float(passes)
    for index, batch in batched(model, shuffled, batch_size):
        rows = [gold[i] for i in index]
        bare = scoring.bare_rows(rows)
        calls = [] if len(bare) == len(rows) else [(len(rows), 1)]
        calls += [(len(bare), scoring.steps([rows[i] for i in bare]))] if bare else []
        length = batch.seq_len
        full = len(batch) * length * n_layers
        for size, steps in calls:
            prefix = size * (length - 1) * n_layers
            if method == "exact":
                above = sum(n_layers - layer for layer in range(n_layers))
                last = size * steps * (n_layers + n_heads * above)
                passes += n_layers + 1 + (length > 1)
            else:
                last = 3 * size * steps * n_layers  # forward, backward (two)
                passes += 3 + (length > 1)
            weighted += (prefix + last) / full
    return passes, weighted


def seconds(fn):
    """(wall-clock, process CPU) seconds of one call, and its result."""
    wall, cpu = time.perf_counter(), time.process_time()
    out = fn()
    return time.perf_counter() - wall, time.process_time() - cpu, out


def peak_memory_here(fn) -> tuple[int, str]:
    """Peak resident bytes above the level before ``fn``, and how it was measured."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
        with open("/proc/self/clear_refs", "w") as refs:
            refs.write("5")  # VmHWM := VmRSS
        before = _results.proc_status("VmRSS")
    except OSError:
        before = None
    if before is not None:
        fn()
        return _results.proc_status("VmHWM") - before, "VmHWM"
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # kB on Linux
    fn()
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - before, "ru_maxrss"


def memory_child(run: str, task: str, n_prompts: int) -> None:
    torch.set_num_threads(1)
    model = load_model()
    clean, shuffled = effect_prompts(tasks.load(task), n_prompts, N_DEMONSTRATIONS, seed=SEED)
    clean, shuffled = clean[:BATCH_SIZE], shuffled[:BATCH_SIZE]
    batch = PromptBatch.from_prompts(model, shuffled)

    def forward():
        with torch.no_grad():
            model(batch.tokens, attention_mask=batch.attention_mask)

    def effect(method):
        return lambda: indirect_effects(
            model, clean, shuffled, batch_size=BATCH_SIZE, method=method
        )

    runs = {"forward": forward, **{method: effect(method) for method in METHODS}}
    peak, how = peak_memory_here(runs[run])
    print(json.dumps({"peak": peak, "how": how}))


def peak_memory(run: str, task: str, n_prompts: int) -> tuple[int | None, str | None]:
    """One run of ``run`` in a fresh interpreter."""
    command = [sys.executable, __file__, "--memory-of", run, task, str(n_prompts)]
    env = os.environ | {"TQDM_DISABLE": "1"}
    done = subprocess.run(command, capture_output=True, text=True, env=env)
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if done.returncode != 0 or not lines:
        print(f"  (peak memory of {run!r} not measured: {done.stderr.strip()[-300:]})")
        return None, None
    out = json.loads(lines[-1])
    return out["peak"], out["how"]


def verdict(value: float | None, goal: float, at_most: bool = False) -> str:
    if value is None:
        return "not measured"
    reached = value <= goal if at_most else value >= goal
    return "reached" if reached else "NOT reached"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", default=",".join(TASKS), help="comma-separated task names")
    parser.add_argument("--repeats", type=int, default=3, help="timed rounds per task")
    parser.add_argument("--quick", action="store_true", help="one task, 8 prompts, one round")
    parser.add_argument("--memory-of", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.memory_of:
        run, task, n = args.memory_of
        memory_child(run, task, int(n))
        return
    names = args.tasks.split(",")[:1] if args.quick else args.tasks.split(",")
    n_prompts = BATCH_SIZE if args.quick else N_PROMPTS
    repeats = 1 if args.quick else args.repeats

    model = load_model()
    n_layers, n_heads = model.cfg.n_layers, model.cfg.n_heads
    print(
        f"model {model.cfg.model_name}, {n_layers} layers x {n_heads} heads = "
        f"{n_layers * n_heads} heads, torch threads 1"
    )
    print(
        f"per task {n_prompts} clean + {n_prompts} shuffled prompts, {N_DEMONSTRATIONS} "
        f"demonstrations, batch size {BATCH_SIZE}, seed {SEED}; wall time: rounds of "
        f"(exact, attribution) x {repeats} per task after one warm-up of each"
    )
    print(f"compute-weighted forward-equivalents: {WEIGHTED}")
    record: dict = {}
    totals = {m: {"forwards": 0, "weighted": 0.0, "wall": 0.0, "cpu": 0.0} for m in METHODS}
    warm = False
    with torch_threads(1):
        for name in names:
            task = tasks.load(name)
            clean, shuffled = effect_prompts(task, n_prompts, N_DEMONSTRATIONS, seed=SEED)

            def run(method, clean=clean, shuffled=shuffled):
                return indirect_effects(
                    model, clean, shuffled, batch_size=BATCH_SIZE, method=method
                )

            if not warm:
                for method in METHODS:
                    run(method)
                warm = True
            times = {m: {"wall": [], "cpu": []} for m in METHODS}
            results = {}
            for _ in range(repeats):
                for method in METHODS:
                    wall, cpu, results[method] = seconds(lambda m=method: run(m))
                    times[method]["wall"].append(wall)
                    times[method]["cpu"].append(cpu)
            exact, estimate = results["exact"], results["attribution"]
            derived = {m: derived_counts(model, clean, shuffled, BATCH_SIZE, m) for m in METHODS}
            for method in METHODS:
                if derived[method][0] != results[method].forwards:
                    raise SystemExit(
                        f"{name} {method}: forwards {results[method].forwards}, derived "
                        f"{derived[method][0]}: the derivation no longer matches the code"
                    )
            medians = {
                m: {clock: statistics.median(v) for clock, v in times[m].items()} for m in METHODS
            }
            for method in METHODS:
                totals[method]["forwards"] += results[method].forwards
                totals[method]["weighted"] += derived[method][1]
                totals[method]["wall"] += medians[method]["wall"]
                totals[method]["cpu"] += medians[method]["cpu"]
            forwards = exact.forwards / estimate.forwards
            weighted = derived["exact"][1] / derived["attribution"][1]
            wall = medians["exact"]["wall"] / medians["attribution"]["wall"]
            cpu = medians["exact"]["cpu"] / medians["attribution"]["cpu"]
            rho = spearman(exact.mean.flatten().numpy(), estimate.mean.flatten().numpy())
            top_exact, top_estimate = exact.top(TOP), estimate.top(TOP)
            overlap = len(set(top_exact) & set(top_estimate))
            lengths = [batch.seq_len for _, batch in batched(model, shuffled, BATCH_SIZE)]
            bare = len(scoring.bare_rows(scoring.golds(model, shuffled)))
            unpatched = (exact.shuffled_probability - estimate.shuffled_probability).abs().max()
            print(
                f"\n[{name}] shuffled batches of {BATCH_SIZE}, padded lengths {lengths}, "
                f"{bare} rows teacher-forced"
            )
            print(
                f"  forward-equivalents        exact {exact.forwards:6d}   attribution "
                f"{estimate.forwards:6d}   exact / attribution {forwards:5.1f}x"
            )
            print(
                f"  compute-weighted           exact {derived['exact'][1]:6.1f}   attribution "
                f"{derived['attribution'][1]:6.1f}   exact / attribution {weighted:5.1f}x"
            )
            print(
                f"  wall time, ratio of medians exact / attribution {wall:5.1f}x   "
                f"(process CPU time {cpu:.1f}x)"
            )
            print(
                f"  agreement: Spearman {rho:.3f} over {exact.mean.numel()} heads, top-{TOP} "
                f"overlap {overlap}/{TOP}"
            )
            record[name] = {
                "padded_lengths": lengths,
                "teacher_forced_rows": bare,
                "forwards": {"exact": exact.forwards, "attribution": estimate.forwards},
                "compute_weighted_forwards": {m: derived[m][1] for m in METHODS},
                "median_s": medians,
                "times_s": times,
                "ratios": {
                    "forwards exact / attribution": forwards,
                    "compute-weighted exact / attribution": weighted,
                    "time exact / attribution": {"wall": wall, "cpu": cpu},
                },
                "agreement": {
                    "spearman": rho,
                    "top_overlap": overlap,
                    "top_exact": [list(h) for h in top_exact],
                    "top_attribution": [list(h) for h in top_estimate],
                    "max_unpatched_probability_difference": float(unpatched),
                },
            }

    overall = {
        "forwards exact / attribution": totals["exact"]["forwards"]
        / totals["attribution"]["forwards"],
        "compute-weighted exact / attribution": totals["exact"]["weighted"]
        / totals["attribution"]["weighted"],
        "time exact / attribution": {
            "wall": totals["exact"]["wall"] / totals["attribution"]["wall"],
            "cpu": totals["exact"]["cpu"] / totals["attribution"]["cpu"],
        },
    }
    time_ratio = overall["time exact / attribution"]
    forwards_ratio = overall["forwards exact / attribution"]
    print(
        f"\nall {len(names)} tasks: forward-equivalents {forwards_ratio:.1f}x, compute-weighted "
        f"{overall['compute-weighted exact / attribution']:.1f}x, wall time "
        f"{time_ratio['wall']:.1f}x (process CPU {time_ratio['cpu']:.1f}x), exact / attribution "
        "(time: summed per-task medians)"
    )

    memory_task = names[0]
    print(
        f"\npeak memory above the loaded model, fresh subprocess each, {memory_task}, one batch "
        f"of {BATCH_SIZE}:"
    )
    memory, how = {}, set()
    for run_name in ("forward", *METHODS):
        memory[run_name], method = peak_memory(run_name, memory_task, n_prompts)
        how.add(method)
    base = memory["forward"]
    memory_ratios = {
        f"{m} / forward": None if base in (None, 0) or memory[m] is None else memory[m] / base
        for m in METHODS
    }
    if None not in memory.values():
        print(f"  plain forward (no_grad, full logits) {memory['forward'] / 1e6:6.0f} MB   1.00x")
        for method in METHODS:
            ratio = memory_ratios[f"{method} / forward"]
            shown = "n/a" if ratio is None else f"{ratio:.2f}x"
            print(f"  {'method=' + repr(method):<36} {memory[method] / 1e6:6.0f} MB   {shown}")

    goals = {
        "forwards": (forwards_ratio, GOALS["forwards"], False),
        "wall": (time_ratio["wall"], GOALS["wall"], False),
        "memory": (memory_ratios["attribution / forward"], GOALS["memory"], True),
    }
    labels = {
        "forwards": f">= {GOALS['forwards']:.0f}x fewer forward-equivalents than exact",
        "wall": f">= {GOALS['wall']:.0f}x less wall time than exact",
        "memory": f"peak memory <= {GOALS['memory']:.0f}x a forward",
    }
    print("\ngoals for attribution:")
    for key, (value, goal, at_most) in goals.items():
        shown = "n/a" if value is None else f"{value:.2f}x"
        print(f"  {labels[key]:<46} {shown:>7}   {verdict(value, goal, at_most)}")

    if args.quick:
        print("\n(--quick: a smoke run, no record written)")
        return
    payload = {
        "settings": {
            "tasks": names,
            "prompts": n_prompts,
            "demonstrations": N_DEMONSTRATIONS,
            "batch_size": BATCH_SIZE,
            "seed": SEED,
            "repeats": repeats,
            "layers": n_layers,
            "heads": n_heads,
            "torch_threads": 1,
            "top": TOP,
            "compute_weighted_definition": WEIGHTED,
            "memory_task": memory_task,
            "memory_measured_by": sorted(h for h in how if h),
            "goals": GOALS,
        },
        "tasks": record,
        "overall": overall,
        "peak_memory_mb": {k: None if v is None else v / 1e6 for k, v in memory.items()},
        "memory_ratios": memory_ratios,
        "goals_reached": {
            key: None if value is None else (value <= goal if at_most else value >= goal)
            for key, (value, goal, at_most) in goals.items()
        },
    }
    _results.write("head_attribution", payload)


if __name__ == "__main__":
    main()
