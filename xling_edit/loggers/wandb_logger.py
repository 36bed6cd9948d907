"""Weights & Biases logger (``logger=wandb``): per-case metrics while the job runs, the
edit_lang × eval_lang tables and heatmaps at the end, one W&B run per job.

``wandb`` is an optional dependency (``pip install 'xling_edit[wandb]'``), imported only when
this logger is used. Mode and credentials are W&B's own: ``logger.mode=auto`` leaves the mode to
``wandb.init`` (``WANDB_MODE``, W&B's settings files) except that a run which would go online
without credentials (``wandb.login(prompt=False)`` finds none: no ``WANDB_API_KEY``, identity
token, settings-file key or netrc entry for the host) is written offline beside
``results.jsonl`` instead; ``wandb sync <job dir>/wandb/offline-run-*`` uploads it later.

Why not a ready-made integration: wandb's Lightning Fabric logger
(``wandb.integration.lightning.fabric.WandbLogger``) needs the full ``lightning`` package (this
project uses ``lightning-fabric`` alone), puts every metric on a ``trainer/global_step`` axis
and logs checkpoints; Lightning Fabric's own loggers are CSV and TensorBoard. What a job logs
(cases done as the x axis, tables, the report) is this module's; the run itself is plain
``wandb.init`` with ``resume="allow"`` and a run id derived from the job directory.

What is logged (``/`` separates W&B sections; metric keys use ``_`` instead of the ``.`` of
``summary.csv``, because W&B reads dots in metric names as nesting):

- ``progress/cases_done`` (the x axis of everything streamed), ``progress/total``,
  ``progress/failed``, ``progress/fraction``;
- ``case/<metric>_<protocol>/<eval_lang>``: post-edit value of the cases finished since the
  previous point (one case with ``log_every=1`` in single mode), for ``stream_protocols``
  (locality's protocols are its own: ``agree_token`` / ``agree_exact`` = agreement with the
  pre-edit argmax, ``answer_*`` = correctness of the true answer, ``prob``, ``prob_drop``; see
  ``xling_edit.evaluation.evaluate``);
- ``ELFI/<metric>_<protocol>``, ``ELFO/<metric>_<protocol>``: running post-edit means over every
  finished case (ok lines only, each case-language line weighing one, as in ``summary.csv``);
- ``time/<timing>``: per-case seconds (pre_eval_s, edit_s, post_eval_s, restore_s);
- at the end: ``tables/summary`` (long-format ``wandb.Table`` of ``summary.csv``), the report
  built into ``<job dir>/report`` (``report/tables/*``, ``report/cells``,
  ``report/diagnostics/*`` tables and ``report/figures/heatmap_*`` images, see
  ``xling_edit.report.wandb_hook``), and in ``run.summary`` the final ``ELFI/*``, ``ELFO/*``,
  ``pre_ELFI/*``, ``pre_ELFO/*`` means, ``cases/<status>`` counts and ``seconds/*``.
"""

from __future__ import annotations


import logging
import math
from collections import defaultdict
from pathlib import Path
from typing import Any, Mapping, Sequence

from omegaconf import DictConfig, OmegaConf

from xling_edit.evaluation.evaluate import METRIC_PROTOCOLS
from xling_edit.aggregate import ScopeMeans
from xling_edit.jobdir import RUN_INFO, SUMMARY
from xling_edit.languages import ALL_LANGUAGES, is_elfi
from xling_edit.loggers.base import RunLogger
from xling_edit.paths import output_root, project_path
from xling_edit.results import SUMMARY_KEYS

log = logging.getLogger(__name__)

MISSING_WANDB = ("logger=wandb needs the `wandb` package, which is optional: "
                 "pip install 'xling_edit[wandb]'  (or: pip install wandb)")
