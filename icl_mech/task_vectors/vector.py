"""A task vector is data: θ(S) at every layer, with its provenance, saved as safetensors + JSON.

``values[s, i]`` is the residual stream (``blocks.{layers[i]}.hook_resid_post``) at the last
token of demonstration set ``s`` followed by a dummy query, averaged over the dummy queries
(Hendel et al. 2023). A vector of kind ``"mean-difference"`` holds instead the mean ICL state
minus the mean zero-shot state (function-vector style), meant to be added.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import torch
from jaxtyping import Float
from safetensors.torch import load_file, save_file
from torch import Tensor

from icl_mech.errors import IclMechError
from icl_mech.hooks import attach, points
from icl_mech.positions import Positions
from icl_mech.task_vectors.patching import AddToResidual, ReplaceResidual

POINT_SUFFIX = "hook_resid_post"
Mode = Literal["replace", "add"]


@dataclass(repr=False)
class TaskVector:
    """θ per demonstration set and layer; ``provenance`` says where it came from."""

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

    def __repr__(self) -> str:
        kind = self.provenance.get("kind", "theta")
        task = self.provenance.get("task", "?")
        return (
            f"TaskVector(kind={kind!r}, task={task!r}, sets={len(self)}, "
            f"layers={self.layers[0]}..{self.layers[-1]}, d_model={self.d_model})"
        )

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

    def intervention(
        self,
        layers: int | Sequence[int],
        mode: Mode = "replace",
        scale: float = 1.0,
        positions: Positions = "last",
    ) -> ReplaceResidual | AddToResidual:
        """The registry Intervention that patches this vector in.

        With one set the same vector goes to every row; with several, set ``b`` goes to row ``b``.
        """
        chosen = [layers] if isinstance(layers, int) else list(layers)
        by_layer = {layer: self._rows_at(layer) for layer in chosen}
        if mode == "replace":
            if len(chosen) != 1:
                raise IclMechError(f"replacement patches one layer, got layers {chosen}")
            return ReplaceResidual(by_layer[chosen[0]], chosen[0], positions)
        if mode == "add":
            return AddToResidual(by_layer, scale, positions)
        raise IclMechError(f"mode must be 'replace' or 'add', got {mode!r}")

    @contextmanager
    def apply(self, model, layers: int | Sequence[int], mode: Mode = "replace", **options):
        """``with theta.apply(model, 12): model(tokens)`` — patched for the block's duration."""
        self.check_fits(model)
        with attach(model, self.intervention(layers, mode, **options)) as hooked:
            yield hooked

    def check_fits(self, model) -> None:
        name = getattr(model.cfg, "model_name", type(model).__name__)
        if self.d_model != model.cfg.d_model:
            raise IclMechError(
                f"task vector of width {self.d_model} (from "
                f"{self.provenance.get('model', 'an unknown model')}) does not fit {name} "
                f"with d_model {model.cfg.d_model}"
            )
        points(model, POINT_SUFFIX, self.layers)

    def save(self, path: str | Path) -> Path:
        """Write ``<path>.safetensors`` and ``<path>.json`` (provenance); returns the former."""
        tensor_path, json_path = _paths(path)
        tensor_path.parent.mkdir(parents=True, exist_ok=True)
        meta = {**self.provenance, "layers": list(self.layers), "d_model": self.d_model}
        save_file(
            {"values": self.values.detach().cpu().contiguous()},
            str(tensor_path),
            metadata={"provenance": json.dumps(meta)},
        )
        json_path.write_text(json.dumps(meta, indent=2, sort_keys=True))
        return tensor_path

    @classmethod
    def load(cls, path: str | Path, model=None) -> TaskVector:
        """Read a saved vector; with ``model``, refuse one of another width or depth."""
        tensor_path, json_path = _paths(path)
        for needed in (tensor_path, json_path):
            if not needed.is_file():
                raise IclMechError(f"task vector file {needed} does not exist")
        meta = json.loads(json_path.read_text())
        values = load_file(str(tensor_path))["values"]
        vector = cls(values, tuple(meta["layers"]), meta)
        if model is not None:
            vector.check_fits(model)
            vector.values = vector.values.to(model.cfg.device, model.cfg.dtype)
        return vector

    def _rows_at(self, layer: int) -> Float[Tensor, "*sets d_model"]:
        """``[d_model]`` for a single set (shared by every row), else ``[sets, d_model]``."""
        rows = self.at(layer)
        return rows[0] if len(self) == 1 else rows


def _paths(path: str | Path) -> tuple[Path, Path]:
    path = Path(path)
    stem = path.with_suffix("") if path.suffix in (".safetensors", ".json") else path
    return stem.with_name(stem.name + ".safetensors"), stem.with_name(stem.name + ".json")


def provenance(model, task, layers: Sequence[int], seed: int, **extra) -> dict:
    """What a saved vector needs to say about its origin."""
    import icl_mech

    return {
        "model": getattr(model.cfg, "model_name", type(model).__name__),
        "d_model": model.cfg.d_model,
        "n_layers": model.cfg.n_layers,
        "hook_points": [f"blocks.{layer}.{POINT_SUFFIX}" for layer in layers],
        "positions": "last",
        "task": task.name,
        "template": task.template,
        "answer_prefix": task.answer_prefix,
        "separator": task.separator,
        "seed": seed,
        "icl_mech_version": icl_mech.__version__,
        **extra,
    }
