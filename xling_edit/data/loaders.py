"""Dataset loaders. Each returns a :class:`LoadedDataset` in the internal schema.

A case that lacks a language is kept for the languages it has; the missing (case, language)
pairs are counted in ``missing`` and reported in the run summary, never dropped silently.

A record that breaks the format (a missing or empty field, a wrong type, a duplicate id) is an
error, or with ``on_invalid="skip"`` costs its case only: the case is left out and listed in
``invalid`` (file, case, field, problem), which the run prints and writes to ``run_info.json``.
A file that is not JSON at all, or not a list of records, is always an error.
"""

from __future__ import annotations

import importlib.resources
import json
import logging
import os
import unicodedata
from collections import Counter
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

from xling_edit.data.schema import (
    QA, DataError, EditCase, LangRecord, record_from_schema, require_str, str_list,
)
from xling_edit.errors import ConfigError, MissingData

log = logging.getLogger(__name__)

BUILTIN_FILE = "builtin_facts.json"
ON_INVALID = ("error", "skip")


class _Invalid:
    """Collects invalid records under ``on_invalid=skip``; re-raises under ``error``."""

    def __init__(self, policy: str):
        if policy not in ON_INVALID:
            raise ConfigError(f"data.on_invalid={policy!r}; choose one of {list(ON_INVALID)}")
        self.policy = policy
        self.records: list[dict] = []
        self.case_ids: set[str] = set()

    def add(self, exc: DataError, case_id: str | None = None) -> None:
        if self.policy == "error":
            raise exc
        self.records.append(exc.as_dict())
        if case_id is not None:
            self.case_ids.add(str(case_id))


@dataclass
class LoadedDataset:
    name: str
    cases: list[EditCase]
    # (language -> number of cases lacking it) among the returned cases
    missing: Counter = field(default_factory=Counter)
    notes: list[str] = field(default_factory=list)
    # records left out under on_invalid=skip: {file, case, field, problem}
    invalid: list[dict] = field(default_factory=list)
    # the valid cases the selection (data.case_ids / max_cases) left out, in file order: what a
    # method may learn from without touching an evaluated case (IKE's demonstrations)
    unselected: list[EditCase] = field(default_factory=list)

    def count_missing(self, langs: Iterable[str]) -> None:
        self.missing = Counter()
        for lang in langs:
            self.missing[lang] = sum(1 for c in self.cases if lang not in c.langs)


def resolve_path(root: str | None, *parts: str | None, project_root: Path | None = None) -> Path:
    """Join ``root`` and ``parts``; a relative result is tried against the launch directory,
    then against the project root."""
    rel = Path(os.path.expanduser(root or "."))
    for p in parts:
        if p:
            rel = rel / p
    if rel.is_absolute():
        return rel
    candidates = [Path.cwd() / rel]
    if project_root is not None:
        candidates.append(project_root / rel)
    for c in candidates:
        if c.exists():
            return c.resolve()
    return candidates[0]


def _read_json(path: Path) -> Any:
    if not path.exists():
        raise MissingData(f"dataset file not found: {path} (check data.root / data.dir / data.file)")
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except json.JSONDecodeError as exc:
        raise DataError(str(path), None, "<file>", f"invalid JSON: {exc}") from exc


# ---------------------------------------------------------------- built-in multilingual facts
def load_builtin(file: str | Path | None = None, on_invalid: str = "error") -> LoadedDataset:
    if file is None:
        path = Path(str(importlib.resources.files("xling_edit.data").joinpath(BUILTIN_FILE)))
    else:
        path = Path(file)
    raw = _read_json(path)
    facts = raw.get("facts") if isinstance(raw, Mapping) else None
    if not isinstance(facts, list):
        raise DataError(str(path), None, "facts", "expected a top-level object with a 'facts' list")
    cases, seen = [], set()
    invalid = _Invalid(on_invalid)
    for i, fact in enumerate(facts):
        cid = None
        try:
            if not isinstance(fact, Mapping):
                raise DataError(str(path), i, "<case>", "expected an object")
            cid = require_str(fact, "case_id", file=str(path), case=i)
            if cid in seen:
                raise DataError(str(path), cid, "case_id", "duplicate")
            seen.add(cid)
            langs = fact.get("langs")
            if not isinstance(langs, Mapping) or not langs:
                raise DataError(str(path), cid, "langs", "expected an object keyed by language code")
            case = EditCase(case_id=cid, relation=fact.get("relation"))
            for lang, rec in langs.items():
                case.langs[lang] = record_from_schema(rec, file=str(path), case=cid, lang=lang)
        except DataError as exc:
            invalid.add(exc, cid)
            continue
        cases.append(case)
    return LoadedDataset(name="builtin", cases=cases, invalid=invalid.records)


