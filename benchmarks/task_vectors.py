"""Benchmark: the task-vector layer sweep and θ extraction on the embedded model.

1. Layer sweep over all layers, same queries and per-query θ, side by side, on 5-token and
   12-token prompts: naive (one full patched forward of the batch per layer) vs the cached
   sweep (the query prefix once, then a staircase: the rows patched at layer l enter after
   block l, so each row runs only the blocks above its patch; in one group and in 3). Prints the
   largest logit difference and the compute floor: the multiply-adds of the naive sweep over
   those of the exact sweep's least compute (prefix once, blocks above each patch, one
   unembedding per row). Goal: the measured speed-up reaches >= 85% of that floor ratio.
2. Extraction throughput: demonstration sets per second, batched vs one prompt at a time.

Runs with one torch thread (fastest on a machine shared by several jobs); timings on a busy
machine are noisy, so each fast variant takes the best of ``--repeats`` runs.
"""

import argparse
import time

import _results
import torch

from icl_mech import PromptBatch, load_model, tasks
from icl_mech.icl_prompt import ICLPrompt
from icl_mech.task_vectors import extract, naive_sweep_logits, sample_sets, sweep_logits
from icl_mech.threads import torch_threads

GOAL = 0.85  # of the compute floor's speed-up


def timed(fn, repeats=1):
    best, out = float("inf"), None
    for _ in range(repeats):
        start = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - start)
    return best, out


def floor_ratio(model, seq_len: int, layers: int) -> float:
    """Multiply-adds per query: the naive sweep over the least an exact sweep needs."""
    cfg = model.cfg
    weights = sum(p.numel() for n, p in model.blocks[0].named_parameters() if "W_" in n)
    per_key = cfg.n_heads * cfg.d_head * 2  # scores and the weighted sum of values
    unembed = cfg.d_model * cfg.d_vocab

    def block(keys: int) -> int:
        return weights + per_key * keys

    naive = layers * seq_len * (cfg.n_layers * block(seq_len) + unembed)
    prefix = (seq_len - 1) * cfg.n_layers * block(seq_len - 1)
    above = sum(cfg.n_layers - 1 - layer for layer in range(layers)) * block(seq_len)
    return naive / (prefix + above + layers * unembed)


def sweep_benchmark(
    model, name: str, n_queries: int, repeats: int, record: dict
) -> tuple[float, float]:
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
    record[name] = entry = {"queries": n_queries, "prompt_tokens": batch.seq_len}
    entry["naive_s"] = naive_s
    for groups in (1, 3):
        seconds, cached = timed(
            lambda g=groups: sweep_logits(model, batch, theta, groups=g), repeats
        )
        diff = (cached - naive).abs().max().item()
        label = "1 group" if groups == 1 else f"{groups} groups"
        print(
            f"  cached staircase sweep ({label:8s}) : {seconds:7.2f} s  {naive_s / seconds:5.1f}x"
            f"   max |logit diff| {diff:.1e}"
        )
        best = max(best, naive_s / seconds)
        entry[f"cached_{groups}_groups"] = {
            "seconds": seconds,
            "speedup": naive_s / seconds,
            "max_logit_difference": diff,
        }
    floor = floor_ratio(model, batch.seq_len, model.cfg.n_layers)
    entry.update(floor=floor, speedup=best, reached=best / floor, goal_met=best / floor >= GOAL)
    print(f"  compute floor: naive / least exact sweep = {floor:.1f}x multiply-adds")
    return best, floor


def extraction_benchmark(model, n_sets: int, repeats: int) -> dict:
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
    return {
        "sets": n_sets,
        "single_s": single_s,
        "batched_s": batched_s,
        "single_sets_per_s": n_sets / single_s,
        "batched_sets_per_s": n_sets / batched_s,
        "speedup": single_s / batched_s,
        "max_theta_difference": diff,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--queries", type=int, default=32)
    parser.add_argument("--sets", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    model = load_model()
    with torch_threads(1), torch.no_grad():
        print(f"model {model.cfg.model_name}, torch threads 1")
        sweeps = {}
        ratios = {
            name: sweep_benchmark(model, name, args.queries, args.repeats, sweeps)
            for name in ("country_capital", "city_country")
        }
        extraction = extraction_benchmark(model, args.sets, args.repeats)
    print(f"\nlayer sweep speed-up (best cached variant) vs the compute floor, goal >= {GOAL:.0%}:")
    for name, (ratio, floor) in ratios.items():
        reached = ratio / floor
        verdict = "met" if reached >= GOAL else "MISSED"
        print(f"  {name:16s} {ratio:5.1f}x of a {floor:4.1f}x floor = {reached:4.0%}  {verdict}")
    settings = {
        "queries": args.queries,
        "sets": args.sets,
        "repeats": args.repeats,
        "layers": model.cfg.n_layers,
        "torch_threads": 1,
        "goal": GOAL,
    }
    payload = {"settings": settings, "sweeps": sweeps, "extraction": extraction}
    _results.write("task_vectors", payload)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
