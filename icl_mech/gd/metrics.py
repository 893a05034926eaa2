"""How closely a trained linear self-attention model matches one step of gradient descent."""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass

import pandas as pd
import torch
from jaxtyping import Float
from torch import Tensor

from icl_mech.errors import IclMechError
from icl_mech.gd.data import RegressionBatch
from icl_mech.gd.model import LinearSelfAttentionModel
from icl_mech.gd.train import regression_loss

Predictor = Callable[[Tensor], Tensor]


@dataclass(frozen=True)
class Alignment:
    """Trained model vs reference (one GD step) on the same held-out tasks."""

    model_loss: float
    gd_loss: float
    prediction_l2: float
    sensitivity_cosine: float

    @property
    def loss_ratio(self) -> float:
        return self.model_loss / self.gd_loss

    def as_dict(self) -> dict[str, float]:
        return {**asdict(self), "loss_ratio": self.loss_ratio}

    def to_frame(self) -> pd.DataFrame:
        return pd.DataFrame([self.as_dict()])


def sensitivities(
    predictor: Predictor, tokens: Float[Tensor, "batch pos d_token"], d_in: int
) -> Float[Tensor, "batch d_out d_in"]:
    """d y_hat / d x_test per task, by autograd (each task's prediction depends only on its own
    tokens, so the gradient of the summed predictions is the per-task gradient)."""
    with torch.enable_grad():
        tokens = tokens.detach().clone().requires_grad_(True)
        prediction = predictor(tokens)
        rows = []
        for out in range(prediction.shape[-1]):
            (grad,) = torch.autograd.grad(prediction[:, out].sum(), tokens, retain_graph=True)
            rows.append(grad[:, -1, :d_in])
    return torch.stack(rows, dim=1)


def mean_cosine(
    a: Float[Tensor, "batch ..."], b: Float[Tensor, "batch ..."], eps: float = 1e-12
) -> float:
    a, b = a.flatten(1), b.flatten(1)
    cosine = (a * b).sum(-1) / (a.norm(dim=-1) * b.norm(dim=-1)).clamp_min(eps)
    return float(cosine.mean())


def sensitivity_cosine(
    predictor: Predictor,
    reference: Predictor,
    tokens: Float[Tensor, "batch pos d_token"],
    d_in: int,
) -> float:
    """Mean over tasks of cos(d y_hat / d x_test, d y_ref / d x_test)."""
    return mean_cosine(
        sensitivities(predictor, tokens, d_in), sensitivities(reference, tokens, d_in)
    )


@torch.no_grad()
def prediction_l2(
    predictor: Predictor, reference: Predictor, tokens: Float[Tensor, "batch pos d_token"]
) -> float:
    """Mean over tasks of ||y_hat - y_ref||_2."""
    return float((predictor(tokens) - reference(tokens)).norm(dim=-1).mean())


def compare(model: Predictor, reference: Predictor, batch: RegressionBatch) -> Alignment:
    tokens = batch.tokens()
    with torch.no_grad():
        model_loss = float(regression_loss(model(tokens), batch.y_test))
        gd_loss = float(regression_loss(reference(tokens), batch.y_test))
    return Alignment(
        model_loss=model_loss,
        gd_loss=gd_loss,
        prediction_l2=prediction_l2(model, reference, tokens),
        sensitivity_cosine=sensitivity_cosine(model, reference, tokens, batch.d_in),
    )


@dataclass(frozen=True)
class InterpolationCurve:
    """Loss of the model with weights (1 - alpha) * trained + alpha * constructed."""

    alphas: list[float]
    losses: list[float]

    @property
    def barrier(self) -> float:
        """Highest loss on the path above the worse endpoint (0 for a flat or convex path)."""
        return max(self.losses) - max(self.losses[0], self.losses[-1])

    def to_frame(self) -> pd.DataFrame:
        return pd.DataFrame({"alpha": self.alphas, "loss": self.losses})


@torch.no_grad()
def interpolate(
    trained: LinearSelfAttentionModel,
    constructed: LinearSelfAttentionModel,
    batch: RegressionBatch,
    alphas: Sequence[float] = tuple(i / 10 for i in range(11)),
) -> InterpolationCurve:
    """Interpolate the layers' effective weights (W_K^T W_Q, W_O W_V) after putting both models
    in the same scale gauge, so that the path is between functions, not parametrisations."""
    if len(trained.layers) != len(constructed.layers):
        raise IclMechError(
            f"cannot interpolate a {len(trained.layers)}-layer model with a "
            f"{len(constructed.layers)}-layer one"
        )
    if trained.cfg.d_model != constructed.cfg.d_model:
        raise IclMechError(
            f"cannot interpolate d_model={trained.cfg.d_model} with "
            f"d_model={constructed.cfg.d_model}"
        )
    ends = []
    for model in (trained, constructed):
        ends.append(
            [
                w.canonical(c.kq.norm().item())
                for w, c in zip(model.effective(), constructed.effective())
            ]
        )
    probe = copy.deepcopy(trained)
    tokens, losses = batch.tokens(), []
    for alpha in alphas:
        probe.load_effective([a.lerp(b, alpha) for a, b in zip(*ends)])
        losses.append(float(regression_loss(probe(tokens), batch.y_test)))
    return InterpolationCurve(alphas=[float(a) for a in alphas], losses=losses)
