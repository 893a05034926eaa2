"""The logit lens of residual vectors: what a layer's vector would predict were it the final
residual stream, read through the model's final norm and unembedding as its top tokens.

For a task vector θ (a ``TaskVector``, averaged over its demonstration sets) this shows, layer
by layer, which answer θ already spells out. At the last layer the lens of the model's own
final residual is exactly the model's next-token distribution.
"""

from __future__ import annotations

import html
from collections.abc import Sequence
from dataclasses import dataclass

import pandas as pd
import torch
from jaxtyping import Float, Int
from matplotlib.figure import Figure
from torch import Tensor

from icl_mech import validate
from icl_mech.errors import IclMechError
from icl_mech.plotting import figure as new_figure
from icl_mech.show.tokens import _visible, legend_html, token_line, token_span
from icl_mech.task_vectors.vector import TaskVector

_RGB = (49, 130, 189)
_CELL_CHARS = 12


@dataclass
class LogitLens:
    """Top tokens per layer: ``token_ids[i, r]`` is the rank-r token at ``layers[i]``."""

    name: str
    layers: list[int]
    token_ids: Int[Tensor, "layer top"]
    probabilities: Float[Tensor, "layer top"]
    tokens: list[list[str]]  # decoded, per layer and rank

    def to_frame(self) -> pd.DataFrame:
        rows = [
            (self.name, layer, rank + 1, self.tokens[i][rank], int(self.token_ids[i, rank]),
             float(self.probabilities[i, rank]))
            for i, layer in enumerate(self.layers)
            for rank in range(self.token_ids.shape[1])
        ]  # fmt: skip
        return pd.DataFrame(rows, columns=["name", "layer", "rank", "token", "token_id", "p"])

    def figure(self) -> Figure:
        return logit_lens_figure([self])

    def html(self) -> str:
        return logit_lens_html([self])

    def _repr_html_(self) -> str:
        return self.html()


def logit_lens(
    model,
    vectors: Float[Tensor, "layer d_model"],
    layers: Sequence[int] | None = None,
    top: int = 5,
    name: str = "",
) -> LogitLens:
    """Top ``top`` tokens of ``softmax(unembed(ln_final(v)))`` for each layer's vector.

    ``vectors``: ``[layer, d_model]`` with ``layers`` (default: every layer of the model, in
    order), or a ``TaskVector`` (its mean over demonstration sets, at its own layers)."""
    if isinstance(vectors, TaskVector):
        if layers is not None:
            raise IclMechError("logit_lens: a TaskVector brings its own layers; give layers=None")
        layers, name = list(vectors.layers), name or vectors.provenance.get("task", "")
        vectors = vectors.values.mean(0)
    vectors = validate.tensor(vectors, "logit_lens vectors")
    layers = validate.layers(model, layers, "logit_lens layers")
    d_model = model.cfg.d_model
    if tuple(vectors.shape) != (len(layers), d_model):
        raise IclMechError(
            f"logit_lens: vectors have shape {tuple(vectors.shape)}; expected [layer, d_model] "
            f"= {[len(layers), d_model]} for layers {layers} of {model.cfg.model_name}"
        )
    top = validate.count(top, "logit_lens top", maximum=model.cfg.d_vocab)
    with torch.no_grad():
        residual = vectors.to(model.cfg.device, model.cfg.dtype)[None]  # [1, layer, d_model]
        final_norm = getattr(model, "ln_final", None)
        normed = residual if final_norm is None else final_norm(residual)
        probabilities = model.unembed(normed)[0].float().softmax(-1)  # [layer, vocab]
        best = probabilities.topk(top, dim=-1)
    ids = best.indices.cpu()
    tokens = [[model.tokenizer.decode([i]) for i in row] for row in ids.tolist()]
    return LogitLens(name, layers, ids, best.values.cpu(), tokens)


def logit_lens_figure(lenses: Sequence[LogitLens]) -> Figure:
    """One panel per lens: layers as rows, the top tokens as text cells coloured by their
    probability."""
    if not lenses:
        raise IclMechError("logit_lens_figure: no lens given")
    rows = max(len(lens.layers) for lens in lenses)
    top = max(lens.token_ids.shape[1] for lens in lenses)
    fig, axes = new_figure(0.5 + (0.62 * top + 0.6) * len(lenses), 1.3 + 0.2 * rows, 1,
                           len(lenses), squeeze=False)  # fmt: skip
    for ax, lens in zip(axes[0], lenses):
        probabilities = lens.probabilities.numpy()
        image = ax.imshow(probabilities, cmap="Blues", vmin=0, vmax=1, aspect="auto",
                          interpolation="nearest")  # fmt: skip
        for i, tokens in enumerate(lens.tokens):
            for rank, token in enumerate(tokens):
                colour = "white" if probabilities[i, rank] > 0.6 else "black"
                ax.text(rank, i, _visible(token)[:_CELL_CHARS], ha="center", va="center",
                        fontsize=6, family="monospace", color=colour)  # fmt: skip
        ax.set_yticks(range(len(lens.layers)), lens.layers, fontsize=6)
        ax.set_xticks(range(lens.token_ids.shape[1]), range(1, lens.token_ids.shape[1] + 1))
        ax.set_xlabel("rank", fontsize=8)
        ax.set_title(lens.name or "logit lens", fontsize=9)
    axes[0][0].set_ylabel("layer")
    fig.colorbar(image, ax=list(axes[0]), shrink=0.6, label="probability")
    fig.suptitle("Logit lens: top tokens of each layer's vector (final norm, unembedding)")
    return fig


def logit_lens_html(lenses: Sequence[LogitLens]) -> str:
    """Per lens, one line per layer: its top tokens shaded by probability (self-contained)."""
    blocks = []
    for lens in lenses:
        lines = []
        for i, layer in enumerate(lens.layers):
            spans = []
            for rank, token in enumerate(lens.tokens[i]):
                p = float(lens.probabilities[i, rank])
                style = (
                    f"background:rgba({_RGB[0]},{_RGB[1]},{_RGB[2]},{p:.2f});white-space:pre;"
                    "margin-right:6px;padding:0 2px"
                )
                spans.append(token_span(token, style, f"layer {layer}, rank {rank + 1}: p={p:.3f}"))
            lines.append(token_line(f"layer {layer}", spans))
        title = html.escape(lens.name or "logit lens")
        blocks.append(f'<div style="font:bold 13px sans-serif">{title}</div>' + "".join(lines))
    shade = f"background:rgba({_RGB[0]},{_RGB[1]},{_RGB[2]},0.6)"
    legend = legend_html({"probability (shade)": shade}, roles=False)
    return f"<div>{legend}{''.join(blocks)}</div>"


__all__ = ["LogitLens", "logit_lens", "logit_lens_figure", "logit_lens_html"]
