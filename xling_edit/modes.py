"""What the editing modes mean, for any method (``method.mode``):

- ``single``: one case per edit; its deltas are applied (a context edit: its context is put
  before every evaluation prompt), every evaluation language scored, and the weights restored
  before the next case;
- ``all_languages``: one edit holding the case's request in every evaluation language
  (``edit_batch``; methods with ``batched = True``);
- ``batch``: ``num_edits`` cases in one update (``edit_batch``), all evaluated, then restored;
- ``sequential``: ``num_edits`` cases edited one after another without restoring, each edit
  computed on the already-edited model; every ``eval_every`` edits (and after the last) the
  edits so far and a fixed set of held-out unedited cases are scored (the stability curve,
  ``curve.jsonl``), and the final lines compare every case with its cached pre-edit scores.

:func:`run_group` takes one group of cases through pre-evaluation, the mode's edits, post-
evaluation and restoration, and returns its results lines (:func:`xling_edit.results.case_lines`).
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from dataclasses import dataclass, field
from statistics import mean
from typing import Any

import torch

from xling_edit.editing.base import EditRequest, SkipCase, applied
from xling_edit.editing.reference import line_deviations
from xling_edit.editing.value import locate_subject
from xling_edit.evaluation import answers as gen_eval
from xling_edit.evaluation import scorers
from xling_edit.evaluation.evaluate import build_rows, lang_metrics, score_rows
from xling_edit.models import ModelSpec
from xling_edit.results import case_lines

log = logging.getLogger(__name__)


@dataclass
class Ctx:
    model: Any
    tok: Any
    spec: ModelSpec
    editor: Any
    registry: dict
    edit_code: str
    eval_langs: list
    word_seps: dict
    answer_prefix: dict  # {lang: appended to every prompt before its answer} (answer_prefixes)
    batch_size: Any  # EvalOptions (eval.*)
    mode: str
    # sequential mode's stability curve: every `eval_every` edits, score the edits so far and
    # the held-out cases, and hand the lines to `curve` (None: no curve)
    eval_every: int = 0
    heldout: list = field(default_factory=list)  # EditCases never edited
    curve: Any = None
    _heldout_evals: list | None = None
    pre_cache: Any = None  # evaluation.pre_cache.PreScoreCache, or None
    # how the run's setup differs from the method's published one (editing.reference), added
    # to every line's edit.deviations with the per-case subject localisation
    deviations: dict = field(default_factory=dict)
    published: Any = None
    export_dir: Any = None  # sequential mode: save the edited model of each group here (Path)


@dataclass
class CaseEval:
    case: Any
    rows: list
    tok_errors: dict
    pre_scores: list
    pre: dict
    timings: dict = field(default_factory=dict)
    post: dict = field(default_factory=dict)
    status: str = "ok"
    reason: str | None = None
    edit_info: dict = field(default_factory=dict)
    # generated answers (eval.generate): the prompts and each phase's judged answers
    prompts: list = field(default_factory=list)
    pre_judged: list | None = None
    post_judged: list | None = None


def requests_for(ev: CaseEval, ctx: Ctx) -> list[EditRequest]:
    """The case's edit requests: one in the edit language, or one per language (all_languages).
    Sets the case to skipped when it has none."""
    langs = ctx.eval_langs if ctx.mode == "all_languages" else [ctx.edit_code]
    reqs = [EditRequest(ev.case.case_id, ctx.registry[l], ev.case.langs[l], ctx.answer_prefix[l])
            for l in langs if l in ev.case.langs]
    if not reqs:
        ev.status, ev.reason = "skipped", f"case has no {'/'.join(langs)} version"
    return reqs


def fail(evs, exc) -> None:
    status = "skipped" if isinstance(exc, SkipCase) else "failed"
    if status == "failed":
        log.warning("case(s) %s failed: %s: %s", [e.case.case_id for e in evs], type(exc).__name__, exc)
        if isinstance(exc, torch.OutOfMemoryError) and torch.cuda.is_available():
            torch.cuda.empty_cache()
    for ev in evs:
        ev.status, ev.reason = status, (str(exc) if status == "skipped" else f"{type(exc).__name__}: {exc}")


# What a case may raise without stopping the run (torch's OutOfMemoryError is a RuntimeError).
EDIT_ERRORS = (SkipCase, FloatingPointError, ValueError, RuntimeError, MemoryError)


def run_group(cases, ctx: Ctx, common: dict) -> list[dict]:
    """Pre-evaluate, edit (per mode), post-evaluate and restore one group of cases."""
    ctx.editor.begin_group()  # stateful methods (AlphaEdit's earlier-edit keys) start afresh
    evs = []
    for case in cases:
        rows, tok_errors = build_rows(case, ctx.eval_langs, ctx.tok, ctx.word_seps, ctx.answer_prefix)
        t0 = time.perf_counter()
        try:
            pre_scores = _pre_scores(rows, ctx)
        except EDIT_ERRORS as exc:  # e.g. out of memory on a long prompt: record, go on
            ev = CaseEval(case, rows, tok_errors, [], {})
            fail([ev], exc)
            evs.append(ev)
            continue
        ev = CaseEval(case, rows, tok_errors, pre_scores, lang_metrics(rows, pre_scores, None),
                      {"pre_eval_s": round(time.perf_counter() - t0, 3)})
        if _generating(ctx):
            try:
                pre_answers(ev, ctx)
            except EDIT_ERRORS as exc:
                fail([ev], exc)
        evs.append(ev)
    reqs = {id(ev): requests_for(ev, ctx) for ev in evs}
    live = [ev for ev in evs if ev.status == "ok"]
    ed = ctx.editor

    def post_eval(targets, deltas, context=None):
        t = time.perf_counter()
        with applied(ctx.model, deltas):
            for ev in targets:
                if context is None:  # weight edit: same rows, lower layers reused
                    scores = score_rows(ctx.model, ctx.tok, ctx.spec, ev.rows, ctx.batch_size,
                                        reuse=ev.pre_scores, deltas=deltas)
                    ev.post = lang_metrics(ev.rows, scores, ev.pre_scores)
                    post_answers(ev, ctx)
                    continue
                # context edit: every prompt, in every language, now follows the context
                rows, _ = build_rows(ev.case, ctx.eval_langs, ctx.tok, ctx.word_seps,
                                     ctx.answer_prefix, context=context)
                if [(r.lang, r.kind, r.index, r.role) for r in rows] != \
                        [(r.lang, r.kind, r.index, r.role) for r in ev.rows]:
                    raise ValueError("the context edit changed which rows can be scored")
                scores = score_rows(ctx.model, ctx.tok, ctx.spec, rows, ctx.batch_size)
                ev.post = lang_metrics(rows, scores, ev.pre_scores)
                post_answers(ev, ctx, context)
            t_restore = time.perf_counter()
        t_end = time.perf_counter()
        for ev in targets:
            ev.timings["post_eval_s"] = round((t_restore - t) / len(targets), 3)
            ev.timings["restore_s"] = round((t_end - t_restore) / len(targets), 4)

    if ctx.mode in ("single", "all_languages"):
        for ev in live:
            try:
                t1 = time.perf_counter()
                r = reqs[id(ev)]
                out = ed.edit(ctx.model, ctx.tok, r[0]) if len(r) == 1 else ed.edit_batch(ctx.model, ctx.tok, r)
                ev.timings["edit_s"] = round(time.perf_counter() - t1, 3)
                ev.edit_info = {**out.info, "edit_kind": out.kind}
                post_eval([ev], out.deltas, out.context)
            except EDIT_ERRORS as exc:
                fail([ev], exc)
    elif ctx.mode == "batch":
        ok = []
        for ev in live:  # a case whose subject cannot be found is skipped, not the whole batch
            try:
                locate_subject(reqs[id(ev)][0], ed.hp.subject_match_threshold, ed.hp.subject_fallback)
            except SkipCase as exc:
                fail([ev], exc)
            else:
                ok.append(ev)
        if ok:
            try:
                t1 = time.perf_counter()
                out = ed.edit_batch(ctx.model, ctx.tok, [reqs[id(ev)][0] for ev in ok])
                for i, ev in enumerate(ok):
                    ev.timings["edit_s"] = round((time.perf_counter() - t1) / len(ok), 3)
                    ev.edit_info = {**out.info, "subject": out.info["subjects"][i],
                                    "edit_kind": out.kind}
                post_eval(ok, out.deltas)
            except EDIT_ERRORS as exc:
                fail(ok, exc)
    elif ctx.mode == "sequential":
        deltas: list = []
        done = []
        for ev in live:
            try:
                t1 = time.perf_counter()
                with applied(ctx.model, deltas):  # each edit sees the ones before it
                    out = ed.edit(ctx.model, ctx.tok, reqs[id(ev)][0])
                deltas.extend(out.deltas)
                ev.timings["edit_s"] = round(time.perf_counter() - t1, 3)
                ev.edit_info = {**out.info, "position": len(done), "edit_kind": out.kind}
                done.append(ev)
                if ctx.curve is not None and ctx.eval_every and len(done) % ctx.eval_every == 0:
                    curve_point(ctx, done, deltas, common)
            except EDIT_ERRORS as exc:
                fail([ev], exc)
        if done:
            if ctx.curve is not None and not (ctx.eval_every and len(done) % ctx.eval_every == 0):
                curve_point(ctx, done, deltas, common)  # the last point of the curve
            post_eval(done, deltas)  # all edits in place; compared with cached pre-edit scores
            if ctx.export_dir is not None:
                export_model(ctx, deltas, int(common.get("group", 0)))
    for ev in evs:
        _add_deviations(ev, ctx)
    return [line for ev in evs for line in case_lines(ev, ctx, common)]


def export_model(ctx: Ctx, deltas: list, group: int) -> None:
    """Save the model with ``deltas`` applied (``save_pretrained``, safetensors) and its tokenizer
    to ``<export_dir>/group<group>``; the weights are restored afterwards, bit for bit."""
    from xling_edit.atomic import build_once
    from xling_edit.models.loading import save_checkpoint

    target = Path(ctx.export_dir) / f"group{group}"
    with applied(ctx.model, deltas):  # written beside, renamed into place
        build_once(target, lambda tmp: save_checkpoint(ctx.model, ctx.tok, tmp), reuse=False)
    log.info("exported the model with %d edit(s) applied to %s", len(deltas), target)


def _add_deviations(ev: CaseEval, ctx: Ctx) -> None:
    """``edit.deviations``: the method config's (the editor's own) plus the run's setup and
    this case's subject localisation (:mod:`xling_edit.editing.reference`)."""
    if not ev.edit_info:
        return
    extra = {**ctx.deviations, **line_deviations(ctx.published, ev.edit_info.get("subject"))}
    if extra or "deviations" in ev.edit_info:
        ev.edit_info["deviations"] = {**(ev.edit_info.get("deviations") or {}), **extra}


