"""The vector protocol: a vector (task vector, ICV, trained β) is data with provenance.

``Vector`` is a mixin for dataclasses. It gives every kind, once: ``save(path)``,
``load(path, model=None, strict=True)``, ``apply(model, ...)`` (a context manager),
``check_fits(model)`` and the finiteness checks. A kind supplies only:

- ``KINDS``: the ``kind`` names it reads (its instances say theirs through ``kind``);
- ``TENSORS``: the names of its tensors, and ``tensors()`` → ``{name: tensor}``;
- ``metadata()``: its provenance — model, d_model, n_layers (n_heads where it matters), hook
  points, layers, positions, seed, plus its own fields;
- ``from_data(tensors, provenance)``: how to rebuild it;
- ``intervention(...)``: the registry Intervention that applies it.

On disk: ``<stem>.safetensors`` holds the tensors and, in its header (key
``icl_mech_provenance``), the provenance as JSON; ``<stem>.json`` is a readable copy. A missing
sidecar is recovered from the header; a sidecar that disagrees with the header is refused.
Written JSON is strict (NaN and ±inf become ``null``).

Loading onto, or applying to, a model of another width, depth (or head count, for β) is an
error; another model name is an error unless ``strict=False`` (then a warning). NaN or inf in a
vector is an error at construction and again whenever an intervention is built.
"""

from __future__ import annotations

import functools
import json
import math
import warnings
from abc import ABC, abstractmethod
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import fields
from pathlib import Path
from typing import Any, ClassVar

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import Tensor

from icl_mech.errors import IclMechError
from icl_mech.hooks import attach

HEADER_KEY = "icl_mech_provenance"
_LEGACY_HEADER_KEYS = ("provenance",)  # TaskVector files of 0.1.0
FIT_QUANTITIES = {"d_model": "width", "n_layers": "depth", "n_heads": "head count"}
_OWNERS: dict[str, str] = {}  # kind -> class name, for "read it with X.load"


def package_version() -> str:
    from icl_mech import __version__

    return __version__


def vector_paths(path: str | Path) -> tuple[Path, Path]:
    """``(<stem>.safetensors, <stem>.json)`` for a stem or either file's path."""
    path = Path(path)
    stem = path.with_suffix("") if path.suffix in (".safetensors", ".json") else path
    return stem.with_name(stem.name + ".safetensors"), stem.with_name(stem.name + ".json")


def plain(value: Any) -> Any:
    """``value`` as strict JSON data: NaN and ±inf → None, tuples → lists, paths → str."""
    if isinstance(value, dict):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set)):
        return [plain(v) for v in value]
    if getattr(value, "shape", None) == () and hasattr(value, "item"):  # 0-d tensor, numpy scalar
        value = value.item()
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if value is None or isinstance(value, (bool, int, str)):
        return value
    return str(value)


def dumps(value: Any, **options) -> str:
    """Strict JSON (never NaN/Infinity tokens) of ``plain(value)``."""
    return json.dumps(plain(value), allow_nan=False, sort_keys=True, **options)


def model_name(model) -> str:
    return getattr(getattr(model, "cfg", None), "model_name", type(model).__name__)


