"""Reports written whole or not at all, one run at a time (reproductions, check, the demo).

A run writes its files into a staging folder beside ``out`` (``.<out>.partial-<pid>-<random>``,
same file system) and seals it: the report's JSON, written last, records ``"complete": true``
and each file's sha256 and size. :func:`publish` then moves them in: every JSON the old or new
report names leaves ``out``, then the files only the old report listed, the new files replace
the old ones (one rename each) and the new JSON comes last. So ``out`` always holds the old
complete report, no report (JSON-less files: :func:`verify_report` rejects them, the next run
replaces them) or the new complete report.

``out`` is shared, not owned: ``figures/`` holds every reproduction's ``<prefix>*`` files and
``out`` may hold yours, so a non-empty ``out`` is not refused and a run touches only the files
its previous JSON lists and those it writes (a JSON's names are plain file names in ``out``).

:func:`staging` holds ``out``'s lock (:mod:`icl_mech.output_lock`); a run takes it first, before
any model work, and keeps it to the end: a second run into ``out`` is refused at once. No
fsync: this guards against a killed run; after a power cut :func:`verify_report` would notice.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from icl_mech.errors import IclMechError
from icl_mech.output_lock import lock_path, output_lock
from icl_mech.vector_files import dumps


@contextmanager
def staging(out: str | Path) -> Iterator[Path]:
    """Hold ``out``'s lock and yield a new, empty staging folder beside it, removed when the
    block ends: seal and :func:`publish` inside the block, or ``out`` stays as it was."""
    lock = lock_path(out)
    with output_lock(out):
        prefix = lock.name.removesuffix(".lock") + f".partial-{os.getpid()}-"
        folder = Path(tempfile.mkdtemp(prefix=prefix, dir=lock.parent))
        try:
            yield folder
        finally:
            shutil.rmtree(folder, ignore_errors=True)


def seal(folder: Path, json_name: str, record: dict, names: list[str] | None = None) -> Path:
    """Write ``record`` as ``folder/json_name`` with ``complete: true`` and ``files``: the
    sha256 and size of each of ``names`` (default: every other file in ``folder``)."""
    if names is None:
        names = sorted(p.name for p in folder.iterdir() if p.is_file() and p.name != json_name)
    files = {name: _digest(folder / name) for name in names}
    path = folder / json_name
    path.write_text(dumps(record | {"complete": True, "files": files}, indent=1) + "\n")
    return path


def publish(folder: Path, out: str | Path, json_name: str) -> list[Path]:
    """Move the sealed report ``folder/json_name`` and its files into ``out`` (module doc);
    the paths in ``out``, its JSON last."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    new, old = _listed(folder / json_name), _listed(out / json_name)
    for name in {json_name, *old, *new}:
        if name.endswith(".json"):
            (out / name).unlink(missing_ok=True)  # from here no old JSON claims a whole report
    for name in set(old) - set(new):
        (out / name).unlink(missing_ok=True)
    for name in sorted(new, key=lambda n: n.endswith(".json")):  # a JSON after its files
        os.replace(folder / name, out / name)
    os.replace(folder / json_name, out / json_name)
    return [out / name for name in new] + [out / json_name]


def verify_report(folder: str | Path, json_name: str | None = None) -> None:
    """Check that ``folder/json_name`` (default: every ``*report.json`` in ``folder``) says
    ``complete: true`` and that every file it lists is there with its size and sha256."""
    folder = Path(folder)
    names = [json_name] if json_name else sorted(p.name for p in folder.glob("*report.json"))
    if not names:
        raise IclMechError(f"{str(folder)!r} holds no report (no *report.json): run it again")
    for name in names:
        problems = _problems(folder, name)
        if problems:
            raise IclMechError(
                f"{str(folder / name)!r} is not a complete report: {'; '.join(problems)}; "
                "run it again into the same folder to replace it"
            )


def _problems(folder: Path, json_name: str) -> list[str]:
    try:
        record = json.loads((folder / json_name).read_text())
    except (OSError, ValueError) as error:
        return [f"cannot read it ({error})"]
    if not isinstance(record, dict) or record.get("complete") is not True:
        return ['it does not say "complete": true']
    files = record.get("files")
    if not isinstance(files, dict):
        return ['it has no "files" with their checksums']
    problems = []
    for name, expected in files.items():
        if not (folder / name).is_file():
            problems.append(f"{name} is missing")
        elif _digest(folder / name) != expected:
            problems.append(f"{name} differs from its recorded size or sha256")
    return problems


def _listed(json_path: Path) -> list[str]:
    """The plain file names a report's JSON lists ([] if it is missing or unreadable)."""
    try:
        files = json.loads(json_path.read_text()).get("files")
    except (OSError, ValueError, AttributeError):
        return []
    if not isinstance(files, dict):
        return []
    return [
        n for n in files if isinstance(n, str) and n not in ("", ".", "..") and Path(n).name == n
    ]


def _digest(path: Path) -> dict:
    sha = hashlib.sha256()
    with open(path, "rb") as file:
        for block in iter(lambda: file.read(1 << 20), b""):
            sha.update(block)
    return {"sha256": sha.hexdigest(), "size": path.stat().st_size}
