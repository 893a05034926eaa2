"""Faster and leaner than the alternatives, measured side by side on the embedded model.

One run, the same weights (the embedded SmolLM2-135M-Instruct: the toolkit's HookedTransformer
and the same cached Hugging Face folder loaded into transformers with eager attention), the
same inputs, one torch thread for everything:

(a) all-layer saliency of 16 sentiment prompts: the toolkit (``memory="full"``, the default,
    and ``memory="lean"``) vs the label-words paper's approach (Hugging Face eager attention,
    ``output_attentions=True``, ``retain_grad`` on every attention map, frozen parameters, one
    prompt at a time) and vs the same batched computation written with nnsight;
(b) the task-vector layer sweep over all 30 layers (16 zero-shot country -> capital queries,
    one θ per query and layer): the toolkit's cached batched sweep vs one patched forward per
    layer with Hugging Face forward hooks (the task-vector paper's approach) and vs nnsight (one
    trace per layer);
(c) ICV-steered greedy generation, 4 prompts x 32 new tokens (key/value cache, no early stop):
    the toolkit vs every MLP of the Hugging Face model wrapped in a steering module (the ICV
    paper's approach) and vs nnsight (every MLP output replaced at every step);
(d) the registry's per-forward overhead: a no-op hook on every residual, attention-output and
    MLP-output point (150 hooks) attached for one forward, vs nnsight reading the same 150
    values in one trace; on the saliency batch, and on one short prompt where the overhead is
    large enough to measure.

Before any time counts, each peer's numbers are checked against the toolkit's (max |difference|
<= 1e-3: saliency scores, logits, or the generated tokens, which must be equal). Times: runs are
interleaved in rounds (toolkit, then each peer; --rounds for (a) and (b), twice that for (c) and
(d1), twenty times for (d2)), the ratio toolkit / peer is taken per round and its median over
rounds is printed, for wall-clock and for process CPU time (the steadier one on a shared
machine). Overheads are medians over rounds of (hooked - plain) of the same round. Peak
memory: each implementation runs once in a fresh subprocess (model loaded, inputs built, then
the peak resident set above the level before the run, Linux ``/proc/self/clear_refs`` +
``VmHWM``); ratios toolkit / peer.

    python benchmarks/peers.py [--rounds 3] [--parts abcde] [--no-memory]
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import importlib.metadata
import json
import random
import statistics
import subprocess
import sys
import time
import warnings
from dataclasses import dataclass, field

import _results
import torch
import torch.nn.functional as F

TOLERANCE = 1e-3
N_SALIENCY, N_QUERIES, NEW_TOKENS, STRENGTH = 16, 16, 32, 0.08
ICV_PROMPTS = [
    "Please paraphrase the following sentence. Sentence: The soup was cold, paraphrase:",
    "Tell me about the hotel we stayed in:",
    "Write one sentence about your last flight:",
    "Describe the new phone in a few words:",
]
# rounds per part, as multiples of --rounds: short runs need more to beat the timing noise
ROUNDS_PER_PART = {"a": 1, "b": 1, "c": 2, "d": 2, "e": 20}
SUFFIXES = ("hook_resid_pre", "hook_resid_mid", "hook_resid_post", "hook_attn_out", "hook_mlp_out")


# --- models and inputs ----------------------------------------------------------------------


@dataclass
class Context:
    model: object  # the toolkit's HookedTransformer, as load_model() gives it
    hf: object = None  # transformers, eager attention (the papers' approaches)
    nn: object = None  # nnsight around a second copy of the same weights
    inputs: dict = field(default_factory=dict)


def hf_model():
    from transformers import AutoModelForCausalLM

    from icl_mech.models import embedded_folder

    model = AutoModelForCausalLM.from_pretrained(
        str(embedded_folder()), attn_implementation="eager", dtype=torch.float32
    ).eval()
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    return model


def nnsight_model():
    from nnsight import TransformersModel

    return TransformersModel(hf_model(), tokenizer=load_toolkit_model.cached.tokenizer)


def load_toolkit_model():
    from icl_mech import load_model

    if getattr(load_toolkit_model, "cached", None) is None:
        load_toolkit_model.cached = load_model()
    return load_toolkit_model.cached


load_toolkit_model.cached = None


def context(parts: str, peers: bool = True, nn: bool = True) -> Context:
    from icl_mech import PromptBatch, tasks
    from icl_mech.anchors.experiment import task_prompts
    from icl_mech.batching import encode_text
    from icl_mech.icl_prompt import ICLPrompt
    from icl_mech.icv import extract_icv
    from icl_mech.padding import pad_tokens
    from icl_mech.task_vectors import extract, sample_sets

    model = load_toolkit_model()
    ctx = Context(model, hf_model() if peers else None, nnsight_model() if nn else None)
    with torch.no_grad():
        if any(part in parts for part in "ade"):
            batch = PromptBatch.from_prompts(
                model, task_prompts(tasks.load("sentiment"), N_SALIENCY, seed=0)
            )
            ctx.inputs["saliency"] = batch
            shortest = int(batch.attention_mask.sum(dim=1).argmin())
            n = int(batch.attention_mask[shortest].sum())
            ctx.inputs["short"] = batch.tokens[shortest : shortest + 1, -n:]
        if "b" in parts:
            task = tasks.load("country_capital")
            pool, test = task.split(N_QUERIES, seed=0)
            queries = [ICLPrompt.zero_shot(task, q) for q in test.examples]
            ctx.inputs["sweep"] = PromptBatch.from_prompts(model, queries)
            sets = sample_sets(pool, N_QUERIES, 5, seed=0)
            ctx.inputs["theta"] = extract(model, pool, sets, batch_size=16).values
        if "c" in parts:
            ctx.inputs["icv"] = extract_icv(model, tasks.load_pairs("negative_positive")[:16])
            ids, mask = pad_tokens(model, [encode_text(model, p) for p in ICV_PROMPTS])
            ctx.inputs["icv_tokens"] = (ids, mask)
    return ctx


def positions(mask):
    """Position ids of left-padded rows (what TransformerLens and Hugging Face generate use)."""
    return (mask.cumsum(-1) - 1).clamp_min(0)


# --- (a) saliency ---------------------------------------------------------------------------


def saliency_runs(ctx: Context) -> dict:
    from icl_mech.anchors import saliency

    model, hf, batch = ctx.model, ctx.hf, ctx.inputs["saliency"]
    labels, gold = batch.class_token_ids, batch.gold
    mask = batch.attention_mask
    n_layers = model.cfg.n_layers

    def toolkit(memory):
        return lambda: saliency(model, batch, memory=memory).scores

    def paper():
        """Wang et al.'s way: one prompt at a time, attention maps returned and retained."""
        out = []
        for row in range(len(batch)):
            ids = batch.tokens[row : row + 1, -int(mask[row].sum()) :]
            with torch.enable_grad():
                embeds = hf.get_input_embeddings()(ids).detach().requires_grad_(True)
                result = hf(inputs_embeds=embeds, output_attentions=True)
                for attention in result.attentions:
                    attention.retain_grad()
                loss = F.cross_entropy(result.logits[:, -1, labels], gold[row : row + 1])
                loss.backward()
            maps = result.attentions
            out.append(torch.stack([(a.detach() * a.grad).sum(1).abs()[0] for a in maps]))
        return out

    def with_nnsight():
        nn = ctx.nn
        embeds = hf.get_input_embeddings()(batch.tokens).detach().requires_grad_(True)
        with nn.trace(
            inputs_embeds=embeds,
            attention_mask=mask,
            position_ids=positions(mask),
            logits_to_keep=1,
        ):
            patterns = [nn.model.layers[layer].self_attn.output[1] for layer in range(n_layers)]
            loss = F.cross_entropy(nn.output.logits[:, -1, labels], gold, reduction="sum")
            with loss.backward():
                grads = [patterns[layer].grad for layer in reversed(range(n_layers))][::-1]
            scores = torch.stack(
                [(a.detach() * g).sum(1).abs() for a, g in zip(patterns, grads)], dim=1
            ).save()
        return scores.detach()

    runs = {
        "toolkit, memory='full' (default)": toolkit("full"),
        "toolkit, memory='lean'": toolkit("lean"),
    }
    if hf is not None:
        runs["paper: HF eager, output_attentions + retain_grad, one prompt at a time"] = paper
    if ctx.nn is not None:
        runs["nnsight: .output[1] + .grad in one batched trace"] = with_nnsight
    return runs


