"""Cost of all-layer saliency (Wang et al.) on the embedded model, measured side by side.

1. saliency (one forward + one backward, every layer) / plain forward of the same batch
   (goal <= 2.0x); the plain forward is ``model(tokens)`` under no_grad with full logits; and
   ``memory="lean"`` (blocks recomputed one at a time in the backward pass) beside it, after
   checking that it gives the same scores;
2. throughput of one batch of 16 prompts vs 16 single-prompt runs (goal >= 3x);
3. peak memory of saliency (``memory="full"`` and ``"lean"``) vs the plain forward of the same
   batch (goal for the lean path <= 3x): each measured once in a fresh subprocess, as the peak
   resident set above the level before the run (Linux ``/proc/self/clear_refs`` + VmHWM).

Timings interleave the runs and report medians of wall-clock time and of process CPU time (all
threads); on a shared machine the CPU-time ratios are the steadier ones.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import statistics
import subprocess
import sys
import time

import _results
import torch

from icl_mech import load_model
from icl_mech.anchors import saliency, target_logits
from icl_mech.anchors.experiment import task_prompts
from icl_mech.prompt_batch import PromptBatch
from icl_mech.tasks import load


def seconds(fn) -> tuple[float, float]:
    """(wall-clock, process CPU) seconds of one call."""
    wall, cpu = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - wall, time.process_time() - cpu


def interleaved(runs: dict, repeats: int, warm_up: bool = True) -> dict[str, tuple]:
    for fn in runs.values() if warm_up else ():
        fn()
    times = {name: [] for name in runs}
    for _ in range(repeats):
        for name, fn in runs.items():
            times[name].append(seconds(fn))
    return {
        name: tuple(statistics.median(column) for column in zip(*values))
        for name, values in times.items()
    }


def line(label: str, value: tuple, unit: str, goal: str = "") -> str:
    return f"{label:<34} wall {value[0]:8.2f} {unit}   cpu {value[1]:8.2f} {unit}   {goal}"


def ratio(a: tuple, b: tuple) -> tuple:
    return a[0] / b[0], a[1] / b[1]


def peak_memory_here(fn) -> int | None:
    """Peak resident bytes above the level before the run (None if not measurable)."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
        with open("/proc/self/clear_refs", "w") as refs:
            refs.write("5")  # resets VmHWM to the current resident size
    except OSError:
        return None
    before = _results.proc_status("VmRSS")
    fn()
    after = _results.proc_status("VmHWM")
    return None if before is None or after is None else after - before


def peak_memory(run: str, args) -> int | None:
    """One run of ``run`` in a fresh interpreter (model loaded and batch built first)."""
    command = [sys.executable, __file__, "--task", args.task, "--n", str(args.n)]
    done = subprocess.run([*command, "--memory-of", run], capture_output=True, text=True)
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if done.returncode != 0 or not lines:
        print(f"peak memory of {run}: not measured ({done.stderr.strip()[-300:]})")
        return None
    return json.loads(lines[-1])["peak"]


