"""In-context vector extraction (Liu et al. 2023) and the ``ICV`` data type.

For each demonstration pair (x, y) take the last-token residual stream
(``blocks.{l}.hook_resid_post``) of x and of y at every layer, flatten over layers and
difference (y − x). The ICV is the first principal component of those differences plus their
mean (the reference implementation's ``components_[0] + mean_``), with the component's sign
chosen so that it points from x to y (positive projection on the mean difference). Per-layer
slices give one steering direction per layer.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import einops
import pandas as pd
import torch
from jaxtyping import Float
from torch import Tensor
from tqdm.auto import tqdm

from icl_mech import vectors
from icl_mech.errors import IclMechError
from icl_mech.hooks import Capture, attach, points
from icl_mech.icv.texts import chunks, left_pad
from icl_mech.prompts import Demonstration

EXTRACTION_POINT = "hook_resid_post"
_TENSORS = ("vector", "mean", "component")


@dataclass(repr=False)
class ICV:
    """An in-context vector: one direction per layer, with where it came from.

    ``vector = component + mean`` (flattened over layers, then sliced back per layer).
    """

    vector: Float[Tensor, "layers d_model"]
    mean: Float[Tensor, "layers d_model"]
    component: Float[Tensor, "layers d_model"]
    layers: tuple[int, ...]
    model_name: str
    n_layers: int  # of the model it was extracted on
    d_model: int
    prefixes: tuple[str, str] = ("", "")
    n_pairs: int = 0
    explained_variance: float = math.nan  # of the first component, among the differences
    seed: int = 0
    version: str = field(default_factory=lambda: _package_version())

    def __post_init__(self):
        self.layers = tuple(int(layer) for layer in self.layers)
        self.prefixes = tuple(self.prefixes)
        expected = (len(self.layers), self.d_model)
        for name in ("vector", "mean", "component"):
            value = getattr(self, name)
            if tuple(value.shape) != expected:
                raise IclMechError(
                    f"ICV.{name} has shape {tuple(value.shape)}, expected [layers, d_model] = "
                    f"{expected} for layers {list(self.layers)}"
                )

    @property
    def hook_points(self) -> list[str]:
        return [f"blocks.{layer}.{EXTRACTION_POINT}" for layer in self.layers]

    def direction(self, layer: int) -> Float[Tensor, " d_model"]:
        """The ICV's slice at one layer (not normalised)."""
        if layer not in self.layers:
            raise IclMechError(f"layer {layer} is not among this ICV's layers {list(self.layers)}")
        return self.vector[self.layers.index(layer)]

    def check_model(self, model) -> None:
        """Error unless the model has this ICV's width and number of layers."""
        cfg = model.cfg
        if cfg.d_model != self.d_model:
            raise IclMechError(
                f"ICV of width {self.d_model} (extracted on {self.model_name}) does not fit "
                f"{cfg.model_name} of width d_model={cfg.d_model}"
            )
        if cfg.n_layers != self.n_layers:
            raise IclMechError(
                f"ICV extracted on {self.model_name} with {self.n_layers} layers does not fit "
                f"{cfg.model_name} with {cfg.n_layers} layers"
            )

    @property
    def provenance(self) -> dict:
        """Where the ICV came from (the keys of :func:`icl_mech.vectors.provenance`, plus ours)."""
        return {
            "kind": "icv",
            "model": self.model_name,
            "d_model": self.d_model,
            "n_layers": self.n_layers,
            "icl_mech_version": self.version,
            "hook_points": self.hook_points,
            "positions": "last",
            "layers": list(self.layers),
            "prefixes": list(self.prefixes),
            "n_pairs": self.n_pairs,
            "explained_variance": self.explained_variance,
            "seed": self.seed,
        }

    def save(self, path: str | os.PathLike) -> Path:
        """Write ``<stem>.safetensors`` (provenance in its header) and ``<stem>.json``."""
        tensors = {name: getattr(self, name).float() for name in _TENSORS}
        return vectors.save(path, tensors, self.provenance)

    @classmethod
    def load(cls, path: str | os.PathLike, model=None) -> ICV:
        """Read a saved ICV; with ``model``, error unless it fits that model."""
        try:
            tensors, info = vectors.load(path, kind="icv")
        except IclMechError:
            raise
        except Exception as error:  # safetensors raises its own types for a bad header
            raise IclMechError(f"{str(path)!r} is not a readable ICV file: {error}") from None
        if set(tensors) != set(_TENSORS):
            raise IclMechError(f"{str(path)!r} holds {sorted(tensors)}, not an ICV's {_TENSORS}")
        icv = cls(
            **tensors,
            layers=tuple(info["layers"]),
            model_name=info["model"],
            n_layers=info["n_layers"],
            d_model=info["d_model"],
            prefixes=tuple(info["prefixes"]),
            n_pairs=info["n_pairs"],
            explained_variance=info["explained_variance"],
            seed=info["seed"],
            version=info["icl_mech_version"],
        )
        if model is not None:
            icv.check_model(model)
        return icv

    @contextmanager
    def apply(
        self, model, strength: float = 0.1, layers: Sequence[int] | None = None, positions="all"
    ) -> Iterator:
        """Steer the model with this ICV inside the block (see ``ICVSteering``)."""
        from icl_mech.icv.steering import ICVSteering

        with attach(model, ICVSteering(self, strength, layers=layers, positions=positions)):
            yield model

    def to_frame(self) -> pd.DataFrame:
        """Per-layer norms of the vector, the mean difference and their cosine."""
        cosine = torch.nn.functional.cosine_similarity(self.vector, self.mean, dim=-1)
        return pd.DataFrame(
            {
                "layer": list(self.layers),
                "vector_norm": self.vector.norm(dim=-1).tolist(),
                "mean_norm": self.mean.norm(dim=-1).tolist(),
                "component_norm": self.component.norm(dim=-1).tolist(),
                "cos_vector_mean": cosine.tolist(),
            }
        )

    def __repr__(self) -> str:
        return (
            f"ICV(model={self.model_name!r}, layers={len(self.layers)}, d_model={self.d_model}, "
            f"n_pairs={self.n_pairs}, explained_variance={self.explained_variance:.3f})"
        )


