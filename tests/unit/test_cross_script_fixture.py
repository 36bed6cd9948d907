"""tests/fixtures/cross_script_pairs.json (English/Hindi/Tamil/German answer pairs from BMIKE-53)
and its hand-labelled sample tests/fixtures/cross_script_labels.json: the committed fixture is
what bench/cross_script_pairs.py builds from ../shared/data (skipped without it), it is balanced
with negatives that pair different rows' entities, and every label is a known kind on one of its
positives. Each structural check is also run on a corrupted copy, which it must reject."""

from __future__ import annotations

import copy
import importlib.util
import json
from collections import Counter
from pathlib import Path

import pytest

from tests.conftest import ROOT

PAIRS = ROOT / "tests" / "fixtures" / "cross_script_pairs.json"
LABELS = ROOT / "tests" / "fixtures" / "cross_script_labels.json"
KINDS = {"translit", "translation", "mixed", "same"}

spec = importlib.util.spec_from_file_location("cross_script_pairs", ROOT / "bench" / "cross_script_pairs.py")
csp = importlib.util.module_from_spec(spec)
spec.loader.exec_module(csp)


@pytest.fixture(scope="module")
def fixture() -> dict:
    return json.loads(PAIRS.read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def labels() -> dict:
    return json.loads(LABELS.read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def data(shared_data) -> Path:
    """BMIKE-53 CounterFact in ../shared/data (the test skips when it is absent)."""
    return shared_data / "bmike53" / "counterfact"


def balance_problems(items: list[dict]) -> list[str]:
    """Per language and field: one negative per positive, for the same (row, field, en)."""
    pos = Counter((it["lang"], it["row"], it["field"], it["en"]) for it in items if it["label"] == 1)
    neg = Counter((it["lang"], it["row"], it["field"], it["en"]) for it in items if it["label"] == 0)
    out = [f"{k}: {pos[k]} positives, {neg[k]} negatives" for k in pos.keys() | neg.keys() if pos[k] != neg[k]]
    out += [f"{it}: label {it['label']!r}" for it in items if it["label"] not in (0, 1)]
    return out


def negative_problems(items: list[dict]) -> list[str]:
    """Negatives pair a target with another row's target of a different entity: another row, a
    different string from the positive's, a target of some positive, and never a positive pair."""
    positives = {(it["lang"], it["en"].casefold(), it["other"]) for it in items if it["label"] == 1}
    targets = {(it["lang"], it["other"]) for it in items if it["label"] == 1}
    own = {(it["lang"], it["row"], it["field"]): it["other"] for it in items if it["label"] == 1}
    out = []
    for it in (x for x in items if x["label"] == 0):
        if it["other_row"] == it["row"]:
            out.append(f"{it}: same row")
        if it["other"] == own.get((it["lang"], it["row"], it["field"])):
            out.append(f"{it}: the positive's own target")
        if (it["lang"], it["en"].casefold(), it["other"]) in positives:
            out.append(f"{it}: a positive pair")
        if (it["lang"], it["other"]) not in targets:
            out.append(f"{it}: not a target of the fixture")
    return out


def label_problems(labels: list[dict], items: list[dict], minimum: int = 100) -> list[str]:
    """At least ``minimum`` labels for hi and for ta, each a known kind on a positive of the fixture,
    none twice."""
    positives = {(it["lang"], it["row"], it["field"], it["en"], it["other"]) for it in items if it["label"] == 1}
    keys = [(lab["lang"], lab["row"], lab["field"], lab["en"], lab["other"]) for lab in labels]
    per_lang = Counter(lab["lang"] for lab in labels)
    out = [f"{lang}: {per_lang[lang]} labels < {minimum}" for lang in ("hi", "ta") if per_lang[lang] < minimum]
    out += [f"{lab}: kind {lab.get('kind')!r}" for lab in labels if lab.get("kind") not in KINDS]
    out += [f"{k}: not a positive of the fixture" for k in keys if k not in positives]
    out += [f"{k}: labelled {n} times" for k, n in Counter(keys).items() if n > 1]
    return out


@pytest.mark.shared
def test_fixture_is_what_the_script_builds(fixture, data):
    built = csp.build(data)
    assert built == PAIRS.read_text(encoding="utf-8"), (
        "tests/fixtures/cross_script_pairs.json differs from what bench/cross_script_pairs.py builds; "
        "rerun `python bench/cross_script_pairs.py`")


@pytest.mark.shared
def test_every_pair_is_what_the_data_says(fixture, data):
    """Positives are row r's targets; negatives take row ``other_row``'s target, whose English
    target differs from the positive's."""
    records = {lang: csp.load(data, lang) for lang in fixture["langs"]}
    for it in fixture["items"]:
        recs = records[it["lang"]]
        assert recs[it["row"]]["en"][it["field"]] == it["en"], it
        assert recs[it["other_row"]][it["lang"]][it["field"]] == it["other"], it
        if it["label"] == 0:
            assert recs[it["other_row"]]["en"][it["field"]].casefold() != it["en"].casefold(), it


def test_fixture_covers_the_languages(fixture):
    counts = Counter((it["lang"], it["label"]) for it in fixture["items"])
    for lang in ("hi", "ta", "de"):
        assert counts[lang, 1] >= 100 and counts[lang, 1] == counts[lang, 0], (lang, counts)
    assert set(it["lang"] for it in fixture["items"]) == {"hi", "ta", "de"}
    assert fixture["items"] == sorted(fixture["items"], key=lambda it: (it["lang"], it["row"], it["field"], -it["label"]))


def test_fixture_is_balanced(fixture):
    assert balance_problems(fixture["items"]) == []


def test_negatives_pair_different_rows_entities(fixture):
    assert negative_problems(fixture["items"]) == []


def test_positives_are_deduplicated(fixture):
    keys = Counter((it["lang"], it["en"], it["other"]) for it in fixture["items"] if it["label"] == 1)
    assert [k for k, n in keys.items() if n > 1] == []


def test_labels_are_known_kinds_on_positives(fixture, labels):
    assert "by hand" in labels["comment"] and set(labels["kinds"]) == KINDS
    assert label_problems(labels["labels"], fixture["items"]) == []


def test_labels_are_the_first_positives_in_row_order(fixture, labels):
    for lang in ("hi", "ta"):
        mine = [(lab["row"], lab["field"], lab["en"], lab["other"]) for lab in labels["labels"] if lab["lang"] == lang]
        first = [(it["row"], it["field"], it["en"], it["other"]) for it in fixture["items"]
                 if it["lang"] == lang and it["label"] == 1 and it["row"] < 400][:len(mine)]
        assert mine == first, lang


def test_the_checks_reject_a_corrupted_fixture(fixture, labels):
    items = copy.deepcopy(fixture["items"])
    neg = next(i for i, it in enumerate(items) if it["label"] == 0)
    pos = neg - 1
    assert items[pos]["label"] == 1 and items[pos]["row"] == items[neg]["row"]
    # A negative turned into its own positive: same row, the positive's own string, a positive pair.
    bad = copy.deepcopy(items)
    bad[neg].update(other=items[pos]["other"], other_row=items[pos]["row"])
    assert len(negative_problems(bad)) == 3
    # A dropped negative unbalances the fixture.
    assert balance_problems(items[:neg] + items[neg + 1:])
    # A label on a pair that is not a positive, an unknown kind, a language short of labels.
    labs = copy.deepcopy(labels["labels"])
    labs[0]["other"] += "x"
    labs[1]["kind"] = "cognate"
    assert len(label_problems(labs, items)) == 2
    assert label_problems([lab for lab in labels["labels"] if lab["lang"] != "ta"], items)
