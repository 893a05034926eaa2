"""Exclusive advisory file locks: the one lock helper of the package (sweep store cells, model
cache builds, report folders)::

    with locks.hold(path):        # waits until this process holds the lock on ``path``
        ...
    with locks.try_hold(path):    # never waits: raises ``locks.Busy`` (before the block) if
        ...                       # another holds it; ``Busy.pid`` / ``Busy.host``: who
    locks.is_held(path)           # another holds it now? (creates nothing, takes nothing)
    locks.holder(path)            # "pid 1234 on node7": who took it last

A lock is the lock file opened and locked whole. The kernel releases it when its holder closes
it or dies, so a crashed holder leaves no stale lock. It excludes every other open of the file:
other processes and other threads of this one (each ``hold`` opens the file anew). The holder
writes ``<pid> <host>`` into the file, for the messages of those who wait or give up.
``remove=True`` deletes the lock file on release (a waiter that then holds a deleted file
notices and takes the lock anew), so the lock leaves nothing behind.

Backends: ``fcntl.flock`` (POSIX), else ``msvcrt.locking`` (Windows; it locks one byte past
the holder's text, which stays readable), looked up at each use (:func:`backend`). Elsewhere
taking a lock is an ``IclMechError`` naming ``sys.platform``. A lock is advisory (it excludes
only those who take it), and on a shared folder the file system must honour it between nodes:
``icl-mech sweep GRID --check-store`` tests that (:mod:`icl_mech.sweeps.store_check`).
"""

from __future__ import annotations

import contextlib
import errno
import os
import socket
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from icl_mech.errors import IclMechError

WINDOWS_BYTE = 1 << 16  # the byte msvcrt locks, past the holder's text
POLL_SECONDS = 0.05  # between tries of a waiting msvcrt lock (msvcrt waits 10 s at most)
_HELD = {errno.EACCES, getattr(errno, "EDEADLOCK", errno.EDEADLK)}  # msvcrt: another holds it


class Busy(IclMechError):
    """``try_hold``: another process or thread holds the lock (``pid`` and ``host`` as the
    holder wrote them, None when unknown)."""

    pid: int | None = None
    host: str | None = None


@dataclass(frozen=True)
class Backend:
    """A platform's lock primitive: ``lock(fd, wait)`` -> taken; ``unlock(fd)``."""

    name: str
    lock: Callable[[int, bool], bool]
    unlock: Callable[[int], None]
    unlink_while_held: bool  # POSIX deletes an open file; Windows refuses


def backend() -> Backend:
    """``fcntl.flock`` where there is ``fcntl``, else ``msvcrt.locking``, else an error."""
    try:
        import fcntl  # POSIX
    except ImportError:
        fcntl = None
    if fcntl is not None:
        return _flock(fcntl)
    try:
        import msvcrt  # Windows
    except ImportError:
        msvcrt = None
    if msvcrt is not None:
        return _msvcrt(msvcrt)
    raise IclMechError(
        f"file locks: this platform ({sys.platform!r}) has neither fcntl.flock (Linux, macOS) "
        "nor msvcrt.locking (Windows), and the sweep store and the model cache lock their "
        "files; run on Linux, macOS or Windows"
    )


def _flock(fcntl) -> Backend:
    def lock(fd: int, wait: bool) -> bool:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        except BlockingIOError:
            return False
        return True

    return Backend("fcntl.flock", lock, lambda fd: fcntl.flock(fd, fcntl.LOCK_UN), True)


def _msvcrt(msvcrt) -> Backend:
    def lock(fd: int, wait: bool) -> bool:
        while True:
            os.lseek(fd, WINDOWS_BYTE, os.SEEK_SET)
            try:
                msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)
                return True
            except OSError as error:
                if error.errno not in _HELD:
                    raise
                if not wait:
                    return False
            time.sleep(POLL_SECONDS)

    def unlock(fd: int) -> None:
        os.lseek(fd, WINDOWS_BYTE, os.SEEK_SET)
        msvcrt.locking(fd, msvcrt.LK_UNLCK, 1)

    return Backend("msvcrt.locking", lock, unlock, False)


def hold(path: str | os.PathLike, *, remove: bool = False) -> contextlib.AbstractContextManager:
    """Hold the lock on ``path`` inside the block, waiting while another holds it."""
    return _held(Path(path), wait=True, remove=remove)


def try_hold(path: str | os.PathLike, *, remove: bool = False) -> contextlib.AbstractContextManager:
    """Hold the lock on ``path`` inside the block; :class:`Busy` if another holds it."""
    return _held(Path(path), wait=False, remove=remove)


@contextlib.contextmanager
def _held(path: Path, wait: bool, remove: bool) -> Iterator[Path]:
    system = backend()
    fd = _take(system, path, wait, remove)
    try:
        yield path
    finally:
        if remove and system.unlink_while_held:
            path.unlink(missing_ok=True)  # before letting go: a waiter sees its file gone
        system.unlock(fd)
        os.close(fd)
        if remove and not system.unlink_while_held:
            with contextlib.suppress(OSError):  # another has it open by now: theirs to remove
                path.unlink()


def _take(system: Backend, path: Path, wait: bool, remove: bool) -> int:
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            taken = system.lock(fd, wait)
        except OSError as error:
            os.close(fd)
            raise IclMechError(
                f"cannot lock {str(path)!r} with {system.name} ({error.strerror or error}): "
                f"the file system of {str(path.parent)!r} may not support file locks; test it "
                "with icl-mech sweep GRID --check-store, or use a local folder"
            ) from None
        except BaseException:  # interrupted while waiting
            os.close(fd)
            raise
        if not taken:
            os.close(fd)
            raise _busy(path)
        if remove and not _same_file(fd, path):  # its holder deleted it on release
            system.unlock(fd)
            os.close(fd)
            continue
        os.ftruncate(fd, 0)
        os.lseek(fd, 0, os.SEEK_SET)
        os.write(fd, f"{os.getpid()} {socket.gethostname()}\n".encode())
        return fd


def is_held(path: str | os.PathLike) -> bool:
    """Another open of ``path`` (a process, or a thread here) holds its lock now."""
    system = backend()
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return False
    try:
        if not system.lock(fd, False):
            return True
        system.unlock(fd)
        return False
    finally:
        os.close(fd)


def holder(path: str | os.PathLike) -> str:
    """Who took the lock on ``path`` last, as it wrote: ``"pid 1234 on node7"``."""
    pid, host = _holder(Path(path))
    return "an unknown process" if pid is None else f"pid {pid} on {host}"


def _holder(path: Path) -> tuple[int | None, str | None]:
    try:
        pid, host = path.read_text().split()
        return int(pid), host
    except (OSError, ValueError):  # no file, or read while its holder wrote it
        return None, None


def _busy(path: Path) -> Busy:
    error = Busy(
        f"{str(path)!r} is locked by {holder(path)}; wait until it finishes, or stop it if it "
        "is stuck (the lock goes when its holder exits)"
    )
    error.pid, error.host = _holder(path)
    return error


def _same_file(fd: int, path: Path) -> bool:
    try:
        here = os.stat(path)
    except FileNotFoundError:
        return False
    held = os.fstat(fd)
    return (here.st_dev, here.st_ino) == (held.st_dev, held.st_ino)
