"""Merging models whose vocabularies differ (the Indic Llama-2 extensions add their own tokens).

The merge has one output vocabulary (``merge.tokenizer``):

- ``union``: the base tokenizer's tokens (ids unchanged), then every token another model has and
  the vocabulary does not yet hold, model by model in ``merge.models`` order, each model's in its
  own id order. New tokens are added to the base tokenizer as added tokens (matched as whole
  strings before the base tokenizer's own segmentation), so text is segmented by the base
  tokenizer except where a model's extra token occurs literally.
- ``base``: the base tokenizer; rows of other tokens are dropped.
- ``<key of merge.models>``: that model's tokenizer.

Every input's embedding and LM-head matrices are re-indexed to the output vocabulary, *then*
merged like any other tensor. A row a model lacks is filled, as mergekit does
(``mergekit/tokenizer/embed.py``), so that its task-vector row is zero wherever possible:

- only one input (base included) has the token: every input takes that model's row, so the
  merged row is that model's row;
- the base has it: inputs lacking it take the base row (task vector 0: they do not vote);
- several non-base models have it: inputs lacking it (the base included) take the mean of the
  owners' rows, and the owners' differences from that mean are TIES-merged;
- nobody has it (a token the output tokenizer adds itself): zeros.

The merged checkpoint is saved with the output tokenizer, so the edited model and its tokenizer
always agree. Token identity is the token string in ``get_vocab()`` (SentencePiece pieces such as
``▁नम`` included); rows beyond a tokenizer's length (padding) and ids >= ``config.vocab_size``
are ignored.
"""

from __future__ import annotations

import copy
from typing import Mapping, Sequence

import torch


def usable_vocab(tok, vocab_size: int | None) -> dict[str, int]:
    """A tokenizer's tokens whose ids have a row in the model."""
    vocab = tok.get_vocab()
    if vocab_size is None:
        return dict(vocab)
    return {t: i for t, i in vocab.items() if i < vocab_size}


def new_tokens(base_vocab: Mapping[str, int], vocabs: Sequence[Mapping[str, int]]) -> list[str]:
    """Tokens the union adds to the base: model by model, each in its own id order."""
    seen = set(base_vocab)
    out = []
    for vocab in vocabs:
        for t, _ in sorted(vocab.items(), key=lambda kv: kv[1]):
            if t not in seen:
                seen.add(t)
                out.append(t)
    return out


def union_tokenizer(base_tok, added: Sequence[str]):
    """A copy of the base tokenizer with ``added`` appended (ids len(base), len(base)+1, ...)."""
    tok = copy.deepcopy(base_tok)
    for t in added:  # one at a time: each gets the next id, in this order
        tok.add_tokens([t])
    return tok


def permutations(out_vocab: Mapping[str, int], vocabs: Mapping[str, Mapping[str, int]]) -> dict[str, torch.Tensor]:
    """For each input, a LongTensor over output ids: that input's row id, or -1."""
    n = max(out_vocab.values()) + 1
    perms = {}
    for key, vocab in vocabs.items():
        p = torch.full((n,), -1, dtype=torch.long)
        for t, i in out_vocab.items():
            j = vocab.get(t)
            if j is not None:
                p[i] = j
        perms[key] = p
    return perms


def align_rows(tensors: Mapping[str, torch.Tensor], perms: Mapping[str, torch.Tensor],
               base_key: str) -> dict[str, torch.Tensor]:
    """Re-index every input's vocabulary matrix (rows = tokens) to the output vocabulary,
    filling rows it lacks by the rules in this module's docstring. ``tensors`` and ``perms``
    are keyed alike, in model order (base included)."""
    keys = list(tensors)
    first = tensors[keys[0]]
    n = next(iter(perms.values())).numel()
    have = torch.stack([perms[k] >= 0 for k in keys])  # inputs x tokens
    missing_somewhere = (~have).any(dim=0)
    fill = torch.zeros((n, *first.shape[1:]), dtype=first.dtype, device=first.device)
    for tid in torch.nonzero(missing_somewhere).flatten().tolist():
        owners = [k for k, h in zip(keys, have[:, tid].tolist()) if h]
        if not owners:
            continue  # zeros
        if len(owners) == 1:
            fill[tid] = tensors[owners[0]][perms[owners[0]][tid]]
        elif base_key in owners:
            fill[tid] = tensors[base_key][perms[base_key][tid]]
        else:
            row = torch.zeros_like(fill[tid])
            for k in owners:
                row = row + tensors[k][perms[k][tid]]
            fill[tid] = row / len(owners)
    out = {}
    for k in keys:
        p = perms[k]
        rows = tensors[k][p.clamp(min=0)]
        present = (p >= 0).view(-1, *([1] * (first.dim() - 1)))
        out[k] = torch.where(present, rows, fill)
    return out