MODES = ("auto", "online", "offline", "disabled")
STEP = "progress/cases_done"
TIMINGS = ("pre_eval_s", "edit_s", "post_eval_s", "restore_s")
TABLE_COLUMNS = ["model", "method", "dataset", "mode", "edit_lang", "eval_lang", "elfi", "phase",
                 "metric", "protocol", "key", "value", "n"]


def import_wandb():
    try:
        import wandb
    except ImportError as exc:
        raise ImportError(MISSING_WANDB) from exc
    return wandb


def wandb_key(key: str) -> str:
    """``reliability.token_acc`` → ``reliability_token_acc`` (dots nest in W&B)."""
    return key.replace(".", "_")


def check_mode(mode: str) -> str:
    """``logger.mode``, lower case; a ``ValueError`` naming it when it is not one of
    :data:`MODES`."""
    mode = str(mode).lower()
    if mode not in MODES:
        raise ValueError(f"logger.mode={mode!r} unknown; one of {list(MODES)}")
    return mode


def init_mode(wandb, mode: str) -> str | None:
    """The ``mode`` argument of ``wandb.init`` for ``logger.mode``. ``auto``: None (W&B decides:
    ``WANDB_MODE``, its settings files, else online), or ``offline`` when W&B would go online
    but ``wandb.login(prompt=False, verify=False)`` finds no credentials (no network, no
    prompt). Any other mode is passed on."""
    mode = check_mode(mode)
    if mode != "auto":
        return mode
    if str(wandb.setup().settings.mode) in ("offline", "dryrun", "disabled"):
        return None
    return None if wandb.login(prompt=False, verify=False) else "offline"


def hydra_sweep_group(out_dir: Path | None = None, root: Path | None = None) -> str | None:
    """The sweep directory of a multirun job (e.g. ``multirun/2026-01-31/12-00-00``), relative
    to ``root`` (the job's ``output_root``) when inside it, else absolute; None for single runs.
    The working directory plays no part.

    From Hydra's runtime config when this process has one; otherwise (ranks started by
    ``torch.multiprocessing``, which do not inherit it) the parent of ``out_dir`` when it holds
    the ``multirun.yaml`` Hydra writes into every sweep directory."""
    sweep = None
    try:
        from hydra.core.hydra_config import HydraConfig
        from hydra.types import RunMode

        if HydraConfig.initialized():
            hc = HydraConfig.get()
            if hc.mode != RunMode.MULTIRUN:
                return None
            sweep = Path(str(hc.sweep.dir))
    except Exception:  # noqa: BLE001  (no usable Hydra context: look at the directory)
        sweep = None
    if sweep is None:
        if out_dir is None or not (Path(out_dir).resolve().parent / "multirun.yaml").is_file():
            return None
        sweep = Path(out_dir).resolve().parent
    sweep = sweep.resolve()
    if root is not None:
        try:
            sweep = sweep.relative_to(Path(root).resolve())
        except ValueError:
            pass
    return sweep.as_posix()[-128:]  # W&B's limit on group names


def _job_overrides() -> list[str]:
    try:
        from hydra.core.hydra_config import HydraConfig

        return list(HydraConfig.get().overrides.task) if HydraConfig.initialized() else []
    except Exception:  # noqa: BLE001
        return []


def _edit_label(cfg: DictConfig) -> tuple[str, str]:
    mode = str(OmegaConf.select(cfg, "method.mode", default="single") or "single")
    edit = ALL_LANGUAGES if mode == "all_languages" else str(OmegaConf.select(cfg, "edit_lang.code", default="?"))
    return edit, mode


def default_run_name(cfg: DictConfig) -> str:
    """``<model>_<method>_<edit_lang>``, plus ``_<mode>`` when the method's mode is not single."""
    edit, mode = _edit_label(cfg)
    parts = [OmegaConf.select(cfg, "model.name", default="model"),
             OmegaConf.select(cfg, "method.name", default="method"), edit]
    if mode != "single":
        parts.append(mode)
    return "_".join(str(p) for p in parts)


