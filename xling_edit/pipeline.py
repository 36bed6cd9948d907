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
import zlib
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf
from tqdm.auto import tqdm

from xling_edit import preflight, resume, runner
from xling_edit.atomic import write_text_atomic
from xling_edit.config import MODES, method_schemas
from xling_edit.data import load_dataset
from xling_edit.editing.localize import find_subject
from xling_edit.editing.base import EditRequest, SkipCase, applied, build_editor
from xling_edit.editing.stats import CovarianceProvider
from xling_edit.errors import FailureGuard
from xling_edit.evaluation.evaluate import (
    POST_ONLY_KEYS, EvalOptions, answer_prefixes, build_rows, lang_metrics, score_rows,
)
from xling_edit.languages import (
    ALL_LANGUAGES, PROJECT_ROOT, find_conf_dir, is_elfi, load_languages, resolve_eval_langs,
)
from xling_edit.loggers import RunLogger, build_logger
from xling_edit.models import ModelSpec, load_model
from xling_edit.results import ResultsWriter, format_table, summarize, write_summary_csv

log = logging.getLogger(__name__)

# prob metrics comparing target_new with the true answer: n/a on data without one (zsRE)
NEEDS_TRUE_ANSWER = ("reliability.prob", "generalization.prob")
# locality.agree_token: agreement of post- with pre-edit argmax (stability); locality.prob: the
# true answer beats target_new (correctness, pre and post)
TABLE_KEYS = ("reliability.token_acc", "generalization.token_acc", "locality.agree_token",
              "locality.prob", "portability.token_acc", "reliability.prob", "reliability.exact")