# ------------------------------------------------------------------ generated answers
def _generating(ctx: Ctx) -> bool:
    return bool(getattr(ctx.batch_size, "generate", False))


def _scripts(ctx: Ctx) -> dict[str, str]:
    return {l: str(ctx.registry[l].script) for l in ctx.eval_langs}


def _gen_options(ctx: Ctx) -> dict:
    return {"max_new_tokens": int(ctx.batch_size.max_new_tokens)}


def _merge(into: dict, metrics: dict) -> None:
    for lang, vals in metrics.items():
        into.setdefault(lang, {}).update(vals)


def pre_answers(ev: CaseEval, ctx: Ctx) -> None:
    """The unedited model's answers to the case's prompts (from the pre-edit cache when there),
    judged; their metrics join ``ev.pre``."""
    t = time.perf_counter()
    ev.prompts = gen_eval.answer_prompts(ev.case, ctx.eval_langs, ctx.edit_code, ctx.answer_prefix)
    texts = [p.text for p in ev.prompts]
    stops = gen_eval.stops_for(ev.prompts, ctx.registry)
    cache = ctx.pre_cache
    gens = cache.get_answers(texts, stops, _gen_options(ctx)) if cache is not None else None
    if gens is None:
        gens = gen_eval.generate_for(ctx.model, ctx.tok, ev.prompts, ctx.registry, ctx.batch_size)
        if cache is not None:
            cache.put_answers(texts, stops, _gen_options(ctx), gens)
    ev.pre_judged = gen_eval.judge(ev.prompts, gens)
    _merge(ev.pre, gen_eval.gen_metrics(ev.prompts, ev.pre_judged, _scripts(ctx)))
    ev.timings["pre_gen_s"] = round(time.perf_counter() - t, 3)


