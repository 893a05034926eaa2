"""The two backends behind one hook surface: ``HookedTransformer`` and ``TransformerBridge``.

icl_mech codes against what both share: ``hook_dict``, ``HookPoint.add_hook``, the
canonical hook names (``blocks.{l}.hook_resid_pre``, ``blocks.{l}.attn.hook_pattern``, ...)
and ``cfg``. TransformerLens 3.x has both; 4.0 removed ``HookedTransformer``, so the default
backend is ``"hooked"`` on 3.x and ``"bridge"`` on 4.x. What differs lives here, once:

- hook names: the bridge registers ``blocks.{l}.hook_resid_pre`` as an alias of
  ``blocks.{l}.hook_in`` and calls hook functions with the canonical name. ``hook_pairs``
  resolves filters to names and hands every function the name it was attached under, so
  ``Capture`` and every item see the same names on both backends;
- attaching: the bridge rebuilds ``hook_dict`` (every alias resolved) on each access, and its
  ``hooks()`` does so for every hook it adds; :func:`hook_points` keeps one map per model and
  :func:`hooks_added` adds and removes hooks on the points themselves, so a short forward with
  a few hooks costs the same on both backends (``benchmarks/attach.py``);
- ``start_at_layer``/``stop_at_layer``: the bridge's forward is the Hugging Face model's own;
  :func:`icl_mech.resume.forward_from` runs any block range on a given stream on both;
- the key/value cache (:mod:`icl_mech.kv_cache`): ``KVCache`` wraps TransformerLens's cache
  (keys before the rotary embedding, rotated at every forward) and, on the bridge, a Hugging
  Face ``DynamicCache`` (keys after it). transformers 5.25 takes the cache as ``cache=``
  (``past_key_values`` is a deprecated alias), while the bridge's attention (TransformerLens 3.9
  and 4.3) reads ``past_key_values`` or ``layer_past`` from its keyword arguments: it never
  fills the cache, and every cached step attends to itself alone. ``KVCache`` passes the cache
  under both names, so cached runs equal full runs. ``TransformerBridge.generate`` with its
  cache is affected (silently wrong text), so ``generate`` runs its own cached loop on the
  bridge;
- gradients under left padding: the bridge adds its padding mask to the scores, so a padding
  row's NaN softmax gradient reaches every position; ``finite_padding_rows`` (attached by
  ``icl_mech.hooks.attach``) keeps them finite;
- the read-out at the last token: the bridge keeps only the last position's logits
  (``logits_to_keep=1``) where a forward must run to the end.
"""

from __future__ import annotations

import importlib.metadata
import inspect
import weakref
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager

import torch
from torch import Tensor

from icl_mech import validate
from icl_mech.errors import IclMechError

BACKENDS = ("hooked", "bridge")
TL_VERSION = importlib.metadata.version("transformer-lens")
TL_MAJOR = int(TL_VERSION.split(".")[0])


def default_backend() -> str:
    """``"hooked"`` on TransformerLens 3.x, ``"bridge"`` on 4.x (which has no HookedTransformer)."""
    return "hooked" if TL_MAJOR < 4 else "bridge"


def check_backend(backend: str | None, what: str = "load_model") -> str:
    """The backend asked for (None: the default), or an error saying why it cannot be had."""
    if backend is None:
        return default_backend()
    backend = validate.choice(backend, f"{what} backend", BACKENDS)
    if backend == "hooked" and TL_MAJOR >= 4:
        raise IclMechError(
            f"{what}(backend='hooked'): TransformerLens {TL_VERSION} is installed, and "
            "TransformerLens 4.0 removed HookedTransformer; use backend='bridge' (the default "
            "on 4.x) or install transformer-lens<4"
        )
    return backend


def is_bridge(model) -> bool:
    return any(c.__name__ in ("TransformerBridge", "BridgeCore") for c in type(model).__mro__)


def backend_of(model) -> str:
    return "bridge" if is_bridge(model) else "hooked"


def unsupported(method: str, model, reason: str) -> IclMechError:
    """The error for a method a backend cannot run: names the method, backend and reason."""
    name = getattr(getattr(model, "cfg", None), "model_name", type(model).__name__)
    return IclMechError(
        f"{method} is not available on the {backend_of(model)} backend ({name}): {reason}"
    )


# --- hooks ------------------------------------------------------------------------------------


class NamedHook:
    """The hook point as a hook function sees it, under the name it was attached with."""

    __slots__ = ("name", "_hook")

    def __init__(self, name: str, hook):
        self.name = name
        self._hook = hook

    def __getattr__(self, attribute):
        return getattr(self._hook, attribute)


SWITCHES = ("use_attn_result", "use_split_qkv_input", "use_hook_mlp_in", "use_attn_in")
_POINTS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def hook_points(model) -> dict:
    """Every hook point by name, aliases included (``model.hook_dict``). The bridge rebuilds its
    ``hook_dict``, resolving every alias, on each access (1 to 5 ms, more than a short forward
    of a small model spends on a layer); here it is built once per model, and again when the
    bridge has registered new hook points."""
    if not is_bridge(model):
        return model.hook_dict
    size = len(model._hook_registry)
    cached = _POINTS.get(model)
    if cached is None or cached[0] != size:
        cached = _POINTS[model] = (size, dict(model.hook_dict))
    return cached[1]


