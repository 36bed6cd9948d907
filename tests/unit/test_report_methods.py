"""The report's method comparison and shared-surface split on a hand-made sweep over methods
(no model involved): which runs form a sweep, the method × eval-language table and heatmap
matrix, the ELFO reliability split by ``shared_surface`` (counts and means), and the files
``build_report`` writes for them.

The sweep: edit language en, eval languages en/de/hi, cases c1..c3, four method rows
(rome published, rome fast, memit, ike; ike is a context edit), plus an ike case c4 that was
skipped (not counted) and a lone rome run with edit language de (one method: no sweep).

Hand-computed post-edit reliability.token_acc (REL below; exact = 1 only where token_acc = 1):

    rome/published  en 1      de 1.5/3 = 0.5     hi 0.5/3     ELFI 1      ELFO 2/6
    rome/fast       en 2.5/3  de 0.5             hi 0         ELFI 2.5/3  ELFO 1.5/6
    memit           en 2/3    de 2/3             hi 0.25/3    ELFI 2/3    ELFO 2.25/6
    ike             en 1      de 1               hi 2/3       ELFI 1      ELFO 5/6

Shared surface (SHARED below): de c1 c3, hi c3 share the English spelling; de c2, hi c1 c2 do
not. ELFO by half, token_acc (exact):

    rome/published  shared de c1 1, de c3 .5, hi c3 .5 -> 2/3 (1/3), 3 lines, cases c1 c3
                    different de c2 0, hi c1 0, hi c2 0 -> 0 (0), 3 lines, cases c1 c2
    memit           shared 1, 0, 0 -> 1/3 (1/3); different 1, .25, 0 -> 1.25/3 (1/3)
    ike             shared 1, 1, .5 -> 5/6 (2/3); different 1, 1, .5 -> 5/6 (2/3)
"""

from __future__ import annotations

import csv
import re

import numpy as np
import pytest

from tests.report_fixture import metrics, write_multirun, write_run
from xling_edit.report import maths
from xling_edit.report.build import build_report

KEY = "reliability.token_acc"
MODEL, DATASET, MERGE = "tiny_llama", "builtin", "none"
CASES = ("c1", "c2", "c3")
# (method, variant) -> eval language -> post reliability.token_acc of c1, c2, c3
REL = {
    ("rome", "published"): {"en": (1.0, 1.0, 1.0), "de": (1.0, 0.0, 0.5), "hi": (0.0, 0.0, 0.5)},
    ("rome", "fast"): {"en": (1.0, 0.5, 1.0), "de": (0.5, 0.0, 1.0), "hi": (0.0, 0.0, 0.0)},
    ("memit", "published"): {"en": (1.0, 1.0, 0.0), "de": (1.0, 1.0, 0.0), "hi": (0.25, 0.0, 0.0)},
    ("ike", "published"): {"en": (1.0, 1.0, 1.0), "de": (1.0, 1.0, 1.0), "hi": (1.0, 0.5, 0.5)},
}
PRE = {"rome": 0.25, "memit": 0.25, "ike": 0.1}  # pre-edit reliability.token_acc, every line
KIND = {"rome": "weights", "memit": "weights", "ike": "context"}
SHARED = {("de", "c1"): True, ("de", "c2"): False, ("de", "c3"): True,
          ("hi", "c1"): False, ("hi", "c2"): False, ("hi", "c3"): True}
EXPECTED = {  # (method, variant) -> column -> post reliability.token_acc
    ("rome", "published"): {"en": 1.0, "de": 0.5, "hi": 0.5 / 3, "ELFI": 1.0, "ELFO": 2 / 6},
    ("rome", "fast"): {"en": 2.5 / 3, "de": 0.5, "hi": 0.0, "ELFI": 2.5 / 3, "ELFO": 1.5 / 6},
    ("memit", "published"): {"en": 2 / 3, "de": 2 / 3, "hi": 0.25 / 3, "ELFI": 2 / 3,
                             "ELFO": 2.25 / 6},
    ("ike", "published"): {"en": 1.0, "de": 1.0, "hi": 2 / 3, "ELFI": 1.0, "ELFO": 5 / 6},
}
ORDER = [("rome", "published"), ("rome", "fast"), ("memit", "published"), ("ike", "published")]