def default_tags(cfg: DictConfig) -> list[str]:
    edit, mode = _edit_label(cfg)
    tags = [OmegaConf.select(cfg, "model.name"), OmegaConf.select(cfg, "method.name"),
            f"edit:{edit}", OmegaConf.select(cfg, "data.name"), f"mode:{mode}"]
    merge = OmegaConf.select(cfg, "merge.name")
    if merge and merge != "none":
        tags.append(f"merge:{merge}")
    return [str(t) for t in tags if t]


def _config_dict(cfg: DictConfig) -> dict:
    try:
        return OmegaConf.to_container(cfg, resolve=True)
    except Exception:  # noqa: BLE001  (an interpolation that only resolves inside Hydra)
        return OmegaConf.to_container(cfg, resolve=False)


def _number(v) -> float | None:
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return None
    return None if math.isnan(v) or math.isinf(v) else float(v)


class WandbLogger(RunLogger):
    """One W&B run per job; see the module docstring for the keys. ``settings`` is the
    ``logger`` config node (:class:`xling_edit.config.LoggerConfig`)."""

    name = "wandb"

    def __init__(self, settings: DictConfig | Mapping):
        s = OmegaConf.to_container(settings, resolve=True) if isinstance(settings, DictConfig) else dict(settings)
        self.s = s
        check_mode(s.get("mode", "auto"))  # fail at build time on a bad mode
        self.log_every = max(1, int(s.get("log_every") or 1))
        protos = s.get("stream_protocols")
        known = list(dict.fromkeys(k.split(".", 1)[1] for k in SUMMARY_KEYS))
        unknown = sorted(set(protos or ()) - set(known))
        if unknown:
            raise ValueError(f"logger.stream_protocols {unknown} unknown; one of {known}")
        self.stream_keys = [k for k in SUMMARY_KEYS if protos is None or k.split(".", 1)[1] in protos]
        self.wandb = import_wandb()
        self.run = None
        self.dir: Path | None = None
        self._closed = False
        self._reset_stream()

    def _reset_stream(self) -> None:
        # per-language means and their ELFI/ELFO, as in summary.csv
        self._running = ScopeMeans(getattr(self, "elfo", None) or "macro")
        self._pending: dict[str, list[float]] = defaultdict(list)
        self._pending_time: dict[str, list[float]] = defaultdict(list)
        self._last_progress: dict = {}
        self._logged_done = -1

    # ------------------------------------------------------------------------------ start

    def start(self, cfg: DictConfig, out_dir: Path) -> None:
        s = self.s
        out_dir = Path(out_dir)
        self.dir = Path(project_path(s["dir"])) if s.get("dir") else out_dir
        self.dir.mkdir(parents=True, exist_ok=True)
        group = s.get("group")
        group = hydra_sweep_group(out_dir, output_root(cfg)) if group is None else (str(group) or None)
        tags = (default_tags(cfg) if s.get("auto_tags", True) else []) + [str(t) for t in s.get("tags") or []]
        config = _config_dict(cfg)
        config["job_info"] = {"out_dir": str(out_dir.resolve()), "overrides": _job_overrides()}
        # flat keys to group and filter by (W&B's grouping, parallel coordinates)
        config.update(group_keys(cfg))
        self.elfo = str(cfg.get("elfo", "macro")) if hasattr(cfg, "get") else "macro"
        self._reset_stream()
        self._closed = False
        self.run = self.wandb.init(
            project=s.get("project") or "xling_edit", entity=s.get("entity") or None,
            group=group, name=s.get("run_name") or default_run_name(cfg), job_type=s.get("job_type") or None,
            tags=list(dict.fromkeys(t[:64] for t in tags)), notes=s.get("notes") or None,
            config=config, dir=str(self.dir), mode=init_mode(self.wandb, s.get("mode", "auto")),
            reinit="finish_previous",
            # a resumed job (same job directory) continues its W&B run, its x-axis included
            id=s.get("run_id") or stable_run_id(out_dir), resume="allow")
        for prefix in ("progress", "case", "ELFI", "ELFO", "time"):
            self.run.define_metric(f"{prefix}/*", step_metric=STEP)
        mode = "disabled" if getattr(self.run, "disabled", False) else \
            "offline" if getattr(self.run, "offline", False) else "online"
        where = getattr(self.run, "dir", None)
        log.info("W&B run %s (%s, group %s, mode %s)%s", self.run.name, self.run.id, group, mode,
                 f"; sync later: wandb sync {Path(where).parent}" if mode == "offline" and where else "")

    # ------------------------------------------------------------------------- streaming

    def log_lines(self, lines: Sequence[Mapping], progress: Mapping[str, int]) -> None:
        if self.run is None or self._closed:
            return
        try:
            self._accumulate(lines)
            self._last_progress = dict(progress)
            done, total = int(progress.get("done", 0)), int(progress.get("total", 0) or 0)
            if done % self.log_every == 0 or (total and done >= total):
                self._flush()
        except Exception as exc:  # noqa: BLE001  (never lose the experiment over a chart)
            log.warning("W&B: logging case metrics failed: %s: %s", type(exc).__name__, exc)

    def _accumulate(self, lines: Sequence[Mapping]) -> None:
        seen_cases = set()
        for line in lines:
            case = line.get("case_id")
            if case not in seen_cases:
                seen_cases.add(case)
                for t, v in (line.get("timings") or {}).items():
                    if t in TIMINGS and _number(v) is not None:
                        self._pending_time[t].append(float(v))
            post = line.get("post")
            if line.get("status") != "ok" or not post:
                continue
            edit, ev = str(line.get("edit_lang")), str(line.get("eval_lang"))
            for key in SUMMARY_KEYS:
                v = _number(post.get(key))
                if v is None:
                    continue
                self._running.add(edit, ev, "post", key, v)
                if key in self.stream_keys:
                    self._pending[f"case/{wandb_key(key)}/{line.get('eval_lang')}"].append(v)

    def _flush(self) -> None:
        p = self._last_progress
        done = int(p.get("done", 0))
        if done == self._logged_done and not self._pending:
            return
        total = int(p.get("total", 0) or 0)
        data: dict[str, Any] = {STEP: done, "progress/total": total,
                                "progress/failed": int(p.get("failed", 0)),
                                "progress/fraction": done / total if total else 0.0}
        data.update({k: sum(v) / len(v) for k, v in self._pending.items() if v})
        data.update({f"time/{k}": sum(v) / len(v) for k, v in self._pending_time.items() if v})
        data.update({f"{where}/{wandb_key(key)}": m for _, where, key, m in self._running.scope_items("post")})
        self.run.log(data)
        self._pending.clear()
        self._pending_time.clear()
        self._logged_done = done

    # ---------------------------------------------------------------------------- the end

    def finish(self, out_dir: Path, info: Mapping, summary_rows: Sequence[Mapping]) -> None:
        if self.run is None or self._closed:
            return
        run = self.run
        try:
            if self._last_progress:
                self._flush()
            self._log_final(Path(out_dir), info, summary_rows)
            run.summary["status"] = "finished"
        except Exception as exc:  # noqa: BLE001
            log.warning("W&B: final logging failed: %s: %s", type(exc).__name__, exc)
            run.summary["status"] = "finished"
            run.summary["logger_error"] = f"{type(exc).__name__}: {exc}"
        finally:
            self._end(exit_code=0)

    def _log_final(self, out_dir: Path, info: Mapping, summary_rows: Sequence[Mapping]) -> None:
        wandb, run = self.wandb, self.run
        rows = summary_table_rows(info, summary_rows)
        payload: dict[str, Any] = {"tables/summary": wandb.Table(columns=TABLE_COLUMNS, data=rows)}
        from xling_edit.resume import RESULTS, read_lines

        lines = read_lines(out_dir / RESULTS)[0]
        payload["tables/cases"] = wandb.Table(columns=CASE_COLUMNS, data=case_table_rows(lines))
        answers = answers_table_rows(lines)
        if answers:  # what the model said, per case, prompt and phase (eval.log_answers)
            payload["tables/answers"] = wandb.Table(columns=ANSWER_COLUMNS, data=answers)
        run.log(payload)
        art = wandb.Artifact(f"results-{run.id}", type="results",
                             description="results.jsonl, summary.csv and run_info.json of the job")
        for name in (RESULTS, SUMMARY, RUN_INFO):
            if (out_dir / name).is_file():
                art.add_file(str(out_dir / name), name=name)
        run.log_artifact(art)
        for k, v in headline_summary(info, summary_rows).items():
            run.summary[k] = v
        if self.s.get("report", True):
            try:
                self._log_report(out_dir)
            except Exception as exc:  # noqa: BLE001  (tables above are already logged)
                log.warning("W&B: report for %s not logged: %s: %s", out_dir, type(exc).__name__, exc)
                run.summary["report_error"] = f"{type(exc).__name__}: {exc}"

    def _log_report(self, out_dir: Path) -> None:
        from xling_edit.report import build_report
        from xling_edit.report.wandb_hook import log_report_to_wandb

        if not (out_dir / "results.jsonl").is_file():
            raise FileNotFoundError(f"no results.jsonl in {out_dir}")
        rep = build_report(out_dir, out=out_dir / "report", n_boot=int(self.s.get("n_boot", 1000)))
        log_report_to_wandb(self.run, rep.out, prefix="report")

    def close(self, exc: BaseException | None = None) -> None:
        if self.run is None or self._closed:
            return
        try:
            if exc is not None:
                self.run.summary["status"] = "failed"
                self.run.summary["error"] = f"{type(exc).__name__}: {exc}"[:1000]
            if self._last_progress:
                self._flush()
        except Exception as e:  # noqa: BLE001
            log.warning("W&B: could not record the job's end: %s", e)
        finally:
            self._end(exit_code=0 if exc is None else 1)

    def _end(self, exit_code: int) -> None:
        self._closed = True
        try:
            self.run.finish(exit_code=exit_code)
        except Exception as exc:  # noqa: BLE001  (a broken run must not stop the next job)
            log.warning("W&B: finish failed: %s: %s", type(exc).__name__, exc)
            try:
                self.wandb.finish(exit_code=exit_code)
            except Exception:  # noqa: BLE001
                pass


