"""One job: load model and data, then for every case edit → evaluate all languages → restore → record.

    cfg ─► model ─► cases ─► per case: pre-eval (once) ─► edit(edit_lang) ─► post-eval(all) ─► restore ─► results.jsonl
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
import os
import random
import time
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf
from tqdm.auto import tqdm

from xling_edit.config import METHOD_SCHEMAS, MODES
from xling_edit.data import load_dataset
from xling_edit.editing import memit, rome  # noqa: F401  (register the editors)
from xling_edit.editing.localize import find_subject
from xling_edit.editing.base import EditRequest, SkipCase, applied, build_editor
from xling_edit.editing.stats import CovarianceProvider
from xling_edit.evaluation.evaluate import build_rows, lang_metrics, score_rows
from xling_edit.languages import (
    ALL_LANGUAGES, PROJECT_ROOT, find_conf_dir, is_elfi, load_languages, resolve_eval_langs,
)
from xling_edit.models import ModelSpec, load_model
from xling_edit.results import ResultsWriter, format_table, summarize, write_summary_csv

log = logging.getLogger(__name__)

TABLE_KEYS = ("reliability.token_acc", "generalization.token_acc", "locality.token_acc",
              "portability.token_acc", "reliability.prob", "reliability.exact")


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def method_config(cfg: DictConfig) -> DictConfig:
    """The resolved method config. Per-model values reach it through the interpolations in
    ``conf/method/<name>.yaml``; here we only check that ``model.hparams.<name>`` names real
    fields (a typo there would otherwise be ignored silently)."""
    name = cfg.method.name
    if name not in METHOD_SCHEMAS:
        raise ValueError(f"unknown method {name!r}; available: {sorted(METHOD_SCHEMAS)}")
    overrides = (cfg.model.hparams or {}).get(name) or {}
    fields = set(METHOD_SCHEMAS[name].__dataclass_fields__)
    unknown = sorted(set(overrides) - fields)
    if unknown:
        raise ValueError(f"model.hparams.{name} has unknown fields {unknown}; known: {sorted(fields)}")
    resolved = OmegaConf.to_container(cfg.method, resolve=True)
    return OmegaConf.merge(OmegaConf.structured(METHOD_SCHEMAS[name]), resolved)


def covariance_provider(cfg, model_cfg, model, tok, spec, registry, eval_langs):
    """Statistics for the methods that use them, or None when ``stats.corpus=none``."""
    st = cfg.stats
    if st.corpus == "none":
        return None
    langs = [str(c) for c in (st.langs or eval_langs)]
    unknown = [c for c in langs if c not in registry]
    if unknown:
        raise ValueError(f"stats.langs {unknown} unknown; available: {sorted(registry)}")
    m = model_cfg
    model_key = f"{m.name}:{m.source}:{m.path or m.gguf_package}:{m.revision}:{m.dtype}"
    if m.source == "random":
        model_key += ":" + json.dumps(OmegaConf.to_container(m.random_init), sort_keys=True) + f":{cfg.seed}"
    return CovarianceProvider(
        model, tok, spec, model_key=model_key, corpus=st.corpus,
        langs={c: list(registry[c].context_seeds) for c in langs}, per_lang=st.per_lang,
        length=st.length, files=list(st.files), max_length=st.max_length,
        cache_dir=m.cache_dir if st.cache else None, seed=cfg.seed, batch_size=st.batch_size,
        ridge=st.ridge, hf={"path": st.hf_path, "name": st.hf_name, "split": st.hf_split,
                            "text_field": st.hf_text_field})


def output_dir(cfg: DictConfig) -> Path:
    try:
        from hydra.core.hydra_config import HydraConfig

        return Path(HydraConfig.get().runtime.output_dir)
    except Exception:
        return Path(cfg.get("output_dir") or ".")


def run(cfg: DictConfig, out_dir: Path | None = None) -> dict:
    """Run one job; returns the run summary (also written to ``run_info.json``)."""
    t_start = time.perf_counter()
    out = Path(out_dir) if out_dir is not None else output_dir(cfg)
    out.mkdir(parents=True, exist_ok=True)
    seed_everything(cfg.seed)
    if cfg.threads:
        torch.set_num_threads(int(cfg.threads))
    model_cfg = cfg.model
    if cfg.merge.name != "none":
        from xling_edit.merge import merged_model_config  # the TIES pre-step (merge/ group)

        model_cfg = merged_model_config(cfg)  # cached on disk; a model config pointing at it

    registry = load_languages(find_conf_dir())
    edit_code = str(cfg.edit_lang.code)
    registry[edit_code] = cfg.edit_lang  # the composed node is authoritative
    eval_langs = resolve_eval_langs(cfg.eval_langs, registry, edit_code)
    spec = ModelSpec.from_config(cfg.model.templates)
    mcfg = method_config(cfg)

    model, tok = load_model(model_cfg, seed=cfg.seed)
    t_loaded = time.perf_counter()
    ds = load_dataset(cfg.data, eval_langs, project_root=PROJECT_ROOT)
    log.info("dataset %s: %d cases; eval languages %s", ds.name, len(ds.cases), eval_langs)
    cov = covariance_provider(cfg, model_cfg, model, tok, spec, registry, eval_langs) \
        if mcfg.get("use_covariance") else None
    editor = build_editor(mcfg.name, hparams=mcfg, spec=spec, seed=cfg.seed, covariance=cov,
                          covariance_label=cov.label if cov else "identity")

    word_seps = {c: registry[c].word_sep for c in eval_langs}
    mode, group_size = str(mcfg.get("mode", "single")), int(mcfg.get("num_edits", 1))
    _check_mode(mode, group_size, editor)
    ctx = _Ctx(model, tok, spec, editor, registry, edit_code, eval_langs, word_seps,
               cfg.data.answer_prefix or "", cfg.eval.batch_size, mode)
    writer = ResultsWriter(out / "results.jsonl")
    counts: Counter = Counter()
    localisation: Counter = Counter()
    all_lines: list[dict] = []
    common = {"model": cfg.model.name, "method": mcfg.name, "dataset": ds.name,
              "merge": cfg.merge.name, "mode": mode,
              "edit_lang": ALL_LANGUAGES if mode == "all_languages" else edit_code}
    size = group_size if mode in ("batch", "sequential") else 1
    groups = [ds.cases[i: i + size] for i in range(0, len(ds.cases), size)]
    bar = tqdm(total=len(ds.cases), desc=f"{mcfg.name} {common['edit_lang']}", unit="case",
               dynamic_ncols=True)
    try:
        for g, group in enumerate(groups):
            lines = _run_group(group, ctx, {**common, "group": g} if size > 1 else common)
            for line in lines:
                if line["eval_lang"] == (edit_code if mode != "all_languages" else eval_langs[0]):
                    counts[line["status"]] += 1
                    method_used = (line.get("subject") or {}).get("method")
                    localisation[method_used or ("skipped" if line["status"] == "skipped" else "n/a")] += 1
            writer.write_many(lines)
            all_lines.extend(lines)
            bar.update(len(group))
    finally:
        bar.close()
        writer.close()

    summary_rows = summarize(all_lines)
    write_summary_csv(summary_rows, out / "summary.csv")
    missing = {k: v for k, v in ds.missing.items() if v}
    info = {
        **common, "eval_langs": eval_langs, "n_cases": len(ds.cases),
        "case_status": dict(counts), "subject_localisation": dict(localisation),
        "missing_languages": missing, "dataset_notes": ds.notes,
        "covariance": getattr(editor, "covariance_label", None) if mcfg.get("use_covariance") else "off",
        "seconds": {"load": round(t_loaded - t_start, 2),
                    "total": round(time.perf_counter() - t_start, 2)},
        "config": OmegaConf.to_container(cfg, resolve=True),
    }
    tmp = out / "run_info.json.tmp"
    tmp.write_text(json.dumps(info, indent=2, ensure_ascii=False))
    os.replace(tmp, out / "run_info.json")
    if cfg.print_tables:
        _print_report(summary_rows, info, eval_langs, out)
    return info


@dataclass
class _Ctx:
    model: Any
    tok: Any
    spec: ModelSpec
    editor: Any
    registry: dict
    edit_code: str
    eval_langs: list
    word_seps: dict
    answer_prefix: str
    batch_size: int
    mode: str


@dataclass
class _CaseEval:
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


def _check_mode(mode: str, group_size: int, editor) -> None:
    if mode not in MODES:
        raise ValueError(f"method.mode={mode!r} unknown; one of {list(MODES)}")
    if mode in ("batch", "all_languages") and not getattr(editor, "batched", False):
        raise ValueError(f"method.mode={mode} needs a method that edits many facts at once (memit)")
    if group_size < 1:
        raise ValueError(f"method.num_edits must be >= 1, got {group_size}")


def _requests(ev: _CaseEval, ctx: _Ctx) -> list[EditRequest]:
    """The case's edit requests: one in the edit language, or one per language (all_languages).
    Sets the case to skipped when it has none."""
    langs = ctx.eval_langs if ctx.mode == "all_languages" else [ctx.edit_code]
    reqs = [EditRequest(ev.case.case_id, ctx.registry[l], ev.case.langs[l], ctx.answer_prefix)
            for l in langs if l in ev.case.langs]
    if not reqs:
        ev.status, ev.reason = "skipped", f"case has no {'/'.join(langs)} version"
    return reqs


def _fail(evs, exc) -> None:
    status = "skipped" if isinstance(exc, SkipCase) else "failed"
    if status == "failed":
        log.warning("case(s) %s failed: %s", [e.case.case_id for e in evs], exc)
    for ev in evs:
        ev.status, ev.reason = status, (str(exc) if status == "skipped" else f"{type(exc).__name__}: {exc}")


_EDIT_ERRORS = (SkipCase, FloatingPointError, ValueError, RuntimeError)


def _run_group(cases, ctx: _Ctx, common: dict) -> list[dict]:
    """Pre-evaluate, edit (per mode), post-evaluate and restore one group of cases."""
    evs = []
    for case in cases:
        rows, tok_errors = build_rows(case, ctx.eval_langs, ctx.tok, ctx.word_seps, ctx.answer_prefix)
        t0 = time.perf_counter()
        pre_scores = score_rows(ctx.model, ctx.tok, ctx.spec, rows, ctx.batch_size)
        evs.append(_CaseEval(case, rows, tok_errors, pre_scores, lang_metrics(rows, pre_scores, None),
                             {"pre_eval_s": round(time.perf_counter() - t0, 3)}))
    reqs = {id(ev): _requests(ev, ctx) for ev in evs}
    live = [ev for ev in evs if ev.status == "ok"]
    ed = ctx.editor

    def post_eval(targets, deltas):
        t = time.perf_counter()
        with applied(ctx.model, deltas):
            for ev in targets:
                scores = score_rows(ctx.model, ctx.tok, ctx.spec, ev.rows, ctx.batch_size)
                ev.post = lang_metrics(ev.rows, scores, ev.pre_scores)
        for ev in targets:
            ev.timings["post_eval_s"] = round((time.perf_counter() - t) / len(targets), 3)

    if ctx.mode in ("single", "all_languages"):
        for ev in live:
            try:
                t1 = time.perf_counter()
                r = reqs[id(ev)]
                out = ed.edit(ctx.model, ctx.tok, r[0]) if len(r) == 1 else ed.edit_batch(ctx.model, ctx.tok, r)
                ev.timings["edit_s"] = round(time.perf_counter() - t1, 3)
                ev.edit_info = out.info
                post_eval([ev], out.deltas)
            except _EDIT_ERRORS as exc:
                _fail([ev], exc)
    elif ctx.mode == "batch":
        ok = []
        for ev in live:  # a case whose subject cannot be found is skipped, not the whole batch
            rec = reqs[id(ev)][0].record
            if find_subject(rec.prompt, rec.subject, ed.hp.subject_match_threshold) is None:
                _fail([ev], SkipCase(f"subject {rec.subject!r} not found in prompt {rec.prompt!r}"))
            else:
                ok.append(ev)
        if ok:
            try:
                t1 = time.perf_counter()
                out = ed.edit_batch(ctx.model, ctx.tok, [reqs[id(ev)][0] for ev in ok])
                for i, ev in enumerate(ok):
                    ev.timings["edit_s"] = round((time.perf_counter() - t1) / len(ok), 3)
                    ev.edit_info = {**out.info, "subject": out.info["subjects"][i]}
                post_eval(ok, out.deltas)
            except _EDIT_ERRORS as exc:
                _fail(ok, exc)
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
                ev.edit_info = {**out.info, "position": len(done)}
                done.append(ev)
            except _EDIT_ERRORS as exc:
                _fail([ev], exc)
        if done:
            post_eval(done, deltas)  # all edits in place; compared with cached pre-edit scores
    return [line for ev in evs for line in _lines(ev, ctx, common)]


def _lines(ev: _CaseEval, ctx: _Ctx, common: dict) -> list[dict]:
    case = ev.case
    info = dict(ev.edit_info)
    subject = info.pop("subject", None)
    subjects = info.pop("subjects", None)
    edited = [l for l in ctx.eval_langs if l in case.langs] if ctx.mode == "all_languages" else []
    rec_edit = case.langs.get(ctx.edit_code)
    lines = []
    for lang in ctx.eval_langs:
        rec = case.langs.get(lang)
        # all_languages: each language's own localisation
        line_subject = subjects[edited.index(lang)] if (subjects and lang in edited) else subject
        line = {**common, "case_id": case.case_id, "eval_lang": lang,
                "elfi": is_elfi(common["edit_lang"], lang),
                "status": ev.status, "reason": ev.reason}
        if rec is None:
            line.update(status="missing_eval_lang", reason=f"case has no {lang!r} version")
        elif lang in ev.tok_errors:
            line.update(status="failed", reason=ev.tok_errors[lang])
        else:
            rel = next(r for r in ev.rows if r.lang == lang and r.kind == "rel" and r.role == "new")
            line.update(
                pre=ev.pre.get(lang), post=ev.post.get(lang) if ev.status == "ok" else None,
                target_new=rec.target_new,
                shared_surface=rec_edit is not None and rec.target_new == rec_edit.target_new,
                target_new_tokens=len(rel.enc.target_ids),
                subject_tokens=len(ctx.tok(rec.subject, add_special_tokens=False)["input_ids"]),
                subject_words=len(rec.subject.split()),
            )
        line.update(subject=line_subject, edit=info, timings=ev.timings)
        lines.append(line)
    return lines


def _print_report(rows, info, eval_langs, out: Path) -> None:
    print()
    print(f"== {info['model']} | {info['method']} | {info['dataset']} | edit in {info['edit_lang']} "
          f"| {info['n_cases']} cases | status {info['case_status']}")
    print(f"   subject localisation ({info['edit_lang']}): {info['subject_localisation']}")
    if info["missing_languages"]:
        print(f"   cases lacking a language: {info['missing_languages']}")
    for key in TABLE_KEYS:
        for phase in ("pre", "post"):
            if key.startswith("locality") and phase == "pre":
                continue
            print()
            print(format_table(rows, key, phase, eval_langs))
    print(f"\nresults: {out / 'results.jsonl'}\nsummary: {out / 'summary.csv'}")
