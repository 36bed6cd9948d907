"""The report's maths: pure functions over results lines (dicts as in ``results.jsonl``).

Nothing here reads or writes files or draws; everything takes lines and returns numbers, so the
CLI, the notebook and the tests share one implementation.

Conventions (the same as ``xling_edit.results.summarize``):

- only lines with ``status == "ok"`` enter metric aggregates;
- a cell (row, eval_lang) is the mean over the cases' values in that eval language;
- ELFI pools the lines whose eval language was edited (``xling_edit.languages.is_elfi``:
  eval_lang == edit_lang, or every language for ``edit_lang=all``), ELFO the other eval
  languages; by default each language weighs the same (the macro mean of the languages'
  means), ``elfo="pooled"`` weighs each case-language line the same (``xling_edit.aggregate``),
  exactly as in ``summary.csv``;
- the unit of uncertainty is the case: a bootstrap resamples case ids (with replacement) within
  a row and recomputes every cell of that row, ELFI and ELFO from the same resample.
"""

from __future__ import annotations

import math
import zlib
from collections import Counter, defaultdict
from dataclasses import asdict, dataclass
from typing import Iterable, Mapping, Sequence

import numpy as np

from xling_edit.evaluation.answers import GEN_POST_ONLY
from xling_edit.aggregate import DEFAULT_ELFO, ELFI, SCOPES, check_elfo, ok_lines, scope, value_of
from xling_edit.languages import is_elfi

# Mirrors xling_edit.evaluation.evaluate.METRICS / PROTOCOLS / LOCALITY_PROTOCOLS /
# POST_ONLY_KEYS / RENAMED_KEYS (not imported from there: that module pulls in torch;
# tests/unit/test_report.py checks the two agree). Locality's protocols are its own:
# ``agree_token`` / ``agree_exact`` = agreement of the post-edit with the pre-edit argmax
# (stability; post-edit only), ``answer_token_acc`` / ``answer_exact`` = correctness of the true
# answer, ``prob`` = the true answer beats target_new, ``prob_drop`` = pre − post ``prob``.
METRICS = ("reliability", "generalization", "locality", "portability")
PROTOCOLS = ("token_acc", "exact", "prob")
LOCALITY_PROTOCOLS = ("agree_token", "agree_exact", "answer_token_acc", "answer_exact", "prob",
                      "prob_drop")
METRIC_PROTOCOLS = {m: LOCALITY_PROTOCOLS if m == "locality" else PROTOCOLS for m in METRICS}
POST_ONLY_KEYS = ("locality.agree_token", "locality.agree_exact", "locality.prob_drop")
#: keys of results written before the agreement metrics were renamed -> today's names
RENAMED_KEYS = {"locality.token_acc": "locality.agree_token", "locality.exact": "locality.agree_exact"}
PHASES = ("pre", "post")

#: the paper's language order; other languages follow alphabetically
LANG_ORDER = ("en", "de", "fr", "it", "es", "hi", "ta", "kn")
#: what identifies one experimental condition (a heatmap figure). ``variant`` names the
#: settings in which runs of the same model/dataset/method/merge differ (e.g. a swept ROME
#: layer, another covariance corpus); "" when they do not differ (see load.assign_variants)
GROUP_KEYS = ("model", "dataset", "method", "merge", "variant")
#: one table row
ROW_KEYS = GROUP_KEYS + ("edit_lang",)
#: lines with the same identity from two runs are duplicates (the later run wins, see load.py)
LINE_KEYS = ROW_KEYS + ("case_id", "eval_lang")
SUMMARY_COLS = SCOPES
#: known subject-localisation methods, in the order of xling_edit.editing.localize
LOCALISATION_METHODS = ("exact", "normalized", "fuzzy", "translit", "span")


# ----------------------------------------------------------------------------------- basics


def lang_order(codes: Iterable[str]) -> list[str]:
    """``codes`` (deduplicated) in the paper's order (en de fr it es hi ta kn), then others sorted."""
    codes = set(codes)
    known = [c for c in LANG_ORDER if c in codes]
    return known + sorted(codes - set(LANG_ORDER))


def metric_keys(metrics: Sequence[str] = METRICS, protocols: Sequence[str] | None = None) -> list[str]:
    """``<metric>.<protocol>`` for ``metrics``, each with its own protocols
    (:data:`METRIC_PROTOCOLS`) or, when given, only those of ``protocols`` it has."""
    return [f"{m}.{p}" for m in metrics for p in METRIC_PROTOCOLS.get(m, PROTOCOLS)
            if protocols is None or p in protocols]


