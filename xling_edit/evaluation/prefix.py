"""A shared prefix's keys and values, computed once (issue 25).

When every sequence of a call starts with the same tokens — a context edit's demonstrations and
stated fact before each evaluation prompt (IKE: about a thousand tokens before prompts of ten to
twenty) — those tokens' keys and values at every block do not depend on what follows them
(causal attention). :class:`SharedPrefix` records them in one forward pass; each scoring or
decoding batch then runs only its rows' later tokens, attending to the recorded ones through a
KV cache built for the batch (:meth:`SharedPrefix.cache`).

Every real position keeps its position id and its distance to every other real position (the
cache holds the prefix at the slots the whole sequence would give it), so rotary and learned
positions, causal and sliding-window masks are those of the whole sequence: the results equal
the full-sequence pass within float rounding (``tests/integration/test_shared_prefix.py``, every
tiny layout). Layouts that are not verified run the full sequences, logged once
(:func:`prefix_cache_unsupported`).

The same checks serve the value optimisation's prefix cache (:mod:`xling_edit.editing.value`).
"""

from __future__ import annotations

import inspect
import logging
from dataclasses import dataclass
from typing import Sequence

import torch
from torch import nn

log = logging.getLogger(__name__)

#: model types whose layouts prefix reuse is verified on (tests/integration/test_value_prefix.py,
#: tests/integration/test_shared_prefix.py)
PREFIX_MODEL_TYPES = ("llama", "mistral", "qwen2", "qwen3", "gemma3_text", "gpt2", "gpt_neox",
                      "phi", "phi3")
#: attention implementations it is verified with (the 2-D padding mask becomes an explicit mask)
PREFIX_ATTENTION = ("eager", "sdpa")
#: attention layer types it serves: the mask depends only on distances between positions
PREFIX_LAYER_TYPES = ("full_attention", "sliding_attention")
#: a shared prefix shorter than this is not worth a separate pass (tokens)
MIN_SHARED_TOKENS = 64
_LOGGED: set = set()


def cache_kwarg(model) -> str | None:
    """The name under which the model's forward takes a KV cache (``cache`` in recent
    transformers, ``past_key_values`` before), or None."""
    try:
        params = inspect.signature(model.forward).parameters
    except (TypeError, ValueError):
        return None
    return next((k for k in ("cache", "past_key_values") if k in params), None)


def prefix_cache_unsupported(model) -> str | None:
    """Why keys and values recorded for a prefix cannot stand in for it on ``model`` (None: they
    can)."""
    try:
        from transformers import DynamicCache  # noqa: F401
    except ImportError:
        return "transformers has no DynamicCache"
    if cache_kwarg(model) is None:
        return "its forward takes no KV cache"
    cfg = getattr(model, "config", None)
    if cfg is None:
        return "no model config"
    text = cfg.get_text_config(decoder=True) if hasattr(cfg, "get_text_config") else cfg
    kind = getattr(text, "model_type", None)
    if kind not in PREFIX_MODEL_TYPES:
        return f"model type {kind!r} not verified (verified: {', '.join(PREFIX_MODEL_TYPES)})"
    if getattr(text, "is_encoder_decoder", False) or getattr(cfg, "is_encoder_decoder", False):
        return "an encoder-decoder"
    if not getattr(text, "is_causal", True) or getattr(text, "use_bidirectional_attention", False):
        return "attention is not causal"
    impl = getattr(text, "_attn_implementation", None) or getattr(cfg, "_attn_implementation", None)
    if impl not in PREFIX_ATTENTION:
        return f"attention implementation {impl!r} (verified: {', '.join(PREFIX_ATTENTION)})"
    other = sorted(set(getattr(text, "layer_types", None) or ()) - set(PREFIX_LAYER_TYPES))
    if other:
        return f"layer types {other} (only full and sliding-window attention)"
    return None


def layer_kv(cache, i: int):
    """Block ``i``'s (keys, values) in a transformers cache, (None, None) where it holds none."""
    layers = getattr(cache, "layers", None)
    if layers is not None:  # transformers >= 4.56
        if i >= len(layers) or not getattr(layers[i], "is_initialized", True):
            return None, None
        return getattr(layers[i], "keys", None), getattr(layers[i], "values", None)
    kc, vc = getattr(cache, "key_cache", []), getattr(cache, "value_cache", [])
    return (kc[i], vc[i]) if i < len(kc) else (None, None)


def empty_cache():
    """A cache that keeps every position at every layer (no sliding-window cut: the masks do
    that), for a forward to record keys and values in."""
    from transformers import DynamicCache

    return DynamicCache()


