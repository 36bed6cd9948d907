"""Formatting tables: CSV files and Markdown text (no maths here)."""

from __future__ import annotations

import csv
import io
import math
from pathlib import Path
from typing import Mapping, Sequence

from xling_edit.atomic import write_text_atomic
from xling_edit.report.maths import METHOD_ROW_KEYS, ROW_KEYS, SURFACE_SPLITS


def fmt(v, digits: int = 3) -> str:
    """A number for Markdown: fixed digits; '–' for missing."""
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "–"
    if isinstance(v, bool):
        return str(v)
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        return f"{v:.{digits}f}"
    return str(v)


def fmt_ci(mean, lo, hi, digits: int = 3) -> str:
    """'mean [lo, hi]' (or just the mean / '–' when bounds are missing)."""
    if mean is None or (isinstance(mean, float) and math.isnan(mean)):
        return "–"
    if lo is None or hi is None or (isinstance(lo, float) and math.isnan(lo)):
        return fmt(mean, digits)
    return f"{mean:.{digits}f} [{lo:.{digits}f}, {hi:.{digits}f}]"


def md_escape(s) -> str:
    return str(s).replace("|", "\\|").replace("\n", " ")


def markdown(header: Sequence[str], rows: Sequence[Sequence]) -> str:
    """A GitHub-flavoured Markdown table from already formatted cells."""
    out = ["| " + " | ".join(md_escape(h) for h in header) + " |",
           "|" + "|".join("---" for _ in header) + "|"]
    out += ["| " + " | ".join(md_escape(c) for c in r) + " |" for r in rows]
    return "\n".join(out)


def markdown_records(rows: Sequence[Mapping], cols: Sequence[str], digits: int = 3,
                     header: Sequence[str] | None = None) -> str:
    return markdown(header or cols, [[fmt(r.get(c), digits) for c in cols] for r in rows])


HEADER_NAMES = {"edit_lang": "edit", "eval_lang": "eval", "n_cases": "n"}


def key_columns(rows: Sequence[Mapping], keys: Sequence[str] = ROW_KEYS) -> list[str]:
    """``keys`` without ``variant`` when no row has one (the usual case)."""
    return [k for k in keys if k != "variant" or any(r.get("variant") for r in rows)]


def wide_markdown(cols: Sequence[str], rows: Sequence[Mapping], digits: int = 3, ci: bool = True) -> str:
    """A paper-style table (from ``maths.wide_rows``): row keys, n, then 'mean [lo, hi]'
    per eval language, ELFI, ELFO."""
    keys = key_columns(rows)
    header = [HEADER_NAMES.get(k, k) for k in keys] + ["n"] + list(cols)
    body = []
    for r in rows:
        cells = [fmt(r.get(k)) for k in keys] + [fmt(r.get("n_cases"))]
        for c in cols:
            cells.append(fmt_ci(r.get(c), r.get(f"{c}_ci_lo"), r.get(f"{c}_ci_hi"), digits) if ci
                         else fmt(r.get(c), digits))
        body.append(cells)
    return markdown(header, body)


def _csv_value(v):
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return ""
    if isinstance(v, float):
        return repr(round(v, 6))
    return v


def write_csv(path: Path, rows: Sequence[Mapping], cols: Sequence[str]) -> Path:
    """Write ``rows`` (dicts) with columns ``cols``; missing values are empty. Atomic."""
    path = Path(path)
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(cols)
    for r in rows:
        w.writerow([_csv_value(r.get(c)) for c in cols])
    write_text_atomic(path, buf.getvalue())
    return path


def wide_csv_columns(cols: Sequence[str]) -> list[str]:
    out = list(ROW_KEYS) + ["n_cases"]
    for c in cols:
        out += [c, f"{c}_ci_lo", f"{c}_ci_hi"]
    return out


def read_csv(path: Path) -> tuple[list[str], list[list[str]]]:
    """(header, rows) of a CSV file, as strings."""
    with open(path, newline="", encoding="utf-8") as f:
        r = list(csv.reader(f))
    return (r[0], r[1:]) if r else ([], [])


def method_csv_columns(cols: Sequence[str]) -> list[str]:
    """Columns of a method × eval-language CSV (``maths.method_rows``)."""
    out = list(METHOD_ROW_KEYS) + ["n_cases"]
    for c in cols:
        out += [c, f"{c}_ci_lo", f"{c}_ci_hi"]
    return out


def method_markdown(cols: Sequence[str], rows: Sequence[Mapping], digits: int = 3) -> str:
    """A method × eval-language table: sweep keys, method, variant (when any), edit kind, n,
    then 'mean [lo, hi]' per eval language, ELFI, ELFO; an unknown edit kind (results written
    before it was recorded) reads '–'."""
    keys = key_columns(rows, METHOD_ROW_KEYS)
    header = [HEADER_NAMES.get(k, k) for k in keys] + ["n"] + list(cols)
    return markdown(header, [[fmt(r.get(k) or None) if k == "edit_kind" else fmt(r.get(k))
                              for k in keys] + [fmt(r.get("n_cases"))]
                             + [fmt_ci(r.get(c), r.get(f"{c}_ci_lo"), r.get(f"{c}_ci_hi"), digits)
                                for c in cols] for r in rows])


def shared_surface_csv_columns(value_cols: Sequence[str]) -> list[str]:
    return list(ROW_KEYS) + ["eval_lang"] + list(value_cols)


def shared_surface_markdown(rows: Sequence[Mapping], protocols: Sequence[str] = ("token_acc", "exact"),
                            digits: int = 3) -> str:
    """The ELFO shared-surface split (``maths.shared_surface_table``): row keys, eval language,
    then per half (shared / different spelling) its lines (cases) and 'mean [lo, hi]' per
    protocol."""
    keys = key_columns(rows)
    header = [HEADER_NAMES.get(k, k) for k in keys] + ["eval"]
    for _, name in SURFACE_SPLITS:
        header += [f"{name}: lines (cases)"] + [f"{name}: {p}" for p in protocols]
    body = []
    for r in rows:
        cells = [fmt(r.get(k)) for k in keys] + [fmt(r.get("eval_lang"))]
        for _, name in SURFACE_SPLITS:
            cells.append(f"{fmt(r.get(f'{name}_n_lines'))} ({fmt(r.get(f'{name}_n_cases'))})")
            cells += [fmt_ci(r.get(f"{name}_{p}"), r.get(f"{name}_{p}_ci_lo"),
                             r.get(f"{name}_{p}_ci_hi"), digits) for p in protocols]
        body.append(cells)
    return markdown(header, body)


def generated_markdown(rows: Sequence[Mapping], value_cols: Sequence[str], digits: int = 3) -> str:
    """The generated-vs-teacher-forced table (``maths.generated_rows``): the row keys that vary
    (method, edit language, ...), the evaluation language, then ``value_cols``."""
    keys = [k for k in ("model", "dataset", "method", "merge", "variant", "edit_lang")
            if len({str(r.get(k)) for r in rows}) > 1 or k in ("method", "edit_lang")]
    header = [HEADER_NAMES.get(k, k) for k in keys] + ["eval"] + list(value_cols)
    return markdown(header, [[fmt(r.get(k)) for k in keys] + [r["eval_lang"]] +
                             [fmt(r.get(c), digits) for c in value_cols] for r in rows])
