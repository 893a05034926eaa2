"""I2CL on the embedded model: what a query costs, what calibration costs, and batched extraction.

Side by side in one run, on the sentiment task's zero-shot test prompts and I2CL's 5
demonstrations per class (10):

1. inference per query: a plain zero-shot forward, the same forward with I2CL's injection at
   every layer's attention and MLP output (``InjectContext``), and the ICL prompt that shows the
   same 10 demonstrations; batches of ``--batch`` prompts, the three interleaved for
   ``--repeats`` rounds after a warm-up; printed: the ratios of the medians (process CPU time
   and wall time) and the tokens each puts through the model per query;
2. extraction: the forwards ``context_vectors`` runs (counted by a hook on the first block) for
   the 10 demonstrations at the default batch size, against one per demonstration;
3. calibration: the seconds of ``calibrate`` with the reference settings (100 epochs, AdamW,
   minibatches of 2: 500 steps) on one thread, and its steps per second.

The goals: I2CL's inference <= 1.15x a zero-shot forward (it processes the query's tokens
only); extraction one forward per batch. One torch thread. ``--quick``: 2 epochs, 1 round, no
record written.

    python benchmarks/i2cl.py [--repeats 5] [--batch 16] [--epochs 100]
"""

from __future__ import annotations

import argparse
import statistics
import time

import _results
import torch

from icl_mech import attach, load_model, tasks
from icl_mech.batching import batched, encode_text
from icl_mech.context_vectors import calibrate, context_vectors, per_class
from icl_mech.icl_prompt import ICLPrompt

GOAL = 1.15


def clocks(fn) -> tuple[float, float]:
    wall, cpu = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - wall, time.process_time() - cpu


def forward_all(model, batches, items=()) -> None:
    with torch.no_grad(), attach(model, *items):
        for _, batch in batches:
            model(batch.tokens, attention_mask=batch.attention_mask)


def count_forwards(model, fn) -> int:
    calls = []
    handle = model.blocks[0].register_forward_hook(lambda *args: calls.append(1))
    try:
        fn()
    finally:
        handle.remove()
    return len(calls)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--epochs", type=int, default=100)
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    if args.quick:
        args.repeats, args.epochs = 1, 2
    torch.set_num_threads(1)
    model = load_model()
    task = tasks.load("sentiment")
    train, test = task.split(48, seed=0)
    demos = per_class(train, 5, seed=0)
    zero = [ICLPrompt.zero_shot(task, q) for q in test.examples]
    icl = [ICLPrompt.build(task, demos, q) for q in test.examples]
    tokens = {
        name: statistics.mean(len(encode_text(model, p.text)) for p in prompts)
        for name, prompts in (("zero_shot", zero), ("icl", icl))
    }
    extraction = count_forwards(model, lambda: context_vectors(model, train, demos))
    vectors = context_vectors(model, train, demos)
    start = time.perf_counter()
    calibrated = calibrate(model, vectors, train, demos, epochs=args.epochs, seed=0)
    calibration_s = time.perf_counter() - start
    steps = calibrated.provenance["calibration"]["steps"]
    runs = {
        "zero_shot": (list(batched(model, zero, args.batch)), ()),
        "i2cl": (list(batched(model, zero, args.batch)), (calibrated.intervention(),)),
        "icl": (list(batched(model, icl, args.batch)), ()),
    }
    for batches, items in runs.values():  # warm-up
        forward_all(model, batches[:1], items)
    measured = {name: {"wall": [], "cpu": []} for name in runs}
    for _ in range(args.repeats):
        for name, (batches, items) in runs.items():
            wall, cpu = clocks(lambda b=batches, i=items: forward_all(model, b, i))
            measured[name]["wall"].append(wall)
            measured[name]["cpu"].append(cpu)
    median = {n: {k: statistics.median(v) for k, v in m.items()} for n, m in measured.items()}
    ratio = {
        f"{name}_over_zero_shot": {
            clock: median[name][clock] / median["zero_shot"][clock] for clock in ("wall", "cpu")
        }
        for name in ("i2cl", "icl")
    }
    print(f"SmolLM2, sentiment, {len(zero)} test queries, batches of {args.batch}, "
          f"{args.repeats} interleaved rounds (medians):")  # fmt: skip
    for name in ("i2cl", "icl"):
        r = ratio[f"{name}_over_zero_shot"]
        print(f"  {name:>4} / zero-shot forward: CPU {r['cpu']:.2f}x, wall {r['wall']:.2f}x")
    print(f"  tokens per query: zero-shot and I2CL {tokens['zero_shot']:.1f}, "
          f"ICL {tokens['icl']:.1f} ({tokens['icl'] / tokens['zero_shot']:.1f}x)")  # fmt: skip
    print(f"extraction of {len(demos)} demonstrations: {extraction} forward(s) "
          f"(one per demonstration would be {len(demos)})")  # fmt: skip
    print(f"calibration: {args.epochs} epochs, {steps} steps, {calibration_s:.0f} s on one "
          f"thread ({steps / calibration_s:.1f} steps/s)")  # fmt: skip
    cpu_ratio = ratio["i2cl_over_zero_shot"]["cpu"]
    verdict = "reached" if cpu_ratio <= GOAL else "NOT reached"
    print(f"goal: I2CL inference <= {GOAL}x a zero-shot forward (CPU): {cpu_ratio:.2f}x {verdict}")
    if args.quick:
        return
    _results.write("i2cl", {
        "settings": {"repeats": args.repeats, "batch": args.batch, "epochs": args.epochs,
                     "queries": len(zero), "demonstrations": len(demos), "threads": 1},
        "ratios": ratio,
        "tokens_per_query": tokens,
        "extraction_forwards": extraction,
        "calibration": {"epochs": args.epochs, "steps": steps, "seconds_s": calibration_s},
        "median": median,
        "goal": {"i2cl_over_zero_shot_cpu_max": GOAL, "reached": cpu_ratio <= GOAL},
    })  # fmt: skip


if __name__ == "__main__":
    main()
