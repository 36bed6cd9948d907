"""The real Gemma-3-270M (PyPI package, converted once and cached): ROME edits take."""

import json
import subprocess
import sys

import pytest

from tests.conftest import ROOT

pytestmark = pytest.mark.slow


def test_gemma_rome_two_builtin_facts(tmp_path):
    out = tmp_path / "job"
    r = subprocess.run(
        [sys.executable, "run.py", "data.max_cases=2", f"hydra.run.dir={out}"],
        cwd=ROOT, capture_output=True, text=True, timeout=1500)
    assert r.returncode == 0, r.stderr[-3000:]
    lines = [json.loads(l) for l in (out / "results.jsonl").read_text().splitlines()]
    en = [l for l in lines if l["eval_lang"] == "en"]
    assert len(en) == 2 and all(l["status"] == "ok" for l in en)
    pre = sum(l["pre"]["reliability.token_acc"] for l in en) / 2
    post = sum(l["post"]["reliability.token_acc"] for l in en) / 2
    assert post >= 0.9, post
    assert pre <= 0.3, pre
    assert all(l["edit"]["covariance"].startswith("builtin") for l in en)
    # the default statistics are sized for the model (issue 11: >= 10 x d_k, so no warning)
    stats = json.loads((out / "run_info.json").read_text())["covariance_statistics"]
    assert stats["tokens_per_dk"]["4"] >= 10, stats
    assert "C is poorly estimated" not in r.stderr + r.stdout