def saliency_difference(reference, other) -> float:
    if isinstance(other, list):  # one [layer, n, n] per row, no padding
        seq, worst = reference.shape[-1], 0.0
        for row, scores in enumerate(other):
            n = scores.shape[-1]
            padded = reference[row].clone()
            worst = max(worst, (padded[:, seq - n :, seq - n :] - scores).abs().max().item())
            padded[:, seq - n :, seq - n :] = 0
            worst = max(worst, padded.abs().max().item())  # zero at padding
        return worst
    return (reference - other).abs().max().item()


# --- (b) task-vector sweep --------------------------------------------------------------------


def sweep_runs(ctx: Context) -> dict:
    from icl_mech.task_vectors import sweep_logits

    model, hf, nn = ctx.model, ctx.hf, ctx.nn
    batch, theta = ctx.inputs["sweep"], ctx.inputs["theta"]
    ids, mask = batch.tokens, batch.attention_mask
    n_layers = model.cfg.n_layers

    def paper():
        """Hendel et al.'s way: one full forward per layer, a forward hook overwriting the last
        token's hidden state after that layer."""
        out = []
        for layer in range(n_layers):

            def patch(module, args, output, layer=layer):
                output[:, -1] = theta[:, layer]
                return output

            handle = hf.model.layers[layer].register_forward_hook(patch)
            try:
                result = hf(input_ids=ids, attention_mask=mask, position_ids=positions(mask))
            finally:
                handle.remove()
            out.append(result.logits[:, -1])
        return torch.stack(out)

    def with_nnsight():
        out = []
        for layer in range(n_layers):
            with nn.trace(
                input_ids=ids, attention_mask=mask, position_ids=positions(mask), logits_to_keep=1
            ):
                nn.model.layers[layer].output[:, -1] = theta[:, layer]
                logits = nn.output.logits[:, -1].save()
            out.append(logits)
        return torch.stack(out)

    runs = {"toolkit: cached batched sweep": lambda: sweep_logits(model, batch, theta)}
    if hf is not None:
        runs["paper: one patched HF forward per layer (forward hooks)"] = paper
    if nn is not None:
        runs["nnsight: one trace per layer"] = with_nnsight
    return runs


