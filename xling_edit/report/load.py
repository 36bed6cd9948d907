"""Finding and reading run directories (``results.jsonl`` + ``run_info.json``).

A PATH may be a run directory, a ``results.jsonl`` file, or any folder above runs (a Hydra
multirun sweep, ``outputs/``): folders are searched recursively for ``results.jsonl``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

from xling_edit.report.maths import GROUP_KEYS, LINE_KEYS, field as line_field, ok_lines, upgrade_line

log = logging.getLogger(__name__)

from xling_edit.jobdir import RESULTS
RUN_INFO = "run_info.json"


@dataclass
class Run:
    """One job directory."""

    path: Path
    info: dict | None  # run_info.json, None if absent (job still running or crashed)
    lines: list[dict]
    bad_lines: int = 0  # lines that were not valid JSON (e.g. a partially written last line)
    variant: str = ""  # see assign_variants
    variant_settings: dict = field(default_factory=dict)

    @property
    def name(self) -> str:
        return self.path.name

    def field(self, key: str):
        """A run-level field (model, method, dataset, merge, edit_lang) from run_info.json, else
        from the lines when they agree, else None."""
        if self.info and self.info.get(key) is not None:
            return self.info[key]
        vals = {l.get(key) for l in self.lines}
        return vals.pop() if len(vals) == 1 else None


@dataclass
class Results:
    """Every run found under the given paths, and their lines with duplicates resolved."""

    paths: list[Path]
    runs: list[Run]
    lines: list[dict] = field(default_factory=list)  # each carries "run_dir"
    superseded: int = 0  # lines replaced by the same (row, case, eval_lang) from a later run

    @property
    def ok_lines(self) -> list[dict]:
        return ok_lines(self.lines)

    @property
    def bad_lines(self) -> int:
        return sum(r.bad_lines for r in self.runs)


def find_run_dirs(paths: Iterable[str | os.PathLike]) -> list[Path]:
    """Run directories (folders holding ``results.jsonl``) under ``paths``, deduplicated, in the
    order found (sorted within each path). Missing paths raise ``FileNotFoundError``."""
    found: dict[Path, None] = {}
    for p in map(Path, paths):
        if not p.exists():
            raise FileNotFoundError(f"no such file or directory: {p}")
        if p.is_file():
            if p.name != RESULTS and p.suffix != ".jsonl":
                raise ValueError(f"{p}: expected a run directory, a folder of runs or a {RESULTS}")
            found.setdefault(p.resolve().parent, None)
            continue
        for r in sorted(p.rglob(RESULTS)):
            if r.is_file():
                found.setdefault(r.resolve().parent, None)
    return list(found)


def read_jsonl(path: Path) -> tuple[list[dict], int]:
    """(records, number of undecodable lines)."""
    out, bad = [], 0
    with open(path, encoding="utf-8") as f:
        for line in f:
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                bad += 1
                continue
            if isinstance(rec, dict):
                out.append(rec)
            else:
                bad += 1
    return out, bad


def load_run(path: str | os.PathLike) -> Run:
    """Read one run directory (or its ``results.jsonl``); metric keys of older versions are
    renamed to today's (``maths.upgrade_line``)."""
    p = Path(path)
    results = p if p.is_file() else p / RESULTS
    d = results.parent
    lines, bad = read_jsonl(results)
    info = None
    if (d / RUN_INFO).is_file():
        try:
            info = json.loads((d / RUN_INFO).read_text(encoding="utf-8"))
        except json.JSONDecodeError:
            log.warning("%s: unreadable run_info.json, ignored", d)
    for l in lines:
        upgrade_line(l)  # older results: locality.token_acc -> locality.agree_token, ...
        l["run_dir"] = str(d)
    if bad:
        log.warning("%s: %d undecodable line(s) ignored", results, bad)
    return Run(path=d, info=info, lines=lines, bad_lines=bad)


def _run_time(run: Run) -> tuple:
    try:
        return ((run.path / RESULTS).stat().st_mtime, str(run.path))
    except OSError:
        return (0.0, str(run.path))


#: config keys (dotted prefixes) that do not change what a line measures: which cases / edit
#: language / eval languages a job covered, where files live, printing, threads, batch sizes
IGNORED_CONFIG = ("edit_lang", "eval_langs", "print_tables", "threads", "output_dir", "logger",
                  "eval.batch_size", "data.max_cases", "data.case_ids", "data.root", "data.dir",
                  "model.cache_dir", "model.device", "model.allow_download", "stats.cache",
                  "stats.batch_size", "resume", "resume_roots", "runner", "strict",
                  "abort_after_failures", "export_model", "eval.gen_batch_size",
                  "eval.log_answers", "eval.pre_cache", "eval.head_chunk")
MAX_VARIANT_LABEL = 60


