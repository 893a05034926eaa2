"""Where the atlas's vectors live relative to each other: the cosine of every pair at every
layer (each vector as it sits in the residual stream: θ and the state vectors as states, the
differences as added, I2CL as what its context vectors add, ``b_attn·cv_attn + b_mlp·cv_mlp``),
and each vector's logit lens at its layer."""

from __future__ import annotations

from itertools import combinations

import pandas as pd
import torch
from torch import Tensor

from icl_mech.resume import unembed


def cosines(vectors: dict[str, Tensor]) -> pd.DataFrame:
    """One row per pair of vectors (in the given order) and layer: their cosine similarity."""
    rows = []
    for a, b in combinations(vectors, 2):
        values = torch.nn.functional.cosine_similarity(
            vectors[a].float(), vectors[b].float(), dim=-1
        )
        rows += [{"a": a, "b": b, "layer": layer, "cosine": float(c)}
                 for layer, c in enumerate(values)]  # fmt: skip
    return pd.DataFrame(rows, columns=["a", "b", "layer", "cosine"])


def lens(model, vectors: dict[str, Tensor], layers: dict[str, int], top: int) -> pd.DataFrame:
    """Each vector's top tokens through the final norm and the unembedding, at its layer."""
    rows = []
    with torch.no_grad():
        for name, values in vectors.items():
            layer = layers[name]
            residual = values[layer].to(model.cfg.device, model.cfg.dtype)[None]
            probabilities = unembed(model, residual).float().softmax(-1)[0]
            best = probabilities.topk(top)
            for rank, (p, token) in enumerate(zip(best.values.tolist(), best.indices.tolist())):
                text = repr(model.tokenizer.decode([token]))  # quoted: " " and "\n" show
                rows.append({"vector": name, "layer": layer, "rank": rank + 1, "token": text,
                             "probability": p})  # fmt: skip
    return pd.DataFrame(rows)