def upgrade_line(line: dict) -> dict:
    """Rename, in place, the metric keys of a line written by an older version
    (:data:`RENAMED_KEYS`: ``locality.token_acc`` → ``locality.agree_token``, ...) in its
    ``pre`` and ``post`` dicts; a line that already has the new key keeps it. Returns ``line``."""
    for phase in PHASES:
        d = line.get(phase)
        if not isinstance(d, dict):
            continue
        for old, new in RENAMED_KEYS.items():
            if old in d:
                v = d.pop(old)
                d.setdefault(new, v)
    return line


def field(line: Mapping, key: str):
    """``line[key]``; a missing or null key reads as "" (lines carry no ``variant`` of their own)."""
    v = line.get(key)
    return "" if v is None else v


def row_of(line: Mapping) -> tuple:
    return tuple(field(line, k) for k in ROW_KEYS)


def group_of(line_or_row) -> tuple:
    if isinstance(line_or_row, Mapping):
        return tuple(field(line_or_row, k) for k in GROUP_KEYS)
    return tuple(line_or_row[: len(GROUP_KEYS)])


def value(line: Mapping, phase: str, key: str) -> float | None:
    """``line[phase][key]`` as a float, or None when absent, null or NaN."""
    return value_of((line.get(phase) or {}).get(key))


# ----------------------------------------------------------------------- case matrix + split


def _row_index(lines: Sequence[Mapping], eval_langs: Sequence[str]) -> tuple[list[str], np.ndarray, np.ndarray]:
    """(sorted case ids, case index per line, language index per line (-1: not in eval_langs))."""
    col = {c: j for j, c in enumerate(eval_langs)}
    ids = [str(l.get("case_id")) for l in lines]
    cases = sorted(set(ids))
    at = {c: i for i, c in enumerate(cases)}
    return (cases, np.array([at[c] for c in ids], dtype=int),
            np.array([col.get(l.get("eval_lang"), -1) for l in lines], dtype=int))


def _matrix_from_index(lines, phase, key, cases, ii, jj, n_langs) -> tuple[list[str], np.ndarray]:
    vals = np.array([np.nan if (v := value(l, phase, key)) is None else v for l in lines], dtype=float)
    ok = (jj >= 0) & ~np.isnan(vals)
    V = np.full((len(cases), n_langs), np.nan)
    V[ii[ok], jj[ok]] = vals[ok]
    keep = ~np.isnan(V).all(axis=1)
    return [c for c, k in zip(cases, keep) if k], V[keep]


def case_matrix(lines: Sequence[Mapping], phase: str, key: str,
                eval_langs: Sequence[str]) -> tuple[list[str], np.ndarray]:
    """(case ids, values[n_cases, n_langs]) for the lines of ONE row; NaN where a case has no
    value in a language. Cases without any value for ``key`` are left out."""
    lines = list(lines)
    cases, ii, jj = _row_index(lines, eval_langs)
    return _matrix_from_index(lines, phase, key, cases, ii, jj, len(eval_langs))


def selectors(eval_langs: Sequence[str], edit_lang: str) -> tuple[list[str], np.ndarray]:
    """Output columns (each eval language, ELFI, ELFO) and a 0/1 matrix [n_out, n_langs] saying
    which language columns each output column pools."""
    n = len(eval_langs)
    sel = np.zeros((n + 2, n))
    sel[:n, :n] = np.eye(n)
    for j, c in enumerate(eval_langs):
        sel[n if scope(edit_lang, c) == ELFI else n + 1, j] = 1.0
    return list(eval_langs) + list(SUMMARY_COLS), sel


def pooled_means(V: np.ndarray, sel: np.ndarray, weights: np.ndarray | None = None,
                 elfo: str = DEFAULT_ELFO) -> np.ndarray:
    """Means per output column, for each row of case ``weights`` [n_resamples, n_cases]
    (default: every case once). Returns [n_resamples, n_out]; NaN where nothing is pooled.
    ``elfo``: a column over several languages is the mean of their means (``macro``) or of
    their lines (``pooled``): :mod:`xling_edit.aggregate`."""
    check_elfo(elfo)
    if weights is None:
        weights = np.ones((1, V.shape[0]))
    present = ~np.isnan(V)
    if elfo == "macro":  # each language's mean, then the mean over the column's languages
        per_lang = pooled_means(V, np.eye(V.shape[1]), weights, "pooled")  # [n_res, n_langs]
        has = ~np.isnan(per_lang)
        S = np.where(has, per_lang, 0.0) @ sel.T
        C = has.astype(float) @ sel.T
    else:
        sums = np.where(present, V, 0.0) @ sel.T  # per case, per output column
        counts = present.astype(float) @ sel.T
        S, C = weights @ sums, weights @ counts
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(C > 0, S / np.where(C > 0, C, 1.0), np.nan)