def stable_run_id(out_dir: Path) -> str:
    """The W&B run id of a job directory: the same whenever the job runs (a resume continues
    the run), different for every other directory."""
    import hashlib

    return hashlib.sha256(str(Path(out_dir).resolve()).encode()).hexdigest()[:16]


def group_keys(cfg) -> dict:
    """Top-level config keys to group runs by in W&B (the nested config has them too)."""
    get = lambda *path: OmegaConf.select(cfg, ".".join(path), default=None)  # noqa: E731
    return {"x_method": get("method", "name"), "x_variant": get("method", "variant"),
            "x_model": get("model", "name"), "x_edit_lang": get("edit_lang", "code"),
            "x_dataset": get("data", "name"), "x_merge": get("merge", "name")}


CASE_COLUMNS = ["case_id", "edit_lang", "eval_lang", "status", "subject", "target_new",
                "pre_reliability_gen", "post_reliability_gen", "pre_reliability_token_acc",
                "post_reliability_token_acc", "post_generalization_gen", "post_locality_gen_agree",
                "post_portability_gen"]


def case_table_rows(lines: Sequence[Mapping]) -> list[list]:
    """One row per results line (case × evaluation language): status, target and the headline
    scores before and after the edit; columns :data:`CASE_COLUMNS`."""
    rows = []
    for l in lines:
        pre, post = l.get("pre") or {}, l.get("post") or {}
        rows.append([l.get("case_id"), l.get("edit_lang"), l.get("eval_lang"), l.get("status"),
                     (l.get("subject") or {}).get("matched"),
                     l.get("target_new"),
                     _number(pre.get("reliability.gen")), _number(post.get("reliability.gen")),
                     _number(pre.get("reliability.token_acc")), _number(post.get("reliability.token_acc")),
                     _number(post.get("generalization.gen")), _number(post.get("locality.gen_agree")),
                     _number(post.get("portability.gen"))])
    return rows


