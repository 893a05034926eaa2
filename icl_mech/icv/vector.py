"""The ``ICV`` data type: one in-context direction per layer, with where it came from.

``vector = component + mean`` (flattened over layers, then sliced back per layer), taken from
``blocks.{l}.hook_resid_post`` at the last token (see :mod:`icl_mech.icv.extract`). Saving,
loading and ``apply`` come from :class:`icl_mech.vectors.Vector`; ``intervention`` builds the
norm-preserving ``ICVSteering`` of every layer's MLP output.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import pandas as pd
import torch
from jaxtyping import Float
from torch import Tensor

from icl_mech import display
from icl_mech.errors import IclMechError
from icl_mech.icv.steering import ICVSteering
from icl_mech.positions import Positions
from icl_mech.vectors import Vector, package_version

EXTRACTION_POINT = "hook_resid_post"


@dataclass(repr=False)
class ICV(Vector):
    """An in-context vector: one direction per layer, with where it came from."""

    KINDS = ("icv",)
    TENSORS = ("vector", "mean", "component")

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
    seed: int | None = None  # the seed that drew the pairs, where one did
    version: str = field(default_factory=package_version)

    def __post_init__(self):
        self.layers = tuple(int(layer) for layer in self.layers)
        self.prefixes = tuple(self.prefixes)
        expected = (len(self.layers), self.d_model)
        for name in self.TENSORS:
            value = getattr(self, name)
            if tuple(value.shape) != expected:
                raise IclMechError(
                    f"ICV.{name} has shape {tuple(value.shape)}, expected [layers, d_model] = "
                    f"{expected} for layers {list(self.layers)}"
                )
        super().__post_init__()

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
        self.check_shape(model)

    @property
    def provenance(self) -> dict:
        """Where the ICV came from, as saved."""
        return self.record()

    def build(
        self,
        *,
        layers: tuple[int, ...] | None,
        strength: float = 0.1,
        positions: Positions = "all",
    ) -> ICVSteering:
        """``ICVSteering`` of every (or the given) layer's MLP output with strength λ."""
        return ICVSteering(self, strength, layers=layers, positions=positions)

    def tensors(self) -> dict[str, Tensor]:
        return {name: getattr(self, name).float() for name in self.TENSORS}

    def metadata(self) -> dict:
        return {
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

    @classmethod
    def from_data(cls, tensors: dict[str, Tensor], provenance: dict) -> ICV:
        ratio = provenance["explained_variance"]
        return cls(
            **tensors,
            layers=tuple(provenance["layers"]),
            model_name=provenance["model"],
            n_layers=provenance["n_layers"],
            d_model=provenance["d_model"],
            prefixes=tuple(provenance["prefixes"]),
            n_pairs=provenance["n_pairs"],
            explained_variance=math.nan if ratio is None else float(ratio),
            seed=provenance["seed"],
            version=provenance["icl_mech_version"],
        )

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

    def _repr_html_(self) -> str:
        """The ICV's card (per-layer norms and cosines), drawn by :mod:`icl_mech.icv.figures`."""
        return display.html(self)

    def __repr__(self) -> str:
        return (
            f"ICV(model={self.model_name!r}, layers={len(self.layers)}, d_model={self.d_model}, "
            f"n_pairs={self.n_pairs}, explained_variance={self.explained_variance:.3f})"
        )