def elfi_elfo(V: np.ndarray, eval_langs: Sequence[str], edit_lang: str,
              elfo: str = DEFAULT_ELFO) -> tuple[float, float]:
    """(ELFI, ELFO) point estimates: mean of the edit-language column / of the others."""
    cols, sel = selectors(eval_langs, edit_lang)
    m = pooled_means(V, sel, elfo=elfo)[0]
    return float(m[-2]), float(m[-1])


# -------------------------------------------------------------------------------- bootstrap


def resample_weights(n_cases: int, n_boot: int, rng: np.random.Generator) -> np.ndarray:
    """[n_boot, n_cases] multiplicities of a case bootstrap: each row counts how often each case
    was drawn in n_cases draws with replacement (each row sums to n_cases)."""
    if n_cases == 0:
        return np.zeros((n_boot, 0))
    draws = rng.integers(0, n_cases, size=(n_boot, n_cases))
    flat = (draws + np.arange(n_boot)[:, None] * n_cases).ravel()
    return np.bincount(flat, minlength=n_boot * n_cases).reshape(n_boot, n_cases).astype(float)


def bootstrap_ci(V: np.ndarray, sel: np.ndarray, n_boot: int = 1000, ci: float = 0.95,
                 rng: np.random.Generator | None = None,
                 weights: np.ndarray | None = None,
                 elfo: str = DEFAULT_ELFO) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(mean, lo, hi) per output column: point estimate and percentile bootstrap interval over
    cases (``weights``: precomputed ``resample_weights``, else drawn from ``rng``). Bounds are
    clipped to the range of the pooled values (a mean of resampled values cannot leave it; this
    only removes floating-point noise), so all-equal values give a degenerate interval
    lo == mean == hi."""
    mean = pooled_means(V, sel, elfo=elfo)[0]
    n_out = sel.shape[0]
    lo, hi = np.full(n_out, np.nan), np.full(n_out, np.nan)
    if V.shape[0] == 0:
        return mean, lo, hi
    if weights is None:
        rng = rng if rng is not None else np.random.default_rng(0)
        weights = resample_weights(V.shape[0], n_boot, rng)
    boots = pooled_means(V, sel, weights, elfo)
    a = (1.0 - ci) / 2.0
    for k in range(n_out):
        pooled = V[:, sel[k] > 0]
        pooled = pooled[~np.isnan(pooled)]
        b = boots[:, k]
        b = b[~np.isnan(b)]
        if pooled.size == 0 or b.size == 0:
            continue
        vmin, vmax = pooled.min(), pooled.max()
        lo[k], hi[k] = np.clip(np.quantile(b, [a, 1.0 - a]), vmin, vmax)
        mean[k] = np.clip(mean[k], vmin, vmax)
    return mean, lo, hi


def row_rng(seed: int, row: Sequence) -> np.random.Generator:
    """A generator seeded by ``seed`` and the row's identity: a row's intervals do not depend on
    which other runs are in the report or in which order they were read."""
    return np.random.default_rng([int(seed), zlib.crc32(repr(tuple(row)).encode("utf-8"))])


# -------------------------------------------------------------------------------- aggregate


@dataclass(frozen=True)
class Cell:
    """One aggregate: a row (model, dataset, method, merge, variant, edit_lang), an eval language (or
    ELFI / ELFO), a phase and a metric key."""

    model: str
    dataset: str
    method: str
    merge: str
    variant: str
    edit_lang: str
    eval_lang: str
    phase: str
    key: str
    mean: float
    ci_lo: float
    ci_hi: float
    n_lines: int
    n_cases: int

    @property
    def row(self) -> tuple:
        return (self.model, self.dataset, self.method, self.merge, self.variant, self.edit_lang)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["metric"], d["protocol"] = self.key.split(".", 1) if "." in self.key else (self.key, "")
        return d


def rows_of(lines: Iterable[Mapping]) -> dict[tuple, list[Mapping]]:
    out: dict[tuple, list[Mapping]] = defaultdict(list)
    for l in lines:
        out[row_of(l)].append(l)
    return dict(out)


def aggregate(lines: Iterable[Mapping], phase: str, key: str, n_boot: int = 1000,
              ci: float = 0.95, seed: int = 0, eval_langs: Sequence[str] | None = None,
              elfo: str = DEFAULT_ELFO) -> list[Cell]:
    """Every cell (row × eval language, plus ELFI and ELFO per row) of one table, with bootstrap
    confidence intervals. Non-ok lines are ignored. ``eval_langs`` defaults to those present."""
    return aggregate_many(lines, [(phase, key)], n_boot=n_boot, ci=ci, seed=seed,
                          eval_langs=eval_langs, elfo=elfo)


def aggregate_many(lines: Iterable[Mapping], specs: Iterable[tuple[str, str]], n_boot: int = 1000,
                   ci: float = 0.95, seed: int = 0,
                   eval_langs: Sequence[str] | None = None, elfo: str = DEFAULT_ELFO) -> list[Cell]:
    """``aggregate`` for several (phase, key) pairs (lines are grouped once), in spec order."""
    specs = list(specs)
    rows = sorted(rows_of(ok_lines(lines)).items(), key=lambda kv: _row_sort(kv[0]))
    out: dict[tuple[str, str], list[Cell]] = {s: [] for s in specs}
    for row, rl in rows:
        langs = list(eval_langs) if eval_langs is not None else lang_order(l["eval_lang"] for l in rl)
        index = _row_index(rl, langs)
        cols, sel = selectors(langs, row[-1])
        weights: dict[int, np.ndarray] = {}  # per case count: the row's resamples (same seed)
        for phase, key in specs:
            cases, V = _matrix_from_index(rl, phase, key, *index, len(langs))
            if not cases:
                continue
            if len(cases) not in weights:
                weights[len(cases)] = resample_weights(len(cases), n_boot, row_rng(seed, row))
            mean, lo, hi = bootstrap_ci(V, sel, ci=ci, weights=weights[len(cases)], elfo=elfo)
            per_case = (~np.isnan(V)).astype(int) @ sel.T.astype(int)  # lines per case and column
            n_lines, n_cases = per_case.sum(axis=0), (per_case > 0).sum(axis=0)
            for k, c in enumerate(cols):
                if n_lines[k] == 0:
                    continue
                out[(phase, key)].append(Cell(*row, eval_lang=c, phase=phase, key=key,
                                              mean=float(mean[k]), ci_lo=float(lo[k]),
                                              ci_hi=float(hi[k]), n_lines=int(n_lines[k]),
                                              n_cases=int(n_cases[k])))
    return [c for s in specs for c in out[s]]


def table_specs(pre_metrics: Sequence[str] = ("reliability", "locality")) -> list[tuple[str, str]]:
    """(phase, key) of every table: post-edit for every metric × protocol, pre-edit for
    ``pre_metrics`` (but not :data:`POST_ONLY_KEYS`, which have no pre-edit value)."""
    specs = [("post", k) for k in metric_keys()]
    specs += [("pre", k) for k in metric_keys(tuple(pre_metrics)) if k not in POST_ONLY_KEYS]
    # generated answers (eval.generate): tables appear only where runs have the keys
    specs += [("post", k) for k in GEN_TABLE_KEYS]
    specs += [("pre", k) for k in GEN_TABLE_KEYS if k not in GEN_POST_ONLY]
    return specs


#: generated-answer keys with a table of their own (the rest are in ``generated_rows``)
GEN_TABLE_KEYS = ("reliability.gen", "generalization.gen", "locality.gen", "locality.gen_agree",
                  "portability.gen", "reliability.gen_true", "gen.script_fidelity", "gen.other_script")
#: the columns of the generated-vs-teacher-forced table, per (row, eval language)
GENERATED_COLS = ("forced_exact", "gen", "gap", *(f"gen_{r}" for r in
                  ("exact", "normalized", "romanized", "inflected", "other_form")),
                  "pre_gen_true", "script_fidelity", "other_script", "empty", "fluency")


def generated_rows(lines: Iterable[Mapping], metric: str = "reliability", phase: str = "post",
                   eval_langs: Sequence[str] | None = None, elfo: str = DEFAULT_ELFO) -> list[dict]:
    """Per row (model, dataset, method, merge, variant, edit language) and evaluation language
    (ELFI / ELFO included, averaged like every table): teacher-forced exact match of ``metric``
    beside its generated success, the gap (generated − forced), the generated success by rung,
    the pre-edit share of answers stating the true target (the ceiling), and the answers'
    script fidelity / other script (language confusion) / empty share / fluency."""
    keys = {"forced_exact": f"{metric}.exact", "gen": f"{metric}.gen",
            **{f"gen_{r}": f"{metric}.gen_{r}" for r in ("exact", "normalized", "romanized",
                                                           "inflected", "other_form")},
            "script_fidelity": "gen.script_fidelity", "other_script": "gen.other_script",
            "empty": "gen.empty", "fluency": "gen.fluency"}
    specs = [(phase, k) for k in keys.values()] + [("pre", "reliability.gen_true")]
    cells = aggregate_many(lines, specs, n_boot=1, eval_langs=eval_langs, elfo=elfo)
    at: dict[tuple, dict] = defaultdict(dict)
    for c in cells:
        at[(c.row, c.eval_lang)][(c.phase, c.key)] = c.mean
    out = []
    for (row, ev), vals in at.items():
        if (phase, f"{metric}.gen") not in vals:
            continue
        r = dict(zip(ROW_KEYS, row), eval_lang=ev, metric=metric)
        for col, key in keys.items():
            r[col] = vals.get((phase, key))
        r["pre_gen_true"] = vals.get(("pre", "reliability.gen_true"))
        r["gap"] = None if r["forced_exact"] is None or r["gen"] is None else r["gen"] - r["forced_exact"]
        out.append(r)
    order = {c: i for i, c in enumerate(list(LANG_ORDER) + list(SUMMARY_COLS))}
    return sorted(out, key=lambda r: (_row_sort(tuple(r[k] for k in ROW_KEYS)), order.get(r["eval_lang"], 99)))


def _row_sort(row: tuple):
    rank = {c: i for i, c in enumerate(LANG_ORDER)}
    return tuple(str(x) for x in row[:-1]) + (rank.get(row[-1], len(rank)), str(row[-1]))


def wide_rows(cells: Sequence[Cell], eval_langs: Sequence[str] | None = None) -> tuple[list[str], list[dict]]:
    """A paper-style table from the cells of one (phase, key): one dict per row with the row
    keys, ``n_cases``, and per column ``<lang>``, ``<lang>_ci_lo``, ``<lang>_ci_hi``
    (columns: eval languages in order, then ELFI, ELFO). Returns (value columns, rows)."""
    langs = list(eval_langs) if eval_langs is not None else lang_order(
        c.eval_lang for c in cells if c.eval_lang not in SUMMARY_COLS)
    cols = langs + list(SUMMARY_COLS)
    by_row: dict[tuple, dict[str, Cell]] = defaultdict(dict)
    for c in cells:
        by_row[c.row][c.eval_lang] = c
    out = []
    for row in sorted(by_row, key=_row_sort):
        d: dict = dict(zip(ROW_KEYS, row))
        d["n_cases"] = max(c.n_cases for c in by_row[row].values())
        for col in cols:
            c = by_row[row].get(col)
            d[col] = c.mean if c else None
            d[f"{col}_ci_lo"] = c.ci_lo if c else None
            d[f"{col}_ci_hi"] = c.ci_hi if c else None
        out.append(d)
    return cols, out


def matrix(cells: Sequence[Cell], edit_langs: Sequence[str] | None = None,
           eval_langs: Sequence[str] | None = None) -> tuple[list[str], list[str], np.ndarray]:
    """(edit langs, eval langs, means[n_edit, n_eval]) of the cells of ONE group and key; NaN
    where missing. ELFI/ELFO cells are left out."""
    cells = [c for c in cells if c.eval_lang not in SUMMARY_COLS]
    edits = list(edit_langs) if edit_langs is not None else lang_order(c.edit_lang for c in cells)
    evals = list(eval_langs) if eval_langs is not None else lang_order(c.eval_lang for c in cells)
    M = np.full((len(edits), len(evals)), np.nan)
    ei, vi = {c: i for i, c in enumerate(edits)}, {c: j for j, c in enumerate(evals)}
    for c in cells:
        if c.edit_lang in ei and c.eval_lang in vi:
            M[ei[c.edit_lang], vi[c.eval_lang]] = c.mean
    return edits, evals, M


# ------------------------------------------------------------------------------ diagnostics


def case_outcomes(lines: Iterable[Mapping]) -> list[dict]:
    """One record per (row, case): its status (ok > skipped > failed > missing_eval_lang over
    the case's lines: per-line overrides such as a missing eval language or a tokenisation
    failure do not hide an edit that happened), the reason, and the localisation category:
    ``skipped`` for skipped cases, else the subject's localisation method, else the status."""
    rank = {"ok": 0, "skipped": 1, "failed": 2, "missing_eval_lang": 3}
    by: dict[tuple, list[Mapping]] = defaultdict(list)
    for l in lines:
        by[row_of(l) + (str(l.get("case_id")),)].append(l)
    out = []
    for key, ls in by.items():
        best = min(ls, key=lambda l: rank.get(l.get("status"), 9))
        status = best.get("status")
        subj = next((l.get("subject") for l in ls if l.get("subject")), None)
        if status == "skipped":
            category = "skipped"
        elif subj and subj.get("method"):
            category = str(subj["method"])
        else:
            category = str(status)
        out.append({**dict(zip(ROW_KEYS, key[:-1])), "case_id": key[-1], "status": status,
                    "reason": best.get("reason"), "localisation": category})
    return out