def common_prefix_len(seqs: Sequence[Sequence[int]]) -> int:
    """The number of leading tokens every sequence shares."""
    if not seqs:
        return 0
    n = min(len(s) for s in seqs)
    first = seqs[0]
    for j in range(n):
        t = first[j]
        if any(s[j] != t for s in seqs):
            return j
    return n


def _once(model, what: str, why: str) -> None:
    key = (type(model).__name__, what, why)
    if key not in _LOGGED:
        _LOGGED.add(key)
        log.warning("%s: no shared-prefix cache on %s (%s); every sequence runs in full",
                    what, type(model).__name__, why)


@dataclass
class SharedPrefix:
    """The keys and values of ``n`` leading tokens at every block ([1, heads, n, d] each)."""

    n: int
    kv: list
    kwarg: str  # the forward's cache argument

    @classmethod
    def record(cls, model: nn.Module, ids: Sequence[int], what: str) -> "SharedPrefix | None":
        """One forward pass over ``ids`` recording every block's keys and values; None (logged
        once, naming ``what``) where the model's layout is not verified or the cache did not
        record every block."""
        why = prefix_cache_unsupported(model)
        if why is not None:
            _once(model, what, why)
            return None
        device = next(model.parameters()).device
        x = torch.tensor([list(ids)], dtype=torch.long, device=device)
        cache, kw = empty_cache(), cache_kwarg(model)
        with torch.no_grad():  # plain tensors: usable under any grad mode later
            model(input_ids=x, attention_mask=torch.ones_like(x), use_cache=True,
                  logits_to_keep=1, **{kw: cache})
        kv = []
        for i in range(_n_blocks(model)):
            k, v = layer_kv(cache, i)
            if k is None or v is None or k.dim() != 4 or k.shape[2] != len(ids) or v.shape[2] != len(ids):
                _once(model, what, f"the cache recorded no [1, heads, {len(ids)}, d] keys for block {i}")
                return None
            kv.append((k, v))
        return cls(len(ids), kv, kw)

    @classmethod
    def shared_by(cls, model: nn.Module, seqs: Sequence[Sequence[int]], at_most: int,
                  what: str) -> "SharedPrefix | None":
        """The recorded leading tokens every one of ``seqs`` shares, at most ``at_most`` of them;
        None when fewer than :data:`MIN_SHARED_TOKENS` (not worth a pass) or :meth:`record`
        cannot serve the model."""
        n = min(common_prefix_len(seqs), at_most)
        return cls.record(model, seqs[0][:n], what) if n >= MIN_SHARED_TOKENS else None

    def cache(self, rows: int, shift: torch.Tensor | None = None):
        """A fresh cache for a batch of ``rows`` (a forward appends its tokens after it).

        ``shift`` [rows] (left-padded batches): row r holds the first ``n - shift[r]`` prefix
        tokens in the cache's last slots (its first ``shift[r]`` slots are padding, masked by
        the batch's own attention mask), and its input starts with the remaining ``shift[r]``
        prefix tokens, so the row's real tokens sit where a left-padded batch of the whole
        sequences puts them. None: every row holds the whole prefix."""
        if shift is None:
            return cache_holding([(k.expand(rows, -1, -1, -1), v.expand(rows, -1, -1, -1))
                                  for k, v in self.kv])
        return cache_holding([(_shifted(k, shift), _shifted(v, shift)) for k, v in self.kv])


def cache_holding(kv: Sequence):
    """A fresh transformers cache holding block i's (keys, values) ``kv[i]``; a forward given it
    appends its own tokens after them."""
    c = empty_cache()
    for i, (k, v) in enumerate(kv):
        c.update(k, v, i)
    return c


def _shifted(t: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """[R, h, n, d]: row r = ``t``'s first n - shift[r] positions moved right by shift[r]
    (zeros before)."""
    n = t.shape[2]
    src = torch.arange(n, device=t.device)[None, :] - shift.to(t.device)[:, None]  # [R, n]
    out = t[0][:, src.clamp_min(0)].permute(1, 0, 2, 3)  # [R, h, n, d]
    return out * (src >= 0)[:, None, :, None].to(out.dtype)


def _n_blocks(model) -> int:
    cfg = model.config
    text = cfg.get_text_config(decoder=True) if hasattr(cfg, "get_text_config") else cfg
    n = getattr(text, "num_hidden_layers", None) or getattr(text, "n_layer", None)
    if n is None:
        raise ValueError(f"{type(model).__name__}: the config names no number of layers")
    return int(n)