def seed_everything(seed: int, deterministic: bool = False) -> None:
    """Seed Python, NumPy and torch (all devices); ``deterministic`` also asks torch for
    deterministic kernels (GPU runs; slower)."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=True)


def method_config(cfg: DictConfig) -> DictConfig:
    """The resolved method config. Per-model values reach it through the interpolations in
    ``conf/method/<name>.yaml``; here we only check that ``model.hparams.<name>`` names real
    fields (a typo there would otherwise be ignored silently)."""
    name = cfg.method.name
    schemas = method_schemas(cfg.method.get("module"))  # imports the editors (registry)
    if name not in schemas:
        raise ValueError(f"unknown method {name!r}; available: {sorted(schemas)}")
    overrides = (cfg.model.hparams or {}).get(name) or {}
    fields = set(schemas[name].__dataclass_fields__)
    unknown = sorted(set(overrides) - fields)
    if unknown:
        raise ValueError(f"model.hparams.{name} has unknown fields {unknown}; known: {sorted(fields)}")
    resolved = OmegaConf.to_container(cfg.method, resolve=True)
    resolved.pop("module", None)  # where the method came from, not one of its settings
    return OmegaConf.merge(OmegaConf.structured(schemas[name]), resolved)


def covariance_provider(cfg, model_cfg, model, tok, spec, registry, eval_langs):
    """Statistics for the methods that use them, or None when ``stats.corpus=none``."""
    st = cfg.stats
    if st.corpus == "none":
        return None
    langs = preflight.stats_langs(cfg, eval_langs)  # fixed by default: not the eval languages
    unknown = [c for c in langs if c not in registry]
    if unknown and st.corpus == "generated":  # generated samples start from context_seeds
        raise ValueError(f"stats.langs {unknown} unknown; available: {sorted(registry)}")
    m = model_cfg
    model_key = f"{m.name}:{m.source}:{m.path or m.gguf_package}:{m.revision}:{m.dtype}"
    if m.source == "random":
        model_key += ":" + json.dumps(OmegaConf.to_container(m.random_init), sort_keys=True) + f":{cfg.seed}"
    return CovarianceProvider(
        model, tok, spec, model_key=model_key, corpus=st.corpus,
        langs={c: list(registry[c].context_seeds) if c in registry else [] for c in langs}, per_lang=st.per_lang,
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


def run(cfg: DictConfig, out_dir: Path | None = None) -> dict | None:
    """Run one job on every rank of ``cfg.runner``; returns rank zero's run summary (also
    written to ``run_info.json``), None on the other ranks of a joined job."""
    out = Path(out_dir) if out_dir is not None else output_dir(cfg)
    preflight.check(cfg)  # config, languages, data, model files and templates: before any weights
    fp = resume.fingerprint(cfg)
    out = resume_dir(cfg, out, fp)
    out.mkdir(parents=True, exist_ok=True)
    try:
        return runner.launch(cfg.runner, _job, cfg, out, fp)
    except BaseException as exc:  # job.json says failed (not running), with the error
        resume.mark_failed(out, fp, exc)
        raise


def resume_dir(cfg: DictConfig, out: Path, fp: str) -> Path:
    """Where the job writes. ``resume=<path>``: that directory. ``resume=true``: the latest job
    directory under ``resume_roots`` with the same config fingerprint (or ``out`` when there is
    none). Otherwise ``out`` — which is resumed too if it already holds a run of the same config
    (``fp``: :func:`xling_edit.resume.fingerprint` of ``cfg``)."""
    r = cfg.get("resume")
    target = out
    if isinstance(r, str) and r.lower() not in ("true", "false", ""):
        target = Path(r)
        if not (target / resume.JOB_FILE).exists() and not (target / resume.RESULTS).exists():
            raise FileNotFoundError(f"resume={r!r}: no job directory there (no job.json / results.jsonl)")
    elif r is True or (isinstance(r, str) and r.lower() == "true"):
        roots = [Path(p) if Path(p).is_absolute() else PROJECT_ROOT / p for p in cfg.resume_roots]
        prev = resume.find_previous(roots + [Path.cwd() / p for p in cfg.resume_roots], fp, exclude=out)
        if prev is None:
            log.info("resume=true: no earlier job with fingerprint %s under %s; starting fresh",
                     fp, list(cfg.resume_roots))
        else:
            target = prev
    job = target / resume.JOB_FILE
    if job.exists():
        old = json.loads(job.read_text()).get("fingerprint")
        if old != fp:
            raise ValueError(f"{target} holds a job with another config (fingerprint {old}, this "
                             f"one {fp}); choose another output directory")
    if target != out:
        log.info("resuming into %s (this invocation's own directory %s keeps only its log)", target, out)
    return target


def _job(ri: runner.RankInfo, cfg: DictConfig, out: Path, fp: str) -> dict | None:
    """One rank's share of a job: set up, run ``groups[rank::world]`` of the unfinished groups,
    and on rank zero gather every rank's lines and write the summaries."""
    t_start = time.perf_counter()
    runner.setup_rank_logging(ri.rank, ri.world, out / "logs", ri.spawned)
    threads = runner.rank_threads(cfg.threads, ri.world, ri.device.split(":")[0])
    if threads:
        torch.set_num_threads(threads)
    seed_everything(cfg.seed, cfg.runner.deterministic)

    registry = load_languages(find_conf_dir())
    edit_code = str(cfg.edit_lang.code)
    registry[edit_code] = cfg.edit_lang  # the composed node is authoritative
    eval_langs = resolve_eval_langs(cfg.eval_langs, registry, edit_code)
    # {lang: text appended to every prompt before its answer} (data.answer_format)
    answer_format, prefixes = answer_prefixes(cfg.data, registry, eval_langs)
    spec = ModelSpec.from_config(cfg.model.templates)
    mcfg = method_config(cfg)
    mode, group_size = str(mcfg.get("mode", "single")), int(mcfg.get("num_edits", 1))

    # rank zero streams to the logger; built before the model so a missing package fails fast
    logger = build_logger(cfg) if ri.is_zero else RunLogger()
    if ri.is_zero:  # repair what an interrupted run left before anyone reads it
        done_lines = resume.repair(out, per_case=len(eval_langs))
        resume.write_job_file(out, fp, cfg, "running")
    ri.barrier()
    if not ri.is_zero:
        done_lines = resume.read_lines(out / resume.RESULTS)[0]

    with ri.zero_first():  # merging, GGUF conversion: once, then read from the cache
        model_cfg = cfg.model
        if cfg.merge.name != "none":
            from xling_edit.merge import merged_model_config  # the TIES pre-step (merge/ group)

            model_cfg = merged_model_config(cfg)  # cached on disk; a model config pointing at it
        model_cfg = OmegaConf.merge(model_cfg, {"device": ri.device,
                                                "dtype": runner.model_dtype(cfg.runner, model_cfg.dtype)})
        model, tok = load_model(model_cfg, seed=cfg.seed)
    t_loaded = time.perf_counter()
    preflight.check_loaded(model, cfg, model_cfg.name)  # templates, once more on the real model
    ds = load_dataset(cfg.data, eval_langs, project_root=PROJECT_ROOT)
    log.info("dataset %s: %d cases; eval languages %s", ds.name, len(ds.cases), eval_langs)
    cov = covariance_provider(cfg, model_cfg, model, tok, spec, registry, eval_langs) \
        if mcfg.get("use_covariance") else None
    editor = build_editor(mcfg.name, hparams=mcfg, spec=spec, seed=cfg.seed, covariance=cov,
                          covariance_label=cov.label if cov else "identity")
    _check_mode(mode, group_size, editor)
    if cov is not None and ri.world > 1:
        with ri.zero_first():  # rank zero computes and caches; the others load
            cov.prefetch(list(editor.edit_layers))

    word_seps = {c: registry[c].word_sep for c in eval_langs}
    ctx = _Ctx(model, tok, spec, editor, registry, edit_code, eval_langs, word_seps,
               prefixes, EvalOptions.from_config(cfg.eval), mode)
    common = {"model": cfg.model.name, "method": mcfg.name, "dataset": ds.name,
              "merge": cfg.merge.name, "mode": mode, "answer_format": answer_format,
              "variant": str(mcfg.get("variant", "published")),
              "edit_lang": ALL_LANGUAGES if mode == "all_languages" else edit_code}
    size = group_size if mode in ("batch", "sequential") else 1
    groups = [ds.cases[i: i + size] for i in range(0, len(ds.cases), size)]
    done = {(l["case_id"], l["edit_lang"]) for l in done_lines}
    todo = [(g, grp) for g, grp in enumerate(groups)
            if not all((c.case_id, common["edit_lang"]) in done for c in grp)]
    mine = todo[ri.rank::ri.world]
    n_todo = sum(len(grp) for _, grp in todo)
    if ri.is_zero and done_lines:
        log.info("resuming %s: %d of %d cases already done, %d to run", out,
                 len(ds.cases) - n_todo, len(ds.cases), n_todo)

    shard_dir = out / resume.SHARDS
    if ri.is_zero:
        writer = ResultsWriter(out / resume.RESULTS)
        tails = [resume.ShardTail(shard_dir / f"rank{r}.jsonl") for r in range(1, ri.world)]
    else:
        shard_dir.mkdir(exist_ok=True)
        writer = ResultsWriter(shard_dir / f"rank{ri.rank}.jsonl")
    bar = tqdm(total=n_todo, desc=f"{mcfg.name} {common['edit_lang']}", unit="case",
               dynamic_ncols=True, disable=not ri.is_zero)
    progress = Counter()

    def record(lines: list[dict]) -> None:
        writer.write_many(lines)  # rank zero: results.jsonl; the others: their shard
        if ri.is_zero:
            for u in unreached_targets(lines):
                log.warning("case %s: the edit reached only %.0f%% of its target z "
                            "(edit.target_reached %.3f < %.1f)", u["case_id"],
                            100 * u["target_reached"], u["target_reached"], TARGET_REACHED_WARN)
            n = len({l["case_id"] for l in lines})
            progress["done"] += n
            progress["failed"] += len({l["case_id"] for l in lines if l["status"] == "failed"})
            bar.update(n)
            logger.log_lines(lines, {**progress, "total": n_todo})

    def forward_shards() -> None:
        for t in tails if ri.is_zero else []:
            lines = t.new_lines()
            if lines:
                for unit in _units(lines):
                    record(unit)

    with logger:  # closes the W&B run (as failed) whatever raises below
        if ri.is_zero:
            logger.start(cfg, out)
        try:
            guard = FailureGuard(cfg.get("abort_after_failures", 5))  # first N cases all failing
            for g, group in mine:
                seed_everything(_group_seed(cfg.seed, group[0].case_id), cfg.runner.deterministic)
                lines = _run_group(group, ctx, {**common, "group": g} if size > 1 else common)
                record(lines)
                guard.update(lines)
                forward_shards()
            if not ri.is_zero:
                (shard_dir / f"rank{ri.rank}.done").write_text("done")
                return None
            _wait_for_ranks(ri, shard_dir, forward_shards, float(cfg.runner.timeout_min) * 60)
        finally:
            bar.close()
            writer.close()

        # rank zero: every line is in results.jsonl; put them in dataset order, then summarise
        lines = resume.read_lines(out / resume.RESULTS)[0]
        order = {c.case_id: i for i, c in enumerate(ds.cases)}
        lines.sort(key=lambda l: order.get(l["case_id"], len(order)))
        resume.write_lines(out / resume.RESULTS, lines)
        resume.clear_shards(out)
        summary_rows = summarize(lines)
        write_summary_csv(summary_rows, out / "summary.csv")
        counts, localisation, failures = _case_counts(lines, edit_code, eval_langs, mode)
        missing = {k: v for k, v in ds.missing.items() if v}
        info = {
            **common, "eval_langs": eval_langs, "n_cases": len(ds.cases),
            "case_status": dict(counts), "failures": failures,
            "subject_localisation": dict(localisation),
            "targets_not_reached": unreached_targets(lines),
            "missing_languages": missing, "dataset_notes": ds.notes,
            "invalid_records": {"policy": cfg.data.get("on_invalid", "error"),
                                "count": len(ds.invalid), "records": ds.invalid},
            "dataset_has_true_answer": any(r.target_true for c in ds.cases for r in c.langs.values()),
            "stats_langs": preflight.stats_langs(cfg, eval_langs) if cov is not None else None,
            "covariance": getattr(editor, "covariance_label", None) if mcfg.get("use_covariance") else "off",
            "covariance_statistics": cov.summary() if cov is not None else None,
            "world_size": ri.world, "resumed_cases": len(ds.cases) - n_todo,
            "seconds": {"load": round(t_loaded - t_start, 2),
                        "total": round(time.perf_counter() - t_start, 2)},
            "config": OmegaConf.to_container(cfg, resolve=True),
        }
        write_text_atomic(out / "run_info.json", json.dumps(info, indent=2, ensure_ascii=False))
        resume.write_job_file(out, fp, cfg, "finished", case_status=dict(counts))
        logger.finish(out, info, summary_rows)
    if cfg.print_tables:
        _print_report(summary_rows, info, eval_langs, out)
    return info


