"""The cached layer sweep, scored by :mod:`icl_mech.scoring` (first content token, greedily).

Rows whose answer has no leading whitespace-only token are scored from the plain sweep of the
whole batch, exactly as before; rows that have such tokens are swept once more on their own
with those tokens appended (``forced_sweep_logits``, teacher forcing), which is exact for
greedy decoding. A batch of only the latter skips the plain sweep.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from jaxtyping import Bool
from torch import Tensor

from icl_mech import scoring
from icl_mech.prompt_batch import PromptBatch
from icl_mech.task_vectors.sweep import Vectors, forced_sweep_logits, sweep_logits
from icl_mech.task_vectors.vector import Mode


def sweep_hits(
    model,
    batch: PromptBatch,
    golds: Sequence[scoring.Gold],
    vectors: Vectors,
    mode: Mode = "replace",
    layers: Sequence[int] | None = None,
    strength: float = 1.0,
    groups: int = 1,
) -> Bool[Tensor, "layer batch"]:
    """Per swept layer and row: the patched run answers right (``sweep_logits`` arguments)."""
    bare = scoring.bare_rows(golds)
    n_layers = model.cfg.n_layers if layers is None else len(layers)
    hits = torch.zeros(n_layers, len(batch), dtype=torch.bool)
    if len(bare) < len(golds):
        logits = sweep_logits(model, batch, vectors, mode, layers, strength, groups)
        content = torch.tensor([g.content for g in golds])
        hits = logits.argmax(-1).cpu() == content
    if bare:
        chosen = [golds[i] for i in bare]
        rows = vectors if vectors.ndim == 2 else vectors[bare]
        forced = scoring.forced_tokens(chosen)
        logits = forced_sweep_logits(
            model, scoring.subset(batch, bare), rows, forced, mode, layers, strength, groups
        )
        hits[:, bare] = scoring.logit_hits(logits, chosen)
    return hits
