"""Shared by the benchmark scripts: each run also writes what it printed as JSON.

``write(name, payload)`` stores ``payload`` (the measured ratios, the raw timings and memory,
the settings) in ``benchmarks/results/<name>.json`` beside the command line, the machine, the
package versions and the date, atomically (a temporary file in the same folder, then a
rename). The record holds no paths and no user names: the command is the script's path inside
the repository and its arguments.

Not a benchmark itself: the Makefile's ``benchmarks`` target skips files starting with ``_``.
"""

from __future__ import annotations

import datetime
import importlib.metadata
import json
import math
import os
import platform
import shlex
import sys
import tempfile
from pathlib import Path

FOLDER = Path(__file__).resolve().parent / "results"
PACKAGES = ("torch", "transformers", "transformer-lens", "icl_mech")


def command() -> str:
    """The command as typed from the repository's root, e.g. ``python benchmarks/x.py --a 1``."""
    script = Path(sys.argv[0]).name
    return shlex.join(["python", f"benchmarks/{script}", *sys.argv[1:]])


def _first(path: str, prefix: str) -> str | None:
    try:
        with open(path) as lines:
            for line in lines:
                if line.startswith(prefix):
                    return line.split(":", 1)[1].strip()
    except OSError:
        return None
    return None


def machine() -> dict:
    memory = _first("/proc/meminfo", "MemTotal")  # "24576000 kB"
    ram_gb = None if memory is None else round(int(memory.split()[0]) * 1024 / 1e9, 1)
    return {
        "cpu": _first("/proc/cpuinfo", "model name") or platform.processor() or None,
        "cores": os.cpu_count(),
        "ram_gb": ram_gb,
        "os": f"{platform.system()} {platform.release()}",
        "machine": platform.machine(),
    }


def versions(*extra: str) -> dict:
    found = {"python": platform.python_version()}
    for package in (*PACKAGES, *extra):
        try:
            found[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            found[package] = None
    return found


def _clean(value):
    """JSON-safe: tuples as lists, non-finite floats as None, numpy/torch scalars as numbers."""
    if isinstance(value, dict):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    if hasattr(value, "item") and not isinstance(value, (str, bytes)):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _private(text: str) -> list[str]:
    """Machine-specific strings that must not reach a committed file."""
    found = [p for p in (str(Path.home()), "/tmp/") if p and p != "/" and p in text]
    user = os.environ.get("USER") or os.environ.get("LOGNAME")
    if user and len(user) > 2 and f'"{user}"' in text:
        found.append("user name")
    return found


def write(name: str, payload: dict, packages: tuple[str, ...] = ()) -> Path:
    """Write ``benchmarks/results/<name>.json``; ``packages``: versions beyond the usual ones."""
    record = {
        "benchmark": name,
        "command": command(),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "machine": machine(),
        "versions": versions(*packages),
        **_clean(payload),
    }
    text = json.dumps(record, indent=2, ensure_ascii=False, allow_nan=False) + "\n"
    leaked = _private(text)
    if leaked:
        raise ValueError(f"benchmark record would hold machine-specific text: {leaked}")
    FOLDER.mkdir(exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=f".{name}.", suffix=".tmp", dir=FOLDER)
    try:
        with os.fdopen(handle, "w") as out:
            out.write(text)
        os.chmod(temporary, 0o644)
        os.replace(temporary, FOLDER / f"{name}.json")
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    return FOLDER / f"{name}.json"


def proc_status(key: str) -> int | None:
    """A ``/proc/self/status`` memory line (``VmRSS``, ``VmHWM``) in bytes; None elsewhere."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith(key):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None
