"""``python run.py`` on a tiny model with the language cues (issue 11, items 6 and 7): results
lines record the answer format, locality has its pre-edit baseline and honest names everywhere
it is written (results, summary.csv, printed tables)."""

import csv
import json
import subprocess
import sys

import pytest

from tests.conftest import ROOT

CUES = {"en": " Answer:", "de": " Antwort:", "hi": " उत्तर:"}


def test_cue_format_and_locality_baseline_end_to_end(tmp_path):
    out = tmp_path / "job"
    r = subprocess.run([sys.executable, "run.py", "model=tiny_llama", "edit_lang=de",
                        "eval_langs=[en,de,hi]", "data.max_cases=2", "data.answer_format=cue",
                        "stats.per_lang=4", f"hydra.run.dir={out}",
                        f"model.cache_dir={tmp_path / 'cache'}"],
                       cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    lines = [json.loads(l) for l in (out / "results.jsonl").read_text().splitlines()]
    assert len(lines) == 2 * 3
    assert {(l["eval_lang"], l["answer_format"], l["answer_prefix"]) for l in lines} == \
        {(c, "cue", cue) for c, cue in CUES.items()}
    ok = [l for l in lines if l["status"] == "ok"]
    assert ok
    for l in ok:
        assert l["pre"]["locality.prob"] is not None and l["pre"]["locality.answer_exact"] is not None
        assert l["pre"]["locality.agree_token"] is None  # no pre-edit meaning
        assert l["post"]["locality.agree_token"] is not None
        assert l["post"]["locality.prob_drop"] == pytest.approx(l["pre"]["locality.prob"] - l["post"]["locality.prob"])
        assert "locality.token_acc" not in l["post"]
    info = json.loads((out / "run_info.json").read_text())
    assert info["answer_format"] == "cue" and info["config"]["data"]["answer_format"] == "cue"
    with open(out / "summary.csv", newline="") as f:
        header = next(csv.reader(f))
    assert "locality.agree_token" in header and "locality.prob_drop" in header
    assert "locality.token_acc" not in header
    assert "locality.prob (pre-edit)" in r.stdout and "locality.agree_token (post-edit)" in r.stdout
    assert "locality.agree_token (pre-edit)" not in r.stdout
