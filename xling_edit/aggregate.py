"""ELFI / ELFO aggregation, written once.

A results line is one (case, evaluation language). Its *scope* is ELFI when the evaluation
language was edited (:func:`xling_edit.languages.is_elfi`) and ELFO otherwise. Lines without a
value (None, NaN, failed cases) are left out. An ELFI/ELFO figure is, by default, the **macro
mean**: the mean over the scope's languages of each language's mean over its lines, so every
language weighs the same whatever its number of valid lines (a language whose translations lack
many subjects does not count less). ``elfo="pooled"`` gives the **line-pooled mean** instead
(each case-language line weighs one; the only rule before generated answers were added). The
two agree when every language has the same lines. Three consumers use the rules defined here,
so they cannot disagree:

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
#: how ELFI/ELFO average their languages (see the module doc); the first is the default
ELFO_MEANS = ("macro", "pooled")
DEFAULT_ELFO = ELFO_MEANS[0]


def check_elfo(elfo: str) -> str:
    if elfo not in ELFO_MEANS:
        raise ValueError(f"ELFI/ELFO mean {elfo!r} unknown; one of {list(ELFO_MEANS)}")
    return elfo
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


class ScopeMeans:
    """Running means per evaluation language and their ELFI/ELFO aggregates (``elfo``: macro
    or pooled), fed value by value: ``add(edit_lang, eval_lang, phase, key, value)``."""

    def __init__(self, elfo: str = DEFAULT_ELFO) -> None:
        self.elfo = check_elfo(elfo)
        self.by_lang = RunningMeans()  # (edit, eval_lang, phase)
        self.pooled = RunningMeans()  # (edit, scope, phase)
        self.langs: dict[tuple[str, str], set[str]] = defaultdict(set)  # (edit, scope) -> langs

    def add(self, edit: str, ev: str, phase: str, key: str, value) -> None:
        sc = scope(edit, ev)
        self.langs[(edit, sc)].add(ev)
        self.by_lang.add((edit, ev, phase), key, value)
        self.pooled.add((edit, sc, phase), key, value)

    def lang_mean(self, edit: str, ev: str, phase: str, key: str) -> float | None:
        return self.by_lang.mean((edit, ev, phase), key)

    def scope_mean(self, edit: str, sc: str, phase: str, key: str) -> float | None:
        if self.elfo == "pooled":
            return self.pooled.mean((edit, sc, phase), key)
        means = [m for m in (self.lang_mean(edit, l, phase, key) for l in sorted(self.langs.get((edit, sc), ())))
                 if m is not None]
        return sum(means) / len(means) if means else None

    def scope_items(self, phase: str) -> Iterable[tuple[str, str, str, float]]:
        """(edit_lang, scope, key, mean) for every scope and key with a value in ``phase``."""
        keys = defaultdict(set)
        for (edit, sc, ph), key, _ in self.pooled.items():
            if ph == phase:
                keys[(edit, sc)].add(key)
        for (edit, sc), ks in sorted(keys.items()):
            for key in sorted(ks):
                m = self.scope_mean(edit, sc, phase, key)
                if m is not None:
                    yield edit, sc, key, m


def pool_lines(lines: Iterable[Mapping], keys: Sequence[str],
               phases: Sequence[str] = ("pre", "post"), elfo: str = DEFAULT_ELFO) -> dict[tuple[str, str], dict]:
    """Group ok lines by (edit_lang, column), column = each eval language and its scope
    (ELFI/ELFO), and average (scopes by ``elfo``: macro or pooled, see the module doc):
    ``{(edit_lang, column): {"n": lines, phase: {key: mean or None}}}``."""
    means = ScopeMeans(elfo)
    counts: dict[tuple[str, str], int] = defaultdict(int)
    for r in ok_lines(lines):
        edit, ev = str(r["edit_lang"]), str(r["eval_lang"])
        counts[(edit, ev)] += 1
        counts[(edit, scope(edit, ev))] += 1
        for phase in phases:
            vals = r.get(phase) or {}
            for k in keys:
                means.add(edit, ev, phase, k, vals.get(k))
    out: dict[tuple[str, str], dict] = {}
    for (edit, col), n in sorted(counts.items()):
        get = means.scope_mean if col in SCOPES else means.lang_mean
        out[(edit, col)] = {"n": n, **{p: {k: get(edit, col, p, k) for k in keys} for p in phases}}
    return out
