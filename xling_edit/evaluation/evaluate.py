"""Per-case evaluation: every metric, both protocols, all evaluation languages, few forward passes.

All (prompt, continuation) rows of a case across languages are scored together in padded
batches. The pre-edit scores of a case are computed once and reused: locality compares post-edit
argmax tokens with them.

Metrics per (case, eval language, phase), keys ``<metric>.<protocol>`` (:data:`METRIC_KEYS`):

- reliability / generalization: ``token_acc`` (EasyEdit, partial credit), ``exact`` (all target
  tokens argmax), ``prob`` (P(target_new) > P(target_true) by mean-token NLL; needs target_true);
- locality, on an unrelated prompt and its true answer:

  - ``agree_token`` / ``agree_exact``: *stability*, not correctness: share of the answer's
    positions where the post-edit argmax equals the pre-edit argmax / all of them (EasyEdit's
    locality; called ``token_acc`` / ``exact`` before, see :data:`RENAMED_KEYS`). Post-edit
    only: the pre-edit model agrees with itself by definition.
  - ``answer_token_acc`` / ``answer_exact``: *correctness*: token accuracy / exact match of the
    true answer, pre- and post-edit;
  - ``prob``: the true answer stays more likely than target_new (CounterFact's neighbourhood
    score), pre- and post-edit; ``prob_drop`` (post-edit only): the case's pre-edit ``prob``
    minus its post-edit ``prob``, i.e. how much of the neighbourhood the edit flipped
    (negative when the edit made the true answers more likely);
- portability: ``token_acc`` / ``exact`` on the one-hop answer.

Every key that has a pre-edit meaning is computed in both phases; :data:`POST_ONLY_KEYS` are
None in the pre-edit phase.
"""

from __future__ import annotations

from dataclasses import dataclass
from statistics import mean
from typing import Callable, Mapping, Sequence, Union

from xling_edit.data.schema import EditCase, LangRecord
from xling_edit.evaluation import scorers
from xling_edit.evaluation.forward import EvalOptions, Scores, SeqScore, score_continuations
from xling_edit.evaluation.text import Encoded, encode

METRICS = ("reliability", "generalization", "locality", "portability")
#: protocols of reliability, generalization and portability
PROTOCOLS = ("token_acc", "exact", "prob")
#: locality's protocols (see the module docstring)
LOCALITY_PROTOCOLS = ("agree_token", "agree_exact", "answer_token_acc", "answer_exact", "prob",
                      "prob_drop")
METRIC_PROTOCOLS = {m: LOCALITY_PROTOCOLS if m == "locality" else PROTOCOLS for m in METRICS}
#: every metric key of a phase, in table order (summary.csv columns)
METRIC_KEYS = tuple(f"{m}.{p}" for m in METRICS for p in METRIC_PROTOCOLS[m])
#: keys without a pre-edit value
POST_ONLY_KEYS = ("locality.agree_token", "locality.agree_exact", "locality.prob_drop")
#: old key -> new key (results written before the agreement metrics were named for what they are)
RENAMED_KEYS = {"locality.token_acc": "locality.agree_token", "locality.exact": "locality.agree_exact"}
#: a context edit's text before each prompt: one string, or ``(lang, prompt) -> str``
Context = Union[str, Callable[[str, str], str]]
#: ``data.answer_format`` values (see xling_edit.config.DatasetConfig)
ANSWER_FORMATS = ("none", "cue", "prefix")


@dataclass(frozen=True)
class Row:
    lang: str
    kind: str  # rel | gen | loc | port
    index: int  # which rephrase / locality / portability item
    role: str  # new | true | answer
    enc: Encoded


def answer_prefixes(data: Mapping, languages: Mapping[str, Mapping],
                    langs: Sequence[str]) -> tuple[str, dict[str, str]]:
    """``(format, {lang: text appended to every prompt before its answer})`` for the dataset
    config ``data`` (``answer_format``, ``answer_prefix``) and the language configs
    ``languages`` (``answer_cue``): ``none`` appends nothing, ``cue`` each language's own
    ``answer_cue``, ``prefix`` the same ``answer_prefix`` in every language. A null format is
    ``prefix`` when ``answer_prefix`` is set, else ``none``."""
    fmt = data.get("answer_format")
    prefix = data.get("answer_prefix") or ""
    if fmt is None:
        fmt = "prefix" if prefix else "none"
    if fmt not in ANSWER_FORMATS:
        raise ValueError(f"data.answer_format={fmt!r} unknown; one of {list(ANSWER_FORMATS)}")
    if prefix and fmt != "prefix":
        raise ValueError(f"data.answer_prefix={prefix!r} is used only with data.answer_format=prefix "
                         f"(this dataset sets answer_format={fmt}); set both, or drop answer_prefix")
    if fmt == "none":
        return fmt, {l: "" for l in langs}
    if fmt == "prefix":
        return fmt, {l: prefix for l in langs}
    missing = [l for l in langs if not (languages[l].get("answer_cue") or "")]
    if missing:
        raise ValueError(f"data.answer_format=cue, but conf/edit_lang/{{{','.join(missing)}}}.yaml "
                         f"set no answer_cue")
    return fmt, {l: str(languages[l].get("answer_cue")) for l in langs}


