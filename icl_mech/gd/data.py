"""In-context regression tasks: context tokens e_j = (x_j, y_j) and a test token (x_test, 0).

Every task draws its own W ~ N(0, I) and inputs x ~ U(-x_range, x_range); targets are
y = W x, or y = W f(x) when a fixed nonlinear `TeacherFeatures` f is given (the tasks for the
kernelised variant). Batches are drawn on the fly from a seeded `torch.Generator`.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import torch
from jaxtyping import Float
from torch import Tensor

from icl_mech.errors import IclMechError


def make_generator(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(int(seed))


def _check_positive(**values: int | float) -> None:
    for name, value in values.items():
        if value <= 0:
            raise IclMechError(f"{name} must be positive, got {value!r}")


@dataclass(frozen=True)
class RegressionBatch:
    xs: Float[Tensor, "batch n_context d_in"]
    ys: Float[Tensor, "batch n_context d_out"]
    x_test: Float[Tensor, "batch d_in"]
    y_test: Float[Tensor, "batch d_out"]

    @property
    def d_in(self) -> int:
        return self.xs.shape[-1]

    @property
    def d_out(self) -> int:
        return self.ys.shape[-1]

    @property
    def n_context(self) -> int:
        return self.xs.shape[1]

    def __len__(self) -> int:
        return self.xs.shape[0]

    def tokens(self) -> Float[Tensor, "batch n_context_plus_1 d_token"]:
        return build_tokens(self.xs, self.ys, self.x_test)


def build_tokens(
    xs: Float[Tensor, "batch n_context d_in"],
    ys: Float[Tensor, "batch n_context d_out"],
    x_test: Float[Tensor, "batch d_in"],
) -> Float[Tensor, "batch n_context_plus_1 d_token"]:
    """Stack (x_j, y_j) for j < N and (x_test, 0) as the last token."""
    if xs.ndim != 3 or ys.ndim != 3 or x_test.ndim != 2:
        raise IclMechError(
            "expected xs [batch, n_context, d_in], ys [batch, n_context, d_out], "
            f"x_test [batch, d_in]; got {tuple(xs.shape)}, {tuple(ys.shape)}, "
            f"{tuple(x_test.shape)}"
        )
    if xs.shape[:2] != ys.shape[:2] or xs.shape[0] != x_test.shape[0]:
        raise IclMechError(
            f"batch/context sizes disagree: xs {tuple(xs.shape)}, ys {tuple(ys.shape)}, "
            f"x_test {tuple(x_test.shape)}"
        )
    if xs.shape[-1] != x_test.shape[-1]:
        raise IclMechError(f"x_test has d_in={x_test.shape[-1]} but xs has d_in={xs.shape[-1]}")
    context = torch.cat([xs, ys], dim=-1)
    query = torch.cat([x_test, x_test.new_zeros(x_test.shape[0], ys.shape[-1])], dim=-1)
    return torch.cat([context, query[:, None, :]], dim=1)


def split_tokens(
    tokens: Float[Tensor, "batch n_tokens d_token"], d_in: int
) -> tuple[
    Float[Tensor, "batch n_context d_in"],
    Float[Tensor, "batch n_context d_out"],
    Float[Tensor, "batch d_in"],
]:
    """Inverse of `build_tokens`: (xs, ys, x_test)."""
    if tokens.ndim != 3 or tokens.shape[1] < 2 or not 0 < d_in < tokens.shape[-1]:
        raise IclMechError(
            f"tokens must be [batch, n_context + 1 >= 2, d_in + d_out] with d_in={d_in} "
            f"and d_out >= 1; got shape {tuple(tokens.shape)}"
        )
    context, query = tokens[:, :-1], tokens[:, -1]
    return context[..., :d_in], context[..., d_in:], query[..., :d_in]


@dataclass(frozen=True)
class TeacherFeatures:
    """A fixed random one-layer tanh network f(x) = tanh(gain · A x + b) that defines
    nonlinear tasks y = W f(x)."""

    weight: Float[Tensor, "d_feature d_in"]
    bias: Float[Tensor, " d_feature"]

    @classmethod
    def random(cls, d_in: int, d_feature: int, seed: int = 0, gain: float = 2.0) -> TeacherFeatures:
        _check_positive(d_in=d_in, d_feature=d_feature, gain=gain)
        generator = make_generator(seed)
        weight = torch.randn(d_feature, d_in, generator=generator) * gain / d_in**0.5
        bias = torch.randn(d_feature, generator=generator) * 0.5
        return cls(weight, bias)

    @property
    def d_in(self) -> int:
        return self.weight.shape[1]

    @property
    def d_feature(self) -> int:
        return self.weight.shape[0]

    def __call__(self, x: Float[Tensor, "*batch d_in"]) -> Float[Tensor, "*batch d_feature"]:
        if x.shape[-1] != self.d_in:
            raise IclMechError(f"teacher features expect d_in={self.d_in}, got {x.shape[-1]}")
        weight, bias = self.weight.to(x.dtype), self.bias.to(x.dtype)
        return torch.tanh(x @ weight.T + bias)


@dataclass(frozen=True)
class RegressionTasks:
    """A distribution over in-context regression tasks (defaults: von Oswald et al. 2023)."""

    d_in: int = 10
    n_context: int = 10
    d_out: int = 1
    x_range: float = 1.0
    teacher: TeacherFeatures | None = None

    def __post_init__(self) -> None:
        _check_positive(
            d_in=self.d_in, n_context=self.n_context, d_out=self.d_out, x_range=self.x_range
        )
        if self.teacher is not None and self.teacher.d_in != self.d_in:
            raise IclMechError(
                f"teacher features take d_in={self.teacher.d_in} but the tasks have "
                f"d_in={self.d_in}"
            )

    @property
    def d_token(self) -> int:
        return self.d_in + self.d_out

    def sample(
        self, batch_size: int, generator: torch.Generator, dtype: torch.dtype = torch.float32
    ) -> RegressionBatch:
        _check_positive(batch_size=batch_size)
        d_target_in = self.d_in if self.teacher is None else self.teacher.d_feature
        x_shape = (batch_size, self.n_context + 1, self.d_in)
        x = (torch.rand(x_shape, generator=generator, dtype=dtype) * 2 - 1) * self.x_range
        w = torch.randn(batch_size, self.d_out, d_target_in, generator=generator, dtype=dtype)
        features = x if self.teacher is None else self.teacher(x)
        y = torch.einsum("boi,bni->bno", w, features)
        return RegressionBatch(xs=x[:, :-1], ys=y[:, :-1], x_test=x[:, -1], y_test=y[:, -1])

    def batches(
        self, batch_size: int, seed: int, dtype: torch.dtype = torch.float32
    ) -> Iterator[RegressionBatch]:
        """An endless, reproducible stream of fresh batches."""
        generator = make_generator(seed)
        while True:
            yield self.sample(batch_size, generator, dtype)

    def held_out(
        self, n_tasks: int, seed: int, dtype: torch.dtype = torch.float32
    ) -> RegressionBatch:
        return self.sample(n_tasks, make_generator(seed), dtype)