def memory_child(run: str, args) -> None:
    torch.set_num_threads(1)
    model = load_model()
    batch = PromptBatch.from_prompts(model, task_prompts(load(args.task), args.n, seed=0))
    runs = {
        "forward": lambda: model(batch.tokens, attention_mask=batch.attention_mask),
        "saliency": lambda: saliency(model, batch),
        "saliency-lean": lambda: saliency(model, batch, memory="lean"),
    }
    with torch.no_grad():
        print(json.dumps({"peak": peak_memory_here(runs[run])}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", default="sentiment")
    parser.add_argument("--n", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--memory-of", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.memory_of:
        memory_child(args.memory_of, args)
        return
    torch.set_num_threads(args.threads)

    model = load_model()
    prompts = task_prompts(load(args.task), args.n, seed=0)
    batch = PromptBatch.from_prompts(model, prompts)
    singles = [PromptBatch.from_prompts(model, [p]) for p in prompts]
    print(
        f"model {model.cfg.model_name}, task {args.task}, batch {tuple(batch.tokens.shape)}, "
        f"torch threads {torch.get_num_threads()}, padding "
        f"{1 - batch.attention_mask.float().mean():.0%} of the batch"
    )

    def forward():
        with torch.no_grad():
            model(batch.tokens, attention_mask=batch.attention_mask)

    def forward_at_q():
        with torch.no_grad():
            target_logits(model, batch)

    def saliency_batch():
        saliency(model, batch)

    def saliency_lean():
        saliency(model, batch, memory="lean")

    full, lean = saliency(model, batch).scores, saliency(model, batch, memory="lean").scores
    lean_difference = float((full - lean).abs().max())
    print(f"lean vs full saliency: max |score difference| {lean_difference:.1e}")
    t = interleaved(
        {
            "forward": forward,
            "forward_q": forward_at_q,
            "saliency": saliency_batch,
            "lean": saliency_lean,
        },
        args.repeats,
    )
    print(line("plain forward (full logits)", t["forward"], "s"))
    print(line("forward, logits at q only", t["forward_q"], "s"))
    print(line("all-layer saliency (fwd + bwd)", t["saliency"], "s"))
    print(
        line(
            "ratio saliency / plain forward",
            ratio(t["saliency"], t["forward"]),
            "x",
            "goal <= 2.0x",
        )
    )
    print(line("ratio saliency / forward at q", ratio(t["saliency"], t["forward_q"]), "x"))
    print(line("saliency, memory='lean'", t["lean"], "s"))
    print(line("ratio lean / plain forward", ratio(t["lean"], t["forward"]), "x"))
    print(line("ratio lean / full saliency", ratio(t["lean"], t["saliency"]), "x"))

    def saliency_singles():
        for single in singles:
            saliency(model, single)

    def forward_singles():
        with torch.no_grad():
            for single in singles:
                model(single.tokens, attention_mask=single.attention_mask)

    b = interleaved(
        {
            "saliency_batch": saliency_batch,
            "saliency_singles": saliency_singles,
            "forward_batch": forward,
            "forward_singles": forward_singles,
        },
        max(1, args.repeats - 1),
        warm_up=False,
    )
    print(line(f"saliency, one batch of {args.n}", b["saliency_batch"], "s"))
    print(line(f"saliency, {args.n} single-prompt runs", b["saliency_singles"], "s"))
    speedup = ratio(b["saliency_singles"], b["saliency_batch"])
    print(line("saliency throughput batch / single", speedup, "x", "goal >= 3x"))
    print(line(f"forward, one batch of {args.n}", b["forward_batch"], "s"))
    print(line(f"forward, {args.n} single-prompt runs", b["forward_singles"], "s"))
    print(
        line(
            "forward throughput batch / single",
            ratio(b["forward_singles"], b["forward_batch"]),
            "x",
        )
    )

    memory = {run: peak_memory(run, args) for run in ("forward", "saliency", "saliency-lean")}
    record = {
        "settings": {
            "task": args.task,
            "n": args.n,
            "repeats": args.repeats,
            "throughput_repeats": max(1, args.repeats - 1),
            "torch_threads": torch.get_num_threads(),
            "batch": list(batch.tokens.shape),
            "padding": 1 - batch.attention_mask.float().mean().item(),
            "goals": {"saliency_over_forward": 2.0, "throughput": 3.0, "lean_memory": 3.0},
        },
        "lean_vs_full_max_difference": lean_difference,
        "median_s": {k: dict(zip(("wall", "cpu"), v)) for k, v in {**t, **b}.items()},
        "ratios": {
            label: dict(zip(("wall", "cpu"), value))
            for label, value in {
                "saliency / forward": ratio(t["saliency"], t["forward"]),
                "saliency / forward at q": ratio(t["saliency"], t["forward_q"]),
                "lean / forward": ratio(t["lean"], t["forward"]),
                "lean / full saliency": ratio(t["lean"], t["saliency"]),
                "saliency throughput batch / single": speedup,
                "forward throughput batch / single": ratio(
                    b["forward_singles"], b["forward_batch"]
                ),
            }.items()
        },
        "peak_memory_mb": {k: None if v is None else v / 1e6 for k, v in memory.items()},
    }
    if None in memory.values():
        print("peak memory: not measurable here (needs Linux /proc/self/clear_refs)")
        _results.write("saliency", record)
        return
    base = max(memory["forward"], 1)
    record["memory_ratios"] = {
        "saliency / forward": memory["saliency"] / base,
        "lean / forward": memory["saliency-lean"] / base,
    }
    _results.write("saliency", record)
    print(
        "peak memory above the level before the run (fresh subprocess each): forward "
        f"{memory['forward'] / 1e6:.0f} MB, saliency {memory['saliency'] / 1e6:.0f} MB "
        f"({memory['saliency'] / base:.2f}x the forward), saliency memory='lean' "
        f"{memory['saliency-lean'] / 1e6:.0f} MB ({memory['saliency-lean'] / base:.2f}x the "
        "forward; goal <= 3x)"
    )


if __name__ == "__main__":
    main()