def flatten(d: dict, prefix: str = "") -> dict:
    """{"a.b": value} for nested dicts; lists become JSON text."""
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flatten(v, key + "."))
        else:
            out[key] = json.dumps(v, sort_keys=True) if isinstance(v, (list, tuple)) else v
    return out


def _ignored(key: str) -> bool:
    return any(key == p or key.startswith(p + ".") for p in IGNORED_CONFIG)


def assign_variants(runs: Sequence[Run]) -> None:
    """Name what distinguishes runs of the same model/dataset/method/merge.

    Among the runs of one such group, the config keys (from ``run_info.json``; keys in
    ``IGNORED_CONFIG`` aside) whose values differ are a run's *variant*: ``"method.layer=5"``,
    or ``"cfg-<hash>"`` when that would be long (``variant_settings`` holds the full list). Runs
    that agree, and runs without ``run_info.json``, get ``""``. Each line of a run gets the
    run's variant (``line["variant"]``), so a hyperparameter sweep yields one table row per
    setting and two runs of different settings are never merged as duplicates."""
    groups: dict[tuple, list[tuple[Run, dict]]] = {}
    for r in runs:
        g = tuple(r.field(k) for k in GROUP_KEYS if k != "variant")
        cfg = (r.info or {}).get("config")
        flat = {k: v for k, v in flatten(cfg).items() if not _ignored(k)} if isinstance(cfg, dict) else None
        groups.setdefault(g, []).append((r, flat))
    for members in groups.values():
        flats = [f for _, f in members if f is not None]
        keys = sorted({k for f in flats for k in f})
        differing = [k for k in keys if len({json.dumps(f.get(k), sort_keys=True, default=str)
                                             for f in flats}) > 1]
        for r, f in members:
            if f is None or not differing:
                r.variant, r.variant_settings = "", {}
            else:
                r.variant_settings = {k: f.get(k) for k in differing}
                label = ", ".join(f"{k}={v}" for k, v in r.variant_settings.items())
                if len(label) > MAX_VARIANT_LABEL:
                    digest = hashlib.sha1(json.dumps(r.variant_settings, sort_keys=True,
                                                     default=str).encode()).hexdigest()[:6]
                    label = f"cfg-{digest}"
                r.variant = label
            for l in r.lines:
                if l.get("variant") is None:
                    l["variant"] = r.variant


def dedupe(runs: Sequence[Run]) -> tuple[list[dict], int]:
    """All lines of ``runs``; where two runs hold the same (model, dataset, method, merge,
    variant, edit_lang, case_id, eval_lang), the line of the run whose ``results.jsonl`` was written
    last wins (ties: later path). Returns (lines, number of superseded lines)."""
    latest: dict[tuple, dict] = {}
    superseded = 0
    for run in sorted(runs, key=_run_time):
        for l in run.lines:
            k = tuple(line_field(l, x) for x in LINE_KEYS)
            if k in latest:
                superseded += 1
                del latest[k]  # keep insertion order of the winner
            latest[k] = l
    return list(latest.values()), superseded


def load_results(paths: str | os.PathLike | Iterable[str | os.PathLike]) -> Results:
    """Every run under ``paths`` (see module doc). Raises ``FileNotFoundError`` when none."""
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    paths = [Path(p) for p in paths]
    dirs = find_run_dirs(paths)
    if not dirs:
        raise FileNotFoundError(f"no {RESULTS} under {', '.join(map(str, paths))}")
    runs = [load_run(d) for d in dirs]
    assign_variants(runs)
    lines, superseded = dedupe(runs)
    if superseded:
        log.warning("%d line(s) superseded by a later run of the same condition", superseded)
    return Results(paths=paths, runs=runs, lines=lines, superseded=superseded)


def language_names(runs: Sequence[Run] = (), conf_dir: str | os.PathLike | None = None) -> dict[str, str]:
    """{code: name} from ``conf/edit_lang/*.yaml`` (``xling_edit.languages.load_languages``),
    completed by the edit-language nodes recorded in the runs' ``run_info.json``. Codes found
    nowhere are absent: callers fall back to the code (``name_of``)."""
    names: dict[str, str] = {}
    for run in runs:
        node = ((run.info or {}).get("config") or {}).get("edit_lang") or {}
        if node.get("code") and node.get("name"):
            names[str(node["code"])] = str(node["name"])
    try:
        from xling_edit.languages import load_languages

        reg = load_languages(Path(conf_dir) if conf_dir else None)
        names.update({code: str(node.name) for code, node in reg.items() if node.get("name")})
    except Exception as exc:  # no conf directory, unreadable file: codes are fine
        log.debug("language names unavailable: %s", exc)
    return names


def name_of(code: str, names: dict[str, str]) -> str:
    return names.get(code) or code
