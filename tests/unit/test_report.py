"""The report's maths on a hand-made results set (tests/report_fixture.py): means, the ELFI/ELFO
split, bootstrap intervals, diagnostics, loading (recursion, duplicates, variants), W&B hook."""

from __future__ import annotations

import json
import sys
import types

import numpy as np
import pytest

from tests.report_fixture import (CASES, EXPECTED, LOC_AGREE, LOC_PROB_POST, PRE_REL,
                                  fixture_lines, write_multirun, write_run)
from xling_edit.report import maths
from xling_edit.report.load import find_run_dirs, language_names, load_results

KEY = "reliability.token_acc"


def cells_by(cells):
    return {(c.edit_lang, c.eval_lang): c for c in cells}


@pytest.fixture(scope="module")
def post_cells():
    return cells_by(maths.aggregate(fixture_lines(), "post", KEY, n_boot=500, seed=0))


def test_constants_mirror_the_evaluator():
    from xling_edit.evaluation import evaluate as ev

    assert maths.METRICS == ev.METRICS and maths.PROTOCOLS == ev.PROTOCOLS
    assert maths.LOCALITY_PROTOCOLS == ev.LOCALITY_PROTOCOLS
    assert maths.POST_ONLY_KEYS == ev.POST_ONLY_KEYS and maths.RENAMED_KEYS == ev.RENAMED_KEYS
    assert tuple(maths.metric_keys()) == ev.METRIC_KEYS


def test_lang_order_is_the_papers_then_alphabetical():
    assert maths.lang_order(["kn", "zz", "hi", "en", "aa", "de", "en"]) == ["en", "de", "hi", "kn", "aa", "zz"]


def test_aggregate_gives_hand_computed_means_and_elfi_elfo(post_cells):
    assert set(post_cells) == set(EXPECTED)
    for k, want in EXPECTED.items():
        assert post_cells[k].mean == pytest.approx(want, abs=1e-12), k
    # only ok lines: the skipped c4 (en) and the failed c5 (de, post values 0) are not counted
    assert post_cells[("de", "de")].mean == 1.0
    assert post_cells[("en", "en")].n_cases == 3 and post_cells[("en", "en")].n_lines == 3
    assert post_cells[("en", "ELFO")].n_lines == 6 and post_cells[("en", "ELFI")].n_lines == 3
    c = post_cells[("en", "de")]
    assert (c.model, c.dataset, c.method, c.merge, c.variant, c.phase, c.key) == \
        ("tiny_llama", "builtin", "rome", "none", "", "post", KEY)


def test_pre_edit_values_and_missing_metrics():
    pre = maths.aggregate(fixture_lines(), "pre", KEY, n_boot=50)
    assert {c.mean for c in pre} == {PRE_REL}
    assert maths.aggregate(fixture_lines(), "pre", "locality.agree_token") == []  # undefined pre-edit
    assert {c.mean for c in maths.aggregate(fixture_lines(), "pre", "locality.prob", n_boot=10)} == {1.0}
    post = maths.aggregate(fixture_lines(), "post", "locality.prob_drop", n_boot=10)
    assert {c.mean for c in post} == {1.0 - LOC_PROB_POST}
    assert maths.aggregate(fixture_lines(), "post", "portability.prob") == []


def test_elfi_elfo_split_on_a_matrix():
    V = np.array([[1.0, 0.0, np.nan],
                  [0.5, 1.0, 0.25]])
    langs = ["en", "de", "hi"]
    elfi, elfo = maths.elfi_elfo(V, langs, "de")
    assert elfi == pytest.approx(0.5)                          # de column
    # macro (default): mean of the en mean (.75) and the hi mean (.25, NaN skipped)
    assert elfo == pytest.approx((0.75 + 0.25) / 2)
    pooled = maths.elfi_elfo(V, langs, "de", elfo="pooled")[1]
    assert pooled == pytest.approx((1.0 + 0.5 + 0.25) / 3)   # pooled en+hi lines, NaN skipped
    assert maths.elfi_elfo(V, langs, "xx")[0] != maths.elfi_elfo(V, langs, "xx")[0]  # NaN: no ELFI
    cols, sel = maths.selectors(langs, "en")
    assert cols == ["en", "de", "hi", "ELFI", "ELFO"]
    assert sel[3].tolist() == [1, 0, 0] and sel[4].tolist() == [0, 1, 1]