def localisation_table(lines: Iterable[Mapping]) -> tuple[list[str], list[dict]]:
    """Per row (i.e. per edit language): number of cases and the share located by each method
    (exact / normalized / fuzzy / translit / span, others as seen) or skipped / failed.
    Returns (categories, rows) with ``n_cases``, ``<category>`` (count) and ``share_<category>``."""
    outcomes = case_outcomes(lines)
    seen = {o["localisation"] for o in outcomes}
    cats = list(LOCALISATION_METHODS)
    cats += sorted(seen - set(cats) - {"skipped", "failed"})
    cats += ["skipped", "failed"]
    by: dict[tuple, Counter] = defaultdict(Counter)
    for o in outcomes:
        by[tuple(o[k] for k in ROW_KEYS)][o["localisation"]] += 1
    rows = []
    for row in sorted(by, key=_row_sort):
        cnt = by[row]
        n = sum(cnt.values())
        d: dict = {**dict(zip(ROW_KEYS, row)), "n_cases": n}
        for c in cats:
            d[c] = cnt.get(c, 0)
            d[f"share_{c}"] = cnt.get(c, 0) / n if n else None
        rows.append(d)
    return cats, rows


def status_counts(lines: Iterable[Mapping]) -> dict[str, Counter]:
    """{"lines": Counter(status), "cases": Counter(case status)} over all lines."""
    lines = list(lines)
    return {"lines": Counter(str(l.get("status")) for l in lines),
            "cases": Counter(str(o["status"]) for o in case_outcomes(lines))}