def build_rows(case: EditCase, langs: Sequence[str], tok, word_seps: Mapping[str, str],
               answer_prefix: str | Mapping[str, str] = "", context: "Context" = "",
               ) -> tuple[list[Row], dict[str, str]]:
    """Rows to score for ``case`` in ``langs``; also {lang: error} for languages that failed.
    ``answer_prefix`` (one string, or one per language: :func:`answer_prefixes`) is appended
    to every prompt before its continuation; ``context`` (a context edit, e.g. IKE's stated
    fact and demonstrations) is put before every prompt. The rows' order does not depend on
    either, so post-edit rows pair with the pre-edit ones by position."""
    rows: list[Row] = []
    errors: dict[str, str] = {}
    for lang in langs:
        rec = case.langs.get(lang)
        if rec is None:
            continue
        try:
            ap = answer_prefix if isinstance(answer_prefix, str) else answer_prefix.get(lang, "")
            rows.extend(_rows_for(rec, lang, tok, word_seps.get(lang, " "), ap, context))
        except ValueError as exc:
            errors[lang] = f"tokenisation: {exc}"
    return rows, errors


def context_for(context: "Context", lang: str, prompt: str) -> str:
    """The text a context edit puts before ``prompt`` (in ``lang``): the same string before
    every prompt, or what a per-prompt context (a callable ``(lang, prompt) -> str``, e.g. the
    router of ``method=route``) returns for it."""
    if callable(context):
        return context(lang, prompt) or ""
    return context or ""


def _rows_for(rec: LangRecord, lang: str, tok, sep: str, ap: str, context: "Context" = "") -> list[Row]:
    out = []

    def add(kind, i, role, prompt, target):
        out.append(Row(lang, kind, i, role,
                       encode(tok, context_for(context, lang, prompt) + prompt + ap, target, sep)))

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
    """{lang: {"reliability.token_acc": ..., ...}} with every key of :data:`METRIC_KEYS` (None
    where undefined) plus ``reliability.nll_new`` / ``nll_true``. ``pre_scores`` (same rows,
    unedited model) is None for the pre-edit phase, where :data:`POST_ONLY_KEYS` are None."""
    by: dict[tuple, tuple[SeqScore, SeqScore | None]] = {}
    for j, r in enumerate(rows):
        by[(r.lang, r.kind, r.index, r.role)] = (scores[j], pre_scores[j] if pre_scores else None)
    out: dict[str, dict[str, float | None]] = {}
    for lang in dict.fromkeys(r.lang for r in rows):
        m: dict[str, list] = {k: [] for k in METRIC_KEYS}
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
            elif kind == "loc" and role == "answer":
                m["locality.answer_token_acc"].append(scorers.token_accuracy(s.argmax, s.target_ids))
                m["locality.answer_exact"].append(scorers.exact_match(s.argmax, s.target_ids))
                new = by.get((lg, kind, i, "new"))
                if new is not None:
                    now = scorers.prob_success(scorers.mean_nll(s.logprobs), scorers.mean_nll(new[0].logprobs))
                    m["locality.prob"].append(now)
                    if pre is not None and new[1] is not None:
                        before = scorers.prob_success(scorers.mean_nll(pre.logprobs),
                                                      scorers.mean_nll(new[1].logprobs))
                        m["locality.prob_drop"].append(before - now)
                if pre is not None:
                    m["locality.agree_token"].append(scorers.agreement(s.argmax, pre.argmax))
                    m["locality.agree_exact"].append(scorers.exact_match(s.argmax, pre.argmax))
            elif kind == "port":
                m["portability.token_acc"].append(scorers.token_accuracy(s.argmax, s.target_ids))
                m["portability.exact"].append(scorers.exact_match(s.argmax, s.target_ids))
        out[lang] = {k: _mean(v) for k, v in m.items()}
    return out
