"""The key/value cache and greedy/sampled generation on either backend (see
:mod:`icl_mech.backends` for why the bridge needs its own cached loop)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import einops
import torch
from jaxtyping import Int
from torch import Tensor
from transformer_lens.cache.key_value_cache import TransformerLensKeyValueCache
from transformer_lens.cache.key_value_cache_entry import TransformerLensKeyValueCacheEntry
from transformer_lens.utilities import sample_logits
from transformers import DynamicCache

from icl_mech.backends import cache_keyword, is_bridge, keep_last
from icl_mech.errors import IclMechError


@dataclass
class KVCache:
    """Keys and values of earlier positions of a batch, on either backend.

    ``forward(model, tokens, attention_mask)`` runs new tokens after the cached ones (the mask
    covers the new tokens only, as in TransformerLens) and, unless the cache is frozen, appends
    them. On the bridge the keys are stored after the rotary embedding (at the positions they
    were computed at), on the hooked backend before it (TransformerLens rotates every key at
    each forward, at positions counted from the attention mask): ``rotated`` says which.
    Tensors are in TransformerLens's layout ``[batch, pos, kv_head, d_head]``.
    """

    keys: list[Tensor]
    values: list[Tensor]
    attention_mask: Int[Tensor, "batch pos"]
    bridge: bool
    frozen: bool = False
    _tl: object = None  # the TransformerLens cache (hooked backend)

    @classmethod
    def new(cls, model, batch_size: int) -> KVCache:
        if is_bridge(model):
            empty = torch.zeros(batch_size, 0, dtype=torch.long)
            return cls([], [], empty, bridge=True)
        tl = TransformerLensKeyValueCache.init_cache(model.cfg, model.cfg.device, batch_size)
        return cls([], [], tl.previous_attention_mask, bridge=False, _tl=tl)

    @classmethod
    def from_tensors(
        cls, model, keys: list[Tensor], values: list[Tensor], attention_mask: Tensor
    ) -> KVCache:
        """A frozen cache of the given entries (keys rotated on the bridge, not on hooked)."""
        return cls._frozen(is_bridge(model), keys, values, attention_mask)

    @classmethod
    def _frozen(cls, bridge: bool, keys, values, attention_mask) -> KVCache:
        if bridge:
            return cls(list(keys), list(values), attention_mask, bridge=True, frozen=True)
        entries = [
            TransformerLensKeyValueCacheEntry(k, v, frozen=True) for k, v in zip(keys, values)
        ]
        tl = TransformerLensKeyValueCache(entries, attention_mask, frozen=True)
        return cls([], [], attention_mask, bridge=False, frozen=True, _tl=tl)

    @property
    def rotated(self) -> bool:
        return self.bridge

    @property
    def hooked_entries(self):
        """TransformerLens's own cache, for ``past_kv_cache=`` on the hooked backend."""
        if self.bridge:
            raise IclMechError("a bridge's key/value cache has no TransformerLens entries")
        return self._tl

    def __len__(self) -> int:
        return self.attention_mask.shape[0]

    def entries(self) -> tuple[list[Tensor], list[Tensor], Tensor]:
        """(keys per layer, values per layer, attention mask) of the cached positions."""
        if self.bridge:
            return self.keys, self.values, self.attention_mask
        tl = self._tl
        keys = [e.past_keys for e in tl.entries]
        return keys, [e.past_values for e in tl.entries], tl.previous_attention_mask

    def freeze(self) -> KVCache:
        self.frozen = True
        if not self.bridge:
            self._tl.freeze()
        return self

    def repeat(self, times: int, layers: Sequence[int] | None = None) -> KVCache:
        """A frozen copy holding every row ``times`` times, as ``(times batch)``; with
        ``layers``, only their entries are repeated (a run that reads no other layer)."""

        def tile(tensor: Tensor) -> Tensor:
            return einops.repeat(tensor, "batch ... -> (times batch) ...", times=times)

        keys, values, mask = self.entries()
        chosen = range(len(keys)) if layers is None else set(layers)
        keys = [tile(k) if i in chosen else k for i, k in enumerate(keys)]
        values = [tile(v) if i in chosen else v for i, v in enumerate(values)]
        return self._frozen(self.bridge, keys, values, tile(mask))

    def fill(self, model, tokens: Tensor, attention_mask: Tensor) -> KVCache:
        """Run ``tokens`` to fill the cache, without the unembedding (the hooked model stops
        after its last block; the bridge, which cannot, unembeds the last position only)."""
        if len(tokens) and tokens.shape[1]:
            last = {"stop_at_layer": model.cfg.n_layers} if not self.bridge else keep_last(model)
            self.forward(model, tokens, attention_mask, **last)
        return self

    def forward(self, model, tokens: Tensor, attention_mask: Tensor, **forward):
        """The model's forward on ``tokens`` after the cached positions."""
        if not self.bridge:
            return model(tokens, attention_mask=attention_mask, past_kv_cache=self._tl, **forward)
        hf_cache = DynamicCache()
        for layer, (k, v) in enumerate(zip(self.keys, self.values)):
            hf_cache.update(k.transpose(1, 2), v.transpose(1, 2), layer)
        mask = torch.cat([self.attention_mask.to(attention_mask), attention_mask], dim=1)
        keyword = cache_keyword(model)
        forward[keyword] = hf_cache
        if keyword != "past_key_values":
            forward["layer_past"] = hf_cache  # the name the bridge's attention reads
        out = model(tokens, attention_mask=mask, use_cache=True, **forward)
        if not self.frozen:
            layers = getattr(hf_cache, "layers", None)
            if layers is None or len(layers) != model.cfg.n_layers:
                raise IclMechError(
                    f"the key/value cache of {model.cfg.model_name} was not filled by the "
                    "bridge's forward (a stop_at_layer run, or a TransformerLens that does not "
                    "update Hugging Face caches); nothing can be continued from it"
                )
            self.keys = [layer.keys.transpose(1, 2) for layer in layers]
            self.values = [layer.values.transpose(1, 2) for layer in layers]
            self.attention_mask = mask
        return out


