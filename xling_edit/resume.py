"""Nothing lost: find a job's earlier directory, repair what a killed run left, list what is done.

A job directory holds ``job.json`` (written when the job starts: the config's fingerprint and the
resolved config) and ``results.jsonl`` (each finished case group appended, flushed and fsynced
before the next begins). Other ranks of a distributed job write ``.shards/rank<r>.jsonl`` the
same way; rank zero forwards their lines into ``results.jsonl`` as they arrive.

After a ``kill -9`` a file can end in a half-written line, and a case group whose lines were
being written can be incomplete. :func:`repair` keeps only complete groups (merging any shard
lines rank zero had not forwarded yet), so a resumed job redoes exactly the groups that did not
finish, and the final ``results.jsonl`` holds each (case, eval language) once.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections import defaultdict
from pathlib import Path
from typing import Any, Iterable, Sequence

from omegaconf import DictConfig, OmegaConf

from xling_edit.atomic import write_text_atomic
from xling_edit.errors import ConfigError
from xling_edit.jobdir import JOB_FILE, RESULTS, SHARDS, JobDir  # noqa: F401  (names kept here too)

log = logging.getLogger(__name__)

# Keys that change how a job runs or reports, not what it computes.
VOLATILE_KEYS = ("runner", "logger", "output_root", "resume", "resume_roots", "print_tables", "threads",
                 "strict")
VOLATILE_DATA_KEYS = ("max_cases", "case_ids")  # resuming may extend or narrow the case list


def fingerprint(cfg: DictConfig) -> str:
    """A hash of everything in the config that decides the results (not how the job runs)."""
    c = OmegaConf.to_container(cfg, resolve=True)
    for k in VOLATILE_KEYS:
        c.pop(k, None)
    for k in VOLATILE_DATA_KEYS:
        (c.get("data") or {}).pop(k, None)
    blob = json.dumps(c, sort_keys=True, ensure_ascii=False, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def write_job_file(out: Path, fp: str, cfg: DictConfig, status: str, **extra: Any) -> None:
    path = out / JOB_FILE
    old = json.loads(path.read_text()) if path.exists() else {}
    data = {"fingerprint": fp, "status": status,
            "started": old.get("started") or time.strftime("%Y-%m-%dT%H:%M:%S"),
            "updated": time.strftime("%Y-%m-%dT%H:%M:%S"),
            "resumed": old.get("resumed", []), **extra,
            "config": OmegaConf.to_container(cfg, resolve=True)}
    write_text_atomic(path, json.dumps(data, indent=2, ensure_ascii=False, default=str))


def mark_failed(out: Path, fp: str, exc: BaseException) -> None:
    """A job that raised: its ``job.json`` (when this job wrote one and it still says
    ``running``) becomes ``failed`` with the error, so nobody mistakes it for a live job."""
    path = out / JOB_FILE
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return
    if data.get("fingerprint") != fp or data.get("status") != "running":
        return
    data.update(status="failed", updated=time.strftime("%Y-%m-%dT%H:%M:%S"),
                error=f"{type(exc).__name__}: {exc}".strip())
    write_text_atomic(path, json.dumps(data, indent=2, ensure_ascii=False, default=str))


def find_previous(roots: Iterable[Path], fp: str, exclude: Path | None = None) -> Path | None:
    """The most recently updated job directory under ``roots`` whose ``job.json`` has
    fingerprint ``fp`` (``exclude``, the new job's own directory, is never returned)."""
    best: tuple[float, Path] | None = None
    for root in roots:
        root = Path(root)
        if not root.is_dir():
            continue
        for depth in ("*/*/", "*/*/*/", "*/"):
            for job in root.glob(depth + JOB_FILE):
                d = job.parent.resolve()
                if exclude is not None and d == Path(exclude).resolve():
                    continue
                try:
                    if json.loads(job.read_text()).get("fingerprint") != fp:
                        continue
                except (OSError, ValueError):
                    continue
                res = d / RESULTS
                t = max(job.stat().st_mtime, res.stat().st_mtime if res.exists() else 0.0)
                if best is None or t > best[0]:
                    best = (t, d)
    return best[1] if best else None


def read_lines(path: Path) -> tuple[list[dict], bool]:
    """Complete JSON lines of ``path``, and whether anything (a torn tail) was dropped."""
    if not path.exists():
        return [], False
    data = path.read_bytes()
    torn = bool(data) and not data.endswith(b"\n")
    out = []
    for raw in data.split(b"\n")[:-1] if data else []:
        if not raw.strip():
            continue
        try:
            out.append(json.loads(raw))
        except ValueError:
            torn = True  # a line torn mid-write and then followed by more output
    return out, torn


def line_key(line: dict) -> tuple:
    return line["case_id"], line["edit_lang"], line["eval_lang"]


def unit_key(line: dict) -> tuple:
    """The lines written together: one case, or one batch/sequential group."""
    return ("group", line["group"]) if "group" in line else ("case", line["case_id"])


def complete_units(lines: Sequence[dict], per_case: int) -> list[dict]:
    """Drop every write unit with a case that has fewer than ``per_case`` lines."""
    by_case: dict[str, int] = defaultdict(int)
    for l in lines:
        by_case[l["case_id"]] += 1
    broken = {unit_key(l) for l in lines if by_case[l["case_id"]] < per_case}
    return [l for l in lines if unit_key(l) not in broken]


def repair(out: Path, per_case: int) -> list[dict]:
    """Make ``out/results.jsonl`` hold only complete groups, each line once, merging lines that
    other ranks wrote to ``.shards/`` but rank zero had not forwarded; returns the lines."""
    path = JobDir(out).results
    in_file, torn = read_lines(path)
    from_shards = [l for shard in JobDir(out).shard_files() for l in read_lines(shard)[0]]
    unique, seen = [], set()
    for l in in_file + from_shards:  # each (case, edit, eval language) once, first wins
        if line_key(l) not in seen:
            seen.add(line_key(l))
            unique.append(l)
    kept = complete_units(unique, per_case)
    if torn or kept != in_file:
        log.warning("repairing %s: %d complete lines kept of %d read (%d from shards)%s", path,
                    len(kept), len(in_file) + len(from_shards), len(from_shards),
                    "; torn last line dropped" if torn else "")
        write_lines(path, kept)
    clear_shards(out)
    return kept


def write_lines(path: Path, lines: Sequence[dict]) -> None:
    write_text_atomic(path, "".join(json.dumps(l, ensure_ascii=False) + "\n" for l in lines))


def clear_shards(out: Path) -> None:
    shard_dir = JobDir(out).shards
    if shard_dir.is_dir():
        for p in shard_dir.iterdir():
            p.unlink()
        shard_dir.rmdir()


class ShardTail:
    """Reads the complete lines appended to a file since the last call."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.offset = 0

    def new_lines(self) -> list[dict]:
        if not self.path.exists():
            return []
        with open(self.path, "rb") as f:
            f.seek(self.offset)
            data = f.read()
        end = data.rfind(b"\n")
        if end < 0:
            return []
        self.offset += end + 1
        return [json.loads(raw) for raw in data[:end].split(b"\n") if raw.strip()]


def resume_dir(cfg: DictConfig, out: Path, fp: str) -> Path:
    """Where the job writes. ``resume=<path>``: that directory. ``resume=true``: the latest job
    directory under ``resume_roots`` with the same config fingerprint (or ``out`` when there is
    none). Otherwise ``out`` — which is resumed too if it already holds a run of the same config
    (``fp``: :func:`xling_edit.fingerprint` of ``cfg``)."""
    r = cfg.get("resume")
    target = out
    if isinstance(r, str) and r.lower() not in ("true", "false", ""):
        target = Path(r)
        if not (target / JOB_FILE).exists() and not (target / RESULTS).exists():
            raise ConfigError(f"resume={r!r}: no job directory there (no job.json / results.jsonl)")
    elif r is True or (isinstance(r, str) and r.lower() == "true"):
        from xling_edit.paths import resume_roots

        roots = resume_roots(cfg)
        prev = find_previous(roots, fp, exclude=out)
        if prev is None:
            log.info("resume=true: no earlier job with fingerprint %s under %s; starting fresh",
                     fp, [str(r) for r in roots])
        else:
            target = prev
    job = target / JOB_FILE
    if job.exists():
        old = json.loads(job.read_text()).get("fingerprint")
        if old != fp:
            raise ConfigError(f"{target} holds a job with another config (fingerprint {old}, this "
                              f"one {fp}); choose another output directory")
    if target != out:
        log.info("resuming into %s (this invocation's own directory %s keeps only its log)", target, out)
    return target
