"""In-context vectors on the embedded model.

1. Steered vs unsteered generation: the same prompts, the same number of new tokens (no early
   stop), key/value cache on, greedy. Goal: steered / unsteered <= 1.10x. Runs are interleaved
   and the median of per-round ratios is reported, since this machine is noisy.
2. Extraction of 50 pairs: batched vs one pair at a time (and one text at a time).
"""

from __future__ import annotations

import statistics
import time

import _results
import torch

from icl_mech import load_model, tasks
from icl_mech.activations import last_token_states
from icl_mech.icv import ICVSteering, extract_icv, generate
from icl_mech.threads import torch_threads

ROUNDS = 5
PROMPTS = [
    "Please paraphrase the following sentence. Sentence: The soup was cold, paraphrase:",
    "Tell me about the hotel we stayed in:",
    "Write one sentence about your last flight:",
    "Describe the new phone in a few words:",
]
NEW_TOKENS = 24
N_PAIRS = 50


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def generation_benchmark(model, sentiment, polite) -> dict:
    settings = dict(max_new_tokens=NEW_TOKENS, stop_at_eos=False, use_cache=True)
    variants = {
        "1 ICV, all positions": ICVSteering(sentiment, 0.08),
        "2 ICVs, new tokens only": ICVSteering([sentiment, polite], [0.08, 0.08], positions="new"),
    }
    generate(model, PROMPTS, max_new_tokens=2)  # warm-up
    plain_times, ratios = [], {name: [] for name in variants}
    for _ in range(ROUNDS):
        plain = timed(lambda: generate(model, PROMPTS, **settings))
        plain_times.append(plain)
        for name, steering in variants.items():
            ratios[name].append(
                timed(lambda s=steering: generate(model, PROMPTS, s, **settings)) / plain
            )
    print(
        f"generation: {len(PROMPTS)} prompts x {NEW_TOKENS} new tokens, cache on, greedy; "
        f"unsteered median {statistics.median(plain_times):.2f} s over {ROUNDS} rounds"
    )
    record = {"unsteered_median_s": statistics.median(plain_times), "steered / unsteered": {}}
    for name, values in ratios.items():
        median = statistics.median(values)
        verdict = "OK" if median <= 1.10 else "ABOVE GOAL"
        print(f"  steered ({name}) / unsteered: median {median:.3f}x "
              f"[{min(values):.3f}-{max(values):.3f}]  goal <= 1.10x  {verdict}")  # fmt: skip
        record["steered / unsteered"][name] = {
            "median": median,
            "min": min(values),
            "max": max(values),
            "goal_met": median <= 1.10,
        }
    return record


def extraction_benchmark(model, pairs) -> dict:
    layers = list(range(model.cfg.n_layers))
    batched = timed(lambda: extract_icv(model, pairs, batch_size=32))

    def pair_by_pair():
        for x, y in pairs:
            last_token_states(model, [x, y], layers, batch_size=2)

    def text_by_text():
        last_token_states(model, [t for pair in pairs for t in pair], layers, batch_size=1)

    per_pair = timed(pair_by_pair)
    per_text = timed(text_by_text)
    print(f"extraction of {len(pairs)} pairs ({2 * len(pairs)} texts, {len(layers)} layers):")
    print(f"  batched (32 texts per forward): {batched:.2f} s")
    print(f"  one pair per forward:           {per_pair:.2f} s  -> batched is "
          f"{per_pair / batched:.2f}x faster")  # fmt: skip
    print(f"  one text per forward:           {per_text:.2f} s  -> batched is "
          f"{per_text / batched:.2f}x faster")  # fmt: skip
    return {
        "pairs": len(pairs),
        "batched_s": batched,
        "per_pair_s": per_pair,
        "per_text_s": per_text,
        "per_pair / batched": per_pair / batched,
        "per_text / batched": per_text / batched,
    }


def main() -> None:
    with torch_threads(1), torch.no_grad():
        model = load_model()
        pairs = (tasks.load_pairs("negative_positive") + tasks.load_pairs("rude_polite"))[:N_PAIRS]
        sentiment = extract_icv(model, tasks.load_pairs("negative_positive")[:16])
        polite = extract_icv(model, tasks.load_pairs("rude_polite")[:16])
        print(f"torch threads: {torch.get_num_threads()}")
        generation = generation_benchmark(model, sentiment, polite)
        extraction = extraction_benchmark(model, pairs)
    settings = {
        "rounds": ROUNDS,
        "prompts": len(PROMPTS),
        "new_tokens": NEW_TOKENS,
        "pairs": N_PAIRS,
        "torch_threads": 1,
        "goal": 1.10,
    }
    payload = {"settings": settings, "generation": generation, "extraction": extraction}
    _results.write("icv", payload)


if __name__ == "__main__":
    main()