def non_ok_reasons(lines: Iterable[Mapping]) -> list[dict]:
    """Counts of non-ok lines per (row, status, reason), most frequent first."""
    cnt: Counter = Counter()
    for l in lines:
        if l.get("status") != "ok":
            cnt[row_of(l) + (str(l.get("status")), str(l.get("reason")))] += 1
    return [{**dict(zip(ROW_KEYS, k[:-2])), "status": k[-2], "reason": k[-1], "lines": n}
            for k, n in sorted(cnt.items(), key=lambda kv: (-kv[1], _row_sort(kv[0][:-2])))]


def _nanmean(xs: Sequence[float | None]) -> float | None:
    xs = [x for x in xs if x is not None and not math.isnan(x)]
    return float(np.mean(xs)) if xs else None


def pearson(xs: Sequence[float | None], ys: Sequence[float | None]) -> float | None:
    """Pearson correlation over the pairs where both are present; None if undefined."""
    pairs = [(x, y) for x, y in zip(xs, ys) if x is not None and y is not None
             and not math.isnan(x) and not math.isnan(y)]
    if len(pairs) < 3:
        return None
    a = np.array(pairs, dtype=float)
    if a[:, 0].std() == 0 or a[:, 1].std() == 0:
        return None
    return float(np.corrcoef(a[:, 0], a[:, 1])[0, 1])