# --- (c) ICV-steered generation ---------------------------------------------------------------


class SteeredMLP(torch.nn.Module):
    """The ICV paper's module around an MLP: the same norm-preserving formula."""

    def __init__(self, mlp, direction, strength):
        super().__init__()
        self.mlp, self.direction, self.strength = mlp, direction, strength

    def forward(self, x):
        y = self.mlp(x)
        dtype, y = y.dtype, y.float()
        norm = torch.norm(y, dim=-1, keepdim=True)
        similarity = 1.0 + torch.clamp(
            F.cosine_similarity(y, -self.direction[None, None, :], dim=-1), min=0.0
        ).unsqueeze(-1)
        shift = self.strength * similarity * F.normalize(self.direction, dim=-1)
        return (F.normalize(F.normalize(y, p=2, dim=-1) + shift, p=2, dim=-1) * norm).to(dtype)


def steer(y, direction, strength):
    norm = torch.norm(y, dim=-1, keepdim=True)
    cos = F.cosine_similarity(y, -direction[None, None, :], dim=-1)
    shift = strength * (1.0 + cos.clamp_min(0.0)).unsqueeze(-1) * F.normalize(direction, dim=-1)
    return F.normalize(F.normalize(y, dim=-1) + shift, dim=-1) * norm


def generation_runs(ctx: Context) -> dict:
    from transformers import GenerationConfig

    from icl_mech.icv import ICVSteering, generate

    model, hf, nn = ctx.model, ctx.hf, ctx.nn
    icv, (ids, mask) = ctx.inputs["icv"], ctx.inputs["icv_tokens"]
    n_layers, prompt = model.cfg.n_layers, ids.shape[1]
    directions = [icv.direction(layer).float() for layer in range(n_layers)]
    steering = ICVSteering(icv, STRENGTH)
    config = GenerationConfig(
        max_new_tokens=NEW_TOKENS, do_sample=False, eos_token_id=None, pad_token_id=0
    )

    def toolkit(model=model):
        out = generate(model, ICV_PROMPTS, steering, max_new_tokens=NEW_TOKENS, stop_at_eos=False)
        return out.new_tokens

    def paper():
        """Liu et al.'s way: every layer's MLP wrapped in a steering module, then generate."""
        layers = hf.model.layers
        original = [layer.mlp for layer in layers]
        for layer, mlp, direction in zip(layers, original, directions):
            layer.mlp = SteeredMLP(mlp, direction, STRENGTH)
        try:
            out = hf.generate(input_ids=ids, attention_mask=mask, generation_config=config)
        finally:
            for layer, mlp in zip(layers, original):
                layer.mlp = mlp
        return out[:, prompt:].tolist()

    def with_nnsight():
        with nn.generate(
            {"input_ids": ids, "attention_mask": mask}, generation_config=config
        ) as tracer:
            for _ in tracer.iter[:NEW_TOKENS]:
                for layer in range(n_layers):
                    mlp = nn.model.layers[layer].mlp
                    mlp.output = steer(mlp.output, directions[layer], STRENGTH)
            out = tracer.result.save()
        return out[:, prompt:].tolist()

    runs = {"toolkit: generate + ICVSteering": toolkit}
    if hf is not None:
        runs["paper: HF generate, every MLP wrapped"] = paper
    if nn is not None:
        runs["nnsight: generate, every MLP output replaced per step"] = with_nnsight
    return runs


