"""Forward time of the two backends on the same weights and batch, for both real models.

For SmolLM2-135M (embedded) and Gemma-3-270M: the toolkit's ``HookedTransformer``
(``backend="hooked"``, weights laid out for ``F.linear`` at load time), the same with the weights
as TransformerLens stores them (``linear_layout=False``: the "before"), its ``TransformerBridge``
(``backend="bridge"``) and the plain Hugging Face model (eager attention), one torch thread,
a batch of 8 left-padded 1-shot sentiment prompts.
The logits are checked equal (max |difference| <= 1e-3) before any time counts. Runs are
interleaved in rounds; the printed ratios are medians over rounds of the per-round ratio.

    python benchmarks/backends.py [--rounds 7] [--models smollm2,gemma]
"""

from __future__ import annotations

import argparse
import statistics
import time

import _results
import torch

from icl_mech import PromptBatch, load_model, models, tasks
from icl_mech.evaluation import build_prompts

TOLERANCE = 1e-3
NAMES = {"smollm2": None, "gemma": models.GEMMA_NAME}


def hugging_face(name: str):
    from transformers import AutoModelForCausalLM

    folder = models.gemma_folder() if name == "gemma" else models.embedded_folder()
    plain = AutoModelForCausalLM.from_pretrained(
        str(folder), attn_implementation="eager", dtype=torch.float32
    )
    return plain.eval()


def seconds(forward) -> float:
    start = time.perf_counter()
    with torch.no_grad():
        forward()
    return time.perf_counter() - start


def measure(name: str, rounds: int, record: dict | None = None) -> dict[str, float]:
    hooked = load_model(NAMES[name], backend="hooked")
    stored = load_model(NAMES[name], backend="hooked", linear_layout=False)
    bridge = load_model(NAMES[name], backend="bridge")
    plain = hugging_face(name)
    task = tasks.load("sentiment")
    pool, test = task.split(8, seed=0)
    batch = PromptBatch.from_prompts(hooked, build_prompts(pool, 1, test.examples, seed=0))
    tokens, mask = batch.tokens, batch.attention_mask
    forwards = {
        "hooked": lambda: hooked(tokens, attention_mask=mask),
        "stored": lambda: stored(tokens, attention_mask=mask),
        "bridge": lambda: bridge(tokens, attention_mask=mask),
        "hf": lambda: plain(tokens, attention_mask=mask).logits,
    }
    with torch.no_grad():
        logits = {k: f() for k, f in forwards.items()}
    real = mask.bool()
    for k in ("stored", "bridge", "hf"):
        gap = float((logits[k] - logits["hooked"])[real].abs().max())
        if gap > TOLERANCE:
            raise SystemExit(f"{name}: {k} logits differ from hooked by {gap:.2e}")
    pairs = {
        "hooked / hf": ("hooked", "hf"),
        "hooked before layout / hf": ("stored", "hf"),
        "bridge / hf": ("bridge", "hf"),
        "bridge / hooked": ("bridge", "hooked"),
    }
    ratios: dict[str, list[float]] = {label: [] for label in pairs}
    times: dict[str, list[float]] = {k: [] for k in forwards}
    for _ in range(rounds):
        t = {k: seconds(f) for k, f in forwards.items()}
        for k, value in t.items():
            times[k].append(value)
        for label, (top, bottom) in pairs.items():
            ratios[label].append(t[top] / t[bottom])
    shape = f"{tokens.shape[0]} x {tokens.shape[1]}"
    print(f"{name}: batch {shape}, logits agree (<= {TOLERANCE:g})")
    medians = {k: statistics.median(v) for k, v in ratios.items()}
    if record is not None:
        record[name] = {
            "batch": list(tokens.shape),
            "ratios": medians,
            "median_forward_s": {k: statistics.median(v) for k, v in times.items()},
        }
    return medians


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--models", default="smollm2,gemma")
    args = parser.parse_args()
    torch.set_num_threads(1)
    record = {}
    for name in args.models.split(","):
        ratios = measure(name, args.rounds, record)
        print("  " + ", ".join(f"{k} {v:.2f}" for k, v in ratios.items()))
    settings = {"rounds": args.rounds, "models": args.models.split(","), "torch_threads": 1}
    settings["tolerance"] = TOLERANCE
    _results.write("backends", {"settings": settings, "results": record})


if __name__ == "__main__":
    main()