class Vector(ABC):
    """Mixin for the dataclasses of vector kinds; see the module docstring."""

    KINDS: ClassVar[tuple[str, ...]] = ()
    TENSORS: ClassVar[tuple[str, ...]] = ()

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        for kind in cls.KINDS:
            _OWNERS[kind] = cls.__name__
        own = cls.__dict__.get("intervention")
        if own is not None and not getattr(own, "_checks_finite", False):

            @functools.wraps(own)
            def intervention(self, *args, **how):
                self.check_finite()
                return own(self, *args, **how)

            intervention._checks_finite = True
            cls.intervention = intervention

    def __post_init__(self):
        self.check_finite()

    @property
    def kind(self) -> str:
        return self.KINDS[0]

    @abstractmethod
    def tensors(self) -> dict[str, Tensor]:
        """The kind's tensors by name (the names of ``TENSORS``)."""

    @abstractmethod
    def metadata(self) -> dict:
        """The kind's provenance: model, d_model, n_layers, hook points, layers, ..."""

    @classmethod
    @abstractmethod
    def from_data(cls, tensors: dict[str, Tensor], provenance: dict):
        """The vector rebuilt from its saved tensors and provenance."""

    @abstractmethod
    def intervention(self, *args, **how):
        """The registry Intervention that applies this vector."""

    def record(self) -> dict:
        """The provenance as written to disk (strict JSON data)."""
        return plain({"kind": self.kind, "icl_mech_version": package_version(), **self.metadata()})

    def check_finite(self) -> None:
        for name, tensor in self.tensors().items():
            if not bool(torch.isfinite(tensor).all()):
                bad = int((~torch.isfinite(tensor)).sum())
                raise IclMechError(
                    f"{type(self).__name__}.{name} holds {bad} NaN or inf value(s) of "
                    f"{tensor.numel()}; a vector must be finite (extract it again)"
                )

    def check_shape(self, model) -> None:
        """Error unless the model has this vector's width, depth (head count) and layers."""
        info, target, cls = self.record(), model_name(model), type(self).__name__
        source = info.get("model", "an unknown model")
        for key, label in FIT_QUANTITIES.items():
            saved, actual = info.get(key), getattr(model.cfg, key, None)
            if saved is not None and actual is not None and int(saved) != int(actual):
                raise IclMechError(
                    f"{cls} made on {source!r} has {label} {saved} ({key}={saved}) and does "
                    f"not fit {target!r} with {key} {actual}; use it on a model with "
                    f"{key}={saved}, or extract it again on {target!r}"
                )
        outside = [layer for layer in info.get("layers") or [] if layer >= model.cfg.n_layers]
        if outside:
            raise IclMechError(
                f"{cls} made on {source!r} holds layers {outside}, outside {target!r} "
                f"({model.cfg.n_layers} layers)"
            )

    def check_fits(self, model, strict: bool = True) -> None:
        """``check_shape``, then: another model name is an error (a warning if not strict)."""
        self.check_shape(model)
        source, target = self.record().get("model"), model_name(model)
        if source is None or source == target:
            return
        message = (
            f"{type(self).__name__} was made on {source!r} but is used on {target!r} (same "
            f"width and depth)"
        )
        if strict:
            raise IclMechError(f"{message}; pass strict=False to use it anyway (with a warning)")
        warnings.warn(message, UserWarning, stacklevel=3)

    @contextmanager
    def apply(self, model, *args, strict: bool = True, batch=None, **how) -> Iterator:
        """``with vector.apply(model, ...):`` — ``intervention(*args, **how)`` attached for the
        block (``batch`` for interventions that need a PromptBatch's positions)."""
        self.check_fits(model, strict)
        with attach(model, self.intervention(*args, **how), batch=batch) as hooked:
            yield hooked

    def save(self, path: str | Path) -> Path:
        """Write ``<stem>.safetensors`` and ``<stem>.json``; returns the former."""
        self.check_finite()
        tensor_path, json_path = vector_paths(path)
        tensor_path.parent.mkdir(parents=True, exist_ok=True)
        info = self.record()
        tensors = {name: t.detach().cpu().contiguous() for name, t in self.tensors().items()}
        save_file(tensors, str(tensor_path), metadata={HEADER_KEY: dumps(info)})
        json_path.write_text(dumps(info, indent=2) + "\n")
        return tensor_path

    @classmethod
    def load(cls, path: str | Path, model=None, strict: bool = True):
        """Read a saved vector; with ``model``, refuse one that does not fit it."""
        tensor_path, json_path = vector_paths(path)
        tensors, info = _read(cls, tensor_path, json_path)
        where = repr(str(tensor_path))
        try:
            vector = cls.from_data(tensors, info)
        except KeyError as error:
            raise IclMechError(
                f"{where}: the provenance lacks the key {error}; save the vector again"
            ) from None
        except (IclMechError, TypeError) as error:
            raise IclMechError(f"{where} does not hold a valid {cls.__name__}: {error}") from None
        if model is not None:
            vector.check_fits(model, strict)
            for item in fields(vector):
                value = getattr(vector, item.name)
                if isinstance(value, Tensor):
                    setattr(vector, item.name, value.to(model.cfg.device))
        return vector


def _read(cls, tensor_path: Path, json_path: Path) -> tuple[dict[str, Tensor], dict]:
    where = repr(str(tensor_path))
    if not tensor_path.is_file():
        raise IclMechError(f"no saved vector at {where}: the file does not exist")
    try:
        with safe_open(str(tensor_path), framework="pt") as handle:
            header = handle.metadata() or {}
            tensors = {name: handle.get_tensor(name) for name in handle.keys()}
    except Exception as error:  # safetensors raises its own types for a bad file
        raise IclMechError(
            f"{where} is not a readable {cls.__name__} file ({error}): the safetensors file is "
            "truncated or corrupt; save the vector again"
        ) from None
    text = next((header[k] for k in (HEADER_KEY, *_LEGACY_HEADER_KEYS) if k in header), None)
    stored = None if text is None else _parse(text, f"the header of {where}")
    if json_path.is_file():
        sidecar = _parse(json_path.read_text(), repr(str(json_path)))
        if stored is not None and plain(stored) != plain(sidecar):
            keys = sorted(k for k in {*stored, *sidecar} if stored.get(k) != sidecar.get(k))
            raise IclMechError(
                f"{str(json_path)!r} disagrees with the provenance stored in {where} on {keys}: "
                "the JSON sidecar was edited or belongs to another file; delete it (the "
                "header is then used) or save the vector again"
            )
        stored = sidecar if stored is None else stored
    expected = " or ".join(repr(k) for k in cls.KINDS)
    if stored is None:
        raise IclMechError(
            f"{where} holds no icl_mech provenance (no header, no {json_path.name}): not a "
            f"{expected} file ({cls.__name__})"
        )
    found = stored.get("kind")
    if found not in cls.KINDS:
        owner = _OWNERS.get(found)
        hint = f"; read it with {owner}.load" if owner else ""
        raise IclMechError(f"{where} holds a {found!r} vector, not a {expected} file{hint}")
    if set(tensors) != set(cls.TENSORS):
        raise IclMechError(
            f"{where} holds the tensors {sorted(tensors)}, but a {cls.__name__} file holds "
            f"{sorted(cls.TENSORS)} (missing: {sorted(set(cls.TENSORS) - set(tensors))})"
        )
    return tensors, stored


def _parse(text: str, where: str) -> dict:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as error:
        raise IclMechError(
            f"{where} is not valid JSON ({error}); delete the sidecar to recover it from the "
            "safetensors header, or save the vector again"
        ) from None
    if not isinstance(value, dict):
        raise IclMechError(f"{where} holds JSON {type(value).__name__}, not a provenance object")
    return value