def fertility_points(lines: Iterable[Mapping], success_key: str = "reliability.token_acc") -> list[dict]:
    """Per ok line: target tokens, subject tokens, subject words, tokens per word, and the
    post-edit success (``success_key``)."""
    out = []
    for l in ok_lines(lines):
        tt, st, sw = l.get("target_new_tokens"), l.get("subject_tokens"), l.get("subject_words")
        out.append({**{k: field(l, k) for k in LINE_KEYS},
                    "target_tokens": float(tt) if tt is not None else None,
                    "subject_tokens": float(st) if st is not None else None,
                    "subject_words": float(sw) if sw is not None else None,
                    "subject_tokens_per_word": (float(st) / sw) if st is not None and sw else None,
                    "success": value(l, "post", success_key),
                    "exact": value(l, "post", success_key.split(".")[0] + ".exact")})
    return out


def fertility_table(lines: Iterable[Mapping], success_key: str = "reliability.token_acc") -> list[dict]:
    """Per (model, dataset, method, merge, eval_lang), over ok lines of every edit language:
    mean target tokens, mean subject tokens, tokens per subject word, and mean post-edit
    success (all lines; cross-lingual lines only, eval_lang != edit_lang; exact match)."""
    pts = fertility_points(lines, success_key)
    by: dict[tuple, list[dict]] = defaultdict(list)
    for p in pts:
        by[group_of(p) + (p["eval_lang"],)].append(p)
    order = {c: i for i, c in enumerate(lang_order({k[-1] for k in by}))}
    rows = []
    for k in sorted(by, key=lambda k: (tuple(map(str, k[:-1])), order[k[-1]])):
        ps = by[k]
        rows.append({**dict(zip(GROUP_KEYS, k[:-1])), "eval_lang": k[-1], "n_lines": len(ps),
                     "target_tokens": _nanmean([p["target_tokens"] for p in ps]),
                     "subject_tokens": _nanmean([p["subject_tokens"] for p in ps]),
                     "subject_tokens_per_word": _nanmean([p["subject_tokens_per_word"] for p in ps]),
                     "success": _nanmean([p["success"] for p in ps]),
                     "success_cross": _nanmean([p["success"] for p in ps
                                                if p["eval_lang"] != p["edit_lang"]]),
                     "success_exact": _nanmean([p["exact"] for p in ps])})
    return rows


