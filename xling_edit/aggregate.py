"""ELFI / ELFO aggregation, written once.

A results line is one (case, evaluation language). Its *scope* is ELFI when the evaluation
language was edited (:func:`xling_edit.languages.is_elfi`) and ELFO otherwise. Every ELFI/ELFO
figure the project shows is a **pooled mean over lines**: each case-language line with a value
weighs one, lines without a value (None, NaN, failed cases) are left out. Three consumers use the
rules defined here, so they cannot disagree:

- ``results.summarize`` (``summary.csv``, the printed tables, W&B's final numbers):
  :func:`pool_lines`;
- the report's bootstrap (``report/maths.selectors``): :func:`scope` per language column, the
  same pooled mean per resample;
- W&B's running charts during a run: :class:`RunningMeans` fed line by line.

``tests/unit/test_aggregate.py`` checks the three against each other on the same lines.
"""

from __future__ import annotations

import math
from collections import defaultdict
from typing import Hashable, Iterable, Mapping, Sequence

from xling_edit.languages import is_elfi

ELFI, ELFO = "ELFI", "ELFO"
#: the two pooled columns, in the order tables show them (after the languages)
SCOPES = (ELFI, ELFO)


def scope(edit_lang: str, eval_lang: str) -> str:
    """"ELFI" when ``eval_lang`` was edited (every language for ``edit_lang='all'``), else "ELFO"."""
    return ELFI if is_elfi(str(edit_lang), str(eval_lang)) else ELFO


def value_of(v) -> float | None:
    """A metric value as a float, or None when it has none (None, NaN, not a number)."""
    if isinstance(v, bool) or v is None:
        return None
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(f) else f


class RunningMeans:
    """Pooled means kept up to date line by line: ``add(group, key, value)``; ``mean(...)``."""

    def __init__(self) -> None:
        self._acc: dict[tuple, list[float]] = defaultdict(lambda: [0.0, 0])

    def add(self, group: Hashable, key: str, value) -> None:
        v = value_of(value)
        if v is None:
            return
        acc = self._acc[(group, key)]
        acc[0] += v
        acc[1] += 1

    def mean(self, group: Hashable, key: str) -> float | None:
        s, n = self._acc.get((group, key), (0.0, 0))
        return s / n if n else None

    def items(self) -> Iterable[tuple[Hashable, str, float]]:
        """(group, key, mean) for every pair with at least one value."""
        for (group, key), (s, n) in self._acc.items():
            if n:
                yield group, key, s / n


def ok_lines(lines: Iterable[Mapping]) -> list[Mapping]:
    """The lines that count: status ok (failed and skipped cases have no metrics)."""
    return [r for r in lines if r.get("status") == "ok"]


def pool_lines(lines: Iterable[Mapping], keys: Sequence[str],
               phases: Sequence[str] = ("pre", "post")) -> dict[tuple[str, str], dict]:
    """Group ok lines by (edit_lang, column), column = each eval language and its scope
    (ELFI/ELFO), and pool: ``{(edit_lang, column): {"n": lines, phase: {key: mean or None}}}``."""
    groups: dict[tuple[str, str], list[Mapping]] = defaultdict(list)
    for r in ok_lines(lines):
        edit, ev = str(r["edit_lang"]), str(r["eval_lang"])
        groups[(edit, ev)].append(r)
        groups[(edit, scope(edit, ev))].append(r)
    out: dict[tuple[str, str], dict] = {}
    for g, recs in sorted(groups.items()):
        means = RunningMeans()
        for r in recs:
            for phase in phases:
                for k in keys:
                    means.add(phase, k, (r.get(phase) or {}).get(k))
        out[g] = {"n": len(recs), **{p: {k: means.mean(p, k) for k in keys} for p in phases}}
    return out
