"""Forward passes for scoring and editing, with the fast paths of issue 7 and their plain forms.

Fast paths (each can be switched off; :class:`EvalOptions` / ``eval.*`` in the config):

- **batched** rows: all (prompt, continuation) rows of a case — every language, metric and
  protocol — go through the model in length-sorted, right-padded batches, one forward pass per
  batch (plain: one forward pass per row).
- **head at targets**: the forward stops after the final norm (a hook captures its output and
  ends the pass), and the LM head is applied only at the positions whose next token is scored,
  in chunks of ``head_chunk`` positions so the [positions, vocab] logits stay small (Gemma-3's
  head is 640 x 262,144; plain: ``model(...).logits`` at every position).
- **reuse lower layers**: an edit of block L's weights cannot change what blocks below L
  compute, so the pre-edit pass keeps the hidden states entering block L and the post-edit pass
  feeds them in, running only blocks L and up (:class:`LowerStates`; plain: full depth).
- **inference mode**: scoring runs under ``torch.inference_mode`` (plain: the caller's grad mode).
- **shared prefix**: when every row of a call starts with the same tokens (a context edit's
  text), their keys and values are computed once and each batch runs only the later tokens
  (:mod:`xling_edit.evaluation.prefix`; plain: every row in full).
"""

from __future__ import annotations

import re
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, fields
from typing import Any, Iterator, Mapping, Sequence

import torch
from torch import nn

from xling_edit.config import EvalConfig
from xling_edit.evaluation.prefix import SharedPrefix
from xling_edit.evaluation.text import Encoded
from xling_edit.models.spec import ModelSpec


class _StopForward(Exception):
    """Raised by a hook to end a forward pass once the needed activations are captured."""


@dataclass
class EvalOptions(EvalConfig):
    """How rows are scored: the fields and defaults of :class:`xling_edit.config.EvalConfig`
    (``eval.*`` in the config, documented there), the fast paths (not user settings:
    :mod:`xling_edit.fastpaths`; the benchmark and the tests turn them off), and constructors
    from a config node and for the plain path.

    Args:
        batched: all rows of a case (every language, metric, protocol) in length-sorted padded
            batches, one forward pass per batch (plain: one pass per row).
        head_at_targets: the forward stops after the final norm and the LM head is applied
            only at scored positions (plain: full logits at every position).
        reuse_lower_layers: the post-edit pass feeds the pre-edit hidden states entering the
            lowest edited block and runs only the blocks from there up (plain: full depth).
        inference_mode: score under ``torch.inference_mode`` (plain: the caller's grad mode).
        shared_prefix: rows that all start with the same tokens (at least
            :data:`~xling_edit.evaluation.prefix.MIN_SHARED_TOKENS`, none of them scored) have
            those tokens' keys and values computed once; scoring and generation run only the
            later tokens (plain: every row in full).
    """

    batched: bool = True
    head_at_targets: bool = True
    reuse_lower_layers: bool = True
    inference_mode: bool = True
    shared_prefix: bool = True

    @classmethod
    def from_config(cls, cfg: Mapping[str, Any] | int | EvalConfig | None) -> "EvalOptions":
        """From an ``eval`` config node (unknown keys ignored), a batch size, or options."""
        if cfg is None:
            return cls()
        if isinstance(cfg, cls):
            return cfg
        if isinstance(cfg, int):
            return cls(batch_size=cfg)
        if isinstance(cfg, EvalConfig):
            return cls(**{f.name: getattr(cfg, f.name) for f in fields(cfg)})
        names = {f.name for f in fields(cls)}
        return cls(**{k: cfg[k] for k in names if k in cfg})

    @classmethod
    def plain(cls, batch_size: int = 32) -> "EvalOptions":
        """Every fast path off: what a straightforward implementation does."""
        return cls(batch_size=batch_size, batched=False, head_at_targets=False,
                   reuse_lower_layers=False, inference_mode=False, shared_prefix=False)


def pad_right(seqs: Sequence[Sequence[int]], pad_id: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    n = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), n), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), n), dtype=torch.long)
    for i, s in enumerate(seqs):
        ids[i, : len(s)] = torch.tensor(s, dtype=torch.long)
        mask[i, : len(s)] = 1
    return ids.to(device), mask.to(device)


@contextmanager
def capture_output(module: nn.Module) -> Iterator[dict]:
    store: dict = {}

    def hook(_mod, _inp, out):
        store["out"] = out[0] if isinstance(out, tuple) else out

    handle = module.register_forward_hook(hook)
    try:
        yield store
    finally:
        handle.remove()


def model_device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


def head_logits(model: nn.Module, spec: ModelSpec, hidden: torch.Tensor) -> torch.Tensor:
    logits = spec.module(model, "lm_head")(hidden)
    cap = getattr(model.config, "final_logit_softcapping", None)
    if cap:
        logits = torch.tanh(logits / cap) * cap
    return logits.float()


