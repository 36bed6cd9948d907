"""Adding a language is one YAML file (the commented template, no Python), and neither a new
language nor the choice of evaluation languages changes the statistics or the edits of the
existing configurations (stats.langs is a fixed set)."""

import json
import shutil
import subprocess
import sys

import pytest
from safetensors.torch import load_file

from tests.conftest import ROOT
from xling_edit.config import STATS_LANGS

# Bengali halves for two built-in facts (the data a user adding Bengali brings). The prompts keep
# the subject a word of its own ("ফ্রান্স দেশের ...", "of the country France"): the attached
# genitive "ফ্রান্সের রাজধানী" is matched through the template's morphology (tests/unit/test_localize_yaml.py).
BN = {
    "capital_france": {
        "subject": "ফ্রান্স", "prompt": "ফ্রান্স দেশের রাজধানী হল", "rephrases": ["ফ্রান্সের রাজধানী শহরের নাম"],
        "target_true": "প্যারিস", "target_new": "লন্ডন",
        "locality": [{"prompt": "মেক্সিকোর সরকারি ভাষা হল", "answer": "স্প্যানিশ"}],
        "portability": [{"prompt": "ফ্রান্সের রাজধানীর মধ্য দিয়ে বয়ে যাওয়া নদী হল", "answer": "টেমস"}]},
    "capital_japan": {
        "subject": "জাপান", "prompt": "জাপান দেশের রাজধানী হল", "rephrases": ["জাপানের রাজধানী শহরের নাম"],
        "target_true": "টোকিও", "target_new": "বার্লিন",
        "locality": [{"prompt": "মার্কিন যুক্তরাষ্ট্রের মুদ্রা হল", "answer": "ডলার"}],
        "portability": [{"prompt": "জাপানের রাজধানীর মধ্য দিয়ে বয়ে যাওয়া নদী হল", "answer": "স্প্রি"}]},
}


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("lang")
    conf = tmp / "conf"
    shutil.copytree(ROOT / "conf", conf)
    # the user's whole change: the template copied to bn.yaml (its values are Bengali's)
    shutil.copy(conf / "edit_lang" / "_template.yaml.example", conf / "edit_lang" / "bn.yaml")
    facts = json.loads((ROOT / "xling_edit" / "data" / "builtin_facts.json").read_text(encoding="utf-8"))
    facts["facts"] = [f for f in facts["facts"] if f["case_id"] in BN]
    for f in facts["facts"]:
        f["langs"]["bn"] = BN[f["case_id"]]
    data = tmp / "facts_bn.json"
    data.write_text(json.dumps(facts, ensure_ascii=False), encoding="utf-8")
    return tmp, conf, data


def run(tmp, name, *args, conf=None):
    out = tmp / name
    cmd = [sys.executable, "run.py", *(["--config-path", str(conf)] if conf else []),
           "model=tiny_llama", "method=rome", "method.v_steps=5", "stats.per_lang=4",
           f"model.cache_dir={tmp / ('cache_' + name)}", f"hydra.run.dir={out}", "print_tables=false",
           *args]
    r = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    lines = [json.loads(l) for l in (out / "results.jsonl").read_text().splitlines()]
    info = json.loads((out / "run_info.json").read_text())
    stats = {p.name: load_file(str(p))["second_moment"] for p in (tmp / ("cache_" + name) / "stats").glob("*.safetensors")}
    return r, lines, info, stats


def edits(lines):
    """Each case's edit diagnostics (what the edit did), timings aside."""
    return {l["case_id"]: {k: v for k, v in l["edit"].items() if not k.endswith("_s")}
            for l in lines if l["eval_lang"] == l["edit_lang"]}


