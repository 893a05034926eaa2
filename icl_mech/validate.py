"""The shared validators: every public entry point checks its arguments here, once, before any
forward pass.

Each validator returns the value normalised (an ``int``, a ``float``, a ``Tensor``, a ``Path``)
or raises :class:`IclMechError` whose message says what was given, what was expected and how
to fix it. A legal but degenerate value that a researcher might mean gets an
:class:`IclMechWarning` instead (see :func:`warn`).

- :func:`count` — whole numbers (sizes, counts, ``n_ctx``);
- :func:`seed` — random seeds, ``0 .. 2**32 - 1`` (settings, grids, ``--seed``, ``Task.split``);
- :func:`real` — finite real numbers (``strength``, ``temperature``);
- :func:`choice` — one of a few names;
- :func:`layers`, :func:`layer` — layer indices of a model;
- position selectors: :func:`icl_mech.positions.normalise` (before a batch is known);
- :func:`tensor` — vectors and values: lists and numpy arrays become tensors, no 0-d,
  no NaN / inf, no ``meta`` device, no bool or complex;
- :func:`device` — a torch device that exists here;
- :func:`batch` — a ``PromptBatch`` fits the model it runs on (:func:`model_signature`);
- :func:`text` — a non-empty string;
- :func:`writable_folder` — a folder we can write to (caches).
"""

from __future__ import annotations

import difflib
import numbers
import tempfile
import warnings
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from icl_mech.errors import IclMechError


class IclMechWarning(UserWarning):
    """A legal but probably unintended value: the computation runs, as asked."""


def warn(message: str) -> None:
    warnings.warn(message, IclMechWarning, stacklevel=3)


def shown(value) -> str:
    if isinstance(value, Tensor):
        return f"a {value.dtype} tensor of shape {list(value.shape)} on {value.device}"
    if isinstance(value, np.ndarray):
        return f"a {value.dtype} numpy array of shape {list(value.shape)}"
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def is_integer(value) -> bool:
    """A whole number that is not a bool (``True`` is an int to Python, never to us)."""
    return isinstance(value, numbers.Integral) and not isinstance(value, (bool, np.bool_))


def count(value, name: str, *, minimum: int = 1, maximum: int | None = None, hint: str = "") -> int:
    """A whole number in ``[minimum, maximum]``."""
    if not is_integer(value):
        kind = "a bool" if isinstance(value, (bool, np.bool_)) else f"{type(value).__name__}"
        raise IclMechError(
            f"{name}={shown(value)} is {kind}; expected a whole number >= {minimum}{hint}"
        )
    value = int(value)
    if value < minimum or (maximum is not None and value > maximum):
        upper = f" and <= {maximum}" if maximum is not None else ""
        raise IclMechError(f"{name}={value} is out of range; expected >= {minimum}{upper}{hint}")
    return value


SEED_LIMIT = 2**32  # numpy's seeds are 0 .. 2**32 - 1; every seed we take stays in that range


def seed(value, name: str = "seed") -> int:
    """A random seed: a whole number (not a bool) in ``0 .. 2**32 - 1``."""
    hint = f" (a random seed: 0 .. 2**32 - 1 = {SEED_LIMIT - 1})"
    return count(value, name, minimum=0, maximum=SEED_LIMIT - 1, hint=hint)


def real(value, name: str, *, positive: bool = False, hint: str = "") -> float:
    """A finite real number (a Python or numpy number, or a one-element tensor)."""
    if isinstance(value, Tensor) and value.numel() == 1 and value.device.type != "meta":
        value = value.item()
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
        raise IclMechError(f"{name}={shown(value)} is not a real number{hint}")
    value = float(value)
    if not np.isfinite(value):
        raise IclMechError(f"{name}={value} is not finite; expected a finite number{hint}")
    if positive and value <= 0:
        raise IclMechError(f"{name}={value} must be positive{hint}")
    return value