@contextmanager
def hooks_added(model, fwd: Sequence[tuple], bwd: Sequence[tuple] = ()) -> Iterator:
    """``model.hooks(fwd, bwd)`` for ``(name, fn)`` pairs, on both backends, at a fraction of
    its cost: TransformerLens's reset on exit visits every hook point of the model, and the
    bridge's resolves every alias again for each hook it adds. Every pair is checked before the
    first hook is added; only this block's hooks are removed, on every exit path."""
    points = hook_points(model)
    added = [(points[name], name, fn, d) for d, pairs in (("fwd", fwd), ("bwd", bwd))
             for name, fn in pairs]  # fmt: skip
    for point, name, fn, direction in added:
        _check_switched_on(model, point, name, fn, direction)
    level = (getattr(model, "context_level", None) or 0) + 1
    model.context_level = level
    try:
        for point, _, fn, direction in added:
            point.add_hook(fn, dir=direction, level=level)
        yield model
    finally:
        for point, direction in {(id(p), d): (p, d) for p, _, _, d in added}.values():
            point.remove_hooks(direction, level=level)
        model.context_level = level - 1


def _check_switched_on(model, point, name: str, fn: Callable, direction: str) -> None:
    """Hook points such as ``attn.hook_result`` fire only once the model computes them
    (``model.set_use_attn_result(True)``); a hook there would otherwise never run. The check is
    TransformerLens's own, so a switch it adds is checked too."""
    if is_bridge(model):
        reason = model._gated_hook_reason(point.name or name)
    else:
        try:
            model.check_hooks_to_add(point, name, fn, dir=direction)
            return
        except AssertionError as error:
            reason = next((s for s in SWITCHES if s in str(error)), str(error))
    if reason is None:
        return
    known = reason in SWITCHES
    why, setter = (
        (f"{reason} is False", f"model.set_{reason}(True)") if known else (reason, "its switch")
    )
    raise IclMechError(
        f"hook point {name!r} is switched off on this model ({why}), so a hook there would "
        f"never run; call {setter} before attaching, or choose another point"
    )


def hook_pairs(model, points_and_fns: Sequence[tuple]) -> list[tuple[str, Callable]]:
    """``(name, fn)`` pairs for :func:`hooks_added`: a filter becomes the names it selects (one per
    hook point, the first name in ``hook_dict`` order); on the bridge each function is called
    with the name it was attached under (the bridge passes the canonical name otherwise)."""
    bridge = is_bridge(model)
    pairs = []
    for point, fn in points_and_fns:
        names = [point] if isinstance(point, str) else _selected(model, point)
        for name in names:
            pairs.append((name, _renamed(name, fn) if bridge else fn))
    return pairs


def _selected(model, keep: Callable[[str], bool]) -> list[str]:
    gated = getattr(model, "_gated_hook_reason", None)
    seen, names = set(), []
    for name, point in hook_points(model).items():
        if id(point) in seen or not keep(name):
            continue
        if gated is not None and gated(name) is not None:
            continue  # a hook the bridge has switched off (e.g. hook_result): never fires
        seen.add(id(point))
        names.append(name)
    return names


def _renamed(name: str, fn: Callable) -> Callable:
    def named(activation, hook):
        return fn(activation, NamedHook(name, hook))

    return named


def finite_padding_rows(model) -> list[tuple[str, Callable]]:
    """Forward hooks, on the bridge, that keep gradients finite under left padding.

    A padding position attends to nothing: its row of scores is all -inf and its softmax NaN,
    which both backends replace by 0 in the pattern. HookedTransformer masks the scores with
    ``torch.where``, so no gradient reaches that row; the bridge adds its padding mask to the
    scores, so softmax's NaN gradient flows through the sum into the queries and keys of every
    position (a whole batch's saliency turns NaN). With gradients on, these hooks set such rows
    to 0 after every other hook (their pattern becomes uniform; no real token reads a padding
    position, so no real number changes); without gradients they change nothing."""
    if not is_bridge(model):
        return []

    def finite(scores: Tensor, hook) -> Tensor | None:
        if not torch.is_grad_enabled():
            return None
        dead = torch.isneginf(scores).all(dim=-1, keepdim=True)
        return scores.masked_fill(dead, 0.0) if bool(dead.any()) else None

    names = [f"blocks.{layer}.attn.hook_attn_scores" for layer in range(model.cfg.n_layers)]
    return [(name, finite) for name in names if name in hook_points(model)]


# --- forward passes -------------------------------------------------------------------------


def keep_last(model) -> dict:
    """Forward arguments that unembed the last position only (the bridge's Hugging Face model
    takes ``logits_to_keep``; the hooked model stops before the unembedding instead)."""
    return {"logits_to_keep": 1} if "logits_to_keep" in _forward_parameters(model) else {}


def sliding_window(model) -> int | None:
    """The window of the model's local (sliding-window) attention layers, if it has any."""
    if is_bridge(model):
        config = getattr(model.original_model, "config", None)
        window = getattr(config, "sliding_window", None)
        return window if isinstance(window, int) and window > 0 else None
    if getattr(model.cfg, "use_local_attn", False):
        return model.cfg.window_size
    return None


def _forward_parameters(model) -> set[str]:
    hf = getattr(model, "original_model", None)
    if hf is None:
        return set()
    return set(inspect.signature(hf.forward).parameters)


def cache_keyword(model) -> str:
    """How the Hugging Face model names its cache argument (``cache`` from transformers 5.2x)."""
    return "cache" if "cache" in _forward_parameters(model) else "past_key_values"


__all__ = [
    "BACKENDS",
    "NamedHook",
    "TL_MAJOR",
    "backend_of",
    "check_backend",
    "default_backend",
    "finite_padding_rows",
    "hook_pairs",
    "hook_points",
    "hooks_added",
    "is_bridge",
    "keep_last",
    "sliding_window",
    "unsupported",
]
