"""Tiny randomly initialised models with a real (small) BPE tokenizer, for fast tests.

The tokenizer is trained on the bundled task texts and cached under ``$ICL_MECH_CACHE``
(TransformerLens reloads tokenizers by path); with a read-only cache it lives in a temporary
folder for the life of the process.
"""

from __future__ import annotations

import atexit
import shutil
import tempfile
from functools import lru_cache
from pathlib import Path

from icl_mech import backends, bridge_loading, cache, validate
from icl_mech.errors import IclMechError

TINY_TOKENIZER = "tiny-tokenizer-v1"


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
    if d_model % n_heads:
        raise IclMechError(f"tiny_model: d_model={d_model} is not a multiple of n_heads={n_heads}")
    if backends.check_backend(backend, "tiny_model") == "bridge":
        return bridge_loading.tiny_bridge(
            arch, n_layers=n_layers, d_model=d_model, n_heads=n_heads, seed=seed
        )
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


@lru_cache(maxsize=1)
def tiny_tokenizer():
    """A byte-level BPE tokenizer trained (in about a second) on the bundled task texts.

    It is saved to the cache and reloaded, since TransformerLens reloads tokenizers by path.
    With a read-only cache it lives in a temporary folder for the life of the process.
    """
    from transformers import AutoTokenizer

    folder = cache.cache_dir() / TINY_TOKENIZER
    if cache.inspect(folder) is not None and not _writable(folder.parent):
        validate.warn(
            f"the cache {folder.parent} is not writable (ICL_MECH_CACHE); the tiny tokenizer "
            "is built in a temporary folder for this process"
        )
        folder = _scratch() / TINY_TOKENIZER
    built = cache.build_once(
        folder, lambda out: _train_tiny_tokenizer().save_pretrained(out), what="the tiny tokenizer"
    )
    return AutoTokenizer.from_pretrained(str(built))


def _writable(folder: Path) -> bool:
    try:
        validate.writable_folder(folder, "cache")
    except IclMechError:
        return False
    return True


@lru_cache(maxsize=1)
def _scratch() -> Path:
    folder = Path(tempfile.mkdtemp(prefix="icl_mech-"))
    atexit.register(shutil.rmtree, folder, ignore_errors=True)
    return folder


def _train_tiny_tokenizer():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    from icl_mech import tasks

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=2000,
        special_tokens=["<|endoftext|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tokenizer.train_from_iterator(tasks.all_texts(), trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        bos_token="<|endoftext|>",
        eos_token="<|endoftext|>",
        pad_token="<|endoftext|>",
        padding_side="left",
    )
