"""Cached folders built once: safe under threads, processes and interrupted or corrupt builds.

``build_once(folder, build)`` returns ``folder`` complete, calling ``build(staging)`` only when
needed. A folder is complete when it holds the completion marker, whose manifest (size of each
file, sha256 of the small ones) still matches, and whose safetensors files are whole.

- Concurrent first use: a lock file next to the folder (:mod:`icl_mech.locks`) serialises
  builders, and a builder that finds a complete folder after waiting uses it. On a file system
  that ignores locks the rename may still find a rival's complete folder in place: accepted.
- Corruption: a complete folder whose files no longer match is rebuilt, with a warning.
- An unwritable cache is an ``IclMechError`` naming the folder before any work starts.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import struct
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from icl_mech import locks, validate

MARKER = "icl_mech_complete.json"
_HASHED_UP_TO = 16 * 2**20  # bytes; bigger files are checked by size (and safetensors header)
_log = logging.getLogger(__name__)


def cache_dir() -> Path:
    """``$ICL_MECH_CACHE`` (an empty value counts as unset), else ``~/.cache/icl_mech``."""
    chosen = os.environ.get("ICL_MECH_CACHE", "").strip()
    return Path(chosen).expanduser() if chosen else Path.home() / ".cache" / "icl_mech"


def build_once(
    folder: Path,
    build: Callable[[Path], None],
    *,
    what: str = "cache folder",
    env: str | None = "ICL_MECH_CACHE",
    source: str = "",
    key: dict | None = None,
    recorded: dict | None = None,
) -> Path:
    """``folder``, complete; built by ``build(staging)`` (which creates ``staging``) if needed.

    ``key`` (what the folder depends on, see :mod:`icl_mech.cache_keys`) and ``recorded``
    (other facts about the build) are written into its manifest."""
    folder = Path(folder)
    problem = inspect(folder)
    if problem is None:
        return folder
    validate.writable_folder(folder.parent, f"cannot build {what} in the cache", env)
    with folder_lock(folder):
        problem = inspect(folder)  # a rival may have finished while we waited
        if problem is None:
            return folder
        if folder.exists():
            validate.warn(f"{what} at {folder} is {problem}; rebuilding it")
        staging = folder.with_name(f".{folder.name}.partial-{os.getpid()}-{uuid.uuid4().hex[:8]}")
        try:
            build(staging)
            manifest = {"source": source, "key": key, "recorded": recorded or {}}
            manifest["files"] = _manifest(staging)
            (staging / MARKER).write_text(json.dumps(manifest, indent=1))
            _install(staging, folder)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    return folder


def _install(staging: Path, folder: Path) -> None:
    if folder.exists() and inspect(folder) is not None:
        shutil.rmtree(folder, ignore_errors=True)
    try:
        os.replace(staging, folder)
    except OSError:
        if inspect(folder) is not None:  # not a finished rival's folder: a real failure
            raise


def inspect(folder: Path) -> str | None:
    """None if ``folder`` is complete and whole, else what is wrong with it."""
    marker = folder / MARKER
    if not folder.exists():
        return "missing"
    if not marker.exists():
        return "incomplete (an interrupted build)"
    try:
        files = json.loads(marker.read_text()).get("files")
    except (OSError, ValueError, AttributeError):
        return f"corrupt (unreadable {MARKER})"
    if files is not None:  # folders of older versions have no manifest
        for name, expected in files.items():
            problem = _check_file(folder / name, expected)
            if problem:
                return f"corrupt ({name}: {problem})"
    for path in sorted(folder.glob("*.safetensors")):
        if not _safetensors_whole(path):
            return f"corrupt ({path.name}: truncated or damaged safetensors file)"
    return None


def _manifest(folder: Path) -> dict[str, dict]:
    files = {}
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        size = path.stat().st_size
        entry: dict = {"size": size}
        if size <= _HASHED_UP_TO:
            entry["sha256"] = hashlib.sha256(path.read_bytes()).hexdigest()
        files[path.relative_to(folder).as_posix()] = entry
    return files


def _check_file(path: Path, expected: dict) -> str | None:
    if not path.is_file():
        return "missing"
    size = path.stat().st_size
    if size != expected.get("size"):
        return f"{size} bytes, {expected.get('size')} expected"
    digest = expected.get("sha256")
    if digest and hashlib.sha256(path.read_bytes()).hexdigest() != digest:
        return "checksum differs"
    return None


def _safetensors_whole(path: Path) -> bool:
    """The file is as long as its header says: 8 + header + the end of the last tensor."""
    try:
        with path.open("rb") as f:
            (header_size,) = struct.unpack("<Q", f.read(8))
            header = json.loads(f.read(header_size))
        ends = [v["data_offsets"][1] for k, v in header.items() if k != "__metadata__"]
        return path.stat().st_size == 8 + header_size + max(ends, default=0)
    except (OSError, ValueError, KeyError, TypeError, struct.error):
        return False


@contextmanager
def folder_lock(folder: Path) -> Iterator[None]:
    """Exclusive lock on building ``folder``, across threads and processes; leaves no file
    (``.{name}.lock``, :func:`icl_mech.locks.hold` with ``remove=True``)."""
    path = folder.with_name(f".{folder.name}.lock")
    if locks.is_held(path):
        _log.info("waiting for another process building %s", folder)
    with locks.hold(path, remove=True):
        yield