def exit_code(info: dict | None, strict: bool) -> int:
    """0, or 3 when ``strict`` and some case failed or was skipped (see ``run_info.json``)."""
    if not info or not strict:
        return 0
    status = info.get("case_status", {})
    return 3 if status.get("failed", 0) or status.get("skipped", 0) else 0


def _group_seed(seed: int, case_id: str) -> int:
    """Each group's RNG state depends on the run seed and its first case only, so results do
    not depend on which rank runs it, in what order, or whether the run was resumed."""
    return zlib.crc32(f"{seed}:{case_id}".encode()) & 0x7FFFFFFF


def _units(lines: list[dict]) -> list[list[dict]]:
    units: dict[tuple, list[dict]] = {}
    for l in lines:
        units.setdefault(resume.unit_key(l), []).append(l)
    return list(units.values())


def _wait_for_ranks(ri: runner.RankInfo, shard_dir: Path, forward, timeout_s: float) -> None:
    """Rank zero: keep forwarding the other ranks' lines until every rank has finished."""
    if ri.world == 1:
        return
    last_change, seen = time.monotonic(), -1
    while True:
        forward()
        finished = [r for r in range(1, ri.world) if (shard_dir / f"rank{r}.done").exists()]
        if len(finished) == ri.world - 1:
            forward()
            return
        size = sum(p.stat().st_size for p in shard_dir.glob("rank*.jsonl")) if shard_dir.is_dir() else 0
        if size != seen:
            last_change, seen = time.monotonic(), size
        elif time.monotonic() - last_change > timeout_s:
            raise TimeoutError(f"no results from ranks {sorted(set(range(1, ri.world)) - set(finished))} "
                               f"for {timeout_s:.0f} s (runner.timeout_min); their shards are kept "
                               f"for a resume")
        time.sleep(1.0)