def post_answers(ev: CaseEval, ctx: Ctx, context=None) -> None:
    """The edited model's answers (a context edit: after its context), judged against the same
    targets; their metrics, ``locality.gen_agree`` included, join ``ev.post``."""
    if not _generating(ctx) or ev.pre_judged is None:
        return
    t = time.perf_counter()
    prompts = ev.prompts if context is None else gen_eval.answer_prompts(
        ev.case, ctx.eval_langs, ctx.edit_code, ctx.answer_prefix, context=context)
    gens = gen_eval.generate_for(ctx.model, ctx.tok, prompts, ctx.registry, ctx.batch_size)
    ev.post_judged = gen_eval.judge(prompts, gens)
    _merge(ev.post, gen_eval.gen_metrics(prompts, ev.post_judged, _scripts(ctx), ev.pre_judged))
    ev.timings["post_gen_s"] = round(time.perf_counter() - t, 3)


# ------------------------------------------------------------------ sequential stability curve
def pre_evaluate(case, ctx: Ctx) -> CaseEval:
    """Rows and pre-edit scores of one case (raises what scoring raises)."""
    rows, tok_errors = build_rows(case, ctx.eval_langs, ctx.tok, ctx.word_seps, ctx.answer_prefix)
    scores = _pre_scores(rows, ctx)
    return CaseEval(case, rows, tok_errors, scores, lang_metrics(rows, scores, None))


