"""The layer sweep: patch the query's last token at every layer, from one cached prefix.

Patching the last token cannot change the keys and values of the earlier tokens, so the
query's prefix runs once (filling a key/value cache). The patched last tokens
then climb a staircase: the rows patched after block ``l`` enter the batch there, with the
patched residual as their input (``θ``, or the unpatched residual plus ``strength·θ``), and every
block runs once over the rows that have entered, against the prefix cache repeated to their
number. Each row runs only the blocks above its layer: the least compute of an exact sweep
(see ``benchmarks/task_vectors.py``). ``naive_sweep_logits`` (one full patched forward per
layer, through registry items) is the reference it must equal. Both backends climb the same
staircase (:func:`icl_mech.resume.forward_from` runs one block on either).

``forced_sweep_logits`` appends tokens after the last one (teacher forcing, for answers that
start with whitespace-only tokens, :mod:`icl_mech.scoring`): they climb the same staircase
beside the patched token (entering with their unpatched residual), and the logits of every
appended step come back; the patch still touches the prompt's last token only.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import einops
import pandas as pd
import torch
from jaxtyping import Float, Int
from torch import Tensor

from icl_mech.errors import IclMechError
from icl_mech.hooks import attach, points, run
from icl_mech.interventions import Capture
from icl_mech.kv_cache import KVCache
from icl_mech.prompt_batch import PromptBatch
from icl_mech.resume import forward_from
from icl_mech.task_vectors.patching import SUFFIX, AddToResidual, ReplaceResidual
from icl_mech.task_vectors.vector import Mode

Vectors = Float[Tensor, "batch layer d_model"] | Float[Tensor, "layer d_model"]


def sweep_logits(
    model,
    batch: PromptBatch,
    vectors: Vectors,
    mode: Mode = "replace",
    layers: Sequence[int] | None = None,
    strength: float = 1.0,
    groups: int = 1,
) -> Float[Tensor, "layer batch vocab"]:
    """Last-token logits with ``vectors[:, i]`` patched in at ``layers[i]``, for every i.

    ``groups=g`` splits the layers into g consecutive groups, one staircase each: the same
    numbers and compute, at most ``len(layers) / g`` patched copies of the batch in memory.
    """
    return _sweep(model, batch, vectors, mode, layers, strength, groups, None)[:, :, -1]


def forced_sweep_logits(
    model,
    batch: PromptBatch,
    vectors: Vectors,
    forced: Int[Tensor, "batch extra"],
    mode: Mode = "replace",
    layers: Sequence[int] | None = None,
    strength: float = 1.0,
    groups: int = 1,
) -> Float[Tensor, "layer batch step vocab"]:
    """``sweep_logits`` with ``forced`` tokens appended after the prompt: the logits at the
    prompt's last token (step 0) and after each appended token, the patch on the prompt only."""
    if forced.ndim != 2 or forced.shape[0] != len(batch):
        raise IclMechError(f"forced tokens: [{len(batch)}, extra], got {tuple(forced.shape)}")
    return _sweep(model, batch, vectors, mode, layers, strength, groups, forced)


def _sweep(model, batch, vectors, mode, layers, strength, groups, forced) -> Tensor:
    layers, rows = _validate(model, batch, vectors, mode, layers)
    last = batch.tokens[:, -1:]
    if forced is not None:
        last = torch.cat([last, forced.to(last)], dim=1)
    if not 1 <= groups <= len(layers):
        raise IclMechError(f"groups must be between 1 and {len(layers)} layers, got {groups}")
    chunks = [c.tolist() for c in torch.arange(len(layers)).tensor_split(groups)]
    with torch.no_grad():
        cache = prefix_cache(model, batch)
        entering = _entering_rows(model, last, cache, rows, layers, mode, strength)
        out = [_staircase(model, cache, [entering[i] for i in chunk], [layers[i] for i in chunk])
               for chunk in chunks]  # fmt: skip
    return torch.cat(out)


def naive_sweep_logits(
    model,
    batch: PromptBatch,
    vectors: Vectors,
    mode: Mode = "replace",
    layers: Sequence[int] | None = None,
    strength: float = 1.0,
) -> Float[Tensor, "layer batch vocab"]:
    """The reference: one full patched forward of the batch per layer."""
    layers, rows = _validate(model, batch, vectors, mode, layers)
    out = []
    with torch.no_grad():
        for i, layer in enumerate(layers):
            if mode == "replace":
                item = ReplaceResidual(rows[:, i], layer)
            else:
                item = AddToResidual({layer: rows[:, i]}, strength)
            out.append(run(model, batch, item)[:, -1])
    return torch.stack(out)


