"""The tiny models' tokenizer: a real (small) byte-level BPE trained on the bundled task texts.

It is cached under ``$ICL_MECH_CACHE`` (TransformerLens reloads tokenizers by path); with a
read-only cache it lives in a temporary folder for the life of the process.
"""

from __future__ import annotations

import atexit
import shutil
import tempfile
from functools import lru_cache
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import AutoTokenizer, PreTrainedTokenizerFast

from icl_mech import cache, tasks, validate
from icl_mech.errors import IclMechError

TINY_TOKENIZER = "tiny-tokenizer-v1"


@lru_cache(maxsize=1)
def tiny_tokenizer():
    """A byte-level BPE tokenizer trained (in about a second) on the bundled task texts.

    It is saved to the cache and reloaded, since TransformerLens reloads tokenizers by path.
    With a read-only cache it lives in a temporary folder for the life of the process.
    """
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
