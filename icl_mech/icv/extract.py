"""In-context vector extraction (Liu et al. 2023); the ``ICV`` data type is in ``icv.vector``.

For each demonstration pair (x, y) take the last-token residual stream
(``blocks.{l}.hook_resid_post``) of x and of y at every layer, flatten over layers and
difference (y − x). The ICV is the first principal component of those differences plus their
mean (the reference implementation's ``components_[0] + mean_``), with the component's sign
chosen so that it points from x to y (positive projection on the mean difference). Per-layer
slices give one steering direction per layer.

Degenerate input is never silent: pairs whose x and y give identical states (all differences
zero, so a zero vector) are an error; a single pair, or pairs with identical differences, have
no spread: the component is then the unit mean difference, the explained variance NaN, and a
``UserWarning`` says so.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence

import einops
import torch
from jaxtyping import Float
from torch import Tensor

from icl_mech.activations import last_token_states
from icl_mech.errors import IclMechError
from icl_mech.icv.vector import ICV
from icl_mech.prompts import Demonstration

__all__ = ["ICV", "as_pairs", "extract_icv", "first_component"]


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
    progress: bool = False,
) -> ICV:
    """Extract an in-context vector from (x, y) pairs; ``x`` is the source style, ``y`` the target.

    ``prefixes`` are prepended to x and to y (the reference code's ``prefix``); ``layers``
    defaults to every layer. Extraction is deterministic (no seed); a caller that drew the pairs
    with a seed records it with ``dataclasses.replace(icv, seed=seed)``.
    """
    pairs = as_pairs(pairs)
    layers = list(range(model.cfg.n_layers)) if layers is None else sorted(set(layers))
    if not layers:
        raise IclMechError("extract_icv: no layers given")
    texts = [prefixes[0] + x for x, _ in pairs] + [prefixes[1] + y for _, y in pairs]
    label = "ICV states" if progress else False
    states = last_token_states(model, texts, layers, batch_size, label, sort=True).float()
    x_states, y_states = states[: len(pairs)], states[len(pairs) :]
    differences = einops.rearrange(y_states - x_states, "n layers d -> n (layers d)")
    if not bool(differences.abs().max() > 0):
        raise IclMechError(
            f"extract_icv: all {len(pairs)} pairs give identical states for x and y at every "
            "layer (is each y the same text as its x?), so the ICV would be the zero vector; "
            "give pairs whose x and y differ"
        )
    mean, component, ratio = first_component(differences)
    if math.isnan(ratio):
        warnings.warn(
            f"extract_icv: {len(pairs)} pair(s) with no spread among their differences: the "
            "component is the unit mean difference and explained_variance is NaN; give more "
            "(and different) pairs for a principal direction",
            UserWarning,
            stacklevel=2,
        )
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
    )