def test_matches_the_runs_own_summary():
    """Same conventions as summary.csv (xling_edit.results.summarize)."""
    from xling_edit.results import summarize

    rows = {(r["edit_lang"], r["eval_lang"]): r for r in summarize(fixture_lines()) if r["phase"] == "post"}
    for (edit, ev), c in cells_by(maths.aggregate(fixture_lines(), "post", KEY, n_boot=10)).items():
        assert rows[(edit, ev)][KEY] == pytest.approx(c.mean, abs=1e-4)


def test_ci_contains_the_mean_and_is_degenerate_for_equal_values(post_cells):
    for k, c in post_cells.items():
        assert c.ci_lo <= c.mean <= c.ci_hi, k
        assert 0.0 <= c.ci_lo and c.ci_hi <= 1.0
    for k in [("de", "en"), ("de", "de"), ("de", "ELFI")]:  # all values equal
        c = post_cells[k]
        assert c.ci_lo == c.mean == c.ci_hi, k
    for k in [("en", "en"), ("en", "de"), ("de", "hi"), ("en", "ELFO"), ("de", "ELFO")]:
        assert post_cells[k].ci_lo < post_cells[k].ci_hi, k


def test_bootstrap_is_seeded_and_resamples_cases():
    lines = fixture_lines()
    a = maths.aggregate(lines, "post", KEY, n_boot=300, seed=1)
    b = maths.aggregate(list(reversed(lines)), "post", KEY, n_boot=300, seed=1)
    assert [(c.ci_lo, c.ci_hi) for c in a] == [(c.ci_lo, c.ci_hi) for c in b]
    w = maths.resample_weights(3, 1000, np.random.default_rng(0))
    assert w.shape == (1000, 3) and (w.sum(axis=1) == 3).all()
    # with 3 cases, the ELFO of edit en can take only values reachable by resampling cases
    V = np.array([[1.0, 0.0, 0.0], [1.0, 1.0, 0.0], [0.5, 0.5, 0.25]])
    _, sel = maths.selectors(["en", "de", "hi"], "en")
    mean, lo, hi = maths.bootstrap_ci(V, sel, n_boot=2000, rng=np.random.default_rng(0))
    assert mean[-1] == pytest.approx(1.75 / 6)
    assert lo[-1] == pytest.approx(0.0) and hi[-1] == pytest.approx(0.5)  # all c1 / all c2


def test_bootstrap_ci_of_constant_noisy_float_is_exact():
    V = np.full((5, 1), 0.1)
    mean, lo, hi = maths.bootstrap_ci(V, np.ones((1, 1)), n_boot=100)
    assert mean[0] == lo[0] == hi[0] == 0.1


def test_wide_rows_and_matrix(post_cells):
    cols, rows = maths.wide_rows(list(post_cells.values()))
    assert cols == ["en", "de", "hi", "ELFI", "ELFO"]
    assert [r["edit_lang"] for r in rows] == ["en", "de"]
    assert rows[0]["ELFO"] == pytest.approx(1.75 / 6) and rows[0]["n_cases"] == 3
    assert rows[1]["en_ci_lo"] == rows[1]["en_ci_hi"] == 0.5
    edits, evals, M = maths.matrix(list(post_cells.values()))
    assert edits == ["en", "de"] and evals == ["en", "de", "hi"]
    assert M[1].tolist() == [0.5, 1.0, 0.5]


def test_localisation_shares_and_statuses():
    cats, rows = maths.localisation_table(fixture_lines())
    assert cats[:4] == ["exact", "normalized", "fuzzy", "translit"] and "skipped" in cats
    r = {x["edit_lang"]: x for x in rows}
    assert r["en"]["n_cases"] == 4
    for c in ("exact", "fuzzy", "translit", "skipped"):
        assert r["en"][f"share_{c}"] == 0.25
    assert r["de"]["share_exact"] == 0.75 and r["de"]["share_failed"] == 0.25
    st = maths.status_counts(fixture_lines())
    assert st["cases"] == {"ok": 6, "skipped": 1, "failed": 1}
    assert st["lines"] == {"ok": 18, "skipped": 3, "failed": 3}
    reasons = maths.non_ok_reasons(fixture_lines())
    assert {(x["edit_lang"], x["status"], x["lines"]) for x in reasons} == {("en", "skipped", 3),
                                                                          ("de", "failed", 3)}


