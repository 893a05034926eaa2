"""The vector protocol: a vector (task vector, ICV, trained β) is data with provenance.

``Vector`` is a mixin for dataclasses. It gives every kind, once: ``save(path)``,
``load(path, model=None, strict=True)``, ``apply(model, ...)`` (a context manager),
``check_fits(model)`` and the finiteness checks. A kind supplies only:

- ``KINDS``: the ``kind`` names it reads (its instances say theirs through ``kind``);
- ``TENSORS``: the names of its tensors, and ``tensors()`` → ``{name: tensor}``;
- ``metadata()``: its provenance — model, d_model, n_layers (n_heads where it matters), hook
  points, layers, positions, seed, plus its own fields;
- ``from_data(tensors, provenance)``: how to rebuild it;
- ``build(*, layers, strength, positions, **own)``: the registry Intervention that applies it.

Every kind speaks one vocabulary, keyword-only, in ``intervention(...)`` and ``apply(...)``:
``layer=`` (one layer) or ``layers=`` (several), ``strength=`` (the one multiplier word: 0
changes nothing, 1 is the vector as extracted) and ``positions=``; a kind may add its own
keywords (``mode`` of a task vector, ``cache`` of a trained β). A positional argument is a
``TypeError`` that names the keywords. ``apply`` attaches at once and returns a handle: use it
with ``with`` (detached at the end of the block) or call ``remove()``; it is never a no-op.

On disk: ``<stem>.safetensors`` holds the tensors and, in its header (key
``icl_mech_provenance``), the provenance as JSON; ``<stem>.json`` is a readable copy. A missing
sidecar is recovered from the header; a sidecar that disagrees with the header is refused.
Written JSON is strict (NaN and ±inf become ``null``).

Loading onto, or applying to, a model of another width, depth (or head count, for β) is an
error; another model name is an error unless ``strict=False`` (then a warning). NaN or inf in a
vector is an error at construction and again whenever an intervention is built.
"""

from __future__ import annotations

import warnings
from abc import ABC, abstractmethod
from contextlib import ExitStack
from dataclasses import fields
from pathlib import Path
from typing import ClassVar

import torch
from safetensors.torch import save_file
from torch import Tensor

from icl_mech.errors import IclMechError, close_matches
from icl_mech.hooks import attach
from icl_mech.vector_files import HEADER_KEY, OWNERS, dumps, plain, read, vector_paths
from icl_mech.version import __version__

FIT_QUANTITIES = {"d_model": "width", "n_layers": "depth", "n_heads": "head count"}


def package_version() -> str:
    return __version__


def model_name(model) -> str:
    return getattr(getattr(model, "cfg", None), "model_name", type(model).__name__)


class Vector(ABC):
    """Mixin for the dataclasses of vector kinds; see the module docstring."""

    KINDS: ClassVar[tuple[str, ...]] = ()
    TENSORS: ClassVar[tuple[str, ...]] = ()

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        for kind in cls.KINDS:
            OWNERS[kind] = cls.__name__

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
    def build(self, *, layers: tuple[int, ...] | None, **how):
        """The registry Intervention for resolved keywords: ``layers`` (None: the kind's
        default), and ``strength`` / ``positions`` / the kind's own keywords when given."""

    OWN_KEYWORDS: ClassVar[tuple[str, ...]] = ()  # a kind's keywords beyond the vocabulary

    def intervention(self, *args, **how):
        """The registry Intervention that applies this vector; keyword-only:
        ``layer=`` or ``layers=``, ``strength=``, ``positions=`` (and the kind's own)."""
        self._keywords_only("intervention", args)
        layers = self._layers(how)
        self._known_keywords("intervention", how)
        self.check_finite()
        return self.build(layers=layers, **how)

    def _keywords_only(self, method: str, args: tuple) -> None:
        if args:
            own = "".join(f", {k}=..." for k in self.OWN_KEYWORDS)
            model = "model, " if method == "apply" else ""
            raise TypeError(
                f"{type(self).__name__}.{method}() takes keyword arguments only, got "
                f"positional {list(args)!r}; call {method}({model}layer=... or layers=..., "
                f"strength=..., positions=...{own})"
            )

    def _layers(self, how: dict) -> tuple[int, ...] | None:
        layer, layers = how.pop("layer", None), how.pop("layers", None)
        name = type(self).__name__
        if layer is not None and layers is not None:
            raise TypeError(f"{name}: give layer= (one layer) or layers= (several), not both")
        if layer is not None:
            layers = (layer,)
        elif layers is not None:
            layers = (layers,) if isinstance(layers, int) else tuple(layers)
        for value in layers or ():
            if isinstance(value, bool) or not isinstance(value, int):
                raise IclMechError(f"{name}: layers must be ints, got {value!r}")
        return layers

    def _known_keywords(self, method: str, how: dict) -> None:
        accepted = ("strength", "positions", *self.OWN_KEYWORDS)
        for key in how:
            if key not in accepted:
                close = ["strength"] if key in _MULTIPLIER_WORDS else []
                close = close or close_matches(key, ("layer", "layers", *accepted), 1)
                hint = f"; did you mean {close[0]}=?" if close else ""
                raise TypeError(
                    f"{type(self).__name__}.{method}() got an unexpected keyword {key!r}"
                    f"{hint} (keywords: layer, layers, {', '.join(accepted)})"
                )

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

    def apply(self, *args, strict: bool = True, batch=None, **how) -> Applied:
        """Attach ``intervention(**how)`` to the model now; returns a handle to use with
        ``with vector.apply(model, layer=..., strength=...) as hooked:`` (detached at the end
        of the block) or to ``remove()``. ``batch``: a PromptBatch, for interventions that
        need its positions."""
        if not args:
            raise TypeError(f"{type(self).__name__}.apply() needs the model as first argument")
        model, args = args[0], args[1:]
        self._keywords_only("apply", args)
        self.check_fits(model, strict)
        return Applied(model, self.intervention(**how), batch)

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
        tensors, info = read(cls, tensor_path, json_path)
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


_MULTIPLIER_WORDS = ("scale", "alpha", "lam", "lambda_", "lmbda", "coefficient", "multiplier")


class Applied:
    """A vector's hooks on one model, attached when ``apply`` is called. ``with`` detaches them
    at the end of the block (on every exit path); ``remove()`` detaches them by hand. Handles
    removed by hand must be removed in the reverse order of their ``apply``."""

    def __init__(self, model, intervention, batch):
        self._stack = ExitStack()
        self.intervention = intervention
        self.model = self._stack.enter_context(attach(model, intervention, batch=batch))
        self.attached = True

    def __enter__(self):
        return self.model

    def __exit__(self, *exc) -> bool:
        self.remove()
        return False

    def remove(self) -> None:
        if self.attached:
            self.attached = False
            self._stack.close()

    def __repr__(self) -> str:
        state = "attached" if self.attached else "removed"
        return f"Applied({self.intervention!r}, {state})"
