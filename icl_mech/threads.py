"""One intra-op CPU thread policy for every command: the cores that are free when a run starts.

``default_threads()`` is ``max(1, cores - busy)``: ``cores`` are the cores this process may run
on (``os.sched_getaffinity``, else ``os.cpu_count()``); ``busy`` the cores other work keeps busy
now, sampled from the kernel's CPU counters over a fifth of a second (Linux; elsewhere the
rounded 1-minute load average, or 0). The load average alone lags by a minute: right after a
job ends it still counts it, and a quiet machine would get one thread. On a CPU shared with
busy processes, threads beyond the free cores fight them and a run can be several times slower
than with fewer threads; on a quiet machine every core is used.

``ICL_MECH_THREADS=N`` (a whole number >= 1) replaces the policy; a run's ``threads`` setting
(``--set threads=N``) replaces both for that run, and ``threads=None``, the default of every
settings class, means this policy. The policy is read once, at the start of a run and before
any model work (:func:`run_threads`, :func:`fixed`): code inside a run (training, nested runs)
gets the run's count from ``default_threads()`` instead of a reading that includes the run.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar

import torch

from icl_mech.errors import IclMechError

ENV = "ICL_MECH_THREADS"

# the count of the run in progress (see fixed()); per thread, so concurrent runs cannot mix up
_fixed: ContextVar[int | None] = ContextVar("icl_mech_threads", default=None)


def cores() -> int:
    """The CPU cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0)) or 1
    except (AttributeError, OSError):  # macOS and Windows have no affinity call
        return os.cpu_count() or 1


def busy() -> int:
    """Cores busy with other work now (:func:`busy_now`), else the rounded 1-minute load
    average, else 0."""
    now = busy_now()
    if now is not None:
        return round(now)
    try:
        return round(os.getloadavg()[0])
    except (AttributeError, OSError):  # Windows
        return 0


def busy_now(interval: float = 0.2) -> float | None:
    """Cores busy over the next ``interval`` seconds, from ``/proc/stat`` (None elsewhere)."""
    try:
        first = _cpu_counters()
        time.sleep(interval)
        second = _cpu_counters()
    except (OSError, ValueError):
        return None
    total = sum(second) - sum(first)
    idle = (second[3] + second[4]) - (first[3] + first[4])  # idle and iowait
    if total <= 0:
        return None
    return (1 - idle / total) * (os.cpu_count() or 1)


def _cpu_counters() -> list[int]:
    """user, nice, system, idle, iowait, irq, softirq, steal: every CPU's ticks summed."""
    with open("/proc/stat") as stat:
        return [int(field) for field in stat.readline().split()[1:9]]


def free_cores() -> int:
    """The policy, read now: the cores not busy with other work, at least 1."""
    return max(1, cores() - busy())


def from_environment() -> int | None:
    """``ICL_MECH_THREADS`` as a count, None when it is unset or empty."""
    text = os.environ.get(ENV, "").strip()
    if not text:
        return None
    try:
        value = int(text)
    except ValueError:
        value = 0
    if not 1 <= value <= 1024:
        raise IclMechError(
            f"{ENV}={os.environ[ENV]!r} is not a thread count: expected a whole number from 1 "
            "to 1024, "
            f"e.g. {ENV}=2 (or leave it unset to use the free cores)"
        )
    return value


def default_threads() -> int:
    """The thread count for ``threads=None``: the count of the run in progress (inside
    :func:`fixed` or :func:`run_threads`), else ``ICL_MECH_THREADS``, else
    :func:`free_cores`."""
    if _fixed.get() is not None:
        return _fixed.get()
    from_env = from_environment()
    return free_cores() if from_env is None else from_env


def threads_for(setting: int | None) -> int:
    """A run's thread count: its ``threads`` setting, or :func:`default_threads` for None."""
    if setting is None:
        return default_threads()
    if isinstance(setting, bool) or not isinstance(setting, int) or not 1 <= setting <= 1024:
        raise IclMechError(
            f"threads must be a whole number from 1 to 1024 (or None), got {setting!r}"
        )
    return setting


@contextmanager
def fixed(n: int | None = None) -> Iterator[int]:
    """Within the block ``default_threads()`` is ``n`` (None: ``default_threads()`` read once,
    now); yields it. The command line wraps each command in it, before loading a model, so
    every run of the command reads the load average once, before it added to it."""
    count = threads_for(n)
    token = _fixed.set(count)
    try:
        yield count
    finally:
        _fixed.reset(token)


@contextmanager
def run_threads(setting: int | None) -> Iterator[int]:
    """Run the block with ``threads_for(setting)`` intra-op torch threads, which is also the
    block's ``default_threads()``; both restored afterwards. Yields the count."""
    with fixed(setting) as n, torch_threads(n):
        yield n


__all__ = [
    "ENV",
    "busy",
    "busy_now",
    "cores",
    "default_threads",
    "fixed",
    "free_cores",
    "from_environment",
    "run_threads",
    "apply_policy",
    "threads_for",
    "torch_threads",
]


def apply_policy() -> int:
    """Lower torch's intra-op threads to :func:`default_threads` where they are more
    (``load_model`` and ``tiny_model`` do this, so a library call outside a run follows the same
    policy as every command). Never raises them: a count set lower on purpose
    (``torch.set_num_threads``, ``torch_threads``) stays. Returns the count in effect."""
    count = min(torch.get_num_threads(), default_threads())
    torch.set_num_threads(count)
    return count


@contextmanager
def torch_threads(n: int | None = 1) -> Iterator[None]:
    """Run the block with ``n`` intra-op CPU threads (None: unchanged), restored afterwards.

    On a CPU shared with other busy processes one thread per process is often several times
    faster than two threads fighting for the cores. A run's ``threads`` setting goes through
    :func:`icl_mech.threads.run_threads` instead, where None means the default policy (the
    free cores or ``ICL_MECH_THREADS``), not "unchanged"."""
    previous = torch.get_num_threads()
    if n is not None:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(previous)
