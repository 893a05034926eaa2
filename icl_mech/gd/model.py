"""Linear self-attention (no softmax) on in-context regression tokens, with TransformerLens hooks.

One layer updates every token e_j by

    e_j <- e_j + W_O  (1/N) sum_{i < N} (W_V e_i) <W_K e_i, W_Q e_j>

where i runs over the N context tokens only (the test token is never a key). The prediction is
read from the test token as y_hat = -(its y-part): the sign convention of von Oswald et al.
2023, where a layer moves every y_j towards the residual y_j - W x_j.

Hook points per layer ("layers.{l}."): hook_q, hook_k, hook_v [batch pos d_model],
hook_attn [batch query_pos key_pos] (scores after the 1/N scale and the context mask; without a
softmax they are the attention weights), hook_out [batch pos d_model] (the layer's update).
On the model: hook_embed [batch pos d_model], the tokens after the optional MLP embedding.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from einops import einsum
from jaxtyping import Float
from torch import Tensor, nn
from transformer_lens import HookedRootModule
from transformer_lens.hook_points import HookPoint

from icl_mech.errors import IclMechError
from icl_mech.gd.data import make_generator


@dataclass(frozen=True)
class LSAConfig:
    d_in: int = 10
    d_out: int = 1
    n_layers: int = 1
    d_embed: int | None = None
    d_hidden: int = 64
    init_std: float = 0.02
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("d_in", "d_out", "n_layers", "d_hidden"):
            if getattr(self, name) <= 0:
                raise IclMechError(f"LSAConfig.{name} must be positive, got {getattr(self, name)}")
        if self.d_embed is not None and self.d_embed <= 0:
            raise IclMechError(f"LSAConfig.d_embed must be positive or None, got {self.d_embed}")

    @property
    def d_feature(self) -> int:
        """Width of the x-part of a token inside the model (after the embedding)."""
        return self.d_in if self.d_embed is None else self.d_embed

    @property
    def d_model(self) -> int:
        return self.d_feature + self.d_out

    # n_heads, d_head and model_name mirror HookedTransformerConfig for code reading `model.cfg`.
    @property
    def n_heads(self) -> int:
        return 1

    @property
    def d_head(self) -> int:
        return self.d_model

    @property
    def model_name(self) -> str:
        embed = "" if self.d_embed is None else f"-mlp{self.d_embed}"
        return f"lsa{embed}-{self.n_layers}L-d{self.d_in}"


@dataclass(frozen=True)
class EffectiveWeights:
    """The only products a linear self-attention layer's function depends on:
    kq = W_K^T W_Q (scores are e_i^T kq e_j) and ov = W_O W_V."""

    kq: Float[Tensor, "d_model d_model"]
    ov: Float[Tensor, "d_model d_model"]

    def canonical(self, reference_norm: float) -> EffectiveWeights:
        # (c kq, ov / c) computes the same function for any c != 0; fix c so that kq has the
        # given Frobenius norm and a positive trace, making weights of two layers comparable.
        scale = reference_norm / self.kq.norm().clamp_min(1e-12)
        if torch.trace(self.kq) < 0:
            scale = -scale
        return EffectiveWeights(self.kq * scale, self.ov / scale)

    def lerp(self, other: EffectiveWeights, alpha: float) -> EffectiveWeights:
        return EffectiveWeights(
            torch.lerp(self.kq, other.kq, alpha), torch.lerp(self.ov, other.ov, alpha)
        )


class LinearSelfAttention(nn.Module):
    def __init__(self, d_model: int, init_std: float, generator: torch.Generator):
        super().__init__()
        self.d_model = d_model
        for name in ("W_Q", "W_K", "W_V", "W_O"):
            weight = torch.randn(d_model, d_model, generator=generator) * init_std
            setattr(self, name, nn.Parameter(weight))
        self.hook_q = HookPoint()
        self.hook_k = HookPoint()
        self.hook_v = HookPoint()
        self.hook_attn = HookPoint()
        self.hook_out = HookPoint()

    def forward(
        self, resid: Float[Tensor, "batch pos d_model"]
    ) -> Float[Tensor, "batch pos d_model"]:
        n_context = resid.shape[1] - 1
        q = self.hook_q(einsum(resid, self.W_Q, "b p i, o i -> b p o"))
        k = self.hook_k(einsum(resid, self.W_K, "b p i, o i -> b p o"))
        v = self.hook_v(einsum(resid, self.W_V, "b p i, o i -> b p o"))
        scores = einsum(q, k, "b q d, b k d -> b q k") / n_context
        is_context_key = torch.arange(resid.shape[1], device=resid.device) < n_context
        attn = self.hook_attn(scores * is_context_key.to(scores.dtype))
        mixed = einsum(attn, v, "b q k, b k d -> b q d")
        return resid + self.hook_out(einsum(mixed, self.W_O, "b p i, o i -> b p o"))

    def effective(self) -> EffectiveWeights:
        return EffectiveWeights(kq=self.W_K.T @ self.W_Q, ov=self.W_O @ self.W_V)

    @torch.no_grad()
    def load_effective(self, weights: EffectiveWeights) -> None:
        eye = torch.eye(self.d_model, dtype=self.W_Q.dtype)
        self.W_Q.copy_(weights.kq)
        self.W_K.copy_(eye)
        self.W_V.copy_(weights.ov)
        self.W_O.copy_(eye)


class MLPEmbedding(nn.Module):
    """m(x): a two-layer tanh MLP applied to the x-part of every token (kernelised variant)."""

    def __init__(self, d_in: int, d_hidden: int, d_embed: int, generator: torch.Generator):
        super().__init__()
        self.W_in = nn.Parameter(torch.randn(d_hidden, d_in, generator=generator) / d_in**0.5)
        self.b_in = nn.Parameter(torch.zeros(d_hidden))
        self.W_out = nn.Parameter(
            torch.randn(d_embed, d_hidden, generator=generator) / d_hidden**0.5
        )

    def forward(self, x: Float[Tensor, "*batch d_in"]) -> Float[Tensor, "*batch d_embed"]:
        hidden = torch.tanh(einsum(x, self.W_in, "... i, h i -> ... h") + self.b_in)
        return einsum(hidden, self.W_out, "... h, e h -> ... e")


class LinearSelfAttentionModel(HookedRootModule):
    """A stack of linear self-attention layers, optionally after an MLP embedding m(x).

    Input: tokens [batch, n_context + 1, d_in + d_out] from `build_tokens`.
    `forward` returns the predictions y_hat [batch, d_out]; `residual` the whole stream.
    """

    def __init__(self, config: LSAConfig = LSAConfig()):
        super().__init__()
        self.cfg = config
        generator = make_generator(config.seed)
        self.embed = (
            None
            if config.d_embed is None
            else MLPEmbedding(config.d_in, config.d_hidden, config.d_embed, generator)
        )
        self.hook_embed = HookPoint()
        self.layers = nn.ModuleList(
            LinearSelfAttention(config.d_model, config.init_std, generator)
            for _ in range(config.n_layers)
        )
        self.setup()

    def features(self, x: Float[Tensor, "*batch d_in"]) -> Float[Tensor, "*batch d_feature"]:
        """m(x) for the kernelised variant, x itself otherwise."""
        return x if self.embed is None else self.embed(x)

    def check_tokens(self, tokens: Tensor) -> None:
        expected = self.cfg.d_in + self.cfg.d_out
        if tokens.ndim != 3 or tokens.shape[1] < 2 or tokens.shape[2] != expected:
            raise IclMechError(
                f"LinearSelfAttentionModel(d_in={self.cfg.d_in}, d_out={self.cfg.d_out}) "
                f"expects tokens [batch, n_context + 1 >= 2, {expected}], "
                f"got {tuple(tokens.shape)}"
            )

    def residual(
        self, tokens: Float[Tensor, "batch pos d_token"]
    ) -> Float[Tensor, "batch pos d_model"]:
        self.check_tokens(tokens)
        x, y = tokens[..., : self.cfg.d_in], tokens[..., self.cfg.d_in :]
        resid = self.hook_embed(torch.cat([self.features(x), y], dim=-1))
        for layer in self.layers:
            resid = layer(resid)
        return resid

    def forward(self, tokens: Float[Tensor, "batch pos d_token"]) -> Float[Tensor, "batch d_out"]:
        return -self.residual(tokens)[:, -1, self.cfg.d_feature :]

    def effective(self) -> list[EffectiveWeights]:
        return [layer.effective() for layer in self.layers]

    def load_effective(self, weights: list[EffectiveWeights]) -> None:
        if len(weights) != len(self.layers):
            raise IclMechError(
                f"got effective weights for {len(weights)} layers, model has {len(self.layers)}"
            )
        for layer, layer_weights in zip(self.layers, weights):
            if layer_weights.kq.shape != (layer.d_model, layer.d_model):
                raise IclMechError(
                    f"effective weights of shape {tuple(layer_weights.kq.shape)} do not fit "
                    f"d_model={layer.d_model}"
                )
            layer.load_effective(layer_weights)
