"""One step of gradient descent, explicitly and as the weights of one linear self-attention layer.

For L(W) = 1/(2N) sum_i ||W x_i - y_i||^2, one step from W = 0 with learning rate eta gives
W_1 = (eta/N) sum_i y_i x_i^T and y_hat = W_1 x_test. The layer computes the same thing with
W_K = W_Q = [[I, 0], [0, 0]] (scores <x_i, x_j>), W_V = [[0, 0], [0, -eta I]] and W_O = I: the
test token's y-part becomes -(eta/N) sum_i y_i <x_i, x_test> = -y_hat. With an MLP embedding m
the same weights act on m(x): one GD step on the features m(x).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from einops import einsum
from jaxtyping import Float
from torch import Tensor

from icl_mech.errors import IclMechError
from icl_mech.gd.data import RegressionTasks, split_tokens
from icl_mech.gd.model import LinearSelfAttentionModel, LSAConfig, MLPEmbedding

Features = Callable[[Tensor], Tensor]


@dataclass
class OneStepGD:
    """Explicit one-step-GD predictor on tokens (the reference the model is compared with).

    `features` maps x to the space GD runs in (identity by default; m(x) for the kernelised
    variant). Differentiable in the tokens, so it also gives reference sensitivities.
    """

    eta: float
    d_in: int
    features: Features | None = None

    def weights_after_step(
        self, tokens: Float[Tensor, "batch pos d_token"]
    ) -> Float[Tensor, "batch d_out d_feature"]:
        xs, ys, _ = split_tokens(tokens, self.d_in)
        phi = xs if self.features is None else self.features(xs)
        residuals = -ys  # W_0 phi_i - y_i with W_0 = 0
        gradient = einsum(residuals, phi, "b n o, b n f -> b o f") / xs.shape[1]
        return -self.eta * gradient

    def __call__(self, tokens: Float[Tensor, "batch pos d_token"]) -> Float[Tensor, "batch d_out"]:
        _, _, x_test = split_tokens(tokens, self.d_in)
        phi_test = x_test if self.features is None else self.features(x_test)
        return einsum(self.weights_after_step(tokens), phi_test, "b o f, b f -> b o")


def gradient_direction(
    tokens: Float[Tensor, "batch pos d_token"], d_in: int, features: Features | None = None
) -> Float[Tensor, "batch d_out"]:
    return OneStepGD(eta=1.0, d_in=d_in, features=features)(tokens)


@torch.no_grad()
def line_search_eta(
    tasks: RegressionTasks,
    features: Features | None = None,
    n_tasks: int = 8192,
    seed: int = 1_000_003,
    dtype: torch.dtype = torch.float32,
) -> float:
    """The learning rate that minimises the one-step-GD loss on held-out tasks.

    The prediction is eta * g, so the loss 1/2 E||eta g - y||^2 is a parabola in eta and the
    exact line search is its vertex, eta* = E<g, y> / E||g||^2.
    """
    batch = tasks.held_out(n_tasks, seed, dtype=dtype)
    direction = gradient_direction(batch.tokens(), tasks.d_in, features)
    curvature = direction.pow(2).sum()
    if curvature <= 0:
        raise IclMechError("line search failed: the GD direction is zero on every held-out task")
    return float((direction * batch.y_test).sum() / curvature)


def block_diagonal_gd_weights(
    d_feature: int, d_out: int, eta: float
) -> dict[str, Float[Tensor, "d_model d_model"]]:
    d_model = d_feature + d_out
    x_part = torch.zeros(d_model, d_model)
    x_part[:d_feature, :d_feature] = torch.eye(d_feature)
    value = torch.zeros(d_model, d_model)
    value[d_feature:, d_feature:] = -eta * torch.eye(d_out)
    return {"W_Q": x_part, "W_K": x_part.clone(), "W_V": value, "W_O": torch.eye(d_model)}


@torch.no_grad()
def constructed_model(
    d_in: int, d_out: int, eta: float, embedding: MLPEmbedding | None = None
) -> LinearSelfAttentionModel:
    """A one-layer model whose forward pass is exactly one GD step (on m(x) if `embedding`)."""
    d_embed = None if embedding is None else embedding.W_out.shape[0]
    if embedding is not None and embedding.W_in.shape[1] != d_in:
        raise IclMechError(
            f"embedding takes d_in={embedding.W_in.shape[1]}, construction asked for d_in={d_in}"
        )
    model = LinearSelfAttentionModel(LSAConfig(d_in=d_in, d_out=d_out, d_embed=d_embed))
    if embedding is not None:
        model.embed.load_state_dict(embedding.state_dict())
    weights = block_diagonal_gd_weights(model.cfg.d_feature, d_out, eta)
    for name, value in weights.items():
        getattr(model.layers[0], name).copy_(value)
    return model.requires_grad_(False)


def constructed_like(model: LinearSelfAttentionModel, eta: float) -> LinearSelfAttentionModel:
    """The one-GD-step counterpart of a trained one-layer model (sharing its embedding)."""
    if model.cfg.n_layers != 1:
        raise IclMechError(
            f"one GD step corresponds to one layer; the model has {model.cfg.n_layers}"
        )
    return constructed_model(model.cfg.d_in, model.cfg.d_out, eta, model.embed)


def gd_reference(
    model: LinearSelfAttentionModel, tasks: RegressionTasks, n_tasks: int = 8192
) -> OneStepGD:
    """One GD step in the model's input space (m(x) for the kernelised variant), eta tuned by
    line search on held-out tasks."""
    features = None if model.embed is None else model.features
    dtype = next(model.parameters()).dtype
    eta = line_search_eta(tasks, features, n_tasks=n_tasks, dtype=dtype)
    return OneStepGD(eta=eta, d_in=tasks.d_in, features=features)
