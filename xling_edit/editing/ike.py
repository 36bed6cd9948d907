"""In-context editing (IKE; Zheng et al., 2023): no weight changes; the new fact is stated before
every evaluation prompt, after ``k`` demonstrations that teach the model how to use a stated fact.

Demonstrations are drawn deterministically (seeded by the run seed and the case id) from the
other cases of the dataset, in the **edit language**, cycling the three published kinds:

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
from xling_edit.editing.reference import Published
from xling_edit.evaluation.text import join

KINDS = ("copy", "update", "retain")


@dataclass
class IkeConfig:
    """In-context editing (``method=ike``); per-model values from ``model.hparams.ike``.

    Args:
        name: registry name.
        variant: configuration label recorded in results.
        k: demonstrations before the stated fact (kinds cycle copy, update, retain).
        mode: only ``single`` (a context edit has no weights to combine).
        num_edits: unused (1).
        subject_match_threshold: unused (IKE needs no subject position); kept so that batch
            checks read the same field for every method.
    """

    name: str = "ike"
    variant: str = "published"
    k: int = 6
    mode: str = "single"
    num_edits: int = 1
    subject_match_threshold: float = 0.8


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


def build_context(request: EditRequest, pool: Sequence, k: int, seed: int) -> tuple[str, list]:
    """(context text, [(case_id, kind), ...]) for ``request`` from the other cases in ``pool``."""
    lang = request.lang
    code, template, sep = lang["code"], lang["ike_fact"], lang["word_sep"]
    others = [c for c in pool if c.case_id != request.case_id and code in c.langs]
    rng = random.Random(f"{seed}:{request.case_id}")
    order = rng.sample(others, len(others))
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
    return "".join(blocks) + fact_line(template, rec.prompt, rec.target_new) + "\n", used


@register_editor("ike", schema=IkeConfig)
class IkeEditor(Editor):
    """IKE (module docstring). ``use_dataset`` receives the dataset's cases (the demonstration
    pool) from the pipeline; ``edit`` returns a context edit (no weight delta)."""

    kind = "context"
    uses_dataset = True
    published = Published(
        source="Zheng et al. 2023 (IKE): k = 32 demonstrations retrieved by nearest-neighbour "
               "similarity from a training split (EasyEdit's IKE: k = 16)",
        fields={"k": 32},
        practice={"demonstrations": "nearest neighbours from a training split disjoint from "
                                    "the evaluated cases"})

    def practice(self) -> dict[str, str]:
        return {"demonstrations": "random, from the evaluated dataset's other cases"}

    def __init__(self, hparams, spec=None, seed: int = 0, covariance=None, covariance_label=None):
        super().__init__(hparams, spec, seed, covariance, covariance_label)
        self.hp = IkeConfig(**{f: hparams[f] for f in IkeConfig.__dataclass_fields__ if f in hparams})
        self.pool: list = []

    def use_dataset(self, cases: Sequence) -> None:
        self.pool = list(cases)

    def edit(self, model, tok, request: EditRequest) -> EditOutcome:
        context, used = build_context(request, self.pool, int(self.hp.k), self.seed)
        return EditOutcome(deltas=[], context=context, info={
            "method": "ike", "variant": self.hp.variant, "k": int(self.hp.k),
            "demonstrations": [{"case_id": c, "kind": kd} for c, kd in used],
            "context_chars": len(context)})
