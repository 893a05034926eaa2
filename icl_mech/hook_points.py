"""Hook points and the activations at them: names per layer, which dimension holds positions,
the width known from the config, position masks and values broadcast against an activation.

Items (:mod:`icl_mech.interventions`, the methods' own kinds) check their values here when
their specs are built, so a bad point, width or shape is an ``IclMechError`` before the run.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable

from jaxtyping import Bool
from torch import Tensor

from icl_mech import validate
from icl_mech.backends import hook_points
from icl_mech.errors import IclMechError
from icl_mech.positions import Positions, resolve
from icl_mech.prompt_batch import PromptBatch

_D_MODEL_POINTS = (
    "hook_resid_pre",
    "hook_resid_mid",
    "hook_resid_post",
    "hook_attn_out",
    "hook_mlp_out",
    "hook_embed",
    "hook_pos_embed",
)


def position_dim(point: str) -> int:
    """Which dimension of this hook point's activation indexes (query) positions."""
    return 2 if point.endswith(("hook_pattern", "hook_attn_scores")) else 1


def width(model, point: str) -> int | None:
    """Size of the last dimension at a hook point, where it is known from the config."""
    if point.endswith(_D_MODEL_POINTS):
        return model.cfg.d_model
    if point.endswith(("mlp.hook_pre", "mlp.hook_post")):
        return model.cfg.d_mlp
    if point.endswith(("hook_q", "hook_k", "hook_v", "hook_z")):
        return model.cfg.d_head
    return None


def position_mask(
    point: str, activation: Tensor, positions: Positions, batch: PromptBatch | None
) -> Bool[Tensor, "..."]:
    """The positions selector as a mask broadcastable against the activation."""
    dim = position_dim(point)
    mask = resolve(positions, activation.shape[0], activation.shape[dim], batch)
    shape = [activation.shape[0]] + [1] * (activation.ndim - 1)
    shape[dim] = activation.shape[dim]
    return mask.to(activation.device).view(shape)


def broadcast_value(value: Tensor, activation: Tensor, point: str) -> Tensor:
    """Expand a value of shape [*trailing], [batch, *trailing] or the activation's own shape."""
    value = value.to(activation.device, activation.dtype)
    trailing = activation.shape[position_dim(point) + 1 :]
    if value.shape == activation.shape:
        return value
    if value.shape == trailing:
        return value.expand_as(activation)
    if value.shape == (activation.shape[0], *trailing):
        view = [activation.shape[0]] + [1] * (activation.ndim - 1 - len(trailing)) + list(trailing)
        return value.view(view).expand_as(activation)
    raise IclMechError(
        f"value of shape {tuple(value.shape)} does not fit hook point {point!r} "
        f"with activation {tuple(activation.shape)}: expected {tuple(trailing)}, "
        f"[batch, *{tuple(trailing)}] or the full shape"
    )


def check_width(model, point: str, value: Tensor, what: str) -> None:
    expected = width(model, point)
    if expected is not None and value.shape[-1] != expected:
        raise IclMechError(
            f"{what} has width {value.shape[-1]} but {point!r} of "
            f"{model_name(model)} has width {expected}"
        )


def check_value(model, point: str, value: Tensor, batch: PromptBatch | None, what: str) -> None:
    """Width always; with a batch, the whole shape at points of known width (before the run)."""
    check_point(model, point)
    check_width(model, point, value, what)
    expected = width(model, point)
    if (
        batch is None
        or expected is None
        or point.endswith(("hook_q", "hook_k", "hook_v", "hook_z"))
    ):
        return
    n, s = len(batch), batch.seq_len
    allowed = [(expected,), (n, expected), (n, s, expected)]
    if tuple(value.shape) not in allowed:
        raise IclMechError(
            f"{what} has shape {list(value.shape)}; at {point!r} the activation is "
            f"[batch, seq, d] = {[n, s, expected]}, so give [d] = {[expected]}, "
            f"[batch, d] = {[n, expected]} or the full shape"
        )


def point_name(point, what: str) -> str:
    if not isinstance(point, str) or not point:
        raise IclMechError(
            f"{what}: point={point!r} must be a hook point name such as 'blocks.0.hook_resid_post'"
        )
    return point


def check_point(model, name: str) -> None:
    if name not in hook_points(model):
        close = difflib.get_close_matches(name, list(hook_points(model)), n=3)
        hint = f"; did you mean {close}?" if close else ""
        raise IclMechError(f"unknown hook point {name!r} on {model_name(model)}{hint}")


def points(model, suffix: str, layers: Iterable[int] | None = None) -> list[str]:
    """Hook point names ``blocks.{l}.{suffix}`` for the given layers (default: all)."""
    chosen = validate.layers(model, layers, allow_empty=True)
    names = [f"blocks.{layer}.{suffix}" for layer in chosen]
    for name in names:
        check_point(model, name)
    return names


def model_name(model) -> str:
    cfg = getattr(model, "cfg", None)
    return getattr(cfg, "model_name", type(model).__name__)
