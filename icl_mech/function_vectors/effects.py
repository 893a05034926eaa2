"""``IndirectEffect``: every head's indirect effect per shuffled prompt, its mean output over the
clean prompts, and intervals (one shared bootstrap over the shuffled prompts)."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from jaxtyping import Float
from torch import Tensor

from icl_mech import stats
from icl_mech.errors import IclMechError
from icl_mech.function_vectors.heads import Head


@dataclass
class IndirectEffect:
    """``effects[p, i, h]``: P(correct answer, :mod:`icl_mech.scoring`) of shuffled prompt p
    with head h of layer ``layers[i]`` patched to its mean clean output, minus the same
    probability unpatched."""

    task: str
    layers: tuple[int, ...]
    mean_outputs: Float[Tensor, "layer head d_head"] = field(repr=False)  # over clean prompts
    effects: Float[Tensor, "prompt layer head"] = field(repr=False)
    shuffled_probability: Float[Tensor, " prompt"] = field(repr=False)  # unpatched
    n_clean: int
    forwards: int = 0  # forward passes run to compute it (a backward counts as two)
    method: str = "exact"  # or "attribution": the first-order estimate of every effect

    def __repr__(self) -> str:
        best = ", ".join(f"L{layer}H{head}" for layer, head in self.top(3))
        return (
            f"IndirectEffect(task={self.task!r}, layers={self.layers[0]}..{self.layers[-1]}, "
            f"heads={self.n_heads}, prompts={self.n_prompts}, method={self.method!r}, "
            f"top=[{best}])"
        )

    @property
    def n_heads(self) -> int:
        return self.effects.shape[-1]

    @property
    def n_prompts(self) -> int:
        return self.effects.shape[0]

    @property
    def mean(self) -> Float[Tensor, "layer head"]:
        """The indirect effect of every head: the mean over the shuffled prompts."""
        return self.effects.mean(0)

    def top(self, k: int = 10) -> list[Head]:
        """The ``k`` heads with the largest indirect effect, largest first (ties: lower layer,
        then lower head)."""
        n = len(self.layers) * self.n_heads
        if isinstance(k, bool) or not isinstance(k, int) or not 0 <= k <= n:
            raise IclMechError(
                f"top k={k!r}: there are {n} heads ({len(self.layers)} layers x {self.n_heads} "
                f"heads) in this indirect effect of {self.task!r}; choose k in 0..{n}"
            )
        mean = self.mean.tolist()
        ranked = sorted(
            ((i, h) for i in range(len(self.layers)) for h in range(self.n_heads)),
            key=lambda ih: (-mean[ih[0]][ih[1]], ih),
        )
        return [(self.layers[i], h) for i, h in ranked[:k]]

    def output_of(self, head: Head) -> Float[Tensor, " d_head"]:
        """A head's mean output over the clean prompts."""
        layer, index = head
        if layer not in self.layers or not 0 <= index < self.n_heads:
            raise IclMechError(
                f"head {head} is not in this indirect effect (layers {list(self.layers)}, heads "
                f"0..{self.n_heads - 1})"
            )
        return self.mean_outputs[self.layers.index(layer), index]

    def intervals(self, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(mean, low, high), each ``[layer, head]``: 95% bootstrap intervals over the shuffled
        prompts (one set of draws for every head)."""
        flat = self.effects.reshape(self.n_prompts, -1).numpy()
        point, low, high, _ = stats.bootstrap_columns(flat, seed=seed)
        shape = (len(self.layers), self.n_heads)
        return point.reshape(shape), low.reshape(shape), high.reshape(shape)

    def estimate(self, head: Head) -> stats.Estimate:
        layer, index = head
        self.output_of(head)  # checks the head
        values = self.effects[:, self.layers.index(layer), index].numpy()
        return stats.bootstrap(values)

    def to_frame(self) -> pd.DataFrame:
        """One row per head: its indirect effect with a 95% interval, and its rank (1 = top)."""
        point, low, high = self.intervals()
        rank = {head: r + 1 for r, head in enumerate(self.top(len(self.layers) * self.n_heads))}
        rows = [
            {
                "task": self.task,
                "layer": layer,
                "head": h,
                "indirect_effect": float(point[i, h]),
                "indirect_effect_low": float(low[i, h]),
                "indirect_effect_high": float(high[i, h]),
                "n": self.n_prompts,
                "rank": rank[(layer, h)],
            }
            for i, layer in enumerate(self.layers)
            for h in range(self.n_heads)
        ]
        return pd.DataFrame(rows)

    def top_frame(self, k: int = 10) -> pd.DataFrame:
        """The top ``k`` heads with their effect as ``"0.06 [0.03, 0.09]"``."""
        rows = []
        for rank, head in enumerate(self.top(k), start=1):
            estimate = self.estimate(head)
            rows.append(
                {"task": self.task, "rank": rank, "layer": head[0], "head": head[1]}
                | estimate.as_dict("indirect_effect")
                | {"effect": estimate.format(3)}
            )
        return pd.DataFrame(rows)
