"""Vectors are data: tensors saved as safetensors, with JSON provenance beside them.

``save(path, tensors, provenance)`` writes ``<stem>.safetensors`` (the provenance also sits in
its header) and a readable ``<stem>.json``. ``load(path)`` returns both. ``provenance(model,
...)`` records the model, its width and depth, and the package version; ``check_fits`` refuses
to apply a vector to a model of another width or depth.
"""

from __future__ import annotations

import json
from pathlib import Path

from safetensors.torch import load_file, save_file
from torch import Tensor

from icl_mech.errors import IclMechError

_HEADER_KEY = "icl_mech_provenance"


def _paths(path: str | Path) -> tuple[Path, Path]:
    path = Path(path)
    stem = path.with_suffix("") if path.suffix in (".safetensors", ".json") else path
    return stem.with_name(stem.name + ".safetensors"), stem.with_name(stem.name + ".json")


def save(path: str | Path, tensors: dict[str, Tensor], provenance: dict) -> Path:
    """Write the tensors and their provenance; returns the safetensors path."""
    tensor_path, json_path = _paths(path)
    tensor_path.parent.mkdir(parents=True, exist_ok=True)
    text = json.dumps(provenance, sort_keys=True, default=_plain)
    cpu = {name: t.detach().cpu().contiguous() for name, t in tensors.items()}
    save_file(cpu, str(tensor_path), metadata={_HEADER_KEY: text})
    json_path.write_text(json.dumps(json.loads(text), indent=2, sort_keys=True) + "\n")
    return tensor_path


def load(path: str | Path, kind: str | None = None) -> tuple[dict[str, Tensor], dict]:
    """Read tensors and provenance; with ``kind``, refuse a file of another kind."""
    tensor_path, json_path = _paths(path)
    if not tensor_path.is_file():
        raise IclMechError(f"no saved vector at {str(tensor_path)!r}")
    from safetensors import safe_open

    with safe_open(str(tensor_path), framework="pt") as handle:
        header = (handle.metadata() or {}).get(_HEADER_KEY)
    if header is None and json_path.is_file():
        header = json_path.read_text()
    provenance = json.loads(header or "{}")
    if kind is not None and provenance.get("kind") != kind:
        raise IclMechError(
            f"{str(tensor_path)!r} holds a {provenance.get('kind', 'unknown')!r} "
            f"file, not a {kind!r}"
        )
    return load_file(str(tensor_path)), provenance


def provenance(model, kind: str, **fields) -> dict:
    """Where a vector came from: model, width, depth, package version, plus ``fields``."""
    import icl_mech

    return {
        "kind": kind,
        "model": getattr(model.cfg, "model_name", type(model).__name__),
        "d_model": int(model.cfg.d_model),
        "n_layers": int(model.cfg.n_layers),
        "icl_mech_version": icl_mech.__version__,
        **fields,
    }


def check_fits(provenance: dict, model, what: str = "vector") -> None:
    """Error unless the vector's recorded width and depth equal the model's."""
    cfg = model.cfg
    for key in ("d_model", "n_layers"):
        if key in provenance and int(provenance[key]) != int(getattr(cfg, key)):
            raise IclMechError(
                f"{what} from {provenance.get('model', 'an unknown model')} has {key} "
                f"{provenance[key]}, but {cfg.model_name} has {key} {getattr(cfg, key)}"
            )


def _plain(value):
    if isinstance(value, (tuple, set)):
        return list(value)
    if isinstance(value, Path):
        return str(value)
    return str(value)
