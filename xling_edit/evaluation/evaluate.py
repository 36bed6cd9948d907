"""Per-case evaluation: every metric, both protocols, all evaluation languages, few forward passes.

All (prompt, continuation) rows of a case across languages are scored together in padded
batches. The pre-edit scores of a case are computed once and reused: locality compares post-edit
argmax tokens with them.

Metrics per (case, eval language, phase), keys ``<metric>.<protocol>``:

- reliability / generalization: ``token_acc`` (EasyEdit, partial credit), ``exact`` (all target
  tokens argmax), ``prob`` (P(target_new) > P(target_true) by mean-token NLL; needs target_true);
- locality: ``token_acc`` / ``exact`` = agreement of post-edit with pre-edit argmax on the
  unrelated prompt + its answer; ``prob`` = the answer stays more likely than target_new;
- portability: ``token_acc`` / ``exact`` on the one-hop answer.
"""

from __future__ import annotations

from dataclasses import dataclass
from statistics import mean
from typing import Mapping, Sequence

from xling_edit.data.schema import EditCase, LangRecord
from xling_edit.evaluation import scorers
from xling_edit.evaluation.forward import EvalOptions, Scores, SeqScore, score_continuations
from xling_edit.evaluation.text import Encoded, encode

METRICS = ("reliability", "generalization", "locality", "portability")
PROTOCOLS = ("token_acc", "exact", "prob")


@dataclass(frozen=True)
class Row:
    lang: str
    kind: str  # rel | gen | loc | port
    index: int  # which rephrase / locality / portability item
    role: str  # new | true | answer
    enc: Encoded


def build_rows(case: EditCase, langs: Sequence[str], tok, word_seps: Mapping[str, str],
               answer_prefix: str = "") -> tuple[list[Row], dict[str, str]]:
    """Rows to score for ``case`` in ``langs``; also {lang: error} for languages that failed."""
    rows: list[Row] = []
    errors: dict[str, str] = {}
    for lang in langs:
        rec = case.langs.get(lang)
        if rec is None:
            continue
        try:
            rows.extend(_rows_for(rec, lang, tok, word_seps.get(lang, " "), answer_prefix))
        except ValueError as exc:
            errors[lang] = f"tokenisation: {exc}"
    return rows, errors


def _rows_for(rec: LangRecord, lang: str, tok, sep: str, ap: str) -> list[Row]:
    out = []

    def add(kind, i, role, prompt, target):
        out.append(Row(lang, kind, i, role, encode(tok, prompt + ap, target, sep)))

    add("rel", 0, "new", rec.prompt, rec.target_new)
    if rec.target_true:
        add("rel", 0, "true", rec.prompt, rec.target_true)
    for i, p in enumerate(rec.rephrases):
        add("gen", i, "new", p, rec.target_new)
        if rec.target_true:
            add("gen", i, "true", p, rec.target_true)
    for i, qa in enumerate(rec.locality):
        add("loc", i, "answer", qa.prompt, qa.answer)
        add("loc", i, "new", qa.prompt, rec.target_new)
    for i, qa in enumerate(rec.portability):
        add("port", i, "answer", qa.prompt, qa.answer)
    return out


def score_rows(model, tok, spec, rows: Sequence[Row], batch_size: int | EvalOptions | Mapping = 32,
               *, keep_from: int | None = None, reuse: Scores | None = None,
               deltas: Sequence | None = None) -> Scores:
    """Score ``rows`` (see :func:`score_continuations`). ``batch_size`` may be
    :class:`EvalOptions` or the ``eval`` config node. Pre-edit: ``keep_from`` = the lowest block
    the edit will touch; post-edit: ``reuse`` = the pre-edit result and ``deltas`` = the
    applied edit, so the post-edit pass runs only from that block up."""
    return score_continuations(model, tok, spec, [r.enc for r in rows], batch_size,
                               keep_from=keep_from, reuse=reuse, deltas=deltas)


def _mean(xs):
    xs = [x for x in xs if x is not None]
    return mean(xs) if xs else None


def lang_metrics(rows: Sequence[Row], scores: Sequence[SeqScore],
                 pre_scores: Sequence[SeqScore] | None) -> dict[str, dict[str, float | None]]:
    """{lang: {"reliability.token_acc": ..., ...}}. ``pre_scores`` (same rows, unedited model)
    is None for the pre-edit phase, where locality is not defined."""
    by: dict[tuple, tuple[SeqScore, SeqScore | None]] = {}
    for j, r in enumerate(rows):
        by[(r.lang, r.kind, r.index, r.role)] = (scores[j], pre_scores[j] if pre_scores else None)
    out: dict[str, dict[str, float | None]] = {}
    for lang in dict.fromkeys(r.lang for r in rows):
        m: dict[str, list] = {f"{a}.{p}": [] for a in METRICS for p in PROTOCOLS}
        m["reliability.nll_new"], m["reliability.nll_true"] = [], []
        for (lg, kind, i, role), (s, pre) in by.items():
            if lg != lang:
                continue
            if kind in ("rel", "gen") and role == "new":
                name = "reliability" if kind == "rel" else "generalization"
                m[f"{name}.token_acc"].append(scorers.token_accuracy(s.argmax, s.target_ids))
                m[f"{name}.exact"].append(scorers.exact_match(s.argmax, s.target_ids))
                true = by.get((lg, kind, i, "true"))
                if true is not None:
                    nn, nt = scorers.mean_nll(s.logprobs), scorers.mean_nll(true[0].logprobs)
                    m[f"{name}.prob"].append(scorers.prob_success(nn, nt))
                    if kind == "rel":
                        m["reliability.nll_new"].append(nn)
                        m["reliability.nll_true"].append(nt)
            elif kind == "loc" and role == "answer" and pre is not None:
                m["locality.token_acc"].append(scorers.agreement(s.argmax, pre.argmax))
                m["locality.exact"].append(scorers.exact_match(s.argmax, pre.argmax))
                new = by.get((lg, kind, i, "new"))
                if new is not None:
                    m["locality.prob"].append(scorers.prob_success(
                        scorers.mean_nll(s.logprobs), scorers.mean_nll(new[0].logprobs)))
            elif kind == "port":
                m["portability.token_acc"].append(scorers.token_accuracy(s.argmax, s.target_ids))
                m["portability.exact"].append(scorers.exact_match(s.argmax, s.target_ids))
        out[lang] = {k: _mean(v) for k, v in m.items()}
    return out
