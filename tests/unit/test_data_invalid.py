"""Datasets with a few bad records: data.on_invalid=skip costs one case per bad record (count and
reasons reported), error stops naming file, case and field; BMIKE-53 with English alone; the
WikiFactDiff part of BMIKE-53 by configuration."""

import json

import pytest
from hydra import compose, initialize_config_dir

from tests.conftest import ROOT
from xling_edit.configstore import register_configs
from xling_edit.data import DataError, load_dataset

register_configs()

HALF = {"case_id": 0, "subject": "S", "src": "Where is S?", "rephrase": "Where can S be found?",
        "old": "A", "alt": "B", "loc": "L?", "loc_ans": "C", "port": "P?", "port_ans": "D"}


def records(n, broken=()):
    """n BMIKE-53 records (en + de halves); the ids in ``broken`` get an empty de.loc_ans (the
    WikiFactDiff defect) or, for odd ids, a missing de.alt."""
    rows = []
    for i in range(n):
        en, de = {**HALF, "case_id": i}, {**HALF, "case_id": i, "src": f"Wo ist S{i}?"}
        if i in broken:
            if i % 2:
                del de["alt"]
            else:
                de["loc_ans"] = ""
        rows.append({"en": en, "de": de})
    return rows


def data_cfg(tmp_path, rows, policy, name="cf_de.json", pattern="cf_{lang}.json"):
    d = tmp_path / "bm"
    d.mkdir(exist_ok=True)
    (d / name).write_text(json.dumps(rows), encoding="utf-8")
    return {"loader": "bmike53", "root": str(tmp_path), "dir": "bm", "pattern": pattern, "name": "t",
            "on_invalid": policy}


def test_skip_costs_one_case_per_bad_record(tmp_path):
    ds = load_dataset(data_cfg(tmp_path, records(10, broken={2, 5, 8}), "skip"), ["en", "de"])
    assert [c.case_id for c in ds.cases] == ["0", "1", "3", "4", "6", "7", "9"]
    assert len(ds.invalid) == 3
    by_case = {r["case"]: r for r in ds.invalid}
    assert by_case["2"]["field"] == "de.loc_ans" and by_case["2"]["problem"] == "empty"
    assert by_case["5"]["field"] == "de.alt" and by_case["5"]["problem"] == "missing"
    assert all(r["file"].endswith("cf_de.json") for r in ds.invalid)


def test_error_stops_at_the_first_bad_record(tmp_path):
    with pytest.raises(DataError, match=r"cf_de.json: case '2': field 'de.loc_ans': empty"):
        load_dataset(data_cfg(tmp_path, records(10, broken={2, 5}), "error"), ["en", "de"])


def test_skip_applies_before_max_cases_and_case_ids_explain(tmp_path):
    cfg = data_cfg(tmp_path, records(6, broken={0}), "skip")
    assert [c.case_id for c in load_dataset({**cfg, "max_cases": 2}, ["en", "de"]).cases] == ["1", "2"]
    with pytest.raises(ValueError, match=r"'0 \(invalid record, skipped\)'"):
        load_dataset({**cfg, "case_ids": ["0"]}, ["en", "de"])


def test_unknown_policy_is_refused(tmp_path):
    with pytest.raises(ValueError, match="data.on_invalid='drop'"):
        load_dataset(data_cfg(tmp_path, records(2), "drop"), ["en", "de"])


def test_builtin_and_easyedit_skip_too(tmp_path):
    flat = [{"case_id": i, "prompt": "A plays", "target_new": "golf", "subject": "A"} for i in range(3)]
    del flat[1]["target_new"]
    (tmp_path / "e.json").write_text(json.dumps(flat))
    ds = load_dataset({"loader": "easyedit", "root": str(tmp_path), "file": "e.json", "on_invalid": "skip"},
                      ["en"])
    assert [c.case_id for c in ds.cases] == ["0", "2"] and ds.invalid[0]["field"] == "target_new"
    facts = json.loads((ROOT / "xling_edit" / "data" / "builtin_facts.json").read_text(encoding="utf-8"))
    facts["facts"] = facts["facts"][:3]
    facts["facts"][1]["langs"]["de"]["prompt"] = 7
    (tmp_path / "f.json").write_text(json.dumps(facts, ensure_ascii=False), encoding="utf-8")
    ds = load_dataset({"loader": "builtin", "file": str(tmp_path / "f.json"), "on_invalid": "skip"}, ["en"])
    assert len(ds.cases) == 2 and ds.invalid[0]["field"] == "langs.de.prompt"


def test_english_only_reads_the_english_halves(tmp_path):
    cfg = data_cfg(tmp_path, records(4), "error")
    ds = load_dataset(cfg, ["en"])
    assert [c.case_id for c in ds.cases] == ["0", "1", "2", "3"]
    assert all(set(c.langs) == {"en"} for c in ds.cases) and ds.missing["en"] == 0
    assert ds.notes == ["English halves read from cf_de.json"]


@pytest.mark.shared
def test_english_only_on_real_bmike53(shared_data):
    ds = load_dataset({"loader": "bmike53", "root": str(shared_data), "dir": "bmike53/counterfact",
                       "pattern": "counterfact_test_{lang}.json", "name": "bm"}, ["en"])
    assert len(ds.cases) == 1031 and ds.cases[0].langs["en"].target_new == "Philadelphia"


def test_public_dataset_configs_skip_and_wfd_points_at_the_release_names():
    def data(name):
        with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
            return compose(config_name="config", overrides=[f"data={name}"]).data
    wfd = data("bmike53_wfd")
    assert (wfd.loader, wfd.dir, wfd.pattern) == ("bmike53", "bmike53/WikiFactDiff", "wfd_test_{lang}.json")
    for name in ("bmike53_counterfact", "bmike53_zsre", "bmike53_wfd", "easyedit_counterfact"):
        assert data(name).on_invalid == "skip"
    assert data("builtin").on_invalid == "error"
