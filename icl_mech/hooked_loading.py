"""Building a ``HookedTransformer`` (TransformerLens 3.x): of a local Hugging Face folder, or of
a TransformerLens official name, without weight processing, laid out for ``F.linear``."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from transformers import AutoModelForCausalLM

from icl_mech import backends
from icl_mech.errors import IclMechError
from icl_mech.layout import lay_out

if TYPE_CHECKING:  # TransformerLens 4 has no HookedTransformer: imported where it is used
    from transformer_lens import HookedTransformer

MAX_CTX = 2048  # TransformerLens allocates an n_ctx x n_ctx mask per layer


def check_n_ctx(n_ctx: int, maximum: int, name: str) -> None:
    if n_ctx > maximum:
        raise IclMechError(
            f"load_model: n_ctx={n_ctx} exceeds the context of {name} ({maximum} tokens); "
            f"give n_ctx <= {maximum}"
        )


def hooked_from_folder(
    folder: Path, name: str, how: dict, tokenizer, official: str | None
) -> HookedTransformer:
    """``official``: the TransformerLens name whose config describes the folder (for
    architectures whose local config TransformerLens 3.x refuses, such as Gemma 3)."""
    # TransformerLens 3.x only: 4.x removed HookedTransformer and its loaders
    from transformer_lens import HookedTransformer, HookedTransformerConfig
    from transformer_lens.loading_from_pretrained import (  # 3.x only, as above
        convert_hf_model_config,
        get_pretrained_state_dict,
    )

    try:
        config = convert_hf_model_config(official or str(folder))
    except NotImplementedError as error:
        raise IclMechError(
            f"load_model({name!r}): TransformerLens {backends.TL_VERSION} cannot build a "
            f"HookedTransformer config from the local folder ({error}); try backend='bridge'"
        ) from None
    n_ctx = how["n_ctx"]
    if n_ctx is not None:
        check_n_ctx(n_ctx, config["n_ctx"], name)
    config["n_ctx"] = n_ctx or min(config["n_ctx"], MAX_CTX)
    config.update(
        model_name=name, device=how["device"], dtype=how["dtype"], n_devices=how["n_devices"]
    )
    config["init_weights"] = False  # every weight is overwritten from the folder (load_weights)
    cfg = HookedTransformerConfig(**config)
    hf_model = AutoModelForCausalLM.from_pretrained(str(folder), dtype=how["dtype"])
    state_dict = get_pretrained_state_dict(official or str(folder), cfg, hf_model=hf_model)
    del hf_model
    model = HookedTransformer(cfg, tokenizer=tokenizer, default_padding_side="left")
    load_weights(model, state_dict)
    return _placed(model, how)


def load_weights(model: HookedTransformer, state_dict: dict) -> None:
    """``model.load_and_process_state_dict(state_dict)`` with every processing step off, in one
    ``load_state_dict``: TransformerLens 3.x loads key by key, each call walking the whole module
    tree (most of a warm load). Strict: every weight of the model comes from ``state_dict``."""
    model.load_state_dict(model.fill_missing_keys(state_dict), strict=True)


def hooked_from_name(name: str, how: dict) -> HookedTransformer:
    # TransformerLens 3.x only: 4.x removed HookedTransformer and its loaders
    from transformer_lens import HookedTransformer

    if how["n_ctx"] is not None:
        from transformer_lens.loading_from_pretrained import get_pretrained_model_config  # 3.x

        check_n_ctx(how["n_ctx"], get_pretrained_model_config(name).n_ctx, name)
    model = HookedTransformer.from_pretrained_no_processing(
        name,
        device=how["device"],
        dtype=how["dtype"],
        n_devices=how["n_devices"],
        default_padding_side="left",
        n_ctx=how["n_ctx"],
        move_to_device=False,
    )
    return _placed(model, how)


def _placed(model: HookedTransformer, how: dict) -> HookedTransformer:
    """On its device (or split over ``n_devices`` by TransformerLens), then laid out."""
    if how["n_devices"] > 1:
        model.move_model_modules_to_device()
    else:
        model.to(how["device"], print_details=False)
    if how["linear_layout"]:
        lay_out(model)
    return model.eval()
