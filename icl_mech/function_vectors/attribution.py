"""Attribution patching of every head's indirect effect (Nanda 2023; Syed et al. 2023).

The exact indirect effect of head (l, h) on a shuffled prompt is P(correct | z_lh := mean) −
P(correct), with z_lh the head's output at the prompt's last token and ``mean`` its mean over
the clean prompts. Its first-order estimate around the shuffled run is

    (mean − z_lh) · ∂P(correct)/∂z_lh

for every head at once: one forward and one backward of the batch, no parameter gradient.

Only the last token is patched, so only the last token (and the teacher-forced answer tokens
after it) depend on z_lh: the prefix runs once without a graph into a key/value cache, and the
graph, the forward and the backward cover the last token alone. Memory is that of a forward.

What the first order ignores (Kramár et al. 2024, AtP*): a patch that moves P(correct) far
along a saturated softmax (P near 0 or 1) is underestimated or missed, and heads whose direct
and indirect paths cancel look smaller than they are (or large when they are not). The heads
it ranks high are candidates: :func:`icl_mech.head_roles.verified` recomputes the exact effect
of the layers that hold them (a pass per such layer and batch on the cached path), which is
the cheap fix here.
"""

from __future__ import annotations

from collections.abc import Sequence

import einops
import torch
from jaxtyping import Float, Int
from torch import Tensor

from icl_mech import scoring
from icl_mech.function_vectors.heads import head_point
from icl_mech.gradients import frozen_parameters, track_gradients
from icl_mech.hooks import HookSpec, attach, points
from icl_mech.prompt_batch import PromptBatch
from icl_mech.task_vectors.sweep import prefix_cache

# passes per scored batch: prefix, last-token forward, and its backward (counted as two)
PASSES = 4


def batch_estimates(
    model,
    batch: PromptBatch,
    gold: Sequence[scoring.Gold],
    means: Float[Tensor, "layer head d_head"],
    layers: list[int],
    forced: Int[Tensor, "batch extra"] | None = None,
) -> tuple[Float[Tensor, " batch"], Float[Tensor, "layer head batch"]]:
    """(P(correct) unpatched, its first-order estimate with each head patched to its mean)."""
    last = batch.tokens[:, -1:]
    if forced is not None:
        last = torch.cat([last, forced.to(last)], dim=1)
    with torch.no_grad():
        cache = prefix_cache(model, batch)
    outputs: dict[int, Tensor] = {}

    def keep(layer: int):
        def read(z, hook):
            outputs[layer] = z
            return z  # handed back: the bridge continues with what its hook returns

        return read

    specs = [HookSpec(points(model, "hook_resid_pre", [0])[0], track_gradients)]
    specs += [HookSpec(head_point(layer), keep(layer)) for layer in layers]
    with torch.enable_grad(), frozen_parameters(model), attach(model, *specs):
        logits = cache.forward(model, last, torch.ones_like(last))
        probability = scoring.logit_probability(logits, gold)
        grads = torch.autograd.grad(probability.sum(), [outputs[layer] for layer in layers])
    z = torch.stack([outputs[layer][:, 0].detach() for layer in layers]).cpu()
    slope = torch.stack([g[:, 0] for g in grads]).cpu()  # [layer, batch, head, d_head]
    step = einops.rearrange(means.to(z), "layer head d -> layer 1 head d") - z
    change = einops.einsum(
        step, slope, "layer batch head d, layer batch head d -> layer head batch"
    )
    unpatched = probability.detach().cpu()
    return unpatched, unpatched + change.to(unpatched.dtype)
