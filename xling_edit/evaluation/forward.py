"""Forward passes that compute the LM head only where it is needed.

Gemma-3's head is 640 x 262,144: computing it at every position dominates a forward pass. The
final norm's output is captured with a hook, the model is asked for the last position's logits
only (``logits_to_keep=1``), and the head is applied to the gathered positions.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterator, Sequence

import torch
from torch import nn

from xling_edit.evaluation.text import Encoded
from xling_edit.models.spec import ModelSpec


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


def logits_at(model: nn.Module, spec: ModelSpec, input_ids: torch.Tensor,
              attention_mask: torch.Tensor, rows: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    """Next-token logits [m, vocab] at (rows[i], positions[i]) of a right-padded batch."""
    with capture_output(spec.module(model, "final_norm")) as cap:
        model(input_ids=input_ids, attention_mask=attention_mask, logits_to_keep=1, use_cache=False)
    hidden = cap["out"][rows, positions]
    return head_logits(model, spec, hidden)


@dataclass
class SeqScore:
    """Teacher-forced scores of one continuation."""

    target_ids: torch.Tensor  # [n]
    logprobs: torch.Tensor  # [n] log P(target token | prefix)
    argmax: torch.Tensor  # [n] the model's top token at each target position


@torch.inference_mode()
def score_continuations(model: nn.Module, tok, spec: ModelSpec, encs: Sequence[Encoded],
                        batch_size: int = 32) -> list[SeqScore]:
    """Score every encoded prompt + continuation, in length-sorted padded batches."""
    device = model_device(model)
    order = sorted(range(len(encs)), key=lambda i: len(encs[i].input_ids))
    out: list[SeqScore | None] = [None] * len(encs)
    for b in range(0, len(order), batch_size):
        idx = order[b: b + batch_size]
        ids, mask = pad_right([encs[i].input_ids for i in idx], tok.pad_token_id, device)
        rows, pos, spans = [], [], []
        for r, i in enumerate(idx):
            tp = list(encs[i].target_positions)
            spans.append((len(rows), len(tp)))
            rows.extend([r] * len(tp))
            pos.extend(p - 1 for p in tp)  # logits at p-1 predict token p
        logits = logits_at(model, spec, ids, mask, torch.tensor(rows, device=device),
                           torch.tensor(pos, device=device))
        logp = torch.log_softmax(logits, dim=-1)
        for (start, n), i in zip(spans, idx):
            tgt = torch.tensor(encs[i].target_ids, device=device)
            lp = logp[start: start + n]
            out[i] = SeqScore(tgt.cpu(), lp.gather(1, tgt[:, None])[:, 0].cpu(), lp.argmax(-1).cpu())
    return out  # type: ignore[return-value]