# ---------------------------------------------------------------- BMIKE-53 / zsRE-style halves
def record_from_bmike(d: Any, *, file: str, case: Any, lang: str) -> LangRecord:
    """A BMIKE-53 half (also EasyEdit's zsRE format): subject, src, rephrase, old/pred, alt,
    loc, loc_ans, port, port_ans."""
    p = f"{lang}."
    if not isinstance(d, Mapping):
        raise DataError(file, case, lang, "expected an object")
    true = require_str(d, "old", file=file, case=case, prefix=p, optional=True)
    if true is None:
        true = require_str(d, "pred", file=file, case=case, prefix=p, optional=True)
    loc = require_str(d, "loc", file=file, case=case, prefix=p, optional=True)
    port = require_str(d, "port", file=file, case=case, prefix=p, optional=True)
    return LangRecord(
        subject=require_str(d, "subject", file=file, case=case, prefix=p),
        prompt=require_str(d, "src", file=file, case=case, prefix=p),
        target_new=require_str(d, "alt", file=file, case=case, prefix=p),
        target_true=true,
        rephrases=str_list(d.get("rephrase"), file=file, case=case, name=p + "rephrase"),
        locality=(QA(loc, require_str(d, "loc_ans", file=file, case=case, prefix=p)),) if loc else (),
        portability=(QA(port, require_str(d, "port_ans", file=file, case=case, prefix=p)),)
        if port else (),
    )


def load_bmike53(directory: Path, pattern: str, langs: Sequence[str], name: str,
                 on_invalid: str = "error", report: bool = True) -> LoadedDataset:
    """Per-language files, row-aligned by case_id; English comes from the ``en`` halves (of
    every file read; with English alone, of the first file matching ``pattern``)."""
    if "{lang}" not in pattern:
        raise ConfigError(f"data.pattern must contain '{{lang}}', got {pattern!r}")
    if not directory.is_dir():
        raise MissingData(f"BMIKE-53 directory not found: {directory} (set data.root / data.dir)")
    cases: dict[str, EditCase] = {}
    order: list[str] = []
    notes = []
    invalid = _Invalid(on_invalid)
    files = [(lang, directory / pattern.format(lang=lang)) for lang in langs if lang != "en"]
    if not files:  # English only: every file holds the English halves; read one
        found = sorted(directory.glob(pattern.replace("{lang}", "*")))
        if found:
            files = [(None, found[0])]
            notes.append(f"English halves read from {found[0].name}")
    for lang, path in files:
        if not path.exists():
            notes.append(f"no file for language {lang!r} ({path.name}); all cases lack {lang}")
            if report:
                log.warning(notes[-1])
            continue
        rows = _read_json(path)
        if not isinstance(rows, list):
            raise DataError(str(path), None, "<file>", "expected a JSON list of records")
        for i, row in enumerate(rows):
            cid = None
            try:
                if not isinstance(row, Mapping):
                    raise DataError(str(path), i, "<record>", "expected an object")
                en = row.get("en")
                anchor = en if isinstance(en, Mapping) else row.get(lang)
                if not isinstance(anchor, Mapping) or "case_id" not in anchor:
                    raise DataError(str(path), i, "en.case_id", "missing")
                cid = str(anchor["case_id"])
                if cid not in cases:
                    cases[cid] = EditCase(case_id=cid)
                    order.append(cid)
                case = cases[cid]
                if isinstance(en, Mapping) and "en" not in case.langs:
                    case.langs["en"] = record_from_bmike(en, file=str(path), case=cid, lang="en")
                half = row.get(lang) if lang is not None else None
                if half is not None:
                    case.langs[lang] = record_from_bmike(half, file=str(path), case=cid, lang=lang)
            except DataError as exc:
                invalid.add(exc, cid)
    if not cases:
        raise MissingData(
            f"no BMIKE-53 files matching {pattern!r} in {directory} for languages {list(langs)}")
    order = [c for c in order if c not in invalid.case_ids]
    return LoadedDataset(name=name, cases=[cases[c] for c in order], notes=notes,
                         invalid=invalid.records)


