"""A task vector is data: θ(S) at every layer, with its provenance (``icl_mech.vectors``).

``values[s, i]`` is the residual stream (``blocks.{layers[i]}.hook_resid_post``) at the last
token of demonstration set ``s`` followed by a dummy query, averaged over the dummy queries
(Hendel et al. 2023). A vector of kind ``"mean-difference"`` holds instead the mean ICL state
minus the mean zero-shot state (function-vector style), meant to be added.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

import torch
from jaxtyping import Float
from torch import Tensor

from icl_mech import display
from icl_mech.errors import IclMechError
from icl_mech.positions import Positions
from icl_mech.task_vectors.patching import AddToResidual, ReplaceResidual
from icl_mech.vectors import Vector, model_name, package_version

POINT_SUFFIX = "hook_resid_post"
Mode = Literal["replace", "add"]


@dataclass(repr=False)
class TaskVector(Vector):
    """θ per demonstration set and layer; ``provenance`` says where it came from.

    Its ``kind`` is ``provenance["kind"]``: ``"theta"`` (default) or ``"mean-difference"``.
    """

    KINDS = ("theta", "mean-difference", "state-vector")
    TENSORS = ("values",)

    values: Float[Tensor, "sets layer d_model"]
    layers: tuple[int, ...]
    provenance: dict = field(default_factory=dict)

    def __post_init__(self):
        self.layers = tuple(int(layer) for layer in self.layers)
        if self.values.ndim != 3 or self.values.shape[1] != len(self.layers):
            raise IclMechError(
                f"TaskVector values must have shape [sets, {len(self.layers)} layers, d_model], "
                f"got {tuple(self.values.shape)}"
            )
        if self.kind not in self.KINDS:
            raise IclMechError(
                f"TaskVector kind must be one of {self.KINDS}, got provenance kind {self.kind!r}"
            )
        saved = self.provenance.get("d_model")
        if saved is not None and int(saved) != self.d_model:
            raise IclMechError(
                f"TaskVector values have d_model {self.d_model} but the provenance says {saved}"
            )
        super().__post_init__()

    @property
    def kind(self) -> str:
        return self.provenance.get("kind", self.KINDS[0])

    def __repr__(self) -> str:
        task = self.provenance.get("task", "?")
        return (
            f"TaskVector(kind={self.kind!r}, task={task!r}, sets={len(self)}, "
            f"layers={self.layers[0]}..{self.layers[-1]}, d_model={self.d_model})"
        )

    def _repr_html_(self) -> str:
        """Per layer the mean norm of θ over demonstration sets and, with several sets, their
        mean pairwise cosine (how much the sets agree), as a table and a figure."""
        return display.html(self)

    def __len__(self) -> int:
        return self.values.shape[0]

    @property
    def d_model(self) -> int:
        return self.values.shape[-1]

    def at(self, layer: int) -> Float[Tensor, "sets d_model"]:
        if layer not in self.layers:
            raise IclMechError(f"this task vector holds layers {list(self.layers)}, not {layer}")
        return self.values[:, self.layers.index(layer)]

    def select(self, sets: slice | Sequence[int]) -> TaskVector:
        """The vectors of some demonstration sets only."""
        index = sets if isinstance(sets, slice) else torch.as_tensor(list(sets), dtype=torch.long)
        return TaskVector(self.values[index], self.layers, dict(self.provenance))

    def mean(self) -> TaskVector:
        """One vector: the average over demonstration sets."""
        return TaskVector(self.values.mean(0, keepdim=True), self.layers, dict(self.provenance))

    OWN_KEYWORDS = ("mode",)

    def build(
        self,
        *,
        layers: tuple[int, ...] | None,
        mode: Mode | None = None,
        strength: float = 1.0,
        positions: Positions = "last",
    ) -> ReplaceResidual | AddToResidual:
        """Patch this vector in after ``layers``: ``mode="replace"`` (θ's default; one layer,
        Hendel et al.'s patch, ``strength`` s moves the residual to ``(1 - s)·x + s·θ``) or
        ``"add"`` (the mean difference's default; ``x + s·v`` at every given layer).

        With one set the same vector goes to every row; with several, set ``b`` goes to row ``b``.
        """
        mode = mode or ("add" if self.kind == "mean-difference" else "replace")
        if not layers:
            raise TypeError(
                f"TaskVector ({self.kind}) needs layer= (or layers= with mode='add'); it holds "
                f"layers {self.layers[0]}..{self.layers[-1]}"
            )
        by_layer = {layer: self._rows_at(layer) for layer in layers}
        if mode == "replace":
            if len(layers) != 1:
                raise IclMechError(f"replacement patches one layer, got layers {list(layers)}")
            return ReplaceResidual(by_layer[layers[0]], layers[0], positions, strength)
        if mode == "add":
            return AddToResidual(by_layer, strength, positions)
        raise IclMechError(f"mode must be 'replace' or 'add', got {mode!r}")

    def tensors(self) -> dict[str, Tensor]:
        return {"values": self.values}

    def metadata(self) -> dict:
        hook_points = [f"blocks.{layer}.{POINT_SUFFIX}" for layer in self.layers]
        return {
            "hook_points": hook_points,
            "positions": "last",
            **self.provenance,
            "kind": self.kind,
            "layers": list(self.layers),
            "d_model": self.d_model,
        }

    @classmethod
    def from_data(cls, tensors: dict[str, Tensor], provenance: dict) -> TaskVector:
        return cls(tensors["values"], tuple(provenance["layers"]), provenance)

    def _rows_at(self, layer: int) -> Float[Tensor, "*sets d_model"]:
        """``[d_model]`` for a single set (shared by every row), else ``[sets, d_model]``."""
        rows = self.at(layer)
        return rows[0] if len(self) == 1 else rows


def provenance(model, task, layers: Sequence[int], seed: int, **extra) -> dict:
    """What a saved vector needs to say about its origin."""
    return {
        "model": model_name(model),
        "d_model": model.cfg.d_model,
        "n_layers": model.cfg.n_layers,
        "hook_points": [f"blocks.{layer}.{POINT_SUFFIX}" for layer in layers],
        "positions": "last",
        "task": task.name,
        "template": task.template,
        "answer_prefix": task.answer_prefix,
        "separator": task.separator,
        "seed": seed,
        "icl_mech_version": package_version(),
        **extra,
    }