def _pre_scores(rows, ctx: Ctx):
    """The unedited model's scores of ``rows``: from the pre-edit cache when every language of
    the case is there (``eval.pre_cache``), else computed (keeping the lower layers' states for
    the post-edit pass) and stored."""
    cache = ctx.pre_cache
    if cache is not None:
        hit = cache.get(rows)
        if hit is not None:
            return hit
    scores = score_rows(ctx.model, ctx.tok, ctx.spec, rows, ctx.batch_size,
                        keep_from=min(ctx.editor.edit_layers or [0]))
    if cache is not None:
        cache.put(rows, scores)
    return scores


def fact_metrics(rows, scores) -> dict[str, dict[str, float]]:
    """{lang: {"fact.true_token_acc", "fact.true_exact"}}: whether the model still produces a
    case's own true answer (teacher forced, on its edit prompt): what a held-out, unedited case
    must keep through a sequence of other edits."""
    out: dict[str, dict[str, list]] = {}
    for r, s in zip(rows, scores):
        if r.kind == "rel" and r.role == "true":
            d = out.setdefault(r.lang, {"fact.true_token_acc": [], "fact.true_exact": []})
            d["fact.true_token_acc"].append(scorers.token_accuracy(s.argmax, s.target_ids))
            d["fact.true_exact"].append(scorers.exact_match(s.argmax, s.target_ids))
    return {l: {k: mean(v) for k, v in d.items()} for l, d in out.items()}


def curve_point(ctx: Ctx, done: list[CaseEval], deltas: list, common: dict) -> None:
    """Score the edits so far (``edited``) and the held-out cases (``heldout``) with ``deltas``
    applied; hand one line per (set, eval language) with the mean metrics to ``ctx.curve``."""
    if ctx._heldout_evals is None:  # pre-edit scores of the held-out cases, once per rank
        ctx._heldout_evals = []
        for case in ctx.heldout:
            try:
                ctx._heldout_evals.append(pre_evaluate(case, ctx))
            except EDIT_ERRORS as exc:
                log.warning("held-out case %s left out of the curve: %s", case.case_id, exc)
    t0 = time.perf_counter()
    lines = []
    with applied(ctx.model, deltas):
        for name, evs in (("edited", done), ("heldout", ctx._heldout_evals)):
            post: dict[str, dict[str, list]] = {}
            pre: dict[str, dict[str, list]] = {}
            for ev in evs:
                scores = score_rows(ctx.model, ctx.tok, ctx.spec, ev.rows, ctx.batch_size,
                                    reuse=ev.pre_scores, deltas=deltas)
                for target, metrics in ((post, lang_metrics(ev.rows, scores, ev.pre_scores)),
                                        (post, fact_metrics(ev.rows, scores)),
                                        (pre, ev.pre), (pre, fact_metrics(ev.rows, ev.pre_scores))):
                    for lang, vals in metrics.items():
                        for k, v in vals.items():
                            if v is not None:
                                target.setdefault(lang, {}).setdefault(k, []).append(v)
            for lang in ctx.eval_langs:
                if lang not in post:
                    continue
                lines.append({**common, "n_edits": len(done), "set": name, "eval_lang": lang,
                              "n_cases": len(evs),
                              "post": {k: round(mean(v), 4) for k, v in post[lang].items()},
                              "pre": {k: round(mean(v), 4) for k, v in pre.get(lang, {}).items()}})
    log.info("stability curve: %d edits, %d edited + %d held-out cases scored in %.1fs", len(done),
             len(done), len(ctx._heldout_evals), time.perf_counter() - t0)
    ctx.curve(lines)