# ---------------------------------------------------------------- EasyEdit / ROME single language
def record_from_easyedit(d: Mapping, *, file: str, case: Any) -> LangRecord:
    if "requested_rewrite" in d:  # ROME's CounterFact layout
        rw = d["requested_rewrite"]
        if not isinstance(rw, Mapping):
            raise DataError(file, case, "requested_rewrite", "expected an object")
        subject = require_str(rw, "subject", file=file, case=case, prefix="requested_rewrite.")
        template = require_str(rw, "prompt", file=file, case=case, prefix="requested_rewrite.")
        if "{}" not in template:
            raise DataError(file, case, "requested_rewrite.prompt", "expected a '{}' placeholder")
        new = rw.get("target_new") or {}
        true = rw.get("target_true") or {}
        true_str = true.get("str") if isinstance(true, Mapping) else None
        neighbours = d.get("neighborhood_prompts") or []
        return LangRecord(
            subject=subject, prompt=template.format(subject),
            target_new=require_str(new, "str", file=file, case=case, prefix="requested_rewrite.target_new."),
            target_true=true_str,
            rephrases=str_list(d.get("paraphrase_prompts"), file=file, case=case, name="paraphrase_prompts"),
            locality=tuple(QA(p, true_str) for p in neighbours if isinstance(p, str) and true_str),
        )
    if "src" in d and "alt" in d:  # EasyEdit zsRE layout
        return record_from_bmike(d, file=file, case=case, lang="")
    loc_prompt = require_str(d, "locality_prompt", file=file, case=case, optional=True)
    port = d.get("portability") or []
    return LangRecord(
        subject=require_str(d, "subject", file=file, case=case),
        prompt=require_str(d, "prompt", file=file, case=case),
        target_new=require_str(d, "target_new", file=file, case=case),
        target_true=require_str(d, "ground_truth", file=file, case=case, optional=True),
        rephrases=str_list(d.get("rephrase_prompt"), file=file, case=case, name="rephrase_prompt"),
        locality=(QA(loc_prompt, require_str(d, "locality_ground_truth", file=file, case=case)),)
        if loc_prompt else (),
        portability=tuple(
            QA(require_str(p, "prompt", file=file, case=case, prefix=f"portability[{i}]."),
               require_str(p, "ground_truth", file=file, case=case, prefix=f"portability[{i}]."))
            for i, p in enumerate(port) if isinstance(p, Mapping)),
    )


def load_easyedit(path: Path, lang: str, name: str, on_invalid: str = "error") -> LoadedDataset:
    rows = _read_json(path)
    if not isinstance(rows, list):
        raise DataError(str(path), None, "<file>", "expected a JSON list of records")
    cases = []
    invalid = _Invalid(on_invalid)
    for i, row in enumerate(rows):
        try:
            if not isinstance(row, Mapping):
                raise DataError(str(path), i, "<record>", "expected an object")
            cid = str(row.get("case_id", i))
            cases.append(EditCase(case_id=cid, langs={lang: record_from_easyedit(row, file=str(path), case=cid)}))
        except DataError as exc:
            invalid.add(exc)
    return LoadedDataset(name=name, cases=cases, invalid=invalid.records)