def _validate(model, batch, vectors, mode, layers) -> tuple[list[int], Tensor]:
    if mode not in ("replace", "add"):
        raise IclMechError(f"mode must be 'replace' or 'add', got {mode!r}")
    layers = list(range(model.cfg.n_layers)) if layers is None else list(layers)
    if not layers:
        raise IclMechError("the layer sweep needs at least one layer")
    points(model, SUFFIX, layers)
    if any(b <= a for a, b in zip(layers, layers[1:])):
        raise IclMechError(f"sweep layers must be strictly increasing, got {layers}")
    if vectors.ndim == 2:
        vectors = einops.repeat(vectors, "layer d -> batch layer d", batch=len(batch))
    expected = (len(batch), len(layers), model.cfg.d_model)
    if tuple(vectors.shape) != expected:
        raise IclMechError(
            f"sweep vectors have shape {tuple(vectors.shape)}; expected [batch, layer, d_model] = "
            f"{list(expected)} (or [layer, d_model]) for {model.cfg.model_name} at {SUFFIX}"
        )
    return layers, vectors.to(model.cfg.device, model.cfg.dtype)


def prefix_cache(model, batch: PromptBatch) -> KVCache:
    """The frozen key/value cache of every token of the batch but the last."""
    cache = KVCache.new(model, len(batch))
    return cache.fill(model, batch.tokens[:, :-1], batch.attention_mask[:, :-1]).freeze()


def _entering_rows(model, last, cache, rows, layers, mode, strength) -> list[Tensor]:
    """Per layer, the ``[batch, step, d_model]`` residual its patched rows carry out of the
    block: at the last token ``θ``, or (``"add"``) its unpatched residual there plus
    ``strength·θ``; at forced tokens (step > 0), their unpatched residual."""
    if mode == "replace" and last.shape[1] == 1:
        return [rows[:, i, None] for i in range(len(layers))]
    names = points(model, SUFFIX, layers)
    capture = Capture(names, positions="all")
    with attach(model, capture):
        forward_from(model, last, start=0, stop=layers[-1] + 1,
                     attention_mask=torch.ones_like(last), cache=cache)  # fmt: skip
    out = []
    for i, name in enumerate(names):
        seen = capture.activations[name]  # [batch, step, d_model], unpatched
        first = rows[:, i] if mode == "replace" else seen[:, 0] + strength * rows[:, i]
        out.append(torch.cat([first[:, None], seen[:, 1:]], dim=1))
    return out


def _staircase(model, cache: KVCache, entering: list[Tensor], layers: list[int]) -> Tensor:
    """Logits ``[len(layers), batch, step, vocab]``: block j runs once over the rows of every
    layer below j (layer-major), against its prefix cache entry repeated to their number."""
    size, n_layers, n_steps = entering[0].shape[0], model.cfg.n_layers, entering[0].shape[1]
    residual, steps = entering[0], 1
    for block in range(layers[0] + 1, n_layers + 1):
        copies = residual.shape[0] // size
        mask = torch.ones(len(residual), n_steps, dtype=torch.long, device=residual.device)
        if block < n_layers:
            step = cache.repeat(copies, layers=[block])
            residual = forward_from(model, residual, start=block, stop=block + 1,
                                    attention_mask=mask, cache=step)  # fmt: skip
        else:
            logits = forward_from(model, residual, start=n_layers, attention_mask=mask)
        if steps < len(layers) and layers[steps] == block:
            residual, steps = torch.cat([residual, entering[steps]]), steps + 1
    return einops.rearrange(
        logits, "(layer batch) step vocab -> layer batch step vocab", batch=size
    )


@dataclass
class LayerSweep:
    """First-token accuracy of the patched zero-shot queries at every layer."""

    task: str
    mode: str
    split: str
    layers: list[int]
    n_layers: int
    accuracy: list[float]
    n_queries: int

    @property
    def best_layer(self) -> int:
        """The earliest layer with the highest accuracy."""
        return self.layers[max(range(len(self.layers)), key=lambda i: (self.accuracy[i], -i))]

    @property
    def best_fraction(self) -> float:
        """Depth of the best layer: layers run before the patched residual / all layers."""
        return (self.best_layer + 1) / self.n_layers

    def at(self, layer: int) -> float:
        return self.accuracy[self.layers.index(layer)]

    def to_frame(self) -> pd.DataFrame:
        return pd.DataFrame(
            {
                "task": self.task,
                "mode": self.mode,
                "split": self.split,
                "layer": self.layers,
                "depth": [(layer + 1) / self.n_layers for layer in self.layers],
                "accuracy": self.accuracy,
                "n_queries": self.n_queries,
            }
        )