def test_fertility_table():
    rows = {r["eval_lang"]: r for r in maths.fertility_table(fixture_lines())}
    assert list(rows) == ["en", "de", "hi"]
    assert rows["hi"]["target_tokens"] == 4 and rows["hi"]["subject_tokens_per_word"] == 3
    assert rows["en"]["success"] == pytest.approx(4 / 6)
    assert rows["de"]["success"] == pytest.approx(4.5 / 6)
    assert rows["hi"]["success"] == pytest.approx(1.75 / 6)
    assert rows["en"]["success_cross"] == pytest.approx(0.5)  # only edit de lines
    assert rows["en"]["n_lines"] == 6
    corr = maths.fertility_correlations(fixture_lines())
    assert len(corr) == 1 and corr[0]["r_target_tokens"] < 0


def test_split_by_shared_surface():
    parts = maths.split_by(maths.ok_lines(fixture_lines()), "shared_surface")
    assert len(parts[True]) == 12 and len(parts[False]) == 6
    assert {l["eval_lang"] for l in parts[False]} == {"hi"}


# --------------------------------------------------------------------------------- loading


def test_load_recurses_and_ignores_partial_lines(tmp_path):
    root = write_multirun(tmp_path / "sweep")
    with open(root / "0_tiny_llama_rome_en" / "results.jsonl", "a") as f:
        f.write('{"model": "tiny_ll')  # a line being written
    assert len(find_run_dirs([root])) == 2
    res = load_results([root, root / "1_tiny_llama_rome_de"])  # overlap: no double count
    assert len(res.runs) == 2 and res.bad_lines == 1 and res.superseded == 0
    assert len(res.lines) == len(fixture_lines()) and len(res.ok_lines) == 18
    assert {r.variant for r in res.runs} == {""}  # configs differ only in ignored keys
    names = language_names(res.runs)
    assert names["en"] == "English" and names["hi"] == "Hindi"  # conf/edit_lang/*.yaml
    with pytest.raises(FileNotFoundError):
        load_results([tmp_path / "nothing"])


def test_duplicates_later_run_wins_and_variants_stay_apart(tmp_path):
    import os

    en = [l for l in fixture_lines() if l["edit_lang"] == "en" and l["status"] == "ok"]
    old = write_run(tmp_path / "a" / "old", [{**l, "post": {KEY: 0.0}} for l in en], "en")
    new = write_run(tmp_path / "a" / "new", en, "en")
    os.utime(old / "results.jsonl", (1, 1))
    res = load_results([tmp_path / "a"])
    assert res.superseded == len(en)
    cells = cells_by(maths.aggregate(res.lines, "post", KEY, n_boot=10))
    assert cells[("en", "en")].mean == pytest.approx(EXPECTED[("en", "en")])
    # a different setting (ROME layer) is a variant, not a duplicate
    info = json.loads((old / "run_info.json").read_text())
    info["config"]["method"]["layer"] = 3
    (old / "run_info.json").write_text(json.dumps(info))
    res = load_results([tmp_path / "a"])
    assert res.superseded == 0
    assert {r.variant for r in res.runs} == {"method.layer=0", "method.layer=3"}
    cells = maths.aggregate(res.lines, "post", KEY, n_boot=10)
    by = {(c.variant, c.eval_lang): c.mean for c in cells}
    assert by[("method.layer=3", "en")] == 0.0
    assert by[("method.layer=0", "en")] == pytest.approx(EXPECTED[("en", "en")])
    assert len(CASES) == 3
    # how a job ran (resumed, processes, strictness) is not a variant
    info["config"]["method"]["layer"] = 0
    info["config"].update(resume=True, strict=False, runner={"devices": 4})
    (old / "run_info.json").write_text(json.dumps(info))
    res = load_results([tmp_path / "a"])
    assert {r.variant for r in res.runs} == {""} and res.superseded == len(en)