def generate(
    model,
    tokens: Int[Tensor, "batch seq"],
    attention_mask: Int[Tensor, "batch seq"],
    *,
    max_new_tokens: int,
    eos_token_id: int | list[int],
    stop_at_eos: bool = True,
    do_sample: bool = False,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    use_cache: bool = True,
) -> Int[Tensor, "batch total"]:
    """Prompt and new tokens of left-padded prompts. The hooked backend runs TransformerLens's
    ``generate`` (padding read off the leading pad tokens); the bridge runs the same loop here
    with ``KVCache``: one forward of the prompt, then one of each new token (or, without the
    cache, of the whole sequence), finished rows continued with the end-of-sequence token."""
    if not is_bridge(model):
        return model.generate(
            tokens,
            max_new_tokens=max_new_tokens,
            stop_at_eos=stop_at_eos,
            eos_token_id=eos_token_id,
            do_sample=do_sample,
            temperature=temperature,
            top_k=top_k,
            top_p=top_p,
            use_past_kv_cache=use_cache,
            padding_side="left",
            return_type="tokens",
            verbose=False,
        )
    stops = [eos_token_id] if isinstance(eos_token_id, int) else list(eos_token_id)
    device = model.cfg.device
    tokens, mask = tokens.to(device), attention_mask.to(device)
    finished = torch.zeros(len(tokens), dtype=torch.bool, device=device)
    cache = KVCache.new(model, len(tokens)) if use_cache else None
    sequence, new_mask, step_tokens = tokens, mask, tokens
    with torch.no_grad():
        for _ in range(max_new_tokens):
            if cache is not None:
                logits = cache.forward(model, step_tokens, new_mask)[:, -1]
            else:
                logits = model(sequence, attention_mask=mask)[:, -1]
            if do_sample:
                chosen = sample_logits(
                    logits, top_k=top_k, top_p=top_p, temperature=temperature, tokens=sequence
                ).to(device)
            else:
                chosen = logits.argmax(-1)
            if stop_at_eos:
                chosen[finished] = stops[0]
                finished |= torch.isin(chosen, torch.tensor(stops, device=device))
            sequence = torch.cat([sequence, chosen[:, None]], dim=1)
            one = torch.ones(len(tokens), 1, dtype=mask.dtype, device=device)
            mask = torch.cat([mask, one], dim=1)
            step_tokens, new_mask = chosen[:, None], one
            if stop_at_eos and bool(finished.all()):
                break
    return sequence
