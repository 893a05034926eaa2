"""``icl-mech cache list | clear [--all]``: the model cache's entries and whether each is current.

An entry is current when its folder's name ends with the hash of the key this installation
would use (:mod:`icl_mech.cache_keys`), stale otherwise. ``clear`` removes stale entries, the
folders of older versions without a key suffix and staging folders (``.*.partial-*``) left by
builds that died; ``clear --all`` removes everything under the cache folder.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import re
import shutil
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from icl_mech import cache, models
from icl_mech.cache_keys import describe, short_hash, split_name
from icl_mech.errors import IclMechError
from icl_mech.model_names import EMBEDDED_NAME, GEMMA_NAME
from icl_mech.tiny_tokenizer import TINY_TOKENIZER, tokenizer_key

# folder base name -> (what it holds, the key this installation would use)
KINDS: dict[str, tuple[str, Callable[[], dict]]] = {
    EMBEDDED_NAME: ("embedded model", lambda: models.embedded_key()),
    GEMMA_NAME: ("Gemma model", lambda: models.gemma_key()),
    TINY_TOKENIZER: ("tiny tokenizer", tokenizer_key),
}
_STAGING = re.compile(r"\.partial-(?P<pid>\d+)-")
REMOVED_BY_CLEAR = ("stale", "leftover")


@dataclass(frozen=True)
class Entry:
    path: Path
    what: str
    key: str  # its key components, short
    megabytes: float
    state: str  # current, stale, leftover, building, unknown (key not computable here), other


def entries(folder: Path | None = None) -> list[Entry]:
    """The entries of the cache ``folder`` (default: this installation's), sorted by name."""
    folder = _cache_folder(folder)
    if not folder.exists():
        return []
    current = {}  # base name -> digest of the current key, or None if it cannot be computed
    found = []
    for path in sorted(folder.iterdir(), key=lambda p: p.name):
        what, key, state = _classify(path, current)
        if state is not None:
            found.append(Entry(path, what, key, _megabytes(path), state))
    return found


def _classify(path: Path, current: dict) -> tuple[str, str, str | None]:
    """(what, key, state) of one item of the cache folder; state None: not shown (lock files,
    the hash index)."""
    name = path.name
    staging = _STAGING.search(name)
    if staging:
        state = "building" if _running(int(staging["pid"])) else "leftover"
        return _what(name.lstrip(".")), "(staging folder)", state
    if name.startswith("."):
        return "", "", None
    base, digest = split_name(name)
    if digest is None and _what(name) != "?":  # a folder of a version before keys
        return _what(name), "(none: an older version)", "stale"
    if base not in KINDS:
        return "?", "", "other"
    if base not in current:
        current[base] = _current_digest(base)
    manifest_key = _manifest_key(path)
    shown = describe(manifest_key) if manifest_key else "(no readable manifest)"
    if current[base] is None:
        return KINDS[base][0], shown, "unknown"
    return KINDS[base][0], shown, "current" if digest == current[base] else "stale"


def _what(name: str) -> str:
    for base, (what, _) in KINDS.items():
        if name.lower().startswith(base.lower()):
            return what
    return "?"


def _current_digest(base: str) -> str | None:
    try:
        return short_hash(KINDS[base][1]())
    except (IclMechError, importlib.metadata.PackageNotFoundError):  # e.g. no Gemma package
        return None


def _manifest_key(path: Path) -> dict | None:
    try:
        key = json.loads((path / cache.MARKER).read_text()).get("key")
    except (OSError, ValueError, AttributeError):
        return None
    return key if isinstance(key, dict) else None


def _running(pid: int) -> bool:
    """Whether process ``pid`` may still be building into its staging folder."""
    if os.name != "posix":  # os.kill(pid, 0) would end the process on Windows: assume it runs
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    return True


def _megabytes(path: Path) -> float:
    if not path.is_dir() or path.is_symlink():
        return path.lstat().st_size / 1e6
    total = 0
    for folder, _, files in os.walk(path):
        total += sum(os.lstat(os.path.join(folder, name)).st_size for name in files)
    return total / 1e6


def table(found: list[Entry], folder: Path | None = None) -> list[str]:
    """The lines of ``icl-mech cache list``."""
    folder = _cache_folder(folder)
    if not found:
        return [f"the model cache {folder} holds no entries"]
    rows = [("entry", "what", "key", "MB", "state")]
    rows += [(e.path.name, e.what, e.key, f"{e.megabytes:.1f}", e.state) for e in found]
    widths = [max(len(row[i]) for row in rows) for i in range(5)]
    lines = [f"model cache {folder} (ICL_MECH_CACHE)"]
    for row in rows:
        cells = [
            cell.rjust(w) if i == 3 else cell.ljust(w)
            for i, (cell, w) in enumerate(zip(row, widths))
        ]
        lines.append("  ".join(cells).rstrip())
    total = sum(e.megabytes for e in found)
    lines.append(f"{len(found)} entries, {total:.1f} MB; icl-mech cache clear removes stale ones")
    return lines


def clear(everything: bool = False, folder: Path | None = None) -> list[str]:
    """Remove the stale entries (``everything``: all under the cache folder); what was done."""
    folder = _cache_folder(folder)
    if everything:
        _refuse_broad(folder)
        paths = sorted(folder.iterdir()) if folder.exists() else []
        doomed = [Entry(p, "", "", _megabytes(p), "") for p in paths]
    else:
        doomed = [e for e in entries(folder) if e.state in REMOVED_BY_CLEAR]
    lines = []
    for entry in doomed:
        _remove(entry.path)
        about = f" ({entry.what}, {entry.state})" if entry.state else ""
        lines.append(f"removed {entry.path.name}{about}: {entry.megabytes:.1f} MB")
    kept = Counter(e.state for e in entries(folder))
    kept_text = ", ".join(f"{n} {state}" for state, n in sorted(kept.items())) or "nothing"
    done = f"freed {sum(e.megabytes for e in doomed):.1f} MB" if doomed else "nothing to remove"
    return [*lines, f"{done} in {folder}; kept {kept_text}"]


def _remove(path: Path) -> None:
    try:
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink()
    except FileNotFoundError:  # removed meanwhile by a rival clear
        pass


def _cache_folder(folder: Path | None) -> Path:
    folder = cache.cache_dir() if folder is None else Path(folder)
    if folder.exists() and not folder.is_dir():
        raise IclMechError(
            f"the model cache {str(folder)!r} is a file, expected a folder; set ICL_MECH_CACHE "
            "to a folder (default ~/.cache/icl_mech)"
        )
    return folder


def _refuse_broad(folder: Path) -> None:
    resolved = folder.resolve()
    if resolved in (Path.home().resolve(), Path(resolved.anchor)):
        raise IclMechError(
            f"icl-mech cache clear --all: the cache folder {str(folder)!r} is your home folder or "
            "a file system root, expected a cache folder; set ICL_MECH_CACHE to the cache "
            "(default ~/.cache/icl_mech)"
        )


def command(args) -> int:
    """``icl-mech cache list`` / ``icl-mech cache clear [--all]``."""
    if args.action == "list":
        lines = table(entries())
    else:
        lines = clear(everything=args.all)
    print("\n".join(lines))
    return 0
