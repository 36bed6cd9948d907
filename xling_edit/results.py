"""Results files: ``results.jsonl`` (appended and flushed per case), ``summary.csv`` and the
printed edit_lang × eval_lang tables."""

from __future__ import annotations

import csv
import io
import json
import math
import os
from collections import defaultdict
from pathlib import Path
from statistics import mean
from typing import Iterable, Mapping, Sequence

from xling_edit.atomic import write_text_atomic
from xling_edit.evaluation.evaluate import METRIC_KEYS
from xling_edit.languages import is_elfi


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
SUMMARY_KEYS = list(METRIC_KEYS)


def summarize(records: Sequence[Mapping]) -> list[dict]:
    """Mean of every metric per (edit_lang, eval_lang, phase), plus ELFI/ELFO rows per edit_lang.

    ELFI averages the lines whose eval language was edited (eval_lang == edit_lang; every
    language in ``all_languages`` mode), ELFO the others (each case-language line weighs one)."""
    groups: dict[tuple, list[Mapping]] = defaultdict(list)
    for r in records:
        if r.get("status") != "ok":
            continue
        groups[(r["edit_lang"], r["eval_lang"])].append(r)
        groups[(r["edit_lang"], "ELFI" if is_elfi(r["edit_lang"], r["eval_lang"]) else "ELFO")].append(r)
    rows = []
    for (edit, ev), recs in sorted(groups.items()):
        for phase in ("pre", "post"):
            # which configuration made the numbers: the method and its variant (published, fast, ...)
            row = {"method": recs[0].get("method"), "variant": recs[0].get("variant", "published"),
                   "edit_lang": edit, "eval_lang": ev, "phase": phase, "n": len(recs)}
            for k in SUMMARY_KEYS:
                vals = [r[phase].get(k) for r in recs if r.get(phase)]
                vals = [v for v in vals if v is not None and not (isinstance(v, float) and math.isnan(v))]
                row[k] = round(mean(vals), 4) if vals else None
            rows.append(row)
    return rows


def write_summary_csv(rows: Sequence[Mapping], path: Path) -> None:
    cols = ["method", "variant", "edit_lang", "eval_lang", "phase", "n"] + SUMMARY_KEYS
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
    cols = [c for c in (col_order or sorted({v for _, v in cells})) if c not in ("ELFI", "ELFO")]
    cols += ["ELFI", "ELFO"]
    width = 6
    lines = [f"{key} ({phase}-edit)",
             "edit\\eval " + " ".join(f"{c:>{width}}" for c in cols)]
    for e in edits:
        vals = [cells.get((e, c)) for c in cols]
        lines.append(f"{e:<10}" + " ".join(f"{v:>{width}.3f}" if v is not None else f"{'-':>{width}}"
                                            for v in vals))
    return "\n".join(lines)