def _package_version() -> str:
    from icl_mech import __version__

    return __version__


def as_pairs(pairs: Sequence) -> list[tuple[str, str]]:
    """(x, y) tuples from tuples or ``Demonstration``s; errors on empty or malformed input."""
    if pairs is None or len(pairs) == 0:
        raise IclMechError("extract_icv: the list of demonstration pairs is empty")
    out = []
    for i, pair in enumerate(pairs):
        if isinstance(pair, Demonstration):
            pair = (pair.x, pair.y)
        if not (
            isinstance(pair, (tuple, list))
            and len(pair) == 2
            and all(isinstance(t, str) and t.strip() for t in pair)
        ):
            raise IclMechError(
                f"pair {i} must be (x, y), two non-empty texts, or a Demonstration; got {pair!r}"
            )
        out.append((pair[0], pair[1]))
    return out


def last_token_states(
    model,
    texts: Sequence[str],
    layers: Sequence[int],
    batch_size: int = 32,
    progress: bool = False,
) -> Float[Tensor, "n layers d_model"]:
    """``hook_resid_post`` at each text's last token for the given layers, batched.

    Texts are grouped by length to keep padding short; padding changes no number (the
    attention mask hides it), so the grouping does not change the result.
    """
    names = points(model, EXTRACTION_POINT, layers)
    order = sorted(range(len(texts)), key=lambda i: len(model.tokenizer.encode(texts[i])))
    groups = chunks(order, batch_size)
    states = torch.empty(len(texts), len(names), model.cfg.d_model, dtype=torch.float32)
    for group in tqdm(groups, desc="ICV states", disable=not progress, leave=False):
        batch = left_pad(model, [texts[i] for i in group])
        capture = Capture(names, positions="last")
        with torch.no_grad(), attach(model, capture):
            model(batch.tokens, attention_mask=batch.attention_mask, stop_at_layer=max(layers) + 1)
        stacked = torch.stack([capture.activations[n] for n in names], dim=1)
        states[torch.tensor(group)] = stacked.float().cpu()
    return states


def first_component(
    differences: Float[Tensor, "n features"],
) -> tuple[Float[Tensor, " features"], Float[Tensor, " features"], float]:
    """(mean, first principal component with sign towards the mean, explained variance ratio).

    A single pair has no spread: its component is taken as the unit mean difference.
    """
    data = differences.double()
    mean = data.mean(dim=0)
    centred = data - mean
    if data.shape[0] == 1 or not bool(centred.abs().max() > 0):
        return mean.float(), (mean / mean.norm().clamp_min(1e-12)).float(), math.nan
    _, singular, vh = torch.linalg.svd(centred, full_matrices=False)
    component = vh[0]
    if component @ mean < 0:
        component = -component
    ratio = float(singular[0] ** 2 / (singular**2).sum())
    return mean.float(), component.float(), ratio


def extract_icv(
    model,
    pairs: Sequence[tuple[str, str] | Demonstration],
    *,
    layers: Sequence[int] | None = None,
    prefixes: tuple[str, str] = ("", ""),
    batch_size: int = 32,
    seed: int = 0,
    progress: bool = False,
) -> ICV:
    """Extract an in-context vector from (x, y) pairs; ``x`` is the source style, ``y`` the target.

    ``prefixes`` are prepended to x and to y (the reference code's ``prefix``); ``layers``
    defaults to every layer. ``seed`` is recorded as provenance (of how the pairs were drawn);
    extraction itself is deterministic.
    """
    pairs = as_pairs(pairs)
    layers = list(range(model.cfg.n_layers)) if layers is None else sorted(set(layers))
    if not layers:
        raise IclMechError("extract_icv: no layers given")
    texts = [prefixes[0] + x for x, _ in pairs] + [prefixes[1] + y for _, y in pairs]
    states = last_token_states(model, texts, layers, batch_size, progress)
    x_states, y_states = states[: len(pairs)], states[len(pairs) :]
    differences = einops.rearrange(y_states - x_states, "n layers d -> n (layers d)")
    mean, component, ratio = first_component(differences)
    per_layer = "(layers d) -> layers d"
    return ICV(
        vector=einops.rearrange(component + mean, per_layer, layers=len(layers)),
        mean=einops.rearrange(mean, per_layer, layers=len(layers)),
        component=einops.rearrange(component, per_layer, layers=len(layers)),
        layers=tuple(layers),
        model_name=model.cfg.model_name,
        n_layers=model.cfg.n_layers,
        d_model=model.cfg.d_model,
        prefixes=tuple(prefixes),
        n_pairs=len(pairs),
        explained_variance=ratio,
        seed=seed,
    )
