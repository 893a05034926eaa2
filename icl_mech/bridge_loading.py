"""Building a ``TransformerBridge``: of a local Hugging Face folder, or of a random tiny model."""

from __future__ import annotations

import logging
import warnings

import torch
from transformer_lens.model_bridge import TransformerBridge
from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

from icl_mech.errors import IclMechError
from icl_mech.tiny_tokenizer import tiny_tokenizer


def boot_bridge(
    source: str, *, name: str, device: str, dtype, tokenizer=None, hf_model=None, n_devices=None
):
    """A ``TransformerBridge`` of a local Hugging Face folder (or hub name), with
    ``enable_compatibility_mode(no_processing=True)``: canonical hook names, and activations
    equal to the Hugging Face model's (no weight folding). ``n_devices``: split over that many
    CUDA devices (a Hugging Face ``device_map``)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        quiet = logging.getLogger("transformer_lens")
        level = quiet.level
        quiet.setLevel(logging.ERROR)
        try:
            split = {} if n_devices is None else {"n_devices": n_devices}
            bridge = TransformerBridge.boot_transformers(
                source, device=device, dtype=dtype, tokenizer=tokenizer, hf_model=hf_model, **split
            )
            bridge.enable_compatibility_mode(no_processing=True, disable_warnings=True)
        finally:
            quiet.setLevel(level)
    bridge.cfg.model_name = name
    return bridge.eval()


def tiny_bridge(
    arch: str = "llama", *, n_layers: int = 3, d_model: int = 64, n_heads: int = 4, seed: int = 0
):
    """A randomly initialised small Hugging Face model of the ``tiny_model`` shapes, as a
    ``TransformerBridge`` (the tiny models of TransformerLens 4, which has no HookedTransformer).
    """
    tokenizer = tiny_tokenizer()
    vocab = tokenizer.vocab_size
    torch.manual_seed(seed)
    if arch == "gpt2":
        config = GPT2Config(
            vocab_size=vocab,
            n_positions=512,
            n_embd=d_model,
            n_layer=n_layers,
            n_head=n_heads,
            n_inner=4 * d_model,
            activation_function="gelu_new",
            bos_token_id=0,
            eos_token_id=0,
            pad_token_id=0,
        )
        hf_model, prepend_bos = GPT2LMHeadModel(config), True
    elif arch == "llama":
        config = LlamaConfig(
            vocab_size=vocab,
            hidden_size=d_model,
            intermediate_size=4 * d_model,
            num_hidden_layers=n_layers,
            num_attention_heads=n_heads,
            num_key_value_heads=max(1, n_heads // 2),
            max_position_embeddings=512,
            bos_token_id=0,
            eos_token_id=0,
            pad_token_id=0,
            tie_word_embeddings=False,
        )
        hf_model, prepend_bos = LlamaForCausalLM(config), False
    else:
        raise IclMechError(f"tiny_model: unknown arch {arch!r}; choose 'gpt2' or 'llama'")
    hf_model.config.architectures = [type(hf_model).__name__]
    model = boot_bridge(
        f"tiny-{arch}-{n_layers}L",
        name=f"tiny-{arch}-{n_layers}L",
        device="cpu",
        dtype=torch.float32,
        tokenizer=tokenizer,
        hf_model=hf_model.eval(),
    )
    model.cfg.default_prepend_bos = prepend_bos
    model.cfg.n_ctx = 512
    return model
