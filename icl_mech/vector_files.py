"""How a vector is stored: ``<stem>.safetensors`` with its provenance as strict JSON in the
header (key ``icl_mech_provenance``) and ``<stem>.json``, a readable copy; reading checks that the
two agree, that the file holds the expected kind and tensors, and says how to recover."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from safetensors import safe_open
from torch import Tensor

from icl_mech.errors import IclMechError

HEADER_KEY = "icl_mech_provenance"
_LEGACY_HEADER_KEYS = ("provenance",)  # TaskVector files of 0.1.0
OWNERS: dict[str, str] = {}  # kind -> class name, for "read it with X.load"


def vector_paths(path: str | Path) -> tuple[Path, Path]:
    """``(<stem>.safetensors, <stem>.json)`` for a stem or either file's path."""
    path = Path(path)
    stem = path.with_suffix("") if path.suffix in (".safetensors", ".json") else path
    return stem.with_name(stem.name + ".safetensors"), stem.with_name(stem.name + ".json")


def plain(value: Any) -> Any:
    """``value`` as strict JSON data: NaN and ±inf → None, tuples → lists, paths → str."""
    if isinstance(value, dict):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set)):
        return [plain(v) for v in value]
    if getattr(value, "shape", None) == () and hasattr(value, "item"):  # 0-d tensor, numpy scalar
        value = value.item()
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if value is None or isinstance(value, (bool, int, str)):
        return value
    return str(value)


def dumps(value: Any, **options) -> str:
    """Strict JSON (never NaN/Infinity tokens) of ``plain(value)``."""
    return json.dumps(plain(value), allow_nan=False, sort_keys=True, **options)


def read(cls, tensor_path: Path, json_path: Path) -> tuple[dict[str, Tensor], dict]:
    where = repr(str(tensor_path))
    if not tensor_path.is_file():
        raise IclMechError(f"no saved vector at {where}: the file does not exist")
    try:
        with safe_open(str(tensor_path), framework="pt") as handle:
            header = handle.metadata() or {}
            tensors = {name: handle.get_tensor(name) for name in handle.keys()}
    except Exception as error:  # safetensors raises its own types for a bad file
        raise IclMechError(
            f"{where} is not a readable {cls.__name__} file ({error}): the safetensors file is "
            "truncated or corrupt; save the vector again"
        ) from None
    text = next((header[k] for k in (HEADER_KEY, *_LEGACY_HEADER_KEYS) if k in header), None)
    stored = None if text is None else _parse(text, f"the header of {where}")
    if json_path.is_file():
        sidecar = _parse(json_path.read_text(), repr(str(json_path)))
        if stored is not None and plain(stored) != plain(sidecar):
            keys = sorted(k for k in {*stored, *sidecar} if stored.get(k) != sidecar.get(k))
            raise IclMechError(
                f"{str(json_path)!r} disagrees with the provenance stored in {where} on {keys}: "
                "the JSON sidecar was edited or belongs to another file; delete it (the "
                "header is then used) or save the vector again"
            )
        stored = sidecar if stored is None else stored
    expected = " or ".join(repr(k) for k in cls.KINDS)
    if stored is None:
        raise IclMechError(
            f"{where} holds no icl_mech provenance (no header, no {json_path.name}): not a "
            f"{expected} file ({cls.__name__})"
        )
    found = stored.get("kind")
    if found not in cls.KINDS:
        owner = OWNERS.get(found)
        hint = f"; read it with {owner}.load" if owner else ""
        raise IclMechError(f"{where} holds a {found!r} vector, not a {expected} file{hint}")
    if set(tensors) != set(cls.TENSORS):
        raise IclMechError(
            f"{where} holds the tensors {sorted(tensors)}, but a {cls.__name__} file holds "
            f"{sorted(cls.TENSORS)} (missing: {sorted(set(cls.TENSORS) - set(tensors))})"
        )
    return tensors, stored


def _parse(text: str, where: str) -> dict:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as error:
        raise IclMechError(
            f"{where} is not valid JSON ({error}); delete the sidecar to recover it from the "
            "safetensors header, or save the vector again"
        ) from None
    if not isinstance(value, dict):
        raise IclMechError(f"{where} holds JSON {type(value).__name__}, not a provenance object")
    return value
