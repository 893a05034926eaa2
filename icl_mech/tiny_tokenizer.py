"""The tiny models' tokenizer: a real (small) byte-level BPE trained on the bundled task texts.

It is cached under ``$ICL_MECH_CACHE`` (TransformerLens reloads tokenizers by path) in a folder
named after its key: a hash of the texts it is trained on (the bundled task files), the
tokenizers major version and ``RECIPE``. With a read-only cache it lives in a temporary folder
for the life of the process.
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
from icl_mech.cache_keys import keyed_folder, major_version, texts_sha256
from icl_mech.errors import IclMechError

TINY_TOKENIZER = "tiny-tokenizer"  # the folder is tiny-tokenizer-<12 hex of its key>
RECIPE = 1  # bump when _train_tiny_tokenizer changes


def tokenizer_key() -> dict:
    """What the tiny tokenizer's folder depends on."""
    return {
        "texts_sha256": texts_sha256(tasks.all_texts()),
        "tokenizers_major": major_version("tokenizers"),
        "recipe": RECIPE,
    }


@lru_cache(maxsize=1)
def tiny_tokenizer():
    """A byte-level BPE tokenizer trained (in about a second) on the bundled task texts.

    It is saved to the cache and reloaded, since TransformerLens reloads tokenizers by path.
    With a read-only cache it lives in a temporary folder for the life of the process.
    """
    key = tokenizer_key()
    folder = keyed_folder(TINY_TOKENIZER, key)
    if cache.inspect(folder) is not None and not _writable(folder.parent):
        validate.warn(
            f"the cache {folder.parent} is not writable (ICL_MECH_CACHE); the tiny tokenizer "
            "is built in a temporary folder for this process"
        )
        folder = _scratch() / folder.name
    built = cache.build_once(
        folder,
        lambda out: _train_tiny_tokenizer().save_pretrained(out),
        what="the tiny tokenizer",
        key=key,
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
