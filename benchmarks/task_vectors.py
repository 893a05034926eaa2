"""Benchmark: the task-vector layer sweep and θ extraction on the embedded model.

1. Layer sweep over all layers, same queries and per-query θ, side by side:
   naive (one full patched forward of the batch per layer) vs the cached batched sweep (the
   query prefix once, then the last token for all layers in one pass; and in 3 passes that
   start at their first layer). Goal: >= 10x. Also prints the largest logit difference.
2. Extraction throughput: demonstration sets per second, batched vs one prompt at a time.

Runs with one torch thread (fastest on a machine shared by several jobs); timings on a busy
machine are noisy, so each fast variant takes the best of ``--repeats`` runs.
"""

import argparse
import time

import torch

from icl_mech import PromptBatch, load_model, tasks
from icl_mech.models import torch_threads
from icl_mech.prompts import ICLPrompt
from icl_mech.task_vectors import extract, naive_sweep_logits, sample_sets, sweep_logits

GOAL = 10.0


def timed(fn, repeats=1):
    best, out = float("inf"), None
    for _ in range(repeats):
        start = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - start)
    return best, out


def compute_ratio(model, seq_len: int) -> float:
    """Naive / one-pass cached compute, counting weight multiply-adds per row (the bound)."""
    block = sum(p.numel() for p in model.blocks[0].parameters())
    unembed = model.cfg.d_model * model.cfg.d_vocab
    layers = model.cfg.n_layers
    naive = layers * seq_len * (layers * block + unembed)
    cached = (seq_len - 1) * layers * block + layers * (layers * block + unembed)
    return naive / cached


def sweep_benchmark(model, name: str, n_queries: int, repeats: int) -> float:
    task = tasks.load(name)
    pool, test = task.split(n_queries, seed=0)
    batch = PromptBatch.from_prompts(model, [ICLPrompt.zero_shot(task, q) for q in test.examples])
    theta = extract(model, pool, sample_sets(pool, n_queries, 5, seed=0), batch_size=16).values
    naive_s, naive = timed(lambda: naive_sweep_logits(model, batch, theta))
    print(
        f"\n[{name}] {n_queries} queries, prompt length {batch.seq_len} tokens (padded), "
        f"{model.cfg.n_layers} layers"
    )
    print(f"  naive, one patched forward per layer : {naive_s:7.2f} s   1.0x")
    best = 0.0
    for groups in (1, 3):
        seconds, cached = timed(
            lambda g=groups: sweep_logits(model, batch, theta, groups=g), repeats
        )
        diff = (cached - naive).abs().max().item()
        label = "one pass" if groups == 1 else f"{groups} passes"
        print(
            f"  cached batched sweep ({label:8s})    : {seconds:7.2f} s  {naive_s / seconds:5.1f}x"
            f"   max |logit diff| {diff:.1e}"
        )
        best = max(best, naive_s / seconds)
    bound = compute_ratio(model, batch.seq_len)
    print(f"  compute ratio naive / one pass (weights x rows, theory): {bound:.1f}x")
    return best


def extraction_benchmark(model, n_sets: int, repeats: int) -> None:
    task = tasks.load("country_capital")
    sets = sample_sets(task, n_sets, 5, seed=0)
    batched_s, batched = timed(lambda: extract(model, task, sets, batch_size=32), repeats)
    single_s, single = timed(
        lambda: extract(model, task, sets, batch_size=1),
    )
    diff = (batched.values - single.values).abs().max().item()
    print(f"\n[extraction] {n_sets} demonstration sets x 2 dummy queries, 5 demonstrations each")
    print(f"  one prompt at a time : {n_sets / single_s:6.2f} sets/s  ({single_s:.1f} s)")
    print(
        f"  batched (32 prompts) : {n_sets / batched_s:6.2f} sets/s  ({batched_s:.1f} s)  "
        f"{single_s / batched_s:.1f}x   max |θ diff| {diff:.1e}"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--queries", type=int, default=32)
    parser.add_argument("--sets", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    model = load_model()
    with torch_threads(1), torch.no_grad():
        print(f"model {model.cfg.model_name}, torch threads 1")
        ratios = {
            name: sweep_benchmark(model, name, args.queries, args.repeats)
            for name in ("country_capital", "city_country")
        }
        extraction_benchmark(model, args.sets, args.repeats)
    print("\nlayer sweep speed-up (best cached variant) vs goal >= 10x:")
    for name, ratio in ratios.items():
        print(f"  {name:16s} {ratio:5.1f}x  {'met' if ratio >= GOAL else 'MISSED'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