def test_a_language_from_one_yaml_runs_and_changes_no_existing_edit(setup):
    tmp, conf, data = setup
    data_args = [f"data.file={data}", "data.max_cases=2"]
    # 1. the new language edits and evaluates, from the YAML alone
    r, lines, info, _ = run(tmp, "bn", "edit_lang=bn", *data_args, conf=conf)
    assert info["case_status"] == {"ok": 2} and "bn" in info["eval_langs"]
    bn = [l for l in lines if l["eval_lang"] == "bn"]
    assert len(bn) == 2 and all(l["status"] == "ok" and l["elfi"] for l in bn)
    assert info["stats_langs"] == list(STATS_LANGS)  # statistics: the fixed set, not bn
    log = r.stdout + r.stderr
    assert ("edit language bn: the covariance statistics of its keys come from the builtin corpus "
            "in en+de+fr+it+es+hi+ta+kn") in log
    # 2. English edits: default configuration, the same with bn added, and another eval set
    _, a_lines, a_info, a_stats = run(tmp, "default", "edit_lang=en", *data_args)
    _, b_lines, b_info, b_stats = run(tmp, "with_bn", "edit_lang=en", *data_args, conf=conf)
    _, d_lines, d_info, d_stats = run(tmp, "eval3", "edit_lang=en", "eval_langs=[en,de,hi]", *data_args)
    assert "bn" in b_info["eval_langs"] and "bn" not in a_info["eval_langs"]  # joins the eval set
    assert a_info["covariance"] == b_info["covariance"] == d_info["covariance"]
    assert a_info["stats_langs"] == b_info["stats_langs"] == d_info["stats_langs"] == list(STATS_LANGS)
    # same cache key and the same second moments, computed afresh in three separate caches
    assert len(a_stats) == 1 and a_stats.keys() == b_stats.keys() == d_stats.keys()
    (key,) = a_stats
    assert (a_stats[key] == b_stats[key]).all() and (a_stats[key] == d_stats[key]).all()
    # hence the same edits: every diagnostic the three runs record (norms of the update, value
    # optimisation trajectory, key form, statistics label) is equal
    ea, eb, ed = edits(a_lines), edits(b_lines), edits(d_lines)
    assert ea.keys() == eb.keys() == ed.keys() == set(BN)
    for case in ea:
        keys = ea[case].keys() & eb[case].keys() & ed[case].keys()
        assert {"delta_norm", "update_rel_norm", "nll_trajectory", "covariance"} <= keys
        assert all(ea[case][k] == eb[case][k] == ed[case][k] for k in keys), case
        assert ea[case]["delta_norm"] > 0


def test_fallback_localises_a_language_without_morphology_and_every_line_says_so(setup):
    """bn.yaml without its ``morphology`` and a prompt whose subject carries the genitive
    (ফ্রান্সের): ``method.subject_fallback=no_morphology`` finds the name, the case is edited,
    and every results line records how (``subject.method`` and ``edit.deviations``)."""
    from omegaconf import OmegaConf

    tmp, conf, data = setup
    bare = tmp / "conf_no_morphology"
    shutil.copytree(conf, bare)
    node = OmegaConf.load(bare / "edit_lang" / "bn.yaml")
    node.pop("morphology")
    OmegaConf.save(node, bare / "edit_lang" / "bn.yaml")
    facts = json.loads(data.read_text(encoding="utf-8"))
    for f in facts["facts"]:
        f["langs"]["bn"]["prompt"] = f["langs"]["bn"]["rephrases"][0]  # "ফ্রান্সের রাজধানী শহরের নাম"
    inflected = tmp / "facts_bn_inflected.json"
    inflected.write_text(json.dumps(facts, ensure_ascii=False), encoding="utf-8")
    _, lines, info, _ = run(tmp, "bn_fallback", "edit_lang=bn", "eval_langs=[en,bn]",
                            f"data.file={inflected}", "data.max_cases=1",
                            "method.subject_fallback=no_morphology", conf=bare)
    assert info["case_status"] == {"ok": 1}
    assert len(lines) == 2
    for line in lines:
        assert line["subject"]["method"] == "span" and line["subject"]["matched"] == "ফ্রান্স"
        assert line["edit"]["deviations"]["subject_match"] == "span"
