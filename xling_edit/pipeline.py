"""One job: load model and data, then for every case edit → evaluate all languages → restore → record.

    cfg ─► model ─► cases ─► per group: pre-eval ─► edit (modes.py) ─► post-eval(all) ─► restore ─► results.jsonl

This module orchestrates: where the job writes and what it resumes (``resume.py``), how ranks
share the cases and forward their lines (``runner.py``), what each editing mode means
(``modes.py``), and what a results line, summary and table hold (``results.py``).
"""

from __future__ import annotations

import json
import logging
import os
import random
import time
import zlib
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf
from tqdm.auto import tqdm

from xling_edit import modes, preflight, results, resume, runner
from xling_edit.atomic import write_text_atomic
from xling_edit.data import load_dataset
from xling_edit.editing import method_config  # noqa: F401  (also pipeline.method_config, as before)
from xling_edit.editing.base import build_editor, capabilities
from xling_edit.editing.reference import setup_deviations
from xling_edit.editing.stats import CovarianceProvider
from xling_edit.errors import FailureGuard
from xling_edit.jobdir import JobDir
from xling_edit.provenance import provenance
from xling_edit.evaluation.evaluate import EvalOptions, answer_prefixes
from xling_edit.evaluation.matching import set_morphology
from xling_edit.languages import (
    ALL_LANGUAGES, PROJECT_ROOT, find_conf_dir, load_languages, resolve_eval_langs,
)
from xling_edit.loggers import RunLogger, build_logger
from xling_edit.models import ModelSpec, load_model
from xling_edit.paths import ensure_output_dir
from xling_edit.results import ResultsWriter, summarize, write_summary_csv

log = logging.getLogger(__name__)