#: the per-case answers table's columns (one row per case, language and prompt)
ANSWER_COLUMNS = ["case_id", "edit_lang", "eval_lang", "metric", "index", "prompt", "target",
                  "pre", "pre_rung", "post", "post_rung", "post_script"]


def answers_table_rows(lines: Sequence[Mapping]) -> list[list]:
    """The generated answers of every results line (its ``answers`` field), one row per prompt;
    columns :data:`ANSWER_COLUMNS`."""
    rows = []
    for line in lines:
        for a in line.get("answers") or ():
            rows.append([str(line.get("case_id")), str(line.get("edit_lang")), str(line.get("eval_lang")),
                         a.get("metric"), a.get("index"), a.get("prompt"), a.get("target"),
                         a.get("pre"), a.get("pre_rung"), a.get("post"), a.get("post_rung"),
                         a.get("post_script")])
    return rows


def summary_table_rows(info: Mapping, summary_rows: Sequence[Mapping]) -> list[list]:
    """``summary.csv`` in long format: one row per (edit_lang, eval_lang, phase, metric key) with a
    value; columns :data:`TABLE_COLUMNS`."""
    ident = [str(info.get(k, "")) for k in ("model", "method", "dataset", "mode")]
    out = []
    for r in summary_rows:
        edit, ev = str(r["edit_lang"]), str(r["eval_lang"])
        elfi = ev == "ELFI" or (ev != "ELFO" and is_elfi(edit, ev))
        for key in SUMMARY_KEYS:
            v = _number(r.get(key))
            if v is None:
                continue
            metric, proto = key.split(".", 1)
            out.append(ident + [edit, ev, elfi, r["phase"], metric, proto, key, v, int(r.get("n") or 0)])
    return out


