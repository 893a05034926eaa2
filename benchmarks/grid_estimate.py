"""What the papers' full grids would cost on GPUs, estimated from cells measured on this CPU.

1. Measured here, on the embedded SmolLM2-135M with one torch thread:
   - the CPU's matrix throughput (FLOP/s of a batched no-grad forward);
   - per method, one quick sweep cell (one task): its seconds and its *block calls* (how many
     times a transformer block ran, each reading the block's weights once), counted by forward
     hooks on the blocks;
   - per method, the seconds of one full-settings cell, from the committed full run
     (``figures/<method>_report.json``: its seconds over its tasks and internal seeds).
2. Per cell on a GPU, for a paper's model of P parameters (bf16):
   - compute: the full cell's CPU seconds x (P / 135M) x (CPU FLOP/s / GPU FLOP/s);
   - memory: block calls (scaled from quick to full like the seconds), as whole forwards (calls
     / 30 layers), each reading the 2P bytes of weights from GPU memory, plus a fixed overhead
     per block call of a 32-block model;
   - the cell takes the larger of the two. Cells are independent, so a grid packs onto N GPUs:
     its GPU-seconds (cells x cell time x the GPUs one model needs, g = ceil(2.4 P / 80 GB), plus
     loading each model once on every GPU group that runs it: a worker keeps its model between
     cells) over N, and at least one cell; "-" where one model needs more GPUs than N.
   The GPU figures are the published A100-80GB SXM numbers (312 TFLOP/s dense bf16, 2.04 TB/s),
   derated by the utilisation constants below. It is an estimate: say so when quoting it.

    python benchmarks/grid_estimate.py [--gpus 1,8,64]
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import _results
import torch

from icl_mech import load_model
from icl_mech.runner import settings_for
from icl_mech.sweeps.methods import builtin_method

FIGURES = Path(__file__).resolve().parent.parent / "figures"
GPU_FLOPS, GPU_BYTES_PER_S, GPU_MEMORY = 312e12, 2.04e12, 80e9  # A100-80GB SXM, published
COMPUTE_UTILISATION, BANDWIDTH_UTILISATION = 0.4, 0.7  # assumed sustained fractions
CALL_OVERHEAD_S = 2e-4  # Python and kernel launches per block call (assumed)
LOAD_BYTES_PER_S = 1e9  # reading and converting a checkpoint into a worker (assumed)

# method -> (its committed full run, one task for the quick cell, sweep cells in that full run)
METHODS = {
    "task-vectors": ("task_vectors", "antonym", lambda s: len(s["tasks"])),
    "function-vectors": ("function_vectors", "antonym", lambda s: len(s["tasks"])),
    "anchors": ("anchors", "sentiment", lambda s: len(s["tasks"]) * s["n_seeds"]),
    "anchor-applications": ("anchor_apps", "sentiment", lambda s: len(s["tasks"])),
    "icv": ("icv", "negative_positive", lambda s: len(s["pair_sets"])),
}
# the papers' grids: method -> (paper, cells per model, models with their parameters)
GRIDS = {
    "task-vectors": ("Hendel et al. 2023: 18 tasks x 7 models", 18, {
        "Pythia-2.8B": 2.8e9, "GPT-J-6B": 6.1e9, "Pythia-6.9B": 6.9e9, "LLaMA-7B": 6.7e9,
        "Pythia-12B": 12e9, "LLaMA-13B": 13e9, "LLaMA-30B": 32.5e9}),
    "anchors": ("Wang et al. 2023: 4 tasks x 5 seeds x 2 models", 20, {
        "GPT2-XL": 1.5e9, "GPT-J-6B": 6.1e9}),
    "anchor-applications": ("Wang et al. 2023, applications: 4 tasks x 2 models", 4, {
        "GPT2-XL": 1.5e9, "GPT-J-6B": 6.1e9}),
    "function-vectors": ("Todd et al. 2024, this toolkit's 10 tasks x 5 models", 10, {
        "GPT-J-6B": 6.1e9, "Llama-2-7B": 6.7e9, "Llama-2-13B": 13e9, "GPT-NeoX-20B": 20.6e9,
        "Llama-2-70B": 69e9}),
    "icv": ("Liu et al. 2023: 2 style tasks (6-point lambda sweep) x 2 models", 2, {
        "Falcon-7B": 7e9, "LLaMA-7B": 6.7e9}),
}  # fmt: skip


def cpu_flops(model) -> float:
    """Multiply-add throughput of a batched no-grad forward (16 x 64 tokens), FLOP/s."""
    tokens = torch.randint(0, model.cfg.d_vocab, (16, 64))
    weights = sum(p.numel() for n, p in model.blocks.named_parameters() if "W_" in n)
    flops = 2 * tokens.numel() * (weights + model.cfg.d_model * model.cfg.d_vocab)
    with torch.no_grad():
        model(tokens)
        best = min(_seconds(lambda: model(tokens)) for _ in range(3))
    return flops / best


def _seconds(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def quick_cell(model, method: str, task: str) -> tuple[float, int]:
    """Seconds and block calls of one quick cell of ``method`` on ``task``."""
    spec = builtin_method(method)
    settings = settings_for(method, quick=True, **{spec.task_field: (task,)})
    calls = [0]
    handles = [b.register_forward_pre_hook(lambda *_: calls.__setitem__(0, calls[0] + 1))
               for b in model.blocks]  # fmt: skip
    try:
        seconds = _seconds(lambda: spec.compute(model, settings))
    finally:
        for handle in handles:
            handle.remove()
    return seconds, calls[0]


def full_cell_seconds(method: str) -> float:
    stem, _, cells = METHODS[method]
    report = json.loads((FIGURES / f"{stem}_report.json").read_text())
    return report["seconds"] / cells(report["settings"])


def gpu_cell_seconds(cpu_s: float, calls: float, params: float, cpu_rate: float) -> float:
    compute = cpu_s * (params / 135e6) * cpu_rate / (GPU_FLOPS * COMPUTE_UTILISATION)
    forwards = calls / 30  # the embedded model's blocks per forward
    read = 2 * params / (GPU_BYTES_PER_S * BANDWIDTH_UTILISATION)  # bf16 weights, once
    return max(compute, forwards * (read + 32 * CALL_OVERHEAD_S))


def grid_seconds(cells: int, models: dict, full_s: float, calls: float, rate: float, n: int):
    """Wall time of the grid packed onto ``n`` GPUs; None if a model needs more than ``n``."""
    needs = {name: math.ceil(2.4 * params / GPU_MEMORY) for name, params in models.items()}
    if max(needs.values()) > n:
        return None
    times = {name: gpu_cell_seconds(full_s, calls, p, rate) for name, p in models.items()}
    gpu_seconds = 0.0
    for name, params in models.items():
        loads = min(cells, n // needs[name])
        load_s = 2 * params / LOAD_BYTES_PER_S
        gpu_seconds += (cells * times[name] + loads * load_s) * needs[name]
    return max(gpu_seconds / n, max(times.values()))


def shown(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    if seconds < 60:
        return f"{seconds:.0f} s"
    if seconds < 3600:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gpus", default="1,8,64")
    args = parser.parse_args()
    torch.set_num_threads(1)
    gpus = [int(n) for n in args.gpus.split(",")]
    model = load_model()
    rate = cpu_flops(model)
    print(f"CPU (one thread): {rate / 1e9:.1f} GFLOP/s; A100 at {COMPUTE_UTILISATION:.0%}: "
          f"{GPU_FLOPS * COMPUTE_UTILISATION / 1e12:.0f} TFLOP/s, "
          f"{GPU_FLOPS * COMPUTE_UTILISATION / rate:,.0f}x")  # fmt: skip
    print(f"\n{'method':<21}{'quick cell':>11}{'block calls':>12}{'full cell':>10}"
          f"{'GPU cell, 7B':>14}")  # fmt: skip
    measured, cells_record = {}, {}
    for method, (_, task, _) in METHODS.items():
        quick_s, calls = quick_cell(model, method, task)
        full_s = full_cell_seconds(method)
        measured[method] = (full_s, calls * full_s / quick_s)
        gpu_s = gpu_cell_seconds(*measured[method], 7e9, rate)
        cells_record[method] = {
            "task": task,
            "quick_cell_s": quick_s,
            "block_calls": calls,
            "full_cell_s": full_s,
            "gpu_cell_7b_s": gpu_s,
        }
        print(f"{method:<21}{quick_s:>10.1f}s{calls:>12,}{full_s:>9.0f}s{gpu_s:>13.1f}s")
    header = "".join(f"{f'{n} GPU' + ('s' if n > 1 else ''):>10}" for n in gpus)
    print(f"\nfull grids on A100-80GB (estimate)  {'':<30}{header}")
    grids = {}
    for method, (paper, cells, models) in GRIDS.items():
        walls = [grid_seconds(cells, models, *measured[method], rate, n) for n in gpus]
        print(f"  {paper:<64}" + "".join(f"{shown(w):>10}" for w in walls))
        grids[method] = {"paper": paper, "wall_s": {str(n): w for n, w in zip(gpus, walls)}}
    settings = {
        "gpus": gpus,
        "torch_threads": 1,
        "gpu_flops": GPU_FLOPS,
        "gpu_bytes_per_s": GPU_BYTES_PER_S,
        "compute_utilisation": COMPUTE_UTILISATION,
        "bandwidth_utilisation": BANDWIDTH_UTILISATION,
        "call_overhead_s": CALL_OVERHEAD_S,
        "load_bytes_per_s": LOAD_BYTES_PER_S,
    }
    payload = {
        "settings": settings,
        "cpu_gflops": rate / 1e9,
        "gpu_over_cpu": GPU_FLOPS * COMPUTE_UTILISATION / rate,
        "cells": cells_record,
        "grids_estimate": grids,
    }
    _results.write("grid_estimate", payload)


if __name__ == "__main__":
    main()