def fertility_correlations(lines: Iterable[Mapping], success_key: str = "reliability.token_acc") -> list[dict]:
    """Per group: line-level Pearson r of success with target tokens and with subject tokens
    per word."""
    by: dict[tuple, list[dict]] = defaultdict(list)
    for p in fertility_points(lines, success_key):
        by[group_of(p)].append(p)
    return [{**dict(zip(GROUP_KEYS, g)), "n_lines": len(ps),
             "r_target_tokens": pearson([p["target_tokens"] for p in ps], [p["success"] for p in ps]),
             "r_subject_tokens_per_word": pearson([p["subject_tokens_per_word"] for p in ps],
                                                  [p["success"] for p in ps])}
            for g, ps in sorted(by.items(), key=lambda kv: tuple(map(str, kv[0])))]


def split_by(lines: Iterable[Mapping], key: str) -> dict:
    """{value of ``line[key]``: lines} (e.g. ``shared_surface`` → True / False / None)."""
    out: dict = defaultdict(list)
    for l in lines:
        out[l.get(key)].append(l)
    return dict(out)


# ------------------------------------------------------------------------ method comparison

#: a sweep over methods: runs that agree on these and differ in (method, variant)
SWEEP_KEYS = ("model", "dataset", "merge", "edit_lang")
#: the method families in the order the report lists them; others follow alphabetically
METHOD_ORDER = ("rome", "memit", "alphaedit", "lora", "ike", "route", "keybridge")
#: columns that identify one row of a method × eval-language table
METHOD_ROW_KEYS = SWEEP_KEYS + ("method", "variant", "edit_kind")


def sweep_of(row: Sequence) -> tuple:
    """(model, dataset, merge, edit_lang) of a row (a :data:`ROW_KEYS` tuple)."""
    d = dict(zip(ROW_KEYS, row))
    return tuple(d[k] for k in SWEEP_KEYS)


def method_sort_key(method_variant: tuple[str, str]):
    """Known families first (:data:`METHOD_ORDER`), then by name; the published variant (or
    none) before the others of the same method."""
    m, v = (str(x) for x in method_variant)
    rank = {x: i for i, x in enumerate(METHOD_ORDER)}
    return (rank.get(m, len(rank)), m, v not in ("", "published"), v)


def method_sweeps(rows: Iterable[Sequence]) -> dict[tuple, list[tuple[str, str]]]:
    """{sweep (:data:`SWEEP_KEYS`): its (method, variant) pairs in report order} for the sweeps
    with at least two of them: same model, dataset, merge and edit language, different method
    or variant. ``rows`` are :data:`ROW_KEYS` tuples (e.g. ``Cell.row``)."""
    found: dict[tuple, set] = defaultdict(set)
    for row in rows:
        d = dict(zip(ROW_KEYS, row))
        found[sweep_of(row)].add((str(d["method"]), str(d["variant"])))
    return {s: sorted(mv, key=method_sort_key)
            for s, mv in sorted(found.items(), key=lambda kv: _row_sort(kv[0]))
            if len(mv) >= 2}


def method_label(method: str, variant: str, methods: Sequence[tuple[str, str]] = ()) -> str:
    """``rome``, or ``rome · fast`` when ``methods`` (the sweep's pairs) hold the method with
    more than one variant."""
    several = sum(1 for m, _ in methods if m == method) > 1
    return f"{method} · {variant}" if several and variant else str(method)


def edit_kinds(lines: Iterable[Mapping]) -> dict[tuple, str]:
    """{row: ``weights`` | ``context``} from the ok lines' ``edit.edit_kind`` (the most common
    one; rows whose lines predate the field are absent)."""
    cnt: dict[tuple, Counter] = defaultdict(Counter)
    for l in ok_lines(lines):
        kind = (l.get("edit") or {}).get("edit_kind") if isinstance(l.get("edit"), Mapping) else None
        if kind:
            cnt[row_of(l)][str(kind)] += 1
    return {row: c.most_common(1)[0][0] for row, c in cnt.items()}


def method_rows(cells: Sequence[Cell], eval_langs: Sequence[str] | None = None,
                kinds: Mapping[tuple, str] | None = None) -> tuple[list[str], list[dict]]:
    """The method × eval-language table of one (phase, key): ``wide_rows`` of the cells of the
    method sweeps only (see :func:`method_sweeps`), ordered by sweep, then method
    (:data:`METHOD_ORDER`), with ``edit_kind`` from ``kinds`` (:func:`edit_kinds`). Returns
    (value columns, rows); no rows when no sweep compares methods."""
    sweeps = method_sweeps({c.row for c in cells})
    keep = [c for c in cells if sweep_of(c.row) in sweeps]
    if not keep:
        return [], []
    cols, rows = wide_rows(keep, eval_langs)
    kinds = kinds or {}
    for r in rows:
        r["edit_kind"] = kinds.get(tuple(r[k] for k in ROW_KEYS), "")
    sweep_rank = {s: i for i, s in enumerate(sweeps)}
    rows.sort(key=lambda r: (sweep_rank[tuple(r[k] for k in SWEEP_KEYS)],
                             method_sort_key((r["method"], r["variant"]))))
    return cols, rows