# ------------------------------------------------------------------------------------ W&B


def test_wandb_hook_is_lazy_and_logs_tables_and_images(tmp_path, monkeypatch):
    import xling_edit.report as report

    assert "wandb" not in sys.modules or not hasattr(sys.modules["wandb"], "__fake__")
    (tmp_path / "tables").mkdir()
    (tmp_path / "tables" / "post_x.csv").write_text("edit_lang,en,en_ci_lo\nen,0.5,\n")
    (tmp_path / "figures").mkdir()
    (tmp_path / "figures" / "h.png").write_bytes(b"\x89PNG\r\n\x1a\n")
    fake = types.ModuleType("wandb")
    fake.__fake__ = True
    fake.Table = lambda columns, data: ("table", columns, data)
    fake.Image = lambda path, caption=None: ("image", path)
    monkeypatch.setitem(sys.modules, "wandb", fake)

    class Run:
        logged = []

        def log(self, d):
            self.logged.append(d)

    run = Run()
    payload = report.log_report_to_wandb(run, tmp_path)
    assert run.logged == [payload]
    assert payload["report/tables/post_x"] == ("table", ["edit_lang", "en", "en_ci_lo"], [["en", 0.5, None]])
    assert payload["report/figures/h"] == ("image", str(tmp_path / "figures" / "h.png"))


def test_all_languages_edit_counts_as_elfi_everywhere():
    """`edit_lang=all` (method.mode=all_languages): every evaluated language was edited, the
    same rule as summary.csv (xling_edit.languages.is_elfi)."""
    import numpy as np

    from xling_edit.report.maths import elfi_elfo

    V = np.array([[1.0, 0.0], [1.0, 1.0]])
    assert elfi_elfo(V, ["en", "de"], "all")[0] == 0.75
    assert np.isnan(elfi_elfo(V, ["en", "de"], "all")[1])
    assert elfi_elfo(V, ["en", "de"], "en") == (1.0, 0.5)


def test_old_results_files_are_read_with_todays_names(tmp_path):
    """Results written before locality's agreement metrics were renamed (``locality.token_acc`` /
    ``exact``, no pre-edit locality) load under the new names; nothing else changes."""
    old = fixture_lines(legacy=True)
    assert "locality.token_acc" in old[0]["post"] and "locality.agree_token" not in old[0]["post"]
    write_run(tmp_path / "old", [l for l in old if l["edit_lang"] == "en"], "en")
    res = load_results(tmp_path / "old")
    for l in res.lines:
        for phase in ("pre", "post"):
            assert not set(maths.RENAMED_KEYS) & set(l.get(phase) or {})
    cells = cells_by(maths.aggregate(res.lines, "post", "locality.agree_token", n_boot=10))
    assert cells[("en", "ELFO")].mean == pytest.approx(LOC_AGREE) and cells[("en", "en")].n_cases == 3
    assert maths.aggregate(res.lines, "pre", "locality.prob") == []  # none was computed then
    same = cells_by(maths.aggregate(res.lines, "post", KEY, n_boot=10))
    assert same[("en", "ELFO")].mean == pytest.approx(EXPECTED[("en", "ELFO")])


def test_upgrade_line_keeps_a_present_new_key():
    line = {"pre": None, "post": {"locality.token_acc": 0.1, "locality.agree_token": 0.9,
                                  "locality.exact": 0.0}}
    maths.upgrade_line(line)
    assert line["post"] == {"locality.agree_token": 0.9, "locality.agree_exact": 0.0}


def test_report_of_old_results_has_agreement_tables(tmp_path):
    from xling_edit.report import build_report

    old = fixture_lines(legacy=True)
    write_run(tmp_path / "old", [l for l in old if l["edit_lang"] == "de"], "de")
    rep = build_report(tmp_path / "old", out=tmp_path / "rep", n_boot=10, figures=False)
    assert (tmp_path / "rep" / "tables" / "post_locality_agree_token.csv").is_file()
    assert not (tmp_path / "rep" / "tables" / "post_locality_token_acc.csv").exists()
    assert "locality.prob (pre-edit)" in rep.skipped_tables  # old files have no baseline
