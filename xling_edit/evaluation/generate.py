"""Greedy answers to many prompts at once: left-padded batches, a KV cache, a natural stop.

:func:`generate_answers` decodes every prompt greedily. Prompts are batched (left padded, with
position ids counted from each row's first real token, so a padded row computes what it would
alone), the prompt is encoded once and every later step feeds one token per row through the
model's KV cache, the LM head is applied at the last position only (``logits_to_keep=1``), a row
that has stopped leaves the batch (its cache rows are dropped), and the loop ends as soon as
every row has stopped. A row stops at

- the tokenizer's EOS (or any of the model's ``eos_token_id``\\ s),
- a newline, or one of its language's ``sentence_end`` strings, *once the answer has begun*
  (leading whitespace and newlines are skipped: base models often open with a blank line),
- the token cap ``max_new_tokens``.

The answer is the decoded text cut at the first stop and stripped; the stop mark itself is not
part of it.

When every prompt starts with the same tokens (a context edit's text: IKE's demonstrations and
stated fact), their keys and values are computed once and every batch encodes only its rows'
later tokens (``shared_prefix``; :mod:`xling_edit.evaluation.prefix`): each row's tokens keep
the cache slots and position ids of the left-padded batch, so the answers are the same.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch

from xling_edit.evaluation.forward import model_device
from xling_edit.evaluation.prefix import SharedPrefix, cache_kwarg


@dataclass(frozen=True)
class Generated:
    """One prompt's greedy answer."""

    text: str  # the answer, cut at its stop, stripped
    raw: str  # everything decoded (up to the stop or the cap)
    n_tokens: int  # tokens generated
    stop: str  # eos | newline | sentence_end | cap
    tokens: tuple[int, ...] = ()  # the generated token ids


def cut_answer(raw: str, stops: Sequence[str]) -> tuple[str, str | None]:
    """``(answer, reason)``: ``raw`` without leading whitespace, cut before the first newline or
    ``stops`` string that follows the answer's start; reason None when nothing cut it."""
    body = raw.lstrip()
    best, why = len(body), None
    i = body.find("\n")
    if i >= 0:
        best, why = i, "newline"
    for s in stops:
        j = body.find(s) if s else -1
        if 0 <= j < best:
            best, why = j, "sentence_end"
    return body[:best].strip(), why


def _eos_ids(model, tok) -> set[int]:
    ids: set[int] = set()
    for src in (getattr(tok, "eos_token_id", None), getattr(model.generation_config, "eos_token_id", None)
                if getattr(model, "generation_config", None) is not None else None,
                getattr(model.config, "eos_token_id", None)):
        if src is None:
            continue
        ids.update([src] if isinstance(src, int) else list(src))
    return ids


def generate_answers(model, tok, prompts: Sequence[str], stops: Sequence[Sequence[str]] | None = None,
                     max_new_tokens: int = 24, batch_size: int = 48,
                     shared_prefix: bool = True) -> list[Generated]:
    """Greedy answers to ``prompts`` (in order). ``stops[i]``: the strings that end answer i
    besides EOS and a newline (its language's ``sentence_end``). ``shared_prefix``: the tokens
    every prompt starts with are encoded once (module docstring; False: every prompt in full)."""
    if max_new_tokens < 1:
        raise ValueError(f"eval.max_new_tokens must be >= 1, got {max_new_tokens}")
    stops = stops if stops is not None else [()] * len(prompts)
    encoded = [tok(p, add_special_tokens=True)["input_ids"] for p in prompts]
    order = sorted(range(len(prompts)), key=lambda i: len(encoded[i]))
    out: list[Generated | None] = [None] * len(prompts)
    eos = _eos_ids(model, tok)
    prefix = None
    if shared_prefix and encoded:  # every row keeps a last token to run
        prefix = SharedPrefix.shared_by(model, encoded, min(len(e) for e in encoded) - 1, "generation")
    with torch.inference_mode():
        for b in range(0, len(order), max(1, batch_size)):
            idx = order[b: b + batch_size]
            gens = _greedy(model, tok, [encoded[i] for i in idx], [stops[i] for i in idx],
                           max_new_tokens, eos, prefix)
            for i, g in zip(idx, gens):
                out[i] = g
    return out  # type: ignore[return-value]


def _greedy(model, tok, seqs: list[list[int]], stops: list[Sequence[str]], cap: int,
            eos: set[int], prefix: SharedPrefix | None = None) -> list[Generated]:
    device = model_device(model)
    n, width = len(seqs), max(len(s) for s in seqs)
    pad = tok.pad_token_id if tok.pad_token_id is not None else 0
    ids = torch.full((n, width), pad, dtype=torch.long)
    mask = torch.zeros((n, width), dtype=torch.long)
    for r, s in enumerate(seqs):
        ids[r, width - len(s):] = torch.tensor(s, dtype=torch.long)
        mask[r, width - len(s):] = 1
    ids, mask = ids.to(device), mask.to(device)
    pos = (mask.cumsum(-1) - 1).clamp(min=0)
    generated: list[list[int]] = [[] for _ in range(n)]
    done = [False] * n
    why: list[str] = ["cap"] * n
    texts = [""] * n
    past, step_ids, step_pos = None, ids, pos
    cache_kw = cache_kwarg(model) or "past_key_values"
    if prefix is not None and width - min(len(s) for s in seqs) <= prefix.n:
        # row r's first (padding + prefix) slots come from the recorded prefix: its cache
        # holds the prefix's first n - shift[r] tokens after shift[r] padding slots, its input
        # the rest of the row, the same slots and positions as the left-padded batch's
        shift = torch.tensor([width - len(s) for s in seqs], device=device)
        past = prefix.cache(n, shift)
        step_ids, step_pos = ids[:, prefix.n:], pos[:, prefix.n:]
    live = list(range(n))  # original rows still decoding, in the order of the batch's rows
    for _ in range(cap):
        out = model(input_ids=step_ids, attention_mask=mask, position_ids=step_pos,
                    use_cache=True, logits_to_keep=1, **{cache_kw: past})
        past = getattr(out, "past_key_values", None)
        if past is None:
            past = getattr(out, "cache", None)
        nxt = out.logits[:, -1].argmax(-1)
        for b, r in enumerate(live):
            t = int(nxt[b])
            if t in eos:
                done[r], why[r] = True, "eos"
                continue
            generated[r].append(t)
            texts[r] = tok.decode(generated[r], skip_special_tokens=True)
            _, reason = cut_answer(texts[r], stops[r])
            if reason is not None:
                done[r], why[r] = True, reason
        keep = [b for b, r in enumerate(live) if not done[r]]
        if not keep:
            break
        if len(keep) < len(live) and hasattr(past, "reorder_cache"):
            # finished rows leave the batch: later steps compute only the rows still answering
            sel = torch.tensor(keep, device=nxt.device)
            past.reorder_cache(sel)
            nxt, mask, step_pos = nxt[sel], mask[sel], step_pos[sel]
            live = [live[b] for b in keep]
        step_ids = nxt[:, None]
        step_pos = step_pos[:, -1:] + 1
        mask = torch.cat([mask, mask.new_ones((mask.shape[0], 1))], dim=1)
    return [Generated(cut_answer(texts[r], stops[r])[0], texts[r], len(generated[r]), why[r],
                      tuple(generated[r])) for r in range(n)]