# ------------------------------------------------------------------ lower-layer reuse
@contextmanager
def skip_below(model: nn.Module, spec: ModelSpec, layer: int, states: torch.Tensor | None) -> Iterator[None]:
    """Blocks ``0 .. layer-1`` return ``states`` (what block ``layer-1`` output for the same
    batch, computed earlier) without computing anything; block ``layer`` and up run as usual.
    The embedding lookup, masks and position embeddings are still built by the model (cheap).
    A no-op for ``layer == 0`` or ``states is None``."""
    if not layer or states is None:
        yield
        return
    blocks = [spec.module(model, "layer", i) for i in range(layer)]
    stub = lambda *args, **kwargs: states  # noqa: E731
    for b in blocks:
        b.forward = stub  # instance attribute shadows the class's forward
    try:
        yield
    finally:
        for b in blocks:
            if b.__dict__.get("forward") is stub:
                del b.forward


def edited_layers(spec: ModelSpec, deltas: Sequence[Any]) -> list[int] | None:
    """Block indices that ``deltas`` (``WeightDelta``s) touch; None when one of them is not
    inside a block (embedding, head, final norm: nothing can be reused then)."""
    pattern = re.compile("^" + re.escape(spec.layer).replace(r"\{\}", r"(\d+)") + r"\.")
    out = []
    for d in deltas:
        m = pattern.match(d.param)
        if m is None:
            return None
        out.append(int(m.group(1)))
    return out


class LowerStates:
    """Hidden states entering block ``layer``, per scoring batch, recorded by the pre-edit pass
    and fed to the post-edit pass (blocks below ``layer`` are skipped).

    Valid only while nothing below ``layer`` changes: :meth:`usable` checks the deltas."""

    def __init__(self, layer: int):
        self.layer = int(layer)
        self.states: dict[tuple, torch.Tensor] = {}

    def usable(self, spec: ModelSpec, deltas: Sequence[Any] | None) -> bool:
        if not self.states or self.layer <= 0:
            return False
        if not deltas:
            return True  # unedited model: identical by construction
        layers = edited_layers(spec, deltas)
        return layers is not None and min(layers) >= self.layer

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.states.values())


def final_hidden_at(model: nn.Module, spec: ModelSpec, input_ids: torch.Tensor,
                    attention_mask: torch.Tensor, rows: torch.Tensor, positions: torch.Tensor,
                    **forward_kw) -> torch.Tensor:
    """The final norm's output [m, d] at (rows[i], positions[i]); the forward pass stops there,
    so the model never applies its LM head. ``forward_kw``: more forward arguments (a cache,
    position ids; ``use_cache`` defaults to False)."""
    forward_kw.setdefault("use_cache", False)
    got: dict = {}

    def at_norm(_m, _i, out):
        got["h"] = (out[0] if isinstance(out, tuple) else out)[rows, positions]
        raise _StopForward

    handle = spec.module(model, "final_norm").register_forward_hook(at_norm)
    try:
        model(input_ids=input_ids, attention_mask=attention_mask, logits_to_keep=1, **forward_kw)
    except _StopForward:
        pass
    finally:
        handle.remove()
    return got["h"]


def logits_at(model: nn.Module, spec: ModelSpec, input_ids: torch.Tensor,
              attention_mask: torch.Tensor, rows: torch.Tensor, positions: torch.Tensor,
              **forward_kw) -> torch.Tensor:
    """Next-token logits [m, vocab] at (rows[i], positions[i]) of a right-padded batch; the LM
    head is applied at those positions only (``forward_kw``: as :func:`final_hidden_at`)."""
    return head_logits(model, spec, final_hidden_at(model, spec, input_ids, attention_mask, rows,
                                                    positions, **forward_kw))


def full_logits_at(model: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                   rows: torch.Tensor, positions: torch.Tensor, **forward_kw) -> torch.Tensor:
    """The plain form of :func:`logits_at`: the model's logits at every position, then gathered."""
    forward_kw.setdefault("use_cache", False)
    out = model(input_ids=input_ids, attention_mask=attention_mask, **forward_kw)
    return out.logits[rows, positions].float()


# ------------------------------------------------------------------ scoring
@dataclass
class SeqScore:
    """Teacher-forced scores of one continuation."""

    target_ids: torch.Tensor  # [n]
    logprobs: torch.Tensor  # [n] log P(target token | prefix)
    argmax: torch.Tensor  # [n] the model's top token at each target position


class Scores(list):
    """``list[SeqScore]`` that may carry the pre-edit pass's :class:`LowerStates`."""

    lower: LowerStates | None = None