def token_difference(reference, other) -> float:
    return 0.0 if reference == other else float("inf")


# --- (d) registry overhead --------------------------------------------------------------------


HOOKED, PLAIN = "toolkit: attach(150 no-op hooks) + forward", "toolkit: plain forward"
TRACED, HF_PLAIN = "nnsight: trace reading the same 150 values", "Hugging Face: plain forward"


def overhead_runs(ctx: Context, short: bool) -> dict:
    from icl_mech import HookSpec, attach
    from icl_mech.anchors.readout import unembed

    hf, nn = ctx.hf, ctx.nn
    if short:
        ids = ctx.inputs["short"]
        mask = torch.ones_like(ids)
    else:
        batch = ctx.inputs["saliency"]
        ids, mask = batch.tokens, batch.attention_mask
    n_layers = ctx.model.cfg.n_layers
    noop = [
        HookSpec(f"blocks.{layer}.{suffix}", lambda activation, hook: None)
        for layer in range(n_layers)
        for suffix in SUFFIXES
    ]

    def plain(model):  # logits at the last position only, as the peers' logits_to_keep=1
        return unembed(model, model(ids, attention_mask=mask, stop_at_layer=n_layers)[:, -1])

    def hooked(model):
        with attach(model, *noop):
            return plain(model)

    def hf_plain():
        out = hf(input_ids=ids, attention_mask=mask, position_ids=positions(mask), logits_to_keep=1)
        return out.logits[:, -1]

    def traced():
        with nn.trace(
            input_ids=ids, attention_mask=mask, position_ids=positions(mask), logits_to_keep=1
        ):
            for layer in nn.model.layers:  # the same 150 points, in the order the forward runs
                layer.input  # noqa: B018 - reading is the no-op edit (hook_resid_pre)
                layer.self_attn.output  # noqa: B018 - hook_attn_out
                layer.post_attention_layernorm.input  # noqa: B018 - hook_resid_mid
                layer.mlp.output  # noqa: B018 - hook_mlp_out
                layer.output  # noqa: B018 - hook_resid_post
            logits = nn.output.logits[:, -1].save()
        return logits

    runs = {HOOKED: lambda: hooked(ctx.model), PLAIN: lambda: plain(ctx.model)}
    if nn is not None:
        runs[TRACED] = traced
    if hf is not None:
        runs[HF_PLAIN] = hf_plain
    return runs


