"""`python run.py merge=ties_demo -m edit_lang=en,hi`: fine-tune variants, TIES-merge once, edit
and evaluate the merge in both jobs, the second reusing the cached merge. No download."""

import json
import subprocess
import sys

import pytest

from tests.conftest import ROOT

FAST = ["data.max_cases=2", "eval_langs=[en,hi]", "stats.per_lang=4"] + [
    f"merge.models.{k}.finetune.steps=3" for k in ("hi", "ta", "de")]


@pytest.mark.slow  # ~70 s on 2 busy cores: two jobs, three fine-tunes, one merge
def test_demo_merge_sweep_merges_once_and_reuses(tmp_path):
    sweep = tmp_path / "sweep"
    r = subprocess.run([sys.executable, "run.py", "-m", "merge=ties_demo", "edit_lang=en,hi", *FAST,
                        f"hydra.sweep.dir={sweep}", f"model.cache_dir={tmp_path / 'cache'}"],
                       cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    jobs = sorted(p for p in sweep.iterdir() if (p / "results.jsonl").exists())
    assert [j.name.split("_")[-1] for j in jobs] == ["en", "hi"]
    logs = [(j / "run.log").read_text() for j in jobs]
    assert "merged model" in logs[0] and "written to" in logs[0]
    assert "loaded from cache" in logs[1] and "written to" not in logs[1]
    assert len(list((tmp_path / "cache" / "merged").glob("ties-*[0-9a-f]"))) == 1
    for j in jobs:
        lines = [json.loads(l) for l in (j / "results.jsonl").read_text().splitlines()]
        assert len(lines) == 2 * 2 and all(l["merge"] == "ties" for l in lines)
        assert all(l["status"] == "ok" for l in lines), [l["reason"] for l in lines]
        info = json.loads((j / "run_info.json").read_text())
        assert info["config"]["merge"]["name"] == "ties" and info["model"] == "tiny_llama"
