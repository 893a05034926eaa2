"""The results store: one Parquet file per finished cell, named by the cell's key.

Every write goes to a temporary file in the same folder, is fsynced and then ``os.replace``-d
into place, so a reader sees either no file or a whole one. A cell file carries its key, row
count and a sha256 of its rows in the Parquet metadata; a file that cannot be read or does not
match is corrupt: it is never returned, and the next run moves it to ``corrupt/`` and reruns
the cell. ``<key>.lock`` (:mod:`icl_mech.locks`) lets one process at a time work on a cell,
across threads, processes and sweeps sharing the store; the kernel releases it when its holder
dies. A store shared between nodes needs a file system with working advisory locks and atomic
rename (``icl-mech sweep GRID --check-store`` tests both: :mod:`icl_mech.sweeps.store_check`).
``<key>.running.json`` marks an attempt in progress (left behind if its process dies), and
``<key>.failures.json`` keeps every failed attempt with its error and traceback.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import socket
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pandas as pd

from icl_mech import locks, validate
from icl_mech.errors import IclMechError

METADATA_KEY = b"icl_mech.cell"


class Store:
    """A folder of cell results; see the module docstring for its files."""

    def __init__(self, root: str | Path):
        self.root = Path(root).expanduser()

    def __repr__(self) -> str:
        return f"Store({str(self.root)!r})"

    def prepare(self) -> Store:
        validate.writable_folder(self.root, "sweep store (choose another with --store)")
        return self

    def result_path(self, key: str) -> Path:
        return self.root / f"{key}.parquet"

    def _file(self, key: str, kind: str) -> Path:
        return self.root / f"{key}.{kind}"

    # results

    def read(self, key: str) -> pd.DataFrame | None:
        """The cell's rows, or None if it has no valid file."""
        return self.inspect(key)[0]

    def inspect(self, key: str) -> tuple[pd.DataFrame | None, str | None]:
        """``(rows, None)`` for a valid file, ``(None, None)`` for none, ``(None, problem)``
        for a corrupt one."""
        # optional: the sweep extra (the Parquet store)
        import pyarrow as pa
        import pyarrow.parquet as pq  # the same extra

        path = self.result_path(key)
        if not path.exists():
            return None, None
        try:
            table = pq.read_table(path)
            stored = json.loads((table.schema.metadata or {})[METADATA_KEY])
        except (OSError, pa.ArrowException, KeyError, ValueError) as error:
            return None, f"unreadable ({type(error).__name__}: {error})"
        if stored.get("key") != key:
            return None, f"holds cell {stored.get('key')!r}, not {key!r}"
        if table.num_rows != stored.get("rows"):
            return None, f"{table.num_rows} rows, {stored.get('rows')} written"
        if _checksum(table) != stored.get("sha256"):
            return None, "rows do not match their sha256"
        return table.to_pandas(), None

    def write(self, key: str, frame: pd.DataFrame, config: dict) -> Path:
        """Store ``frame`` as the cell's result, atomically."""
        import pyarrow.parquet as pq  # optional: the sweep extra

        table = _arrow(frame)
        stamp = {
            "key": key,
            "rows": table.num_rows,
            "sha256": _checksum(table),
            "config": config,
            "written": time.time(),
        }
        metadata = {**(table.schema.metadata or {}), METADATA_KEY: json.dumps(stamp).encode()}
        table = table.replace_schema_metadata(metadata)
        path = self.result_path(key)
        _atomic_write(path, lambda file: pq.write_table(table, file))
        return path

    def quarantine(self, key: str) -> Path:
        """Move a corrupt result to ``corrupt/`` (kept for inspection, never read)."""
        folder = self.root / "corrupt"
        folder.mkdir(exist_ok=True)
        target = folder / f"{key}.{time.time_ns()}.parquet"
        os.replace(self.result_path(key), target)
        return target

    def keys(self) -> list[str]:
        return sorted(p.stem for p in self.root.glob("[!.]*.parquet"))

    # attempts

    def failures(self, key: str) -> list[dict]:
        path = self._file(key, "failures.json")
        try:
            return json.loads(path.read_text())
        except FileNotFoundError:
            return []
        except ValueError:  # written atomically, so only a hand edit gets here
            return [{"error": f"unreadable failure log {path.name}"}]

    def record_failure(self, key: str, run: str, attempt: int, error: str, trace: str | None):
        entry = {
            "run": run,
            "attempt": attempt,
            "error": error,
            "traceback": trace,
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "time": time.time(),
        }
        log = self.failures(key) + [entry]
        _atomic_write(self._file(key, "failures.json"), _json_writer(log))

    def mark_running(self, key: str, run: str, attempt: int) -> None:
        entry = {"run": run, "attempt": attempt, "host": socket.gethostname(), "pid": os.getpid()}
        _atomic_write(self._file(key, "running.json"), _json_writer(entry))

    def clear_running(self, key: str) -> None:
        self._file(key, "running.json").unlink(missing_ok=True)

    def abandoned(self, key: str) -> dict | None:
        """The attempt a dead process left unfinished (only meaningful under the cell's lock)."""
        try:
            return json.loads(self._file(key, "running.json").read_text())
        except (FileNotFoundError, ValueError):
            return None

    @contextlib.contextmanager
    def claim(self, key: str, wait: bool) -> Iterator[bool]:
        """Hold the cell's lock inside the block (yields False if ``wait`` is off and another
        thread or process holds it)."""
        self.root.mkdir(parents=True, exist_ok=True)
        take = locks.hold if wait else locks.try_hold
        with contextlib.ExitStack() as stack:
            try:
                stack.enter_context(take(self._file(key, "lock")))
            except locks.Busy:
                claimed = False
            else:
                claimed = True
            yield claimed

    def busy(self, key: str) -> bool:
        """Another thread or process is working on the cell now."""
        return locks.is_held(self._file(key, "lock"))


def _arrow(frame: pd.DataFrame):
    """The frame as an Arrow table; object columns Arrow cannot type become text."""
    import pyarrow as pa  # optional: the sweep extra

    try:
        return pa.Table.from_pandas(frame, preserve_index=False)
    except (pa.ArrowInvalid, pa.ArrowTypeError):
        frame = frame.copy()
        for column in frame.select_dtypes(include="object").columns:
            frame[column] = [None if v is None else str(v) for v in frame[column]]
        return pa.Table.from_pandas(frame, preserve_index=False)


def _checksum(table) -> str:
    rows = json.dumps(table.to_pylist(), sort_keys=True, default=str)
    return hashlib.sha256(rows.encode()).hexdigest()


def _json_writer(value):
    return lambda file: file.write(json.dumps(value, indent=1, default=str).encode())


def _atomic_write(path: Path, write) -> None:
    """``write(binary file)`` into a temporary file beside ``path``, fsync, then replace."""
    path.parent.mkdir(parents=True, exist_ok=True)
    descriptor, temporary = tempfile.mkstemp(
        dir=path.parent, prefix=f".{path.name}.", suffix=".tmp"
    )
    try:
        with os.fdopen(descriptor, "wb") as file:
            write(file)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    folder = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(folder)  # the rename itself survives a crash
    finally:
        os.close(folder)


def missing_pyarrow() -> IclMechError | None:
    try:
        import pyarrow  # noqa: F401 - optional: the sweep extra; is it installed?
    except ImportError:
        return IclMechError("the sweep store needs pyarrow: pip install 'icl_mech[sweep]'")
    return None
