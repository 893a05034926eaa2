"""One run per output folder: ``.<out>.lock`` beside ``out``, held for the whole run.

The lock is :func:`icl_mech.locks.try_hold` (released by the kernel when its holder exits,
even killed; the file is removed on release). A second run into ``out`` is refused at once
with an ``IclMechError`` naming the folder and the other run's pid. Holding the lock, a run
removes the staging folders (``.<out>.partial-*``, :mod:`icl_mech.atomic_output`) that killed
runs left: no live run is writing there.
"""

from __future__ import annotations

import os
import shutil
import threading
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

from icl_mech import locks
from icl_mech.errors import IclMechError

_depth = threading.local()  # lock file -> how many blocks of this thread hold it


def lock_path(out: str | Path) -> Path:
    out = Path(os.path.abspath(out))  # "a/../b" and "b": one folder, one lock
    return out.with_name(f".{out.name}.lock")


@contextmanager
def output_lock(out: str | Path) -> Iterator[None]:
    """Hold ``out``'s lock inside the block (re-entrant in one thread: a run's report writes
    inside its run); another run holding it is an ``IclMechError`` at once."""
    path, depth = lock_path(out), vars(_depth)
    if depth.get(path):
        depth[path] += 1
        try:
            yield
        finally:
            depth[path] -= 1
        return
    with ExitStack() as stack:
        try:
            stack.enter_context(locks.try_hold(path, remove=True))
        except locks.Busy as busy:
            folder = path.with_name(path.name[1:].removesuffix(".lock"))
            who = f"pid {busy.pid or 'unknown'}" + (f" on {busy.host}" if busy.host else "")
            raise IclMechError(
                f"output folder {str(folder)!r} is being written by another icl-mech run "
                f"({who}, lock {path.name}); wait for it to finish or choose another --out"
            ) from None
        depth[path] = 1
        try:
            for left in path.parent.glob(path.name.removesuffix(".lock") + ".partial-*"):
                shutil.rmtree(left, ignore_errors=True)
            yield
        finally:
            depth[path] = 0
