"""What attaching hooks costs around a short forward, on both backends.

For the embedded SmolLM2-135M as ``HookedTransformer`` and as ``TransformerBridge`` (both where
TransformerLens 3.x is installed, the bridge alone on 4.x), one thread, one 1-shot sentiment
prompt: a plain forward; the same forward inside ``attach`` with one ``AddVector`` at strength 0
and a ``Capture`` (what a sweep or a patching loop does thousands of times); and the same hooks
through TransformerLens's own ``model.hooks`` context (what ``attach`` used before: it visits
every hook point on exit, and on the bridge resolves every alias again for each hook added).
The logits are checked equal first. Runs are interleaved in rounds; the printed ratios are
medians over rounds of the per-round ratio of process CPU time.

Goal: attach / plain forward <= 1.05 on both backends.

    python benchmarks/attach.py [--rounds 30]
"""

from __future__ import annotations

import argparse
import statistics
import time

import _results
import torch

from icl_mech import AddVector, Capture, PromptBatch, attach, load_model, tasks
from icl_mech.backends import TL_MAJOR, finite_padding_rows, hook_pairs
from icl_mech.evaluation import build_prompts
from icl_mech.hooks import collect_specs

GOAL = 1.05


def cpu_seconds(step) -> float:
    start = time.process_time()
    step()
    return time.process_time() - start


def measure(backend: str, rounds: int) -> dict:
    model = load_model(backend=backend)
    task = tasks.load("sentiment")
    pool, test = task.split(8, seed=0)
    batch = PromptBatch.from_prompts(model, build_prompts(pool, 1, test.examples[:1], seed=0))
    layer = model.cfg.n_layers // 2
    point = f"blocks.{layer}.hook_resid_post"
    items = (AddVector(point, torch.ones(model.cfg.d_model), strength=0.0), Capture(point))
    specs = collect_specs(model, items, batch)
    pairs = hook_pairs(model, [(s.point, s.fn) for s in specs]) + finite_padding_rows(model)

    def plain():
        return model(batch.tokens, attention_mask=batch.attention_mask)

    def attached():
        with attach(model, *items, batch=batch):
            return plain()

    def lens_hooks():
        with model.hooks(fwd_hooks=pairs, reset_hooks_end=True):
            return plain()

    steps = {"plain": plain, "attach": attached, "model.hooks": lens_hooks}
    with torch.no_grad():
        logits = {name: step() for name, step in steps.items()}
        for name in ("attach", "model.hooks"):
            if not torch.equal(logits[name], logits["plain"]):
                raise SystemExit(f"{backend}: logits under {name} differ from the plain forward")
        times: dict[str, list[float]] = {name: [] for name in steps}
        for _ in range(rounds):
            for name, step in steps.items():
                times[name].append(cpu_seconds(step))
    ratio = {
        "attach / plain": ("attach", "plain"),
        "model.hooks / plain": ("model.hooks", "plain"),
        "model.hooks / attach": ("model.hooks", "attach"),
    }
    medians = {
        label: statistics.median(x / y for x, y in zip(times[a], times[b], strict=True))
        for label, (a, b) in ratio.items()
    }
    return {
        "tokens": list(batch.tokens.shape),
        "hooks": len(pairs),
        "plain_forward_ms": statistics.median(times["plain"]) * 1000,
        **medians,
        "goal_met": medians["attach / plain"] <= GOAL,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=30)
    args = parser.parse_args()
    torch.set_num_threads(1)
    backends = ("hooked", "bridge") if TL_MAJOR < 4 else ("bridge",)
    results = {backend: measure(backend, args.rounds) for backend in backends}
    print(f"SmolLM2, one prompt, AddVector (strength 0) + Capture, {args.rounds} rounds, CPU time:")
    print(f"{'backend':8} {'tokens':>7} {'hooks':>5} {'plain ms':>9} {'attach/plain':>13} "
          f"{'model.hooks/plain':>18} {'model.hooks/attach':>19}")  # fmt: skip
    for backend, r in results.items():
        print(
            f"{backend:8} {r['tokens'][1]:7d} {r['hooks']:5d} {r['plain_forward_ms']:9.1f} "
            f"{r['attach / plain']:12.3f}x {r['model.hooks / plain']:17.3f}x "
            f"{r['model.hooks / attach']:18.2f}x"
        )
    met = all(r["goal_met"] for r in results.values())
    print(f"goal: attach / plain <= {GOAL}x on every backend: {'met' if met else 'NOT met'}")
    settings = {"rounds": args.rounds, "threads": 1, "goal": GOAL}
    _results.write("attach", {"settings": settings, "results": results})


if __name__ == "__main__":
    main()