# --- measuring --------------------------------------------------------------------------------

WORKLOADS = {
    "a": ("(a) all-layer saliency", saliency_runs, saliency_difference, True),
    "b": ("(b) task-vector layer sweep, 30 layers", sweep_runs, None, False),
    "c": ("(c) ICV-steered greedy generation", generation_runs, token_difference, False),
    "d": ("(d1) registry overhead, saliency batch", lambda c: overhead_runs(c, False), None, False),
    "e": (
        "(d2) registry overhead, one short prompt",
        lambda c: overhead_runs(c, True),
        None,
        False,
    ),
}


def grad_mode(needs_grad: bool):
    return contextlib.nullcontext() if needs_grad else torch.no_grad()


def max_difference(reference, other) -> float:
    return (reference.float() - other.float()).abs().max().item()


def timed(fn) -> tuple[float, float]:
    wall, cpu = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - wall, time.process_time() - cpu


def interleaved(runs: dict, rounds: int, needs_grad: bool) -> dict[str, list[tuple]]:
    times = {name: [] for name in runs}
    with grad_mode(needs_grad):
        for fn in runs.values():  # warm-up, in the same order
            fn()
        for _ in range(rounds):
            for name, fn in runs.items():
                times[name].append(timed(fn))
    return times


def median_ratio(a: list[tuple], b: list[tuple], which: int) -> float:
    return statistics.median(x[which] / y[which] for x, y in zip(a, b))


def _status(key: str) -> int | None:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(key):
                return int(line.split()[1]) * 1024
    return None


