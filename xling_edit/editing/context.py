"""Context prefixes for ROME's key averaging, sampled from the model itself, seeded.

ROME averages the key over the bare prompt and prompts prefixed by short generated text. The
reference samples without a seed (irreproducible); here the sampling uses a fixed generator
seed, and the seed words and the sentence joiner come from the edit language's config so the
prefixes are in the language of the edit.
"""

from __future__ import annotations

import torch


@torch.no_grad()
def generate_prefixes(model, tok, seeds: list[str], lengths: list[int], n: int,
                      seed: int = 0) -> list[str]:
    """``n`` prefixes, lengths cycled over ``lengths``, first words cycled over ``seeds``."""
    if n <= 0:
        return []
    device = next(model.parameters()).device
    out = []
    with torch.random.fork_rng(devices=[] if device.type == "cpu" else [device]):
        torch.manual_seed(seed)
        for i in range(n):
            start = seeds[i % len(seeds)]
            length = lengths[i % len(lengths)]
            enc = tok(start, return_tensors="pt").to(device)
            gen = model.generate(**enc, max_new_tokens=length, do_sample=True, top_k=5,
                                 pad_token_id=tok.pad_token_id)
            text = tok.decode(gen[0], skip_special_tokens=True)
            text = " ".join(text.replace("{", " ").replace("}", " ").split())
            out.append(text)
    return out


class PrefixedEditor:
    """Shared by the editors: hyperparameters ``n_context`` / ``context_lengths`` in ``self.hp``,
    ``self.seed``, and per-language context prefixes generated once and reused."""

    hp: object
    seed: int

    def prefixes(self, model, tok, lang) -> list[str]:
        """["", "<generated>. ", ...]: the bare prompt first, then the context prefixes."""
        cache = self.__dict__.setdefault("_prefixes", {})
        code = lang["code"]
        if code not in cache:
            gen = generate_prefixes(model, tok, list(lang["context_seeds"]),
                                    list(self.hp.context_lengths), self.hp.n_context, self.seed)
            cache[code] = [""] + [g + lang["context_join"] for g in gen]
        return cache[code]
