"""In-context editing (IKE; Zheng et al., 2023): no weight changes; the new fact is stated before
every evaluation prompt, after ``k`` demonstrations that teach the model how to use a stated fact.

Demonstrations come from a pool **disjoint from the evaluated cases** (``pool=heldout``: the
dataset's cases outside the run's selection, handed over by the pipeline; ``evaluated``: the
other evaluated cases, the project's earlier practice), in the **edit language**. As published,
they are the ``k`` (16, EasyEdit's value) **nearest neighbours** of the edit prompt
(``retrieval=knn``; the embedding is the edited model's own mean input-token embedding of the
prompt, available offline — the IKE paper and EasyEdit use a sentence-transformers encoder, so
this is listed as a deviation), the most similar last, just before the new fact; or a seeded
random draw (``retrieval=random``). They cycle the three published kinds:

- copy: a fact, then its own prompt answered with the new target;
- update: a fact, then a paraphrase of it answered with the new target;
- retain: a fact, then an unrelated prompt answered with its unchanged answer.

The stated fact uses the edit language's ``ike_fact`` template (``conf/edit_lang/<code>.yaml``);
the question then comes in each evaluation language, so ELFI/ELFO mean what they mean for weight
edits: is a fact stated in language A used when the model is asked in language B?
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Sequence

from xling_edit.editing.base import EditOutcome, EditRequest, Editor, register_editor
from xling_edit.editing.localize import DEFAULT_FALLBACK
from xling_edit.editing.reference import Published
from xling_edit.evaluation.text import join

KINDS = ("copy", "update", "retain")


@dataclass
class IkeConfig:
    """In-context editing (``method=ike``); per-model values from ``model.hparams.ike``.

    Args:
        name: registry name.
        variant: configuration label recorded in results.
        k: demonstrations before the stated fact (kinds cycle copy, update, retain); 16 as in
            EasyEdit's IKE (the IKE paper: 32).
        pool: where demonstrations come from: ``heldout`` (the dataset's cases the run does not
            evaluate; an error when there are none) or ``evaluated`` (the other evaluated cases:
            scores then depend on ``data.max_cases`` and the pool is the test set).
        retrieval: ``knn`` (nearest neighbours of the edit prompt by the cosine of the model's
            mean input-token embeddings) or ``random`` (seeded by the run seed and case id).
        mode: only ``single`` (a context edit has no weights to combine).
        num_edits: unused (1).
        subject_match_threshold: unused (IKE needs no subject position); kept so that batch
            checks read the same field for every method.
        subject_fallback: unused, like ``subject_match_threshold``.
    """

    name: str = "ike"
    variant: str = "published"
    k: int = 16
    pool: str = "heldout"
    retrieval: str = "knn"
    mode: str = "single"
    num_edits: int = 1
    subject_match_threshold: float = 0.8
    subject_fallback: str = DEFAULT_FALLBACK


def fact_line(template: str, prompt: str, target: str) -> str:
    """The stated fact: the language's ``ike_fact`` with the prompt and target filled in."""
    return template.format(prompt=prompt.strip(), target=target.strip())


def demonstration(kind: str, rec, template: str, answer_prefix: str, sep: str) -> str | None:
    """One demonstration block of ``kind`` from a record (None if the record lacks the part)."""
    if kind == "copy":
        q, a = rec.prompt, rec.target_new
    elif kind == "update":
        if not rec.rephrases:
            return None
        q, a = rec.rephrases[0], rec.target_new
    else:
        if not rec.locality:
            return None
        q, a = rec.locality[0].prompt, rec.locality[0].answer
    text, _ = join(q + answer_prefix, a, sep)
    return fact_line(template, rec.prompt, rec.target_new) + "\n" + text + "\n\n"


def build_context(request: EditRequest, pool: Sequence, k: int, seed: int,
                  order: Sequence | None = None) -> tuple[str, list]:
    """(context text, [(case_id, kind), ...]) for ``request`` from the other cases in ``pool``:
    taken in ``order`` (most preferred first; default a seeded random order), the first taken
    placed last, nearest the stated fact."""
    lang = request.lang
    code, template, sep = lang["code"], lang["ike_fact"], lang["word_sep"]
    ranked = order is not None
    order = [c for c in (order if ranked else pool) if c.case_id != request.case_id and code in c.langs]
    if not ranked:
        order = random.Random(f"{seed}:{request.case_id}").sample(order, len(order))
    blocks, used = [], []
    for case in order:
        if len(blocks) == k:
            break
        kind = KINDS[len(blocks) % len(KINDS)]
        block = demonstration(kind, case.langs[code], template, request.answer_prefix, sep)
        if block is not None:
            blocks.append(block)
            used.append((case.case_id, kind))
    rec = request.record
    return "".join(reversed(blocks)) + fact_line(template, rec.prompt, rec.target_new) + "\n", used


