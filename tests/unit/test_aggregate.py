"""ELFI/ELFO are defined once (xling_edit.aggregate): summary.csv, the report's bootstrap point
estimates and W&B's running means must give the same numbers on the same lines, and those
numbers are the hand-computed macro means (default) or line-pooled means."""

from __future__ import annotations

import math

import pytest

from xling_edit.aggregate import ELFI, ELFO, RunningMeans, pool_lines, scope, value_of
from xling_edit.report import maths
from xling_edit.results import summarize

KEY = "reliability.token_acc"


def line(case, edit, ev, post, pre=0.0, status="ok"):
    return {"model": "m", "dataset": "d", "method": "rome", "merge": "none", "variant": "published",
            "edit_lang": edit, "eval_lang": ev, "case_id": case, "status": status,
            "pre": {KEY: pre}, "post": {KEY: post}}


# edit in de; eval de (ELFI), en and hi (ELFO). Case c3 has no Hindi value (NaN), c4 failed.
LINES = [
    line("c1", "de", "de", 1.0), line("c1", "de", "en", 0.5), line("c1", "de", "hi", 0.0),
    line("c2", "de", "de", 0.5), line("c2", "de", "en", 1.0), line("c2", "de", "hi", 0.25),
    line("c3", "de", "de", 1.0), line("c3", "de", "en", 0.0), line("c3", "de", "hi", float("nan")),
    line("c4", "de", "de", 0.0, status="error"), line("c4", "de", "en", 0.0, status="error"),
]
# by hand: ELFI = mean(1, .5, 1) = 5/6; pooled ELFO = mean(.5, 0, 1, .25, 0) = 1.75/5 (NaN and
# failed out); macro ELFO = mean(en: (.5 + 1 + 0)/3 = .5, hi: (0 + .25)/2 = .125) = .3125
ELFI_HAND, ELFO_POOLED, ELFO_MACRO = 5 / 6, 1.75 / 5, 0.3125
ELFO_HAND = {"pooled": ELFO_POOLED, "macro": ELFO_MACRO}


def test_scope_and_values():
    assert scope("de", "de") == ELFI and scope("de", "en") == ELFO
    assert scope("all", "hi") == ELFI  # mode=all_languages: every language was edited
    assert value_of(float("nan")) is None and value_of(None) is None and value_of("x") is None
    assert value_of(True) is None and value_of(1) == 1.0
    m = RunningMeans()
    for v in (1.0, None, float("nan"), 0.0):
        m.add("g", "k", v)
    assert m.mean("g", "k") == 0.5 and m.mean("g", "other") is None


@pytest.mark.parametrize("elfo", ["macro", "pooled"])
def test_pool_lines_by_hand(elfo):
    pooled = pool_lines(LINES, [KEY], elfo=elfo)
    assert pooled[("de", ELFI)]["post"][KEY] == pytest.approx(ELFI_HAND)
    assert pooled[("de", ELFO)]["post"][KEY] == pytest.approx(ELFO_HAND[elfo])
    assert pooled[("de", ELFO)]["n"] == 6  # ok lines, the NaN line included (it has other keys)
    assert pooled[("de", "hi")]["post"][KEY] == pytest.approx(0.125)


def test_default_is_macro():
    assert pool_lines(LINES, [KEY])[("de", ELFO)]["post"][KEY] == pytest.approx(ELFO_MACRO)
    with pytest.raises(ValueError, match="unknown"):
        pool_lines(LINES, [KEY], elfo="mean")


@pytest.mark.parametrize("elfo", ["macro", "pooled"])
def test_summary_report_and_wandb_agree(elfo):
    rows = {(r["eval_lang"], r["phase"]): r for r in summarize(LINES, elfo)}
    s_elfi, s_elfo = rows[(ELFI, "post")][KEY], rows[(ELFO, "post")][KEY]

    cells = {c.eval_lang: c for c in maths.aggregate(LINES, "post", KEY, n_boot=10, elfo=elfo)}
    r_elfi, r_elfo = cells[ELFI].mean, cells[ELFO].mean

    wl = pytest.importorskip("xling_edit.loggers.wandb_logger")
    logger = wl.WandbLogger.__new__(wl.WandbLogger)  # no W&B run needed for the running means
    logger.stream_keys = []
    logger.elfo = elfo
    logger._reset_stream()
    logger._accumulate(LINES)
    running = {(sc, k): m for _, sc, k, m in logger._running.scope_items("post")}
    w_elfi, w_elfo = running[(ELFI, KEY)], running[(ELFO, KEY)]

    for got in (s_elfi, r_elfi, w_elfi):
        assert got == pytest.approx(ELFI_HAND, abs=1e-4)
    for got in (s_elfo, r_elfo, w_elfo):
        assert got == pytest.approx(ELFO_HAND[elfo], abs=1e-4)
    assert cells[ELFO].n_lines == 5 and cells[ELFO].n_cases == 3


def test_all_languages_has_no_elfo():
    lines = [line("c1", "all", "en", 1.0), line("c1", "all", "de", 0.0)]
    rows = {(r["eval_lang"], r["phase"]) for r in summarize(lines)}
    assert (ELFI, "post") in rows and (ELFO, "post") not in rows
    cells = {c.eval_lang for c in maths.aggregate(lines, "post", KEY, n_boot=10)}
    assert ELFI in cells and ELFO not in cells
    assert not math.isnan(pool_lines(lines, [KEY])[("all", ELFI)]["post"][KEY])