def _line(method, variant, edit, case, ev, rel, status="ok", pre=None):
    return {"model": MODEL, "method": method, "variant": variant, "dataset": DATASET,
            "merge": MERGE, "mode": "single", "edit_lang": edit, "case_id": case, "eval_lang": ev,
            "elfi": ev == edit, "status": status, "reason": None if status == "ok" else "no subject",
            "pre": metrics(PRE[method] if pre is None else pre, "pre"),
            "post": metrics(rel, "post") if status == "ok" else None,
            "shared_surface": True if ev == edit else SHARED.get((ev, case), True),
            "target_new_tokens": 1, "subject_tokens": 2, "subject_words": 1, "subject": None,
            "edit": {"method": method, "edit_kind": KIND[method]}}


def sweep_lines() -> dict[tuple, list[dict]]:
    """{(method, variant, edit_lang): lines}: the method sweep, ike's skipped c4, the lone run."""
    runs: dict[tuple, list[dict]] = {}
    for (m, v), rel in REL.items():
        runs[(m, v, "en")] = [_line(m, v, "en", c, ev, rel[ev][i])
                              for i, c in enumerate(CASES) for ev in ("en", "de", "hi")]
    # skipped c4 (its lines say shared_surface true: they must not count in either half)
    runs[("ike", "published", "en")] += [_line("ike", "published", "en", "c4", ev, None, "skipped")
                                         for ev in ("en", "de", "hi")]
    # edit de, one method: its own row in the main tables, no method comparison
    runs[("rome", "published", "de")] = [
        {**_line("rome", "published", "de", c, ev, 0.5), "shared_surface": ev != "hi"}
        for c in CASES for ev in ("en", "de", "hi")]
    return runs


def all_lines():
    return [l for ls in sweep_lines().values() for l in ls]


@pytest.fixture(scope="module")
def cells():
    return maths.aggregate_many(all_lines(), maths.table_specs(), n_boot=400, seed=0)


def test_a_sweep_is_several_methods_with_one_edit_language(cells):
    sweeps = maths.method_sweeps({c.row for c in cells})
    assert sweeps == {(MODEL, DATASET, MERGE, "en"): ORDER}  # the lone de run is no sweep
    assert [maths.method_label(m, v, ORDER) for m, v in ORDER] == \
        ["rome · published", "rome · fast", "memit", "ike"]
    # a variant sweep of one method is a sweep too; a single run is not
    assert maths.method_sweeps([(MODEL, DATASET, "rome", MERGE, "layer=1", "en"),
                                (MODEL, DATASET, "rome", MERGE, "layer=3", "en")])
    assert maths.method_sweeps([(MODEL, DATASET, "rome", MERGE, "", "en"),
                                (MODEL, DATASET, "memit", MERGE, "", "de")]) == {}


def test_method_table_holds_the_hand_computed_means(cells):
    post = [c for c in cells if c.phase == "post" and c.key == KEY]
    cols, rows = maths.method_rows(post, ["en", "de", "hi"], maths.edit_kinds(all_lines()))
    assert cols == ["en", "de", "hi", "ELFI", "ELFO"]
    assert [(r["method"], r["variant"]) for r in rows] == ORDER
    for r in rows:
        want = EXPECTED[(r["method"], r["variant"])]
        assert r["edit_lang"] == "en" and r["n_cases"] == 3  # ike's skipped c4 is not counted
        assert r["edit_kind"] == KIND[r["method"]]
        for col, v in want.items():
            assert r[col] == pytest.approx(v, abs=1e-12), (r["method"], r["variant"], col)
            assert r[f"{col}_ci_lo"] <= r[col] <= r[f"{col}_ci_hi"]
    ike = rows[-1]
    assert ike["en_ci_lo"] == ike["en_ci_hi"] == 1.0  # all equal: degenerate interval
    assert rows[0]["ELFO_ci_lo"] < rows[0]["ELFO_ci_hi"]
    # pre-edit: each method's own baseline
    pre = [c for c in cells if c.phase == "pre" and c.key == KEY]
    _, rows = maths.method_rows(pre, None, {})
    assert [(r["method"], r["variant"]) for r in rows] == ORDER
    assert [r["ELFO"] for r in rows] == pytest.approx([PRE[m] for m, _ in ORDER])
    assert {r["edit_kind"] for r in rows} == {""}  # kinds not given