def prompt_embedding(model, tok, texts: Sequence[str]):
    """[n, d] the mean input-token embedding of each text (float32, unit length): the model's
    own lexical embedding, offline and without a forward pass."""
    import torch

    emb = model.get_input_embeddings()
    out = []
    with torch.no_grad():
        for t in texts:
            ids = tok(t, add_special_tokens=False)["input_ids"] or [tok.eos_token_id or 0]
            v = emb(torch.tensor(ids, device=emb.weight.device)).float().mean(0).cpu()
            out.append(v / v.norm().clamp_min(1e-12))
    return torch.stack(out)


def nearest(query, keys, items: Sequence) -> list:
    """``items`` ordered by cosine of their ``keys`` rows to ``query`` (unit vectors), nearest
    first (ties: the earlier item)."""
    sims = (keys @ query).tolist()
    return [items[i] for i in sorted(range(len(items)), key=lambda i: (-sims[i], i))]


@register_editor("ike", schema=IkeConfig)
class IkeEditor(Editor):
    """IKE (module docstring). ``use_dataset`` receives the dataset's cases (the demonstration
    pool) from the pipeline; ``edit`` returns a context edit (no weight delta)."""

    kind = "context"
    uses_dataset = True
    published = Published(
        source="EasyEdit's IKE (k = 16 demonstrations, nearest neighbours of the edit prompt by "
               "a sentence-transformers embedding, from a training split disjoint from the "
               "evaluated cases); the IKE paper (Zheng et al. 2023) uses k = 32",
        fields={"k": 16},
        practice={"demonstrations": "nearest neighbours from a split disjoint from the "
                                    "evaluated cases",
                  "embedding": "sentence-transformers"})

    def practice(self) -> dict[str, str]:
        pool = "a split disjoint from the evaluated cases" if self.hp.pool == "heldout" else \
            "the evaluated dataset's other cases"
        how = "nearest neighbours" if self.hp.retrieval == "knn" else "random"
        return {"demonstrations": f"{how} from {pool}",
                "embedding": "sentence-transformers" if self.hp.retrieval != "knn" else
                "the model's mean input-token embedding"}

    def __init__(self, hparams, spec=None, seed: int = 0, covariance=None, covariance_label=None):
        super().__init__(hparams, spec, seed, covariance, covariance_label)
        self.hp = IkeConfig(**{f: hparams[f] for f in IkeConfig.__dataclass_fields__ if f in hparams})
        if self.hp.pool not in ("heldout", "evaluated"):
            raise ValueError(f"method.pool={self.hp.pool!r}: one of heldout, evaluated")
        if self.hp.retrieval not in ("knn", "random"):
            raise ValueError(f"method.retrieval={self.hp.retrieval!r}: one of knn, random")
        self.pool: list = []
        self._keys = None

    def use_dataset(self, cases: Sequence, heldout: Sequence = ()) -> None:
        """``cases``: the evaluated cases; ``heldout``: the dataset's other cases (never
        evaluated in this run). The pool is one of them (``pool``)."""
        evaluated = {c.case_id for c in cases}
        self.pool = [c for c in heldout if c.case_id not in evaluated] if self.hp.pool == "heldout" \
            else list(cases)
        if not self.pool and self.hp.pool == "heldout" and cases:
            raise ValueError("method.pool=heldout: the dataset has no case outside the evaluated "
                             "ones to draw demonstrations from (use fewer data.max_cases, or "
                             "method.pool=evaluated)")
        self._keys = None

    def _order(self, model, tok, request: EditRequest) -> list | None:
        if self.hp.retrieval != "knn":
            return None
        code = request.lang["code"]
        if self._keys is None or self._keys[0] != code:  # the pool's embeddings, once per language
            pool = [c for c in self.pool if code in c.langs]
            self._keys = (code, pool, prompt_embedding(model, tok, [c.langs[code].prompt for c in pool]))
        _, pool, keys = self._keys
        return nearest(prompt_embedding(model, tok, [request.record.prompt])[0], keys, pool)

    def edit(self, model, tok, request: EditRequest) -> EditOutcome:
        context, used = build_context(request, self.pool, int(self.hp.k), self.seed,
                                      order=self._order(model, tok, request))
        return EditOutcome(deltas=[], context=context, info={
            "method": "ike", "variant": self.hp.variant, "k": int(self.hp.k),
            "pool": f"{self.hp.pool} ({len(self.pool)} cases)", "retrieval": self.hp.retrieval,
            "demonstrations": [{"case_id": c, "kind": kd} for c, kd in used],
            "context_chars": len(context)})