def seed_everything(seed: int, deterministic: bool = False) -> None:
    """Seed Python, NumPy and torch (all devices); ``deterministic`` also asks torch for
    deterministic kernels (GPU runs; slower)."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=True)


def model_identity(cfg, m) -> str:
    """What identifies the weights in cache keys (statistics, pre-edit scores): name, source,
    path or package (a merge's path carries its hash), revision, dtype; a random model's init
    and seed."""
    key = f"{m.name}:{m.source}:{m.path or m.gguf_package}:{m.revision}:{m.dtype}"
    if m.source == "random":
        key += ":" + json.dumps(OmegaConf.to_container(m.random_init), sort_keys=True) + f":{cfg.seed}"
    return key


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
    return CovarianceProvider(
        model, tok, spec, model_key=model_identity(cfg, m), corpus=st.corpus,
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
    out = resume.resume_dir(cfg, out, fp)
    ensure_output_dir(out)  # one line (exit 2) if it cannot be written, before the model loads
    try:
        return runner.launch(cfg.runner, _job, cfg, out, fp)
    except BaseException as exc:  # job.json says failed (not running), with the error
        resume.mark_failed(out, fp, exc)
        raise



def _job(ri: runner.RankInfo, cfg: DictConfig, out: Path, fp: str) -> dict | None:
    """One rank's share of a job, as its data flow: set up the rank, build what the job needs,
    plan which groups this rank runs, run them, and on rank zero gather every rank's lines and
    write the summaries."""
    t_start = time.perf_counter()
    s = _set_up_rank(ri, cfg, out)
    # rank zero streams to the logger; built before the model so a missing package fails fast
    logger = build_logger(cfg) if ri.is_zero else RunLogger()
    done_lines = _open_job_dir(ri, cfg, s, fp)
    b = _build(ri, cfg, s)
    plan = _plan(ri, s, b, done_lines)
    sink = LineSink(ri, s.job, plan.n_todo, logger, desc=f"{s.mcfg.name} {b.common['edit_lang']}",
                    done_before=len(plan.cases) - plan.n_todo)
    with logger:  # closes the W&B run (as failed) whatever raises below
        if ri.is_zero:
            logger.start(cfg, out)
        try:
            _run_groups(ri, cfg, b, plan, sink)
            if not ri.is_zero:
                s.job.done_marker(ri.rank).write_text("done")
                return None
            runner.wait_for_ranks(ri, s.job, sink.forward_shards, float(cfg.runner.timeout_min) * 60)
        finally:
            sink.close()
        info, summary_rows = _finish(ri, cfg, s, b, plan, fp, t_start)
        logger.finish(out, info, summary_rows)
    if cfg.print_tables:
        results.print_report(summary_rows, info, s.eval_langs, out)
    return info


@dataclass
class Setup:
    """What a rank knows before any weights load (:func:`_set_up_rank`)."""

    job: JobDir
    registry: dict
    edit_code: str
    eval_langs: list[str]
    answer_format: str
    prefixes: dict
    spec: ModelSpec
    mcfg: DictConfig
    mode: str
    group_size: int


def _set_up_rank(ri: runner.RankInfo, cfg: DictConfig, out: Path) -> Setup:
    """Logging, threads and seeds of this rank; languages, answer cues, templates, the method."""
    job = JobDir(out)
    runner.setup_rank_logging(ri.rank, ri.world, job.logs, ri.spawned)
    threads = runner.rank_threads(cfg.threads, ri.world, ri.device.split(":")[0])
    if threads:
        torch.set_num_threads(threads)
    seed_everything(cfg.seed, cfg.runner.deterministic)
    registry = load_languages(find_conf_dir())
    edit_code = str(cfg.edit_lang.code)
    registry[edit_code] = cfg.edit_lang  # the composed node is authoritative
    eval_langs = resolve_eval_langs(cfg.eval_langs, registry, edit_code)
    for code in eval_langs:  # the answer matcher's inflection rules: the composed languages'
        set_morphology(code, OmegaConf.to_container(registry[code].morphology))
    # {lang: text appended to every prompt before its answer} (data.answer_format)
    answer_format, prefixes = answer_prefixes(cfg.data, registry, eval_langs)
    mcfg = method_config(cfg)
    return Setup(job, registry, edit_code, eval_langs, answer_format, prefixes,
                 ModelSpec.from_config(cfg.model.templates), mcfg,
                 str(mcfg.get("mode", "single")), int(mcfg.get("num_edits", 1)))


def _open_job_dir(ri: runner.RankInfo, cfg: DictConfig, s: Setup, fp: str) -> list[dict]:
    """Rank zero repairs what an interrupted run left and marks the job running; every rank
    returns the lines already done."""
    if ri.is_zero:
        done_lines = resume.repair(s.job.path, per_case=len(s.eval_langs))
        resume.write_job_file(s.job.path, fp, cfg, "running")
    ri.barrier()
    return done_lines if ri.is_zero else resume.read_lines(s.job.results)[0]


@dataclass
class Built:
    """The loaded model, data, statistics and editor, and the evaluation context (:func:`_build`)."""

    model_cfg: DictConfig
    ds: object
    cov: CovarianceProvider | None
    editor: object
    ctx: modes.Ctx
    pre_cache: object
    common: dict
    t_loaded: float


def _build(ri: runner.RankInfo, cfg: DictConfig, s: Setup) -> Built:
    """Model (merged first when asked), dataset, statistics, editor, evaluation context."""
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
    ds = load_dataset(cfg.data, s.eval_langs, project_root=PROJECT_ROOT)
    log.info("dataset %s: %d cases; eval languages %s", ds.name, len(ds.cases), s.eval_langs)
    mcfg = s.mcfg
    cov = covariance_provider(cfg, model_cfg, model, tok, s.spec, s.registry, s.eval_langs) \
        if mcfg.get("use_covariance") else None
    editor = build_editor(mcfg.name, hparams=mcfg, spec=s.spec, seed=cfg.seed, covariance=cov,
                          covariance_label=cov.label if cov else "identity")
    caps = capabilities(mcfg.name)
    caps.check_mode(s.mode, s.group_size)
    editor.use_dataset(ds.cases, ds.unselected if caps.uses_dataset else ())
    if cov is not None and ri.world > 1:
        with ri.zero_first():  # rank zero computes and caches; the others load
            cov.prefetch(list(editor.edit_layers))
    eval_opts = EvalOptions.from_config(cfg.eval)
    pre_cache = None
    if eval_opts.pre_cache:
        from dataclasses import asdict

        from xling_edit.evaluation.pre_cache import PreScoreCache

        opts = {k: v for k, v in asdict(eval_opts).items() if k not in ("pre_cache", "reuse_lower_layers")}
        pre_cache = PreScoreCache(Path(os.path.expanduser(model_cfg.cache_dir)) / "pre_scores",
                                  f"{model_identity(cfg, model_cfg)}:{ri.device.split(':')[0]}", opts)
    export = cfg.get("export_model")  # (preflight: sequential mode only)
    ctx = modes.Ctx(model, tok, s.spec, editor, s.registry, s.edit_code, s.eval_langs,
                    {c: s.registry[c].word_sep for c in s.eval_langs}, s.prefixes, eval_opts,
                    s.mode, pre_cache=pre_cache, published=editor.published_setup(),
                    deviations=setup_deviations(editor.published_setup(), mcfg, cfg.stats,
                                                s.registry[s.edit_code],
                                                bool(mcfg.get("use_covariance")) and cov is not None,
                                                editor.practice(), s.prefixes.get(s.edit_code, "")),
                    export_dir=(s.job.path / export if export else None))
    common = {"model": cfg.model.name, "method": mcfg.name, "dataset": ds.name,
              "merge": cfg.merge.name, "mode": s.mode, "answer_format": s.answer_format,
              "variant": str(mcfg.get("variant", "published")),
              "edit_lang": ALL_LANGUAGES if s.mode == "all_languages" else s.edit_code}
    return Built(model_cfg, ds, cov, editor, ctx, pre_cache, common, t_loaded)


@dataclass
class Plan:
    """Which case groups exist, which are still to run, and which this rank runs (:func:`_plan`)."""

    cases: list
    heldout: list
    size: int
    mine: list
    n_todo: int


def _plan(ri: runner.RankInfo, s: Setup, b: Built, done_lines: list[dict]) -> Plan:
    """Groups of cases (by mode), minus those done; this rank's share; the held-out cases of
    sequential mode's stability curve; the curve's writer."""
    mcfg = s.mcfg
    size = s.group_size if s.mode in ("batch", "sequential") else 1
    cases, heldout = b.ds.cases, []
    n_held = int(mcfg.get("heldout", 0) or 0) if s.mode == "sequential" else 0
    if n_held:  # the last cases are never edited: the stability curve's held-out set
        if n_held >= len(cases):
            raise ValueError(f"method.heldout={n_held} leaves no case to edit ({len(cases)} cases)")
        cases, heldout = cases[:-n_held], cases[-n_held:]
    groups = [cases[i: i + size] for i in range(0, len(cases), size)]
    done = {(l["case_id"], l["edit_lang"]) for l in done_lines}
    todo = [(g, grp) for g, grp in enumerate(groups)
            if not all((c.case_id, b.common["edit_lang"]) in done for c in grp)]
    n_todo = sum(len(grp) for _, grp in todo)
    if ri.is_zero and done_lines:
        log.info("resuming %s: %d of %d cases already done, %d to run", s.job.path,
                 len(cases) - n_todo, len(cases), n_todo)
    every = int(mcfg.get("eval_every", 0) or 0)
    if s.mode == "sequential" and every or n_held:
        b.ctx.eval_every, b.ctx.heldout = every, heldout
        b.ctx.curve = ResultsWriter(s.job.curve(ri.rank)).write_many
    return Plan(cases, heldout, size, todo[ri.rank::ri.world], n_todo)


class LineSink:
    """Where a rank's finished lines go: its lines file (rank zero: ``results.jsonl``; the
    others: their shard), and on rank zero the warnings, the progress bar and the run logger.
    Rank zero also forwards the other ranks' shard lines through the same sink."""

    def __init__(self, ri: runner.RankInfo, job: JobDir, n_todo: int, logger, desc: str,
                 done_before: int = 0):
        self.ri, self.n_todo, self.logger, self.done_before = ri, n_todo, logger, done_before
        if not ri.is_zero:
            job.shards.mkdir(exist_ok=True)
        self.writer = ResultsWriter(job.lines_file(ri.rank))
        self.tails = [resume.ShardTail(job.shard(r)) for r in range(1, ri.world)] if ri.is_zero else []
        self.bar = tqdm(total=n_todo, desc=desc, unit="case", dynamic_ncols=True, disable=not ri.is_zero)
        self.progress = Counter()

    def record(self, lines: list[dict]) -> None:
        self.writer.write_many(lines)
        if not self.ri.is_zero:
            return
        for u in results.unreached_targets(lines):
            log.warning("case %s: the edit reached only %.0f%% of its target z "
                        "(edit.target_reached %.3f < %.1f)", u["case_id"],
                        100 * u["target_reached"], u["target_reached"], results.TARGET_REACHED_WARN)
        n = len({l["case_id"] for l in lines})
        self.progress["done"] += n
        self.progress["failed"] += len({l["case_id"] for l in lines if l["status"] == "failed"})
        self.bar.update(n)
        # the logger counts the resumed job's cases too: its x-axis goes on where it stopped
        self.logger.log_lines(lines, {**self.progress, "done": self.progress["done"] + self.done_before,
                                      "total": self.n_todo + self.done_before})

    def forward_shards(self) -> None:
        """Rank zero: the other ranks' new lines, one case group at a time."""
        for t in self.tails:
            lines = t.new_lines()
            for unit in runner.units(lines) if lines else []:
                self.record(unit)

    def close(self) -> None:
        self.bar.close()
        self.writer.close()


