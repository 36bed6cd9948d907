import json

import pytest

from xling_edit.data import DataError, load_dataset
from xling_edit.data.loaders import load_bmike53, load_builtin, load_easyedit

LANGS = ["en", "de", "fr", "it", "es", "hi", "ta", "kn"]


def test_builtin_fact_set_covers_all_languages():
    ds = load_builtin()
    assert len(ds.cases) >= 60
    for case in ds.cases:
        assert set(LANGS) <= set(case.langs), case.case_id
        for lang, rec in case.langs.items():
            assert rec.subject in rec.prompt, (case.case_id, lang)
            assert rec.target_new != rec.target_true
            assert rec.rephrases and rec.locality and rec.portability


def _write(tmp_path, name, obj):
    p = tmp_path / name
    p.write_text(json.dumps(obj, ensure_ascii=False), encoding="utf-8")
    return p


def test_builtin_format_error_names_file_case_and_field(tmp_path):
    bad = {"facts": [{"case_id": "c1", "langs": {"en": {"subject": "X", "prompt": "X is",
                                                         "target_new": 5}}}]}
    p = _write(tmp_path, "facts.json", bad)
    with pytest.raises(DataError) as e:
        load_builtin(p)
    msg = str(e.value)
    assert "facts.json" in msg and "'c1'" in msg and "langs.en.target_new" in msg


def test_bmike_missing_field_and_missing_language(tmp_path):
    d = tmp_path / "bm"
    d.mkdir()
    half = {"case_id": 7, "subject": "S", "src": "Where is S?", "rephrase": "S is where?",
            "old": "A", "alt": "B", "loc": "L?", "loc_ans": "C", "port": "P?", "port_ans": "D"}
    _write(d, "cf_de.json", [{"en": half, "de": {**half, "src": "Wo ist S?"}},
                             {"en": {**half, "case_id": 8}}])  # case 8 lacks German
    ds = load_dataset({"loader": "bmike53", "root": str(tmp_path), "dir": "bm",
                       "pattern": "cf_{lang}.json", "name": "t"}, ["en", "de", "hi"])
    assert [c.case_id for c in ds.cases] == ["7", "8"]
    assert ds.missing["de"] == 1 and ds.missing["hi"] == 2 and ds.missing["en"] == 0
    assert any("hi" in n for n in ds.notes)  # no Hindi file: said, not silent
    broken = {**half}
    del broken["alt"]
    _write(d, "cf_de.json", [{"en": half, "de": broken}])
    with pytest.raises(DataError) as e:
        load_bmike53(d, "cf_{lang}.json", ["de"], "t")
    assert "cf_de.json" in str(e.value) and "de.alt" in str(e.value) and "'7'" in str(e.value)


def test_easyedit_flat_and_rome_layouts(tmp_path):
    flat = [{"case_id": 1, "prompt": "A plays", "target_new": "golf", "subject": "A",
             "ground_truth": "chess", "rephrase_prompt": "A's sport is",
             "locality_prompt": "B plays", "locality_ground_truth": "tennis"}]
    rec = load_easyedit(_write(tmp_path, "f.json", flat), "en", "t").cases[0].langs["en"]
    assert (rec.prompt, rec.target_new, rec.target_true) == ("A plays", "golf", "chess")
    assert rec.locality[0].answer == "tennis"
    rome = [{"case_id": 2, "requested_rewrite": {"prompt": "{} is in", "subject": "X",
                                                  "target_new": {"str": "Rome"}, "target_true": {"str": "Paris"}},
             "paraphrase_prompts": ["X lies in"], "neighborhood_prompts": ["Y is in"]}]
    rec = load_easyedit(_write(tmp_path, "r.json", rome), "en", "t").cases[0].langs["en"]
    assert rec.prompt == "X is in" and rec.locality[0].answer == "Paris"
    with pytest.raises(DataError, match="prompt"):
        load_easyedit(_write(tmp_path, "b.json", [{"case_id": 3, "subject": "A", "target_new": "x"}]), "en", "t")


def test_selection_and_bad_max_cases():
    ds = load_dataset({"loader": "builtin", "max_cases": 3}, LANGS)
    assert len(ds.cases) == 3
    first = ds.cases[1].case_id
    ds = load_dataset({"loader": "builtin", "case_ids": [first]}, LANGS)
    assert [c.case_id for c in ds.cases] == [first]
    with pytest.raises(ValueError):
        load_dataset({"loader": "builtin", "max_cases": 0}, LANGS)
    with pytest.raises(ValueError, match="not in dataset"):
        load_dataset({"loader": "builtin", "case_ids": ["nope"]}, LANGS)


@pytest.mark.shared
def test_real_bmike53_counterfact(shared_data):
    ds = load_dataset({"loader": "bmike53", "root": str(shared_data), "dir": "bmike53/counterfact",
                       "pattern": "counterfact_test_{lang}.json", "name": "bm"}, LANGS)
    assert len(ds.cases) == 1031
    assert ds.missing["kn"] == 1031  # no Kannada file in BMIKE-53
    assert ds.missing["it"] == 1 and ds.missing["ta"] == 1  # the two records with only `en`
    assert ds.missing["en"] == 0
    c = ds.cases[0]
    assert c.langs["en"].target_new == "Philadelphia" and c.langs["ta"].prompt.endswith("?")


def test_loader_normalises_text_to_nfc_and_counts_it():
    """A Tamil subject in NFC and its prompt in NFD look the same and must compare equal."""
    import unicodedata

    from xling_edit.data.loaders import nfc_cases
    from xling_edit.data.schema import QA, EditCase, LangRecord

    subj = "சென்னை கோயில்"  # composed vowel signs in NFC; NFD splits ொ/ோ-like signs
    nfd = unicodedata.normalize("NFD", "கொழும்பு " + subj)
    assert nfd != unicodedata.normalize("NFC", nfd)
    rec = LangRecord(subject=subj, prompt=nfd + " எங்கே?", target_new=unicodedata.normalize("NFD", "கொழும்பு"),
                     locality=(QA(unicodedata.normalize("NFD", "கொ?"), "x"),))
    cases = [EditCase("c1", {"ta": rec})]
    assert nfc_cases(cases) == 3  # prompt, target, locality prompt
    out = cases[0].langs["ta"]
    assert all(unicodedata.is_normalized("NFC", t) for t in (out.prompt, out.target_new, out.locality[0].prompt))
    assert nfc_cases(cases) == 0
