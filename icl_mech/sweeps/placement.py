"""How a sweep's models load: the grid's ``[load]`` table (``device``, ``dtype``,
``n_devices``, ``backend``, the options of ``load_model``), checked before any work without
touching a device, so that a driver without GPUs can send a GPU grid to a cluster (a missing
device is the worker's ``load_model`` error, recorded with the cell), and the GPUs each Ray task
asks for."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from icl_mech.errors import IclMechError
from icl_mech.models import load_model

DTYPES = ("float32", "float64", "bfloat16", "float16")
BACKENDS = ("hooked", "bridge")
Load = tuple[tuple[str, Any], ...]  # sorted (option, value) pairs: hashable, part of a cell


def check_load(values, source: str = "grid") -> Load:
    if not isinstance(values, Mapping):
        raise IclMechError(
            f"{source}: load must be a table such as {{device = 'cuda', dtype = 'bfloat16'}}, "
            f"got {values!r}"
        )
    checks = {"device": _device, "dtype": _dtype, "n_devices": _n_devices, "backend": _backend}
    unknown = sorted(set(values) - set(checks))
    if unknown:
        raise IclMechError(f"{source}: unknown load option(s) {unknown}; valid: {list(checks)}")
    for key, value in values.items():
        problem = checks[key](value)
        if problem:
            raise IclMechError(f"{source}: load {key}={value!r} {problem}")
    if values.get("n_devices", 1) > 1 and not str(values.get("device", "cpu")).startswith("cuda"):
        raise IclMechError(
            f"{source}: load n_devices={values['n_devices']} splits a model over CUDA devices; "
            "add device = 'cuda'"
        )
    return tuple(sorted(values.items()))


def _device(value) -> str | None:
    try:
        parsed = torch.device(value) if isinstance(value, str) else None
    except RuntimeError:
        parsed = None
    if parsed is None or parsed.type == "meta":
        return "is not a device; expected 'cpu', 'cuda', 'cuda:1' or 'mps'"
    return None


def _dtype(value) -> str | None:
    return None if value in DTYPES else f"is not one of {list(DTYPES)}"


def _n_devices(value) -> str | None:
    whole = isinstance(value, int) and not isinstance(value, bool)
    return None if whole and value >= 1 else "is not a whole number >= 1"


def _backend(value) -> str | None:
    return None if value in BACKENDS else f"is not one of {list(BACKENDS)}"


def gpus_per_cell(load: Load) -> int:
    """The GPUs a Ray task of a cell loading its model so asks for."""
    options = dict(load)
    return options.get("n_devices", 1) if str(options.get("device", "")).startswith("cuda") else 0


def load_named(name: str, load: Load):
    """The model a grid names (``load_model``'s catalogue: the same names everywhere), loaded
    with the grid's options (a tiny model is built on the CPU in float32 and then moved)."""
    return load_model(name, **dict(load))