# ---------------------------------------------------------------- front door
def load_dataset(cfg: Mapping[str, Any], langs: Sequence[str],
                 project_root: Path | None = None, report: bool = True) -> LoadedDataset:
    """Load the dataset a ``data`` config describes, select cases, count missing languages.

    ``cfg["on_invalid"]``: ``error`` (default) or ``skip`` (see the module doc). ``report``: log
    what was skipped or is missing (off for the checks made before the model loads)."""
    loader = cfg["loader"]
    name = cfg.get("name") or loader
    policy = str(cfg.get("on_invalid") or "error")
    if loader == "builtin":
        file = cfg.get("file")
        ds = load_builtin(resolve_path(None, file, project_root=project_root) if file else None,
                          on_invalid=policy)
    elif loader == "bmike53":
        directory = resolve_path(cfg.get("root"), cfg.get("dir"), project_root=project_root)
        ds = load_bmike53(directory, cfg.get("pattern") or "", langs, name, on_invalid=policy,
                          report=report)
    elif loader == "easyedit":
        path = resolve_path(cfg.get("root"), cfg.get("file"), project_root=project_root)
        ds = load_easyedit(path, cfg.get("lang") or "en", name, on_invalid=policy)
    else:
        raise ConfigError(f"unknown data.loader {loader!r}; one of builtin, bmike53, easyedit")
    if ds.invalid and report:
        log.warning("data.on_invalid=skip: %d invalid record(s) left out, %d cases kept: %s",
                    len(ds.invalid), len(ds.cases), "; ".join(
                        f"{r['file'].rsplit('/', 1)[-1]} case {r['case']}: {r['field']}: {r['problem']}"
                        for r in ds.invalid[:5]) + (" ..." if len(ds.invalid) > 5 else ""))
    ds.name = name
    if not ds.cases:
        raise DataError(name, None, "<dataset>", f"no valid cases ({len(ds.invalid)} invalid record(s) "
                        f"skipped; first: {ds.invalid[0] if ds.invalid else None})")
    every = list(ds.cases)
    ids = cfg.get("case_ids")
    if ids:
        wanted = [str(i) for i in ids]
        by_id = {c.case_id: c for c in ds.cases}
        unknown = [i for i in wanted if i not in by_id]
        if unknown:
            skipped = {r["case"] for r in ds.invalid}
            why = [f"{i} (invalid record, skipped)" if i in skipped else i for i in unknown[:10]]
            raise ConfigError(f"data.case_ids not in dataset {name!r}: {why}")
        ds.cases = [by_id[i] for i in wanted]
    max_cases = cfg.get("max_cases")
    if max_cases is not None:
        if max_cases < 1:
            raise ConfigError(f"data.max_cases must be >= 1 (null keeps every case), got {max_cases}")
        ds.cases = ds.cases[: int(max_cases)]
    selected = {c.case_id for c in ds.cases}
    ds.unselected = [c for c in every if c.case_id not in selected]
    nfc_cases(ds.unselected)
    changed = nfc_cases(ds.cases)
    if changed:
        note = (f"{changed} text field(s) were not in Unicode NFC and were normalised (a subject "
                f"and its prompt must compare equal however their letters were composed)")
        ds.notes.append(note)
        if report:
            log.info("dataset %s: %s", name, note)
    ds.count_missing(langs)
    return ds


def _nfc(text):
    return unicodedata.normalize("NFC", text) if isinstance(text, str) else text


def nfc_cases(cases: Sequence[EditCase]) -> int:
    """Normalise every text of ``cases`` to Unicode NFC in place; returns how many fields
    changed (a Tamil subject in NFC and its prompt in NFD look identical and never match)."""
    changed = 0
    for case in cases:
        for lang, rec in list(case.langs.items()):
            new = {}
            for f in ("subject", "prompt", "target_new", "target_true"):
                v = getattr(rec, f)
                if _nfc(v) != v:
                    new[f], changed = _nfc(v), changed + 1
            reph = tuple(_nfc(x) for x in rec.rephrases)
            changed += sum(a != b for a, b in zip(reph, rec.rephrases))
            qas = {}
            for f in ("locality", "portability"):
                items = getattr(rec, f)
                fixed = tuple(type(q)(_nfc(q.prompt), _nfc(q.answer)) for q in items)
                changed += sum(q != r for q, r in zip(fixed, items))
                qas[f] = fixed
            if new or reph != rec.rephrases or any(qas[f] != getattr(rec, f) for f in qas):
                case.langs[lang] = replace(rec, **new, rephrases=reph, **qas)
    return changed