def method_matrix(cells: Sequence[Cell], methods: Sequence[tuple[str, str]],
                  cols: Sequence[str]) -> np.ndarray:
    """means[n_methods, n_cols] of the cells of ONE sweep and key: rows the (method, variant)
    pairs, columns eval languages and/or ELFI / ELFO; NaN where missing."""
    M = np.full((len(methods), len(cols)), np.nan)
    mi = {tuple(map(str, mv)): i for i, mv in enumerate(methods)}
    ci = {c: j for j, c in enumerate(cols)}
    for c in cells:
        i, j = mi.get((str(c.method), str(c.variant))), ci.get(c.eval_lang)
        if i is not None and j is not None:
            M[i, j] = c.mean
    return M


#: the two halves of the shared-surface split (``line["shared_surface"]``)
SURFACE_SPLITS = ((True, "shared"), (False, "different"))


def shared_surface_table(lines: Iterable[Mapping], metric: str = "reliability",
                         protocols: Sequence[str] = ("token_acc", "exact"), n_boot: int = 1000,
                         ci: float = 0.95, seed: int = 0) -> tuple[list[str], list[dict]]:
    """Post-edit ELFO ``metric`` split by whether the target is spelled as in the edit language
    (``shared_surface`` true: "shared", false: "different"), per row (model, dataset, method,
    merge, variant, edit language) and ELFO evaluation language, plus the pooled ``ELFO``.

    Only ok ELFO lines (eval language not edited) with a boolean ``shared_surface`` count. Each
    half is aggregated like the main tables (mean over its cases, percentile bootstrap over its
    cases). Each returned row holds the row keys, ``eval_lang`` and, for each half ``s``:
    ``s_n_lines`` / ``s_n_cases`` (ok lines and cases of that half, whatever their values) and
    ``s_<protocol>`` with ``_ci_lo`` / ``_ci_hi``. Returns (value columns, rows)."""
    cross = [l for l in ok_lines(lines) if isinstance(l.get("shared_surface"), bool)
             and not is_elfi(str(l.get("edit_lang")), str(l.get("eval_lang")))]
    if not cross:
        return [], []
    specs = [("post", f"{metric}.{p}") for p in protocols]
    counts: dict[tuple, dict[str, list]] = defaultdict(lambda: defaultdict(list))
    means: dict[tuple, Cell] = {}
    for flag, name in SURFACE_SPLITS:
        part = [l for l in cross if l["shared_surface"] is flag]
        for l in part:
            for col in (l["eval_lang"], "ELFO"):
                counts[(row_of(l), col)][name].append(str(l.get("case_id")))
        # each half pools its lines (a half holds a language's shared cases only)
        for c in aggregate_many(part, specs, n_boot=n_boot, ci=ci, seed=seed, elfo="pooled"):
            means[(c.row, c.eval_lang, name, c.key)] = c
    cols = []
    for _, name in SURFACE_SPLITS:
        cols += [f"{name}_n_lines", f"{name}_n_cases"]
        for p in protocols:
            cols += [f"{name}_{p}", f"{name}_{p}_ci_lo", f"{name}_{p}_ci_hi"]
    rows_langs: dict[tuple, set] = defaultdict(set)
    for row, col in counts:
        rows_langs[row].add(col)
    out = []
    for row in sorted(rows_langs, key=lambda r: (_row_sort(sweep_of(r)),
                                                 method_sort_key((r[2], r[4])))):
        for col in lang_order(rows_langs[row] - {"ELFO"}) + ["ELFO"]:
            d: dict = {**dict(zip(ROW_KEYS, row)), "eval_lang": col}
            for _, name in SURFACE_SPLITS:
                ids = counts[(row, col)].get(name, [])
                d[f"{name}_n_lines"], d[f"{name}_n_cases"] = len(ids), len(set(ids))
                for p in protocols:
                    c = means.get((row, col, name, f"{metric}.{p}"))
                    d[f"{name}_{p}"] = c.mean if c else None
                    d[f"{name}_{p}_ci_lo"] = c.ci_lo if c else None
                    d[f"{name}_{p}_ci_hi"] = c.ci_hi if c else None
            out.append(d)
    return cols, out