def test_method_matrix_rows_are_methods_columns_languages_and_pools(cells):
    post = [c for c in cells if c.phase == "post" and c.key == KEY and c.edit_lang == "en"]
    cols = ["en", "de", "hi", "ELFI", "ELFO"]
    M = maths.method_matrix(post, ORDER + [("alphaedit", "published")], cols)
    assert M.shape == (5, 5)
    for i, mv in enumerate(ORDER):
        np.testing.assert_allclose(M[i], [EXPECTED[mv][c] for c in cols], atol=1e-12)
    assert np.isnan(M[4]).all()  # a method without cells


def test_shared_surface_split_counts_and_means():
    cols, rows = maths.shared_surface_table(all_lines(), n_boot=400, seed=0)
    assert cols[:2] == ["shared_n_lines", "shared_n_cases"] and "different_exact_ci_hi" in cols
    by = {(r["method"], r["variant"], r["edit_lang"], r["eval_lang"]): r for r in rows}
    # rows: per method row (sweep order), its ELFO languages, then the pool; no ELFI language
    assert [k for k in by if k[2] == "en"] == [(m, v, "en", c) for m, v in ORDER
                                             for c in ("de", "hi", "ELFO")]
    r = by[("rome", "published", "en", "ELFO")]
    assert (r["shared_n_lines"], r["shared_n_cases"]) == (3, 2)
    assert (r["different_n_lines"], r["different_n_cases"]) == (3, 2)
    assert r["shared_token_acc"] == pytest.approx(2 / 3) and r["shared_exact"] == pytest.approx(1 / 3)
    assert r["different_token_acc"] == 0.0 and r["different_exact"] == 0.0
    assert r["shared_token_acc_ci_lo"] <= 2 / 3 <= r["shared_token_acc_ci_hi"]
    r = by[("rome", "published", "en", "de")]
    assert (r["shared_n_lines"], r["different_n_lines"]) == (2, 1)
    assert r["shared_token_acc"] == pytest.approx(0.75) and r["different_token_acc"] == 0.0
    r = by[("memit", "published", "en", "ELFO")]
    assert r["shared_token_acc"] == pytest.approx(1 / 3)
    assert r["different_token_acc"] == pytest.approx(1.25 / 3)
    assert r["shared_exact"] == pytest.approx(1 / 3) and r["different_exact"] == pytest.approx(1 / 3)
    r = by[("ike", "published", "en", "hi")]  # skipped c4 not counted
    assert (r["shared_n_lines"], r["different_n_lines"]) == (1, 2)
    assert r["shared_token_acc"] == 0.5 and r["different_token_acc"] == pytest.approx(0.75)
    r = by[("ike", "published", "en", "ELFO")]
    assert r["shared_token_acc"] == pytest.approx(5 / 6) and r["different_token_acc"] == pytest.approx(5 / 6)
    assert r["shared_exact"] == pytest.approx(2 / 3) and r["different_exact"] == pytest.approx(2 / 3)
    # a language with lines in one half only: the other half is empty, not zero
    r = by[("rome", "published", "de", "hi")]  # the lone run: hi never shares the spelling
    assert r["shared_n_lines"] == 0 and r["shared_token_acc"] is None
    assert r["different_n_lines"] == 3 and r["different_token_acc"] == 0.5
    # lines without the field (older results) are left out; none at all: no table
    old = [{**l, "shared_surface": None} for l in all_lines()]
    assert maths.shared_surface_table(old) == ([], [])


def _read(path):
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def method_report(tmp_path_factory):
    root = tmp_path_factory.mktemp("methods") / "sweep"
    for i, ((m, v, edit), lines) in enumerate(sweep_lines().items()):
        write_run(root / f"{i}_{m}_{v}_{edit}", lines, edit, info=False)
    return build_report(root, out=root / "report", n_boot=200, seed=0)