def peak_memory_here(fn, needs_grad: bool) -> int | None:
    """Peak resident bytes above the level before ``fn`` (Linux; None elsewhere)."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
        with open("/proc/self/clear_refs", "w") as refs:
            refs.write("5")  # VmHWM := VmRSS
        before = _status("VmRSS")
    except OSError:
        return None
    with grad_mode(needs_grad):
        fn()
    return _status("VmHWM") - before


def peak_memory(part: str, name: str) -> int | None:
    """One run of one implementation in a fresh interpreter."""
    done = subprocess.run(
        [sys.executable, __file__, "--memory-of", part, name],
        capture_output=True,
        text=True,
    )
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if done.returncode != 0 or not lines:
        print(f"  (memory of {name!r} not measured: {done.stderr.strip()[-300:]})")
        return None
    return json.loads(lines[-1])["peak"]


def measure_memory_child(part: str, name: str) -> None:
    torch.set_num_threads(1)
    needs_hf = not name.startswith("toolkit")
    ctx = context(part, peers=needs_hf, nn=name.startswith("nnsight"))
    _, make, _, needs_grad = WORKLOADS[part]
    fn = make(ctx)[name]
    print(json.dumps({"peak": peak_memory_here(fn, needs_grad)}))


def describe(part: str, ctx: Context) -> str:
    if part == "a" or part == "d":
        batch = ctx.inputs["saliency"]
        padding = 1 - batch.attention_mask.float().mean().item()
        return f"batch {list(batch.tokens.shape)} ({padding:.0%} padding), all 30 layers"
    if part == "e":
        return f"one prompt of {ctx.inputs['short'].shape[1]} tokens"
    if part == "b":
        batch = ctx.inputs["sweep"]
        return f"{len(batch)} zero-shot queries {list(batch.tokens.shape)}, θ per query and layer"
    ids = ctx.inputs["icv_tokens"][0]
    return (
        f"{len(ids)} prompts {list(ids.shape)} x {NEW_TOKENS} new tokens, λ = {STRENGTH}, cache on"
    )


def report(part: str, ctx: Context, rounds: int, memory: bool, record: dict) -> list[tuple]:
    title, make, difference, needs_grad = WORKLOADS[part]
    runs = make(ctx)
    print(f"\n{title}: {describe(part, ctx)}")
    record[part] = entry = {"title": title, "setting": describe(part, ctx), "implementations": {}}
    with grad_mode(needs_grad):
        outputs = {name: fn() for name, fn in runs.items()}
    reference = outputs[next(iter(runs))]
    checked = {}
    for name, out in outputs.items():
        diff = (difference or max_difference)(reference, out)
        checked[name] = diff <= TOLERANCE
        if not checked[name]:
            print(f"  {name}: DIFFERS from the toolkit (max |diff| {diff:.2e}); not timed")
            entry["implementations"][name] = {"max_difference": diff, "timed": False}
    runs = {name: fn for name, fn in runs.items() if checked[name]}
    times = interleaved(runs, rounds * ROUNDS_PER_PART[part], needs_grad)
    peaks = {name: peak_memory(part, name) if memory and part != "e" else None for name in runs}
    header = f"  {'implementation':<72} {'wall s':>7} {'cpu s':>7} {'peak MB':>8} {'|diff|':>8}"
    print(header)
    for name in runs:
        wall = statistics.median(t[0] for t in times[name])
        cpu = statistics.median(t[1] for t in times[name])
        peak = "-" if peaks[name] is None else f"{peaks[name] / 1e6:.0f}"
        diff = (difference or max_difference)(reference, outputs[name])
        print(f"  {name:<72} {wall:7.3f} {cpu:7.3f} {peak:>8} {diff:8.1e}")
        entry["implementations"][name] = {
            "median_wall_s": wall,
            "median_cpu_s": cpu,
            "peak_mb": None if peaks[name] is None else peaks[name] / 1e6,
            "max_difference": diff,
            "rounds": len(times[name]),
        }
    rows = []
    toolkits = [name for name in runs if name.startswith("toolkit")]
    peers = [name for name in runs if not name.startswith("toolkit")]
    if part in ("d", "e"):
        return overhead_summary(title.split()[0], runs, times, peaks, entry)
    for ours in toolkits:
        for peer in peers:
            wall = median_ratio(times[ours], times[peer], 0)
            cpu = median_ratio(times[ours], times[peer], 1)
            mem = None
            if peaks[ours] is not None and peaks[peer] is not None:
                mem = peaks[ours] / max(peaks[peer], 1)
            rows.append((title.split()[0], ours, peer, wall, cpu, mem))
    return rows


def overhead_summary(part, runs, times, peaks, entry: dict) -> list[tuple]:
    """Per-forward overheads (median over rounds of hooked - plain) and the ratios."""

    def extra(a: str, b: str, which: int) -> float:
        return statistics.median(x[which] - y[which] for x, y in zip(times[a], times[b]))

    ours = [extra(HOOKED, PLAIN, i) for i in (0, 1)]
    entry["registry_overhead_ms"] = {"wall": ours[0] * 1e3, "cpu": ours[1] * 1e3}
    entry["hooked / plain, cpu"] = median_ratio(times[HOOKED], times[PLAIN], 1)
    print(
        f"  registry overhead per forward: {ours[0] * 1e3:+.1f} ms wall, {ours[1] * 1e3:+.1f} ms "
        f"cpu (hooked / plain {median_ratio(times[HOOKED], times[PLAIN], 1):.3f}x cpu)"
    )
    if TRACED not in runs or HF_PLAIN not in runs:
        return []
    theirs = [extra(TRACED, HF_PLAIN, i) for i in (0, 1)]
    entry["nnsight_overhead_ms"] = {"wall": theirs[0] * 1e3, "cpu": theirs[1] * 1e3}
    entry["traced / plain, cpu"] = median_ratio(times[TRACED], times[HF_PLAIN], 1)
    print(
        f"  nnsight overhead per forward:  {theirs[0] * 1e3:+.1f} ms wall, {theirs[1] * 1e3:+.1f} "
        f"ms cpu (traced / plain {median_ratio(times[TRACED], times[HF_PLAIN], 1):.3f}x cpu)"
    )
    mem = None
    if peaks[HOOKED] is not None and peaks[TRACED] is not None:
        mem = peaks[HOOKED] / max(peaks[TRACED], 1)
    rows = [
        (
            part,
            "attach + forward",
            "nnsight trace + forward",
            median_ratio(times[HOOKED], times[TRACED], 0),
            median_ratio(times[HOOKED], times[TRACED], 1),
            mem,
        )
    ]
    if not all(t > 0 for t in ours + theirs):
        print("  (an overhead at or below zero: smaller than the timing noise of this forward)")
    else:
        rows.append(
            (
                part,
                "registry overhead (ms)",
                "nnsight tracing overhead (ms)",
                ours[0] / theirs[0],
                ours[1] / theirs[1],
                None,
            )
        )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--parts", default="abcde", help="any of a, b, c, d (saliency batch), e")
    parser.add_argument("--no-memory", action="store_true")
    parser.add_argument("--memory-of", nargs=2, metavar=("PART", "IMPLEMENTATION"))
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    if args.memory_of:
        measure_memory_child(*args.memory_of)
        return
    torch.set_num_threads(1)
    random.seed(0)
    torch.manual_seed(0)
    versions = {p: importlib.metadata.version(p) for p in ("torch", "transformers", "nnsight")}
    versions["transformer-lens"] = importlib.metadata.version("transformer-lens")
    print(
        "peers: "
        + ", ".join(f"{k} {v}" for k, v in versions.items())
        + f"; torch threads {torch.get_num_threads()}; {args.rounds} interleaved rounds"
    )
    ctx = context(args.parts)
    rows, parts = [], {}
    for part in args.parts:
        rows += report(part, ctx, args.rounds, not args.no_memory, parts)
    print("\nratios toolkit / peer (median of per-round ratios; memory: fresh subprocess each)")
    print(f"  {'':5}{'toolkit':<43}{'peer':<32}{'wall':>6}{'cpu':>6}{'memory':>7}  time <= 1.0")
    for part, ours, peer, wall, cpu, mem in rows:
        shown = "-" if mem is None else f"{mem:.2f}"
        ok = "yes" if cpu <= 1.0 else "NO"
        ours, peer = ours.removeprefix("toolkit").lstrip(":, "), peer.split(":")[0]
        print(f"  {part:5}{ours[:42]:<43}{peer[:31]:<32}{wall:6.2f}{cpu:6.2f}{shown:>7}  {ok}")
    write_results(args, ctx, rows, parts)


def write_results(args, ctx: Context, rows: list[tuple], parts: dict) -> None:
    shapes = {}
    if "saliency" in ctx.inputs:
        shapes["saliency_batch"] = list(ctx.inputs["saliency"].tokens.shape)
        shapes["short_prompt_tokens"] = ctx.inputs["short"].shape[1]
    if "sweep" in ctx.inputs:
        shapes["sweep_batch"] = list(ctx.inputs["sweep"].tokens.shape)
    if "icv_tokens" in ctx.inputs:
        shapes["generation_prompts"] = list(ctx.inputs["icv_tokens"][0].shape)
    settings = {
        "rounds": args.rounds,
        "parts": args.parts,
        "memory": not args.no_memory,
        "rounds_per_part": {p: args.rounds * ROUNDS_PER_PART[p] for p in args.parts},
        "torch_threads": torch.get_num_threads(),
        "tolerance": TOLERANCE,
        "saliency_prompts": N_SALIENCY,
        "sweep_queries": N_QUERIES,
        "layers": ctx.model.cfg.n_layers,
        "generation_prompts": len(ICV_PROMPTS),
        "new_tokens": NEW_TOKENS,
        "strength": STRENGTH,
        "hooks": ctx.model.cfg.n_layers * len(SUFFIXES),
        **shapes,
    }
    ratios = [
        {
            "part": part,
            "toolkit": ours,
            "peer": peer,
            "wall": wall,
            "cpu": cpu,
            "memory": mem,
            "time_at_most_1": cpu <= 1.0,
        }
        for part, ours, peer, wall, cpu, mem in rows
    ]
    payload = {"settings": settings, "ratios": ratios, "parts": parts}
    _results.write("peers", payload, packages=("nnsight", "pyvene"))


if __name__ == "__main__":
    main()