def headline_summary(info: Mapping, summary_rows: Sequence[Mapping]) -> dict:
    """Final numbers for ``run.summary``: ``ELFI/<key>``, ``ELFO/<key>`` (post-edit),
    ``pre_ELFI/<key>``, ``pre_ELFO/<key>``, ``n_ELFI``/``n_ELFO`` lines, ``cases/<status>``,
    ``seconds/<part>``, ``n_cases``. With several edit languages in one job (not produced by the
    pipeline) the ELFI/ELFO keys get an ``/<edit_lang>`` suffix."""
    out: dict[str, Any] = {}
    edits = sorted({str(r["edit_lang"]) for r in summary_rows})
    for r in summary_rows:
        ev = str(r["eval_lang"])
        if ev not in ("ELFI", "ELFO"):
            continue
        scope = ev if r["phase"] == "post" else f"pre_{ev}"
        suffix = f"/{r['edit_lang']}" if len(edits) > 1 else ""
        for key in SUMMARY_KEYS:
            v = _number(r.get(key))
            if v is not None:
                out[f"{scope}/{wandb_key(key)}{suffix}"] = v
        if r["phase"] == "post":
            out[f"n_{ev}{suffix}"] = int(r.get("n") or 0)
    for status, n in (info.get("case_status") or {}).items():
        out[f"cases/{status}"] = n
    for part, sec in (info.get("seconds") or {}).items():
        if _number(sec) is not None:
            out[f"seconds/{part}"] = sec
    if "n_cases" in info:
        out["n_cases"] = info["n_cases"]
    return out