#: MEMIT: a case whose edit moves the top layer's residual less than this share of the way to its
#: target z is reported (log, run_info.json ``targets_not_reached``, the printed header).
TARGET_REACHED_WARN = 0.9


def unreached_targets(lines) -> list[dict]:
    """Cases (one entry each) whose ``edit.target_reached`` is below :data:`TARGET_REACHED_WARN`."""
    out, seen = [], set()
    for line in lines:
        reached = (line.get("edit") or {}).get("target_reached")
        if reached is None or line["case_id"] in seen or reached >= TARGET_REACHED_WARN:
            continue
        seen.add(line["case_id"])
        out.append({"case_id": line["case_id"], "target_reached": reached})
    return out


def _case_counts(lines, edit_code, eval_langs, mode):
    counts: Counter = Counter()
    localisation: Counter = Counter()
    failures = []
    first = edit_code if mode != "all_languages" else eval_langs[0]
    for line in lines:
        if line["eval_lang"] != first:
            continue
        counts[line["status"]] += 1
        method_used = (line.get("subject") or {}).get("method")
        localisation[method_used or ("skipped" if line["status"] == "skipped" else "n/a")] += 1
        if line["status"] in ("failed", "skipped"):
            failures.append({"case_id": line["case_id"], "status": line["status"],
                             "reason": line.get("reason")})
    return counts, localisation, failures


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
    answer_prefix: dict  # {lang: appended to every prompt before its answer} (answer_prefixes)
    batch_size: Any  # EvalOptions (eval.*)
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
    reqs = [EditRequest(ev.case.case_id, ctx.registry[l], ev.case.langs[l], ctx.answer_prefix[l])
            for l in langs if l in ev.case.langs]
    if not reqs:
        ev.status, ev.reason = "skipped", f"case has no {'/'.join(langs)} version"
    return reqs