def score_continuations(model: nn.Module, tok, spec: ModelSpec, encs: Sequence[Encoded],
                        batch_size: int | EvalOptions | Mapping = 32, *,
                        keep_from: int | None = None, reuse: Scores | None = None,
                        deltas: Sequence[Any] | None = None) -> Scores:
    """Score every encoded prompt + continuation.

    Args:
        batch_size: a batch size, or :class:`EvalOptions` / an ``eval`` config node.
        keep_from: record the hidden states entering this block (pre-edit pass) on the result's
            ``lower``, for a later post-edit pass.
        reuse: the pre-edit result of the same ``encs``; its states are fed in when ``deltas``
            (the applied edit) leave every block below the recorded one unchanged.
        deltas: the ``WeightDelta``s currently applied (for the check above).
    """
    opts = EvalOptions.from_config(batch_size)
    grad_ctx = torch.inference_mode() if opts.inference_mode else nullcontext()
    with grad_ctx:
        return _score(model, tok, spec, encs, opts, keep_from, reuse, deltas)


def _score(model, tok, spec, encs, opts: EvalOptions, keep_from, reuse, deltas) -> Scores:
    device = model_device(model)
    out = Scores([None] * len(encs))
    if opts.batched:
        order = sorted(range(len(encs)), key=lambda i: len(encs[i].input_ids))
        batches = [order[b: b + opts.batch_size] for b in range(0, len(order), opts.batch_size)]
    else:
        batches = [[i] for i in range(len(encs))]
    lower_in = reuse.lower if (reuse is not None and opts.reuse_lower_layers) else None
    if lower_in is not None and not lower_in.usable(spec, deltas):
        lower_in = None
    lower_out = None
    if keep_from is not None and opts.reuse_lower_layers and keep_from > 0:
        lower_out = LowerStates(keep_from)
    shared = None
    if opts.shared_prefix and lower_in is None and lower_out is None:
        shared = _shared_prefix(model, encs)
    n_pre = shared.n if shared is not None else 0
    for idx in batches:
        key = tuple(idx)
        ids, mask = pad_right([encs[i].input_ids[n_pre:] for i in idx], tok.pad_token_id, device)
        rows, pos, spans = [], [], []
        for r, i in enumerate(idx):
            tp = list(encs[i].target_positions)
            spans.append((len(rows), len(tp)))
            rows.extend([r] * len(tp))
            pos.extend(p - 1 - n_pre for p in tp)  # logits at p-1 predict token p
        rows_t, pos_t = torch.tensor(rows, device=device), torch.tensor(pos, device=device)
        tgt = torch.tensor([t for i in idx for t in encs[i].target_ids])
        tgt_all = tgt.to(device)
        kw: dict = {}
        if shared is not None:  # the rows' own tokens after the recorded prefix
            kw = {"use_cache": True, shared.kwarg: shared.cache(len(idx)),
                  "position_ids": n_pre + torch.arange(ids.shape[1], device=device)[None].expand(len(idx), -1)}
            mask = torch.cat([mask.new_ones((len(idx), n_pre)), mask], dim=1)
        states = lower_in.states.get(key) if lower_in is not None else None
        record = (capture_output(spec.module(model, "layer", lower_out.layer - 1))
                  if lower_out is not None else nullcontext({}))
        with skip_below(model, spec, lower_in.layer if states is not None else 0, states), record as rec:
            if opts.head_at_targets:
                hidden = final_hidden_at(model, spec, ids, mask, rows_t, pos_t, **kw)
                logp_parts, argmax_parts = [], []
                for c in range(0, hidden.shape[0], max(1, opts.head_chunk)):
                    lp = torch.log_softmax(head_logits(model, spec, hidden[c: c + opts.head_chunk]), dim=-1)
                    logp_parts.append(lp.gather(1, tgt_all[c: c + opts.head_chunk, None])[:, 0])
                    argmax_parts.append(lp.argmax(-1))
                    del lp
                lp_t, am_t = torch.cat(logp_parts).cpu(), torch.cat(argmax_parts).cpu()
            else:
                logp = torch.log_softmax(full_logits_at(model, ids, mask, rows_t, pos_t, **kw), dim=-1)
                lp_t = logp.gather(1, tgt_all[:, None])[:, 0].cpu()
                am_t = logp.argmax(-1).cpu()
        if lower_out is not None and "out" in rec:
            lower_out.states[key] = rec["out"].detach()
        for (start, n), i in zip(spans, idx):
            out[i] = SeqScore(tgt[start: start + n], lp_t[start: start + n], am_t[start: start + n])
    out.lower = lower_out
    return out


def _shared_prefix(model, encs: Sequence[Encoded]) -> SharedPrefix | None:
    """The recorded keys and values of the tokens every row starts with, up to the first
    position whose next token is scored (:meth:`SharedPrefix.shared_by`)."""
    scored = min((min(e.target_positions) - 1 for e in encs if len(e.target_positions)),
                 default=min(len(e.input_ids) for e in encs))
    return SharedPrefix.shared_by(model, [e.input_ids for e in encs], scored, "scoring")
