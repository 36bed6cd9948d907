"""One job: load model and data, then for every case edit → evaluate all languages → restore → record.

    cfg ─► model ─► cases ─► per case: pre-eval (once) ─► edit(edit_lang) ─► post-eval(all) ─► restore ─► results.jsonl
"""

from __future__ import annotations

import json
import logging
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

from xling_edit.config import METHOD_SCHEMAS
from xling_edit.data import load_dataset
from xling_edit.editing import rome  # noqa: F401  (registers the editor)
from xling_edit.editing.base import EditRequest, SkipCase, applied, build_editor
from xling_edit.editing.stats import CovarianceProvider
from xling_edit.evaluation.evaluate import build_rows, lang_metrics, score_rows
from xling_edit.languages import PROJECT_ROOT, find_conf_dir, load_languages, resolve_eval_langs
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


def covariance_provider(cfg, model, tok, spec, registry, eval_langs):
    """Statistics for the methods that use them, or None when ``stats.corpus=none``."""
    st = cfg.stats
    if st.corpus == "none":
        return None
    langs = [str(c) for c in (st.langs or eval_langs)]
    unknown = [c for c in langs if c not in registry]
    if unknown:
        raise ValueError(f"stats.langs {unknown} unknown; available: {sorted(registry)}")
    m = cfg.model
    model_key = f"{m.name}:{m.source}:{m.path or m.gguf_package}:{m.revision}:{m.dtype}"
    if m.source == "random":
        model_key += ":" + json.dumps(OmegaConf.to_container(m.random_init), sort_keys=True) + f":{cfg.seed}"
    return CovarianceProvider(
        model, tok, spec, model_key=model_key, corpus=st.corpus,
        langs={c: list(registry[c].context_seeds) for c in langs}, per_lang=st.per_lang,
        length=st.length, files=list(st.files), max_length=st.max_length,
        cache_dir=m.cache_dir if st.cache else None, seed=cfg.seed, batch_size=st.batch_size,
        ridge=st.ridge)


def output_dir(cfg: DictConfig) -> Path:
    try:
        from hydra.core.hydra_config import HydraConfig

        return Path(HydraConfig.get().runtime.output_dir)
    except Exception:
        return Path(cfg.get("output_dir") or ".")


def run(cfg: DictConfig, out_dir: Path | None = None, model_and_tok: Any = None) -> dict:
    """Run one job; returns the run summary (also written to ``run_info.json``)."""
    t_start = time.perf_counter()
    out = Path(out_dir) if out_dir is not None else output_dir(cfg)
    out.mkdir(parents=True, exist_ok=True)
    seed_everything(cfg.seed)
    if cfg.threads:
        torch.set_num_threads(int(cfg.threads))
    if cfg.merge.name != "none":
        raise ValueError(f"merge={cfg.merge.name!r} is not available yet; use merge=none")

    registry = load_languages(find_conf_dir())
    edit_code = str(cfg.edit_lang.code)
    registry[edit_code] = cfg.edit_lang  # the composed node is authoritative
    eval_langs = resolve_eval_langs(cfg.eval_langs, registry, edit_code)
    spec = ModelSpec.from_config(cfg.model.templates)
    mcfg = method_config(cfg)

    model, tok = model_and_tok or load_model(cfg.model, seed=cfg.seed)
    t_loaded = time.perf_counter()
    ds = load_dataset(cfg.data, eval_langs, project_root=PROJECT_ROOT)
    log.info("dataset %s: %d cases; eval languages %s", ds.name, len(ds.cases), eval_langs)
    cov = covariance_provider(cfg, model, tok, spec, registry, eval_langs) \
        if mcfg.get("use_covariance") else None
    editor = build_editor(mcfg.name, hparams=mcfg, spec=spec, seed=cfg.seed, covariance=cov,
                          covariance_label=cov.label if cov else "identity")

    word_seps = {c: registry[c].word_sep for c in eval_langs}
    ap = cfg.data.answer_prefix or ""
    writer = ResultsWriter(out / "results.jsonl")
    counts: Counter = Counter()
    localisation: Counter = Counter()
    all_lines: list[dict] = []
    common = {"model": cfg.model.name, "method": mcfg.name, "dataset": ds.name,
              "merge": cfg.merge.name, "edit_lang": edit_code}
    try:
        for case in tqdm(ds.cases, desc=f"{mcfg.name} {edit_code}", unit="case", dynamic_ncols=True):
            lines = _run_case(case, model, tok, spec, editor, registry, edit_code, eval_langs,
                              word_seps, ap, cfg.eval.batch_size, common)
            counts[lines[0]["status"]] += 1
            if lines[0]["status"] == "ok" or lines[0].get("subject"):
                localisation[(lines[0].get("subject") or {}).get("method", "?")] += 1
            elif lines[0]["status"] == "skipped":
                localisation["skipped"] += 1
            writer.write_many(lines)
            all_lines.extend(lines)
    finally:
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


def _run_case(case, model, tok, spec, editor, registry, edit_code, eval_langs, word_seps, ap,
              batch_size, common) -> list[dict]:
    rows, tok_errors = build_rows(case, eval_langs, tok, word_seps, ap)
    t0 = time.perf_counter()
    pre_scores = score_rows(model, tok, spec, rows, batch_size)
    pre = lang_metrics(rows, pre_scores, None)
    timings = {"pre_eval_s": round(time.perf_counter() - t0, 3)}
    post: dict = {}
    status, reason, edit_info = "ok", None, {}
    rec_edit = case.langs.get(edit_code)
    if rec_edit is None:
        status, reason = "skipped", f"case has no {edit_code!r} version"
    else:
        try:
            t1 = time.perf_counter()
            outcome = editor.edit(model, tok, EditRequest(case.case_id, registry[edit_code], rec_edit, ap))
            timings["edit_s"] = round(time.perf_counter() - t1, 3)
            edit_info = outcome.info
            t2 = time.perf_counter()
            with applied(model, outcome.deltas):
                post_scores = score_rows(model, tok, spec, rows, batch_size)
            timings["post_eval_s"] = round(time.perf_counter() - t2, 3)
            post = lang_metrics(rows, post_scores, pre_scores)
        except SkipCase as exc:
            status, reason = "skipped", str(exc)
        except (FloatingPointError, ValueError, RuntimeError) as exc:
            log.warning("case %s failed: %s", case.case_id, exc)
            status, reason = "failed", f"{type(exc).__name__}: {exc}"
    subject = edit_info.get("subject")
    edit_info = {k: v for k, v in edit_info.items() if k != "subject"}
    n_tokens = Counter(r.lang for r in rows if r.kind == "rel" and r.role == "new")
    lines = []
    for lang in eval_langs:
        rec = case.langs.get(lang)
        line = {**common, "case_id": case.case_id, "eval_lang": lang,
                "elfi": lang == edit_code, "status": status, "reason": reason}
        if rec is None:
            line.update(status="missing_eval_lang", reason=f"case has no {lang!r} version")
        elif lang in tok_errors:
            line.update(status="failed", reason=tok_errors[lang])
        else:
            rel = next(r for r in rows if r.lang == lang and r.kind == "rel" and r.role == "new")
            line.update(
                pre=pre.get(lang), post=post.get(lang) if status == "ok" else None,
                target_new=rec.target_new,
                shared_surface=rec_edit is not None and rec.target_new == rec_edit.target_new,
                target_new_tokens=len(rel.enc.target_ids),
                subject_tokens=len(tok(rec.subject, add_special_tokens=False)["input_ids"]),
                subject_words=len(rec.subject.split()),
            )
        line.update(subject=subject, edit=edit_info, timings=timings)
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
