"""Tiny randomly initialised models with a real (small) BPE tokenizer
(:mod:`icl_mech.tiny_tokenizer`), for fast tests."""

from __future__ import annotations

from icl_mech import backends, bridge_loading, threads, validate
from icl_mech.errors import IclMechError
from icl_mech.tiny_tokenizer import tiny_tokenizer


def tiny_model(
    arch: str = "llama",
    *,
    n_layers: int = 3,
    d_model: int = 64,
    n_heads: int = 4,
    seed: int = 0,
    backend: str | None = None,
):
    """A small randomly initialised model for fast tests, with a real (small) BPE tokenizer.

    ``arch="gpt2"``: LayerNorm, learned positions, GELU MLP, prepends BOS.
    ``arch="llama"``: RMSNorm, rotary, gated SiLU MLP, grouped-query attention (2 KV heads).
    ``backend``: a ``HookedTransformer`` (``"hooked"``, the default on TransformerLens 3.x) or
    a ``TransformerBridge`` of a random Hugging Face model of the same shapes (``"bridge"``).
    """
    n_layers = validate.count(n_layers, "tiny_model n_layers")
    n_heads = validate.count(n_heads, "tiny_model n_heads")
    d_model = validate.count(d_model, "tiny_model d_model")
    seed = validate.seed(seed, "tiny_model seed")
    threads.apply_policy()
    if d_model % n_heads:
        raise IclMechError(f"tiny_model: d_model={d_model} is not a multiple of n_heads={n_heads}")
    if backends.check_backend(backend, "tiny_model") == "bridge":
        return bridge_loading.tiny_bridge(
            arch, n_layers=n_layers, d_model=d_model, n_heads=n_heads, seed=seed
        )
    # TransformerLens 3.x only: 4.x removed HookedTransformer and its loaders
    from transformer_lens import HookedTransformer, HookedTransformerConfig

    common = dict(
        n_layers=n_layers,
        d_model=d_model,
        n_heads=n_heads,
        d_head=d_model // n_heads,
        d_mlp=4 * d_model,
        n_ctx=512,
        d_vocab=tiny_tokenizer().vocab_size,
        seed=seed,
        device="cpu",
        init_weights=True,
    )
    if arch == "gpt2":
        cfg = HookedTransformerConfig(
            **common,
            act_fn="gelu_new",
            normalization_type="LN",
            positional_embedding_type="standard",
            model_name=f"tiny-gpt2-{n_layers}L",
            default_prepend_bos=True,
        )
    elif arch == "llama":
        cfg = HookedTransformerConfig(
            **common,
            act_fn="silu",
            gated_mlp=True,
            normalization_type="RMS",
            final_rms=True,
            positional_embedding_type="rotary",
            rotary_dim=d_model // n_heads,
            n_key_value_heads=max(1, n_heads // 2),
            model_name=f"tiny-llama-{n_layers}L",
            default_prepend_bos=False,
        )
    else:
        raise IclMechError(f"tiny_model: unknown arch {arch!r}; choose 'gpt2' or 'llama'")
    model = HookedTransformer(cfg, tokenizer=tiny_tokenizer(), default_padding_side="left")
    return model.eval()