def test_build_writes_method_tables_heatmaps_and_shared_surface(method_report):
    out = method_report.out
    rows = _read(out / "tables" / "methods_post_reliability_token_acc.csv")
    assert list(rows[0])[:8] == ["model", "dataset", "merge", "edit_lang", "method", "variant",
                                 "edit_kind", "n_cases"]
    assert [(r["method"], r["variant"], r["edit_kind"]) for r in rows] == \
        [(m, v, KIND[m]) for m, v in ORDER]
    for r in rows:
        for col, want in EXPECTED[(r["method"], r["variant"])].items():
            assert float(r[col]) == pytest.approx(want, abs=1e-6)
    pre = _read(out / "tables" / "methods_pre_reliability_token_acc.csv")
    assert [float(r["ELFI"]) for r in pre] == [0.25, 0.25, 0.25, 0.1]
    md = (out / "tables" / "methods_post_reliability_token_acc.md").read_text()
    assert "| en | ike | published | context | 3 | 1.000 [1.000, 1.000] |" in md
    for proto in ("token_acc", "exact", "prob"):
        data = (out / "figures" / f"methods_{MODEL}_{DATASET}_{MERGE}_en_{proto}.png").read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000
    assert not list((out / "figures").glob("methods_*_de_*.png"))  # the lone de run
    # the main tables are still one row per run
    assert len(_read(out / "tables" / "post_reliability_token_acc.csv")) == 5
    surf = {(r["method"], r["variant"], r["edit_lang"], r["eval_lang"]): r
            for r in _read(out / "tables" / "elfo_shared_surface.csv")}
    r = surf[("rome", "published", "en", "ELFO")]
    assert (r["shared_n_lines"], r["shared_n_cases"], r["different_n_lines"]) == ("3", "2", "3")
    assert float(r["shared_token_acc"]) == pytest.approx(2 / 3, abs=1e-6)
    report = method_report.report_md.read_text()
    assert "## Methods compared" in report and "## ELFO reliability by shared surface form" in report
    assert "rome · published, rome · fast, memit, ike" in report
    local = [l for l in re.findall(r"\]\(([^)]+)\)", report) if not l.startswith("http")]
    for l in local:
        assert (out / l).exists(), l
    for name in ("tables/methods_post_reliability_exact.csv", "tables/elfo_shared_surface.csv",
                 f"figures/methods_{MODEL}_{DATASET}_{MERGE}_en_exact.png",
                 "tables/methods_post_locality_agree_token.md"):
        assert name in local, name


def test_a_single_method_report_gets_no_method_outputs(tmp_path):
    """The edit-language sweep of tests/report_fixture.py (one method): no method tables or
    figures; its shared-surface split (en/de share the spelling, hi does not) by hand: edit en,
    ELFO shared = de (0, 1, .5) -> 0.5, different = hi (0, 0, .25) -> 1/12."""
    sweep = write_multirun(tmp_path / "sweep")
    rep = build_report(sweep, out=tmp_path / "rep", n_boot=50, figures=False)
    assert not list((tmp_path / "rep").rglob("methods_*"))
    assert "## Methods compared" not in rep.report_md.read_text()
    surf = {(r["edit_lang"], r["eval_lang"]): r
            for r in _read(tmp_path / "rep" / "tables" / "elfo_shared_surface.csv")}
    assert list(surf) == [("en", "de"), ("en", "hi"), ("en", "ELFO"),
                          ("de", "en"), ("de", "hi"), ("de", "ELFO")]
    r = surf[("en", "ELFO")]
    assert float(r["shared_token_acc"]) == pytest.approx(0.5)
    assert float(r["different_token_acc"]) == pytest.approx(1 / 12, abs=1e-6)
    assert (r["shared_n_lines"], r["different_n_lines"]) == ("3", "3")
    assert surf[("de", "en")]["different_n_lines"] == "0" and surf[("de", "en")]["different_exact"] == ""
