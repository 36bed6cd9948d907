"""Joining prompts and continuations the way the tokenizer needs, and char -> token maps.

No blind leading space: the separator comes from the language config (``word_sep``) and is
dropped when the prompt already ends in whitespace. Tokens are assigned to the prompt or the
continuation by their character offsets in the *jointly* tokenised text, so SentencePiece's
"▁" (space folded into the next token) and GPT-2's "Ġ" both land on the continuation side.
"""

from __future__ import annotations

from dataclasses import dataclass


def join(prompt: str, target: str, word_sep: str = " ") -> tuple[str, int]:
    """Return ``(text, cut)``: the joined text and the character index where the prompt ends."""
    if not target:
        raise ValueError("empty target")
    if not prompt or prompt[-1].isspace() or target[0].isspace():
        sep = ""
    else:
        sep = word_sep
    return prompt + sep + target, len(prompt)


@dataclass(frozen=True)
class Encoded:
    """A tokenised prompt + continuation."""

    input_ids: tuple[int, ...]
    offsets: tuple[tuple[int, int], ...]
    n_prompt: int  # tokens [0, n_prompt) are the prompt; the rest the continuation

    @property
    def target_ids(self) -> tuple[int, ...]:
        return self.input_ids[self.n_prompt:]

    @property
    def target_positions(self) -> range:
        return range(self.n_prompt, len(self.input_ids))


def encode(tok, prompt: str, target: str | None = None, word_sep: str = " ") -> Encoded:
    """Tokenise ``prompt`` (+ ``target``); special tokens appended after the text are dropped."""
    if target is None:
        text, cut = prompt, len(prompt)
    else:
        text, cut = join(prompt, target, word_sep)
    enc = tok(text, return_offsets_mapping=True, add_special_tokens=True)
    ids = list(enc["input_ids"])
    offs = [tuple(o) for o in enc["offset_mapping"]]
    special = set(tok.all_special_ids)
    # drop trailing special tokens (e.g. an EOS some tokenizers append)
    while ids and ids[-1] in special and offs[-1] == (0, 0) and len(ids) > 1:
        ids.pop()
        offs.pop()
    n_prompt = len(ids)
    for i, (s, e) in enumerate(offs):
        if e > cut and not (ids[i] in special and (s, e) == (0, 0)):
            n_prompt = i
            break
    if target is not None and n_prompt == len(ids):
        raise ValueError(f"target {target!r} produced no tokens after prompt {prompt!r}")
    if n_prompt == 0:
        raise ValueError(
            "the continuation starts at the first token: nothing predicts it. Empty prompt and no "
            "BOS token?"
        )
    return Encoded(tuple(ids), tuple(offs), n_prompt)


def last_token_in_span(enc: Encoded, start: int, end: int) -> int:
    """Index of the last token overlapping the character span [start, end)."""
    best = -1
    for i, (s, e) in enumerate(enc.offsets):
        if e > s and s < end and e > start:
            best = i
    if best < 0:
        raise ValueError(f"no token overlaps characters [{start}, {end})")
    return best