def choice(value, name: str, options: Sequence[str]) -> str:
    if not isinstance(value, str) or value not in options:
        close = difflib.get_close_matches(str(value), list(options), n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise IclMechError(f"{name}={shown(value)} is not one of {list(options)}{hint}")
    return value


def text(value, name: str) -> str:
    """A string with something in it besides whitespace."""
    if not isinstance(value, str):
        raise IclMechError(f"{name} must be a str, got {shown(value)}")
    if not value.strip():
        raise IclMechError(f"{name}={value!r} is empty; give some text")
    return value


def _model_label(model) -> str:
    return getattr(getattr(model, "cfg", None), "model_name", type(model).__name__)


def layer(model, value, name: str = "layer") -> int:
    """One layer index of the model, in ``0 .. n_layers - 1``."""
    n_layers = model.cfg.n_layers
    if not is_integer(value):
        raise IclMechError(
            f"{name}={shown(value)} is not a layer index; expected an int in "
            f"0..{n_layers - 1} for {_model_label(model)}"
        )
    if not 0 <= int(value) < n_layers:
        raise IclMechError(
            f"{name}: layer {int(value)} out of range for {_model_label(model)} "
            f"({n_layers} layers, 0..{n_layers - 1})"
        )
    return int(value)


def layers(model, values, name: str = "layers", *, allow_empty: bool = False) -> list[int]:
    """Layer indices (``None``: every layer; a single int: that layer), each in range."""
    if values is None:
        return list(range(model.cfg.n_layers))
    if is_integer(values):
        values = [values]
    if isinstance(values, Tensor):
        values = values.reshape(-1).tolist()
    if isinstance(values, (str, bytes)) or not isinstance(values, Iterable):
        raise IclMechError(f"{name}={shown(values)} is not a list of layer indices")
    chosen = [layer(model, v, name) for v in values]
    if not chosen and not allow_empty:
        raise IclMechError(f"{name}=[] selects no layer; give None for every layer")
    return chosen


def tensor(value, name: str, *, min_ndim: int = 1) -> Tensor:
    """A float tensor with at least ``min_ndim`` dimensions, finite, with real storage.

    Lists and numpy arrays are converted; integer tensors become float32.
    """
    if isinstance(value, (list, tuple, np.ndarray, numbers.Number)):
        try:
            value = torch.as_tensor(value)
        except (TypeError, ValueError, RuntimeError) as error:
            raise IclMechError(
                f"{name} cannot be made a tensor from {shown(value)}: {error}"
            ) from None
    if not isinstance(value, Tensor):
        raise IclMechError(f"{name} must be a tensor, a list or a numpy array; got {shown(value)}")
    if value.device.type == "meta":
        raise IclMechError(f"{name} is {shown(value)}: a meta tensor has no values; use 'cpu'")
    if value.dtype == torch.bool or value.is_complex():
        raise IclMechError(f"{name} is {shown(value)}; expected real (float) values")
    if not value.is_floating_point():
        value = value.to(torch.get_default_dtype())
    if value.ndim < min_ndim:
        raise IclMechError(
            f"{name} is {shown(value)} with {value.ndim} dimensions; expected at least "
            f"{min_ndim} (a vector [d], or [batch, d]); for a scalar multiplier use strength="
        )
    if value.numel() == 0:
        raise IclMechError(f"{name} is empty ({shown(value)})")
    finite = torch.isfinite(value)
    if not bool(finite.all()):
        bad = (~finite).nonzero()[0].tolist()
        raise IclMechError(
            f"{name} holds {int((~finite).sum())} NaN/inf value(s), the first at index {bad}; "
            "every logit downstream would be NaN"
        )
    return value


def n_devices(value, device_name: str) -> int:
    """How many devices one model is split over: 1, or up to the machine's CUDA devices (the
    split needs a CUDA ``device``)."""
    n = count(value, "load_model n_devices")
    if n == 1:
        return n
    available = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if not device_name.startswith("cuda") or n > available:
        raise IclMechError(
            f"load_model: n_devices={n} splits the model's layers over {n} CUDA devices, but "
            f"device={device_name!r} and this machine has {available} CUDA device(s); use "
            f"n_devices=1{', or device=' + repr('cuda') if available > 1 else ''}"
        )
    return n


def device(value, name: str = "device") -> str:
    """A torch device that this machine has (``"cpu"``, ``"cuda"``, ``"cuda:1"``, ``"mps"``)."""
    hints = {"gpu": "cuda", "cuda0": "cuda:0", "metal": "mps"}
    if isinstance(value, torch.device):
        parsed = value
    elif isinstance(value, str) and value.strip():
        try:
            parsed = torch.device(value)
        except RuntimeError:
            hint = f"; did you mean {hints[value.lower()]!r}?" if value.lower() in hints else ""
            raise IclMechError(
                f"{name}={value!r} is not a torch device; expected 'cpu', 'cuda', 'cuda:0' "
                f"or 'mps'{hint}"
            ) from None
    else:
        raise IclMechError(f"{name}={shown(value)} is not a device; expected e.g. 'cpu'")
    if parsed.type == "meta":
        raise IclMechError(f"{name}='meta' holds no values; use 'cpu' or 'cuda'")
    if parsed.type == "cuda":
        available = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if available == 0 or (parsed.index or 0) >= available:
            raise IclMechError(
                f"{name}={str(parsed)!r} but this machine has {available} CUDA device(s); use 'cpu'"
            )
    if parsed.type == "mps" and not torch.backends.mps.is_available():
        raise IclMechError(f"{name}='mps' is not available on this machine; use 'cpu'")
    return str(parsed)


def model_signature(model) -> dict:
    """What a batch's tokens depend on: the tokenizer and the model's BOS convention."""
    tokenizer = getattr(model, "tokenizer", None)
    return {
        "model": _model_label(model),
        "tokenizer": None
        if tokenizer is None
        else f"{type(tokenizer).__name__}:{tokenizer.name_or_path}:{len(tokenizer)}",
        "prepend_bos": bool(getattr(model.cfg, "default_prepend_bos", True)),
    }


def batch(model, value, name: str = "batch") -> None:
    """A batch of tokens ``model`` can run: built for a model with the same tokenizer and BOS
    convention (``PromptBatch.made_for``), token ids inside the vocabulary, within the context."""
    tokens = getattr(value, "tokens", None)
    if not isinstance(tokens, Tensor) or tokens.ndim != 2:
        raise IclMechError(
            f"{name} must be a PromptBatch (tokens [batch, seq]), got {type(value).__name__}"
        )
    made, here = getattr(value, "made_for", None), model_signature(model)
    key = ("tokenizer", "prepend_bos")
    if made is not None and [made[k] for k in key] != [here[k] for k in key]:
        bos = {True: "prepends BOS", False: "no BOS"}
        raise IclMechError(
            f"{name} was tokenised for {made['model']} ({made['tokenizer']}, "
            f"{bos[made['prepend_bos']]}) but runs on {here['model']} ({here['tokenizer']}, "
            f"{bos[here['prepend_bos']]}); rebuild it: PromptBatch.from_prompts(model, "
            f"{name}.prompts)"
        )
    n_ctx, d_vocab = model.cfg.n_ctx, model.cfg.d_vocab
    if tokens.shape[1] > n_ctx:
        raise IclMechError(
            f"{name} has {tokens.shape[1]} positions, more than the context of "
            f"{here['model']} ({n_ctx} tokens)"
        )
    if tokens.numel() and (int(tokens.max()) >= d_vocab or int(tokens.min()) < 0):
        raise IclMechError(
            f"{name} holds token ids outside 0..{d_vocab - 1}, the vocabulary of {here['model']}"
        )


def writable_folder(folder: Path, name: str, env: str | None = None) -> Path:
    """``folder`` (created if missing) accepts new files, or an error naming it and ``env``."""
    folder = Path(folder).expanduser()
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".write-test-"):
            pass
    except OSError as error:
        fix = f"; set {env} to a writable folder (e.g. export {env}=$HOME/.cache/icl_mech)"
        raise IclMechError(
            f"{name}: cannot write to {str(folder)!r} ({error.strerror or error})"
            + (fix if env else "")
        ) from None
    return folder
