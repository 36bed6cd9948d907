"""Results files: ``results.jsonl`` (appended and flushed per case), ``summary.csv`` and the
printed edit_lang × eval_lang tables."""

from __future__ import annotations

import csv
import io
import json
import os
import re
from collections import Counter
from pathlib import Path
from typing import Iterable, Mapping, Sequence

from xling_edit.atomic import write_text_atomic
from xling_edit.evaluation.answers import GEN_KEYS, GEN_POST_ONLY, answer_records
from xling_edit.evaluation.evaluate import METRIC_KEYS, POST_ONLY_KEYS
from xling_edit.aggregate import DEFAULT_ELFO, SCOPES, ok_lines, pool_lines
from xling_edit.languages import is_elfi


# prob metrics comparing target_new with the true answer: n/a on data without one (zsRE)
NEEDS_TRUE_ANSWER = ("reliability.prob", "generalization.prob")
# locality.agree_token: agreement of post- with pre-edit argmax (stability); locality.prob: the
# true answer beats target_new (correctness, pre and post)
TABLE_KEYS = ("reliability.token_acc", "generalization.token_acc", "locality.agree_token",
              "locality.prob", "portability.token_acc", "reliability.prob", "reliability.exact",
              # generated answers (eval.generate): success at any rung, locality stability, and
              # the share answered in another script than the question's (language confusion)
              "reliability.gen", "locality.gen_agree", "gen.other_script")


class ResultsWriter:
    """Appends JSON lines; each case's lines are flushed and fsynced before the next case."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._f = open(self.path, "a", encoding="utf-8")

    def write_many(self, records: Iterable[Mapping]) -> None:
        for r in records:
            self._f.write(json.dumps(r, ensure_ascii=False, default=_json_default) + "\n")
        self._f.flush()
        os.fsync(self._f.fileno())

    def close(self) -> None:
        self._f.close()


def _json_default(o):
    if hasattr(o, "tolist"):
        return o.tolist()
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


#: summary.csv's metric columns (locality's agreement metrics are ``locality.agree_*``)
SUMMARY_KEYS = list(METRIC_KEYS) + list(GEN_KEYS)


def summarize(records: Sequence[Mapping], elfo: str = DEFAULT_ELFO) -> list[dict]:
    """Mean of every metric per (edit_lang, eval_lang, phase), plus ELFI/ELFO rows per edit_lang
    (:func:`xling_edit.aggregate.pool_lines`: by default the macro mean over the scope's
    languages, ``elfo="pooled"`` the mean over its lines), rounded to 4 decimals."""
    records = ok_lines(records)
    first, deviations = {}, {}
    for r in records:  # which configuration made the numbers: the method and its variant
        first.setdefault(str(r["edit_lang"]), r)
        deviations.setdefault(str(r["edit_lang"]), set()).update(
            ((r.get("edit") or {}).get("deviations") or {}).keys())
    rows = []
    for (edit, ev), pooled in pool_lines(records, SUMMARY_KEYS, elfo=elfo).items():
        r0 = first[edit]
        for phase in ("pre", "post"):
            row = {"method": r0.get("method"), "variant": r0.get("variant", "published"),
                   "edit_lang": edit, "eval_lang": ev, "phase": phase, "n": pooled["n"],
                   # every way any line differs from the published method (edit.deviations)
                   "deviations": " ".join(sorted(deviations.get(edit, ()))) or "none"}
            for k in SUMMARY_KEYS:
                v = pooled[phase][k]
                row[k] = round(v, 4) if v is not None else None
            rows.append(row)
    return rows


def write_summary_csv(rows: Sequence[Mapping], path: Path) -> None:
    cols = ["method", "variant", "edit_lang", "eval_lang", "phase", "n"] + SUMMARY_KEYS + ["deviations"]
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=cols)
    w.writeheader()
    for r in rows:
        w.writerow({c: ("" if r.get(c) is None else r.get(c)) for c in cols})
    write_text_atomic(path, buf.getvalue())


def format_table(rows: Sequence[Mapping], key: str, phase: str = "post",
                 col_order: Sequence[str] | None = None) -> str:
    """An edit_lang × eval_lang text table for one metric key (ELFI/ELFO columns last)."""
    cells = {(r["edit_lang"], r["eval_lang"]): r.get(key) for r in rows if r["phase"] == phase}
    edits = sorted({e for e, _ in cells})
    cols = [c for c in (col_order or sorted({v for _, v in cells})) if c not in SCOPES]
    cols += list(SCOPES)
    width = 6
    lines = [f"{key} ({phase}-edit)",
             "edit\\eval " + " ".join(f"{c:>{width}}" for c in cols)]
    for e in edits:
        vals = [cells.get((e, c)) for c in cols]
        lines.append(f"{e:<10}" + " ".join(f"{v:>{width}.3f}" if v is not None else f"{'-':>{width}}"
                                            for v in vals))
    return "\n".join(lines)


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


def case_counts(lines, edit_code, eval_langs, mode):
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


def outcome_line(counts: Mapping, failures: Sequence[Mapping], top: int = 3) -> str:
    """One line saying what happened to the cases: how many were edited, skipped and failed,
    with the most common reasons (quoted names folded, so one reason counts once)."""
    n = sum(counts.values())
    parts = [f"{counts.get('ok', 0)} edited"]
    for status in ("skipped", "failed"):
        reasons = Counter(re.sub(r"'[^']*'|\"[^\"]*\"", "'…'", str(f.get("reason") or "?"))[:120]
                          for f in failures if f.get("status") == status)
        if reasons:
            common = "; ".join(f"{r} (×{c})" for r, c in reasons.most_common(top))
            parts.append(f"{sum(reasons.values())} {status}: {common}")
    return f"{n} case(s): " + ", ".join(parts)


def case_lines(ev, ctx, common: dict) -> list[dict]:
    """The results lines of one evaluated case (``modes.CaseEval``): one per evaluation
    language, with pre/post metrics, status, the edit's info and the case's timings."""
    case = ev.case
    info = dict(ev.edit_info)
    subject = info.pop("subject", None)
    subjects = info.pop("subjects", None)
    edited = [l for l in ctx.eval_langs if l in case.langs] if ctx.mode == "all_languages" else []
    rec_edit = case.langs.get(ctx.edit_code)
    answers = answer_records(ev.prompts, ev.pre_judged, ev.post_judged if ev.status == "ok" else None) \
        if ev.prompts and getattr(ctx.batch_size, "log_answers", False) else None
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
        if answers is not None and "pre" in line:
            line["answers"] = answers.get(lang, [])
        lines.append(line)
    return lines


def print_report(rows, info, eval_langs, out: Path) -> None:
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
            if key in NEEDS_TRUE_ANSWER and not info.get("dataset_has_true_answer", True):
                print(f"\n{key} ({phase}-edit): n/a: dataset has no true answer")
                continue
            if all(r.get(key) is None for r in rows if r["phase"] == phase):
                continue  # e.g. generated-answer keys of a run with eval.generate=false
            print()
            print(format_table(rows, key, phase, eval_langs))
    print(f"\nresults: {out / 'results.jsonl'}\nsummary: {out / 'summary.csv'}")
