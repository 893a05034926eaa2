"""Registry overhead: forward with no hooks vs a no-op hook on every residual, attention-output
and MLP-output hook point attached through ``attach``; plus cold and warm load times.

Goal: hooked / plain forward time <= 1.05x. Times are interleaved and the median of the
per-round ratios is reported, since this machine is noisy.
"""

from __future__ import annotations

import os
import statistics
import tempfile
import time

import _results
import torch

from icl_mech import HookSpec, PromptBatch, attach, load_model, tasks
from icl_mech.evaluation import build_prompts

ROUNDS = 15
SUFFIXES = ("hook_resid_pre", "hook_resid_mid", "hook_resid_post", "hook_attn_out", "hook_mlp_out")


def timed_load(cache: str | None) -> tuple[float, object]:
    previous = os.environ.get("ICL_MECH_CACHE")
    if cache:
        os.environ["ICL_MECH_CACHE"] = cache
    start = time.perf_counter()
    model = load_model()
    seconds = time.perf_counter() - start
    if cache:
        if previous is None:
            del os.environ["ICL_MECH_CACHE"]
        else:
            os.environ["ICL_MECH_CACHE"] = previous
    return seconds, model


def main() -> None:
    with tempfile.TemporaryDirectory() as empty_cache:
        cold, _ = timed_load(empty_cache)
        warm, model = timed_load(empty_cache)
    task = tasks.load("sentiment")
    batch = PromptBatch.from_prompts(model, build_prompts(task, 1, task.examples[:16], seed=0))
    noop = [
        HookSpec(f"blocks.{layer}.{suffix}", lambda activation, hook: None)
        for layer in range(model.cfg.n_layers)
        for suffix in SUFFIXES
    ]

    def forward():
        model(batch.tokens, attention_mask=batch.attention_mask)

    ratios, plain_times = [], []
    with torch.no_grad():
        forward()
        for _ in range(ROUNDS):
            start = time.perf_counter()
            forward()
            plain = time.perf_counter() - start
            start = time.perf_counter()
            with attach(model, *noop, batch=batch):
                forward()
            hooked = time.perf_counter() - start
            ratios.append(hooked / plain)
            plain_times.append(plain)
    print(
        f"model: {model.cfg.model_name}, batch {tuple(batch.tokens.shape)}, "
        f"{len(noop)} no-op hooks, {ROUNDS} interleaved rounds"
    )
    print(f"plain forward (median):           {statistics.median(plain_times) * 1000:8.1f} ms")
    print(f"hooked / plain forward (median):  {statistics.median(ratios):8.3f}x   goal <= 1.05x")
    print(f"load, cold (dequantise + load):   {cold:8.1f} s")
    print(f"load, warm (cached folder):       {warm:8.1f} s")
    print(f"cold / warm load:                 {cold / warm:8.2f}x")
    settings = {"rounds": ROUNDS, "batch": list(batch.tokens.shape), "hooks": len(noop)}
    settings["goal"] = 1.05
    result = {
        "plain_forward_ms": statistics.median(plain_times) * 1000,
        "hooked / plain": statistics.median(ratios),
        "goal_met": statistics.median(ratios) <= 1.05,
        "cold_load_s": cold,
        "warm_load_s": warm,
        "cold / warm load": cold / warm,
    }
    _results.write("registry_overhead", {"settings": settings, "results": result})


if __name__ == "__main__":
    main()
