"""`python -m xling_edit.bench` runs end to end on a tiny model (the benchmark is not a test)."""

import json
import subprocess
import sys

from tests.conftest import ROOT


def test_bench_runs_on_a_tiny_model(tmp_path):
    out = tmp_path / "bench.json"
    r = subprocess.run(
        [sys.executable, "-m", "xling_edit.bench", "--model", "tiny_llama", "--quick",
         "--memit-batch", "2", "--stats-tokens", "1000", "--out", str(out),
         "--override", f"model.cache_dir={tmp_path / 'cache'}", "--override", "stats.per_lang=4",
         "--override", "threads=1", "--override", "data.max_cases=2"],
        cwd=ROOT, capture_output=True, text=True, timeout=600, env={"TQDM_DISABLE": "1", **_env()})
    assert r.returncode == 0, r.stderr[-3000:]
    res = json.loads(out.read_text())
    figures = {row["figure"]: row for row in res["summary"]}
    for name in ("edit + 8-language evaluation, one case (s) [ROME]", "ROME edit (s)",
                 "MEMIT edit, batch 1 (s/edit)", "MEMIT edit, batch 2 (s/edit)",
                 "evaluate one case, 8 languages (s)", "statistics throughput (tokens/s)",
                 "peak resident memory (GB)"):
        assert figures[name]["fast"] > 0, name
    assert figures["ROME edit (s)"]["ratio"] is not None
    assert all(x["eval_identical"] and x["same_trajectory"] for x in res["rome"]["same_metrics"])
    assert "gain" in r.stdout and "peak resident memory" in r.stdout


def _env():
    import os

    return dict(os.environ)


def test_bench_requests_use_the_pipelines_answer_format(tmp_path):
    """The benchmark edits with the prompts the pipeline would use: each language's answer cue
    when the dataset asks for it (a question dataset edited without its cue measures another
    prompt than the study's)."""
    from xling_edit.bench.edit_bench import Setup, compose

    cfg = compose("tiny_llama", ["data.answer_format=cue", "data.max_cases=1", "stats.per_lang=2",
                                 f"model.cache_dir={tmp_path}", "threads=1", "eval_langs=[en,de]"])
    s = Setup(cfg, edit_lang="de", prefetch=False)
    cue = s.registry["de"].answer_cue
    assert cue and s.answer_format == "cue"
    assert s.request(s.cases[0]).answer_prefix == cue
    assert s.answer_prefix == {"en": s.registry["en"].answer_cue, "de": cue}
