"""``icl-mech sweep GRID --check-store``: does the store's folder give the store what it relies
on? Two checks, in a scratch folder inside the store folder (removed afterwards, with any
folder the check had to create):

- advisory locks: while this process holds a lock (:mod:`icl_mech.locks`), another process
  cannot take it, and can once it is released;
- atomic rename: a file written beside another and ``os.replace``-d over it is read back whole,
  and the temporary file is gone.

One line per check, ``OK`` or ``FAILED``. It tests this node only: for a store shared by a
cluster, run it on a node of each kind that runs cells.
"""

from __future__ import annotations

import multiprocessing
import os
import shutil
import uuid
from collections.abc import Callable
from pathlib import Path

from icl_mech import locks
from icl_mech.errors import IclMechError

# seconds the other process may take (a spawned one, on Windows, imports the package first)
OTHER_PROCESS_SECONDS = 300


def check_store(root: str | os.PathLike) -> bool:
    """Run both checks in ``root`` (created if missing, left as found); print one line each;
    True when both pass."""
    root = Path(root).expanduser()
    created = _first_missing(root)
    scratch = root / f".check-store-{uuid.uuid4().hex[:12]}"
    passed = []
    try:
        for name, check in CHECKS.items():
            try:
                scratch.mkdir(parents=True, exist_ok=True)
                ok, detail = check(scratch)
            except (OSError, IclMechError) as error:
                ok, detail = False, f"{type(error).__name__}: {error}"
            passed.append(ok)
            print(f"{'OK' if ok else 'FAILED':6s} {name} in {root}: {detail}", flush=True)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
        if created is not None:
            _remove_empty(root, created)
    return all(passed)


def check_locks(folder: Path) -> tuple[bool, str]:
    path = folder / "check.lock"
    with locks.hold(path):
        taken_while_held, seen = in_other_process(path)
    taken_after, after = in_other_process(path)
    if taken_while_held:
        return False, (
            "another process took the lock while this one held it: the file system ignores "
            "advisory locks (e.g. NFS mounted with nolock, or without a lock daemon); give "
            "--store a folder whose file system honours them"
        )
    if not taken_after:
        return False, f"another process could not take the lock once it was released ({after})"
    return True, (
        f"another process was refused the held lock (it saw {seen}) and took it once released"
    )


def check_rename(folder: Path) -> tuple[bool, str]:
    target, temporary = folder / "check-target", folder / ".check-target.tmp"
    target.write_bytes(b"the old file")
    payload = uuid.uuid4().bytes * 4096  # 64 KiB
    with open(temporary, "wb") as file:
        file.write(payload)
        file.flush()
        os.fsync(file.fileno())
    os.replace(temporary, target)
    if temporary.exists():
        return False, "the temporary file is still there after os.replace"
    if target.read_bytes() != payload:
        return False, "the replaced file does not read back as written"
    return True, "a file os.replace-d over another reads back whole"


CHECKS: dict[str, Callable[[Path], tuple[bool, str]]] = {
    "advisory locks": check_locks,
    "atomic rename": check_rename,
}


def in_other_process(path: Path) -> tuple[bool, str]:
    """(taken, who held it) from ``locks.try_hold(path)`` in a new process: forked where the
    platform can (it starts at once), a fresh one per call (holding no inherited lock)."""
    methods = multiprocessing.get_all_start_methods()
    context = multiprocessing.get_context("fork" if "fork" in methods else "spawn")
    receive, send = context.Pipe(duplex=False)
    process = context.Process(target=_try_lock, args=(str(path), send), daemon=True)
    process.start()
    send.close()
    try:
        if not receive.poll(OTHER_PROCESS_SECONDS):
            raise TimeoutError(f"no answer in {OTHER_PROCESS_SECONDS} s")
        taken, detail = receive.recv()
    except EOFError:
        taken, detail = None, f"it stopped without an answer (exit code {process.exitcode})"
    finally:
        receive.close()
        process.join(1)
        if process.is_alive():
            process.kill()
            process.join()
    if taken is None:
        raise IclMechError(f"the other process could not try the lock: {detail}")
    return taken, detail


def _try_lock(path: str, send) -> None:
    """In the other process: take the lock and let it go at once, or say who holds it."""
    try:
        with locks.try_hold(path):
            answer = (True, "free")
    except locks.Busy:
        answer = (False, locks.holder(path))
    except Exception as error:  # reported by the parent, as a failed check
        answer = (None, f"{type(error).__name__}: {error}")
    send.send(answer)
    send.close()


def _first_missing(folder: Path) -> Path | None:
    """The outermost folder of ``folder``'s path that does not exist yet (None: it exists)."""
    missing = None
    for candidate in (folder, *folder.parents):
        if candidate.exists():
            break
        missing = candidate
    return missing


def _remove_empty(folder: Path, up_to: Path) -> None:
    """Remove ``folder`` and its parents up to ``up_to`` while they are empty."""
    for candidate in (folder, *folder.parents):
        try:
            candidate.rmdir()
        except OSError:
            return
        if candidate == up_to:
            return