def _run_groups(ri: runner.RankInfo, cfg: DictConfig, b: Built, plan: Plan, sink: LineSink) -> None:
    """Edit, evaluate and restore this rank's groups, each seeded by its first case."""
    guard = FailureGuard(cfg.get("abort_after_failures", 5))  # first N cases all failing
    for g, group in plan.mine:
        seed_everything(_group_seed(cfg.seed, group[0].case_id), cfg.runner.deterministic)
        lines = modes.run_group(group, b.ctx, {**b.common, "group": g} if plan.size > 1 else b.common)
        sink.record(lines)
        guard.update(lines)
        sink.forward_shards()
    if b.pre_cache is not None:
        log.info("pre-edit scores: %d case(s) read from the cache, %d computed (%s)",
                 b.pre_cache.hits, b.pre_cache.misses, b.pre_cache.dir)


def _finish(ri: runner.RankInfo, cfg: DictConfig, s: Setup, b: Built, plan: Plan, fp: str,
            t_start: float) -> tuple[dict, list[dict]]:
    """Rank zero: every line in ``results.jsonl`` in dataset order, the summary, run_info.json,
    job.json finished."""
    job = s.job
    lines = resume.read_lines(job.results)[0]
    order = {c.case_id: i for i, c in enumerate(b.ds.cases)}
    lines.sort(key=lambda l: order.get(l["case_id"], len(order)))
    resume.write_lines(job.results, lines)
    resume.clear_shards(job.path)
    summary_rows = summarize(lines, str(cfg.get("elfo", "macro")))
    write_summary_csv(summary_rows, job.summary)
    counts, localisation, failures = results.case_counts(lines, s.edit_code, s.eval_langs, s.mode)
    outcome = results.outcome_line(counts, failures)
    (log.info if set(counts) <= {"ok"} else log.warning)("%s", outcome)  # console and run.log
    ds, cov = b.ds, b.cov
    info = {
        **b.common, "eval_langs": s.eval_langs, "n_cases": len(ds.cases),
        "case_status": dict(counts), "outcome": outcome, "failures": failures,
        "subject_localisation": dict(localisation),
        "targets_not_reached": results.unreached_targets(lines),
        "missing_languages": {k: v for k, v in ds.missing.items() if v}, "dataset_notes": ds.notes,
        "invalid_records": {"policy": cfg.data.get("on_invalid", "error"),
                            "count": len(ds.invalid), "records": ds.invalid},
        "dataset_has_true_answer": any(r.target_true for c in ds.cases for r in c.langs.values()),
        "stats_langs": preflight.stats_langs(cfg, s.eval_langs) if cov is not None else None,
        "covariance": b.editor.covariance_label if s.mcfg.get("use_covariance") else "off",
        "covariance_statistics": cov.summary() if cov is not None else None,
        "pre_cache": b.pre_cache.summary() if b.pre_cache is not None else None,
        "heldout_cases": [c.case_id for c in plan.heldout],
        "published_reference": getattr(b.ctx.published, "source", None),
        "setup_deviations": b.ctx.deviations,
        "world_size": ri.world, "resumed_cases": len(plan.cases) - plan.n_todo,
        "seconds": {"load": round(b.t_loaded - t_start, 2),
                    "total": round(time.perf_counter() - t_start, 2)},
        "config": OmegaConf.to_container(cfg, resolve=True),
        "provenance": provenance(PROJECT_ROOT, getattr(getattr(b.ctx.model, "config", None),
                                                       "_name_or_path", None)),
    }
    write_text_atomic(job.run_info, json.dumps(info, indent=2, ensure_ascii=False))
    resume.write_job_file(job.path, fp, cfg, "finished", case_status=dict(counts))
    return info, summary_rows


def exit_code(info: dict | None, strict: bool) -> int:
    """0, or 3 when no case was edited at all, or when ``strict`` and some case failed or was
    skipped (``run_info.json`` ``outcome`` and ``failures`` say why)."""
    if not info:
        return 0
    status = info.get("case_status", {})
    if not status.get("ok", 0):
        return 3
    if not strict:
        return 0
    return 3 if status.get("failed", 0) or status.get("skipped", 0) else 0


def _group_seed(seed: int, case_id: str) -> int:
    """Each group's RNG state depends on the run seed and its first case only, so results do
    not depend on which rank runs it, in what order, or whether the run was resumed."""
    return zlib.crc32(f"{seed}:{case_id}".encode()) & 0x7FFFFFFF