def _fail(evs, exc) -> None:
    status = "skipped" if isinstance(exc, SkipCase) else "failed"
    if status == "failed":
        log.warning("case(s) %s failed: %s: %s", [e.case.case_id for e in evs], type(exc).__name__, exc)
        if isinstance(exc, torch.OutOfMemoryError) and torch.cuda.is_available():
            torch.cuda.empty_cache()
    for ev in evs:
        ev.status, ev.reason = status, (str(exc) if status == "skipped" else f"{type(exc).__name__}: {exc}")


# What a case may raise without stopping the run (torch's OutOfMemoryError is a RuntimeError).
_EDIT_ERRORS = (SkipCase, FloatingPointError, ValueError, RuntimeError, MemoryError)


def _run_group(cases, ctx: _Ctx, common: dict) -> list[dict]:
    """Pre-evaluate, edit (per mode), post-evaluate and restore one group of cases."""
    begin = getattr(ctx.editor, "begin_group", None)
    if begin is not None:  # stateful methods (AlphaEdit's earlier-edit keys) start afresh
        begin()
    evs = []
    for case in cases:
        rows, tok_errors = build_rows(case, ctx.eval_langs, ctx.tok, ctx.word_seps, ctx.answer_prefix)
        t0 = time.perf_counter()
        try:
            pre_scores = score_rows(ctx.model, ctx.tok, ctx.spec, rows, ctx.batch_size,
                                    keep_from=min(getattr(ctx.editor, "edit_layers", None) or [0]))
        except _EDIT_ERRORS as exc:  # e.g. out of memory on a long prompt: record, go on
            ev = _CaseEval(case, rows, tok_errors, [], {})
            _fail([ev], exc)
            evs.append(ev)
            continue
        evs.append(_CaseEval(case, rows, tok_errors, pre_scores, lang_metrics(rows, pre_scores, None),
                             {"pre_eval_s": round(time.perf_counter() - t0, 3)}))
    reqs = {id(ev): _requests(ev, ctx) for ev in evs}
    live = [ev for ev in evs if ev.status == "ok"]
    ed = ctx.editor

    def post_eval(targets, deltas):
        t = time.perf_counter()
        with applied(ctx.model, deltas):
            for ev in targets:
                scores = score_rows(ctx.model, ctx.tok, ctx.spec, ev.rows, ctx.batch_size,
                                    reuse=ev.pre_scores, deltas=deltas)
                ev.post = lang_metrics(ev.rows, scores, ev.pre_scores)
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
                "answer_prefix": ctx.answer_prefix.get(lang, ""),
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
    print(f"== {info['model']} | {info['method']} ({info.get('variant', 'published')}) | {info['dataset']} | edit in {info['edit_lang']} "
          f"| {info['n_cases']} cases | status {info['case_status']}")
    print(f"   subject localisation ({info['edit_lang']}): {info['subject_localisation']}")
    if info["missing_languages"]:
        print(f"   cases lacking a language: {info['missing_languages']}")
    if info.get("targets_not_reached"):
        print(f"   WARNING: {len(info['targets_not_reached'])} case(s) reached less than "
              f"{TARGET_REACHED_WARN:.0%} of their MEMIT target (edit.target_reached; "
              f"run_info.json targets_not_reached)")
    invalid = info.get("invalid_records") or {}
    if invalid.get("count"):
        print(f"   invalid records left out (data.on_invalid=skip): {invalid['count']}, reasons in "
              f"run_info.json; first: {invalid['records'][0]}")
    for key in TABLE_KEYS:
        for phase in ("pre", "post"):
            if key in POST_ONLY_KEYS and phase == "pre":
                continue
            print()
            if key in NEEDS_TRUE_ANSWER and not info.get("dataset_has_true_answer", True):
                print(f"{key} ({phase}-edit): n/a: dataset has no true answer")
                continue
            print(format_table(rows, key, phase, eval_langs))
    print(f"\nresults: {out / 'results.jsonl'}\nsummary: {out / 'summary.csv'}")
