"""End-to-end `python run.py` on tiny models: files written, tables printed, sweeps work."""

import json
import os
import subprocess
import sys

import pytest

from tests.conftest import ROOT, SEARCHPATH

FAST = ["stats.per_lang=4", "data.max_cases=2"]


def run(*args, cwd=ROOT, env=None):
    r = subprocess.run([sys.executable, str(ROOT / "run.py"), *args], cwd=cwd, capture_output=True,
                       text=True, timeout=600, env=env)
    assert r.returncode == 0, r.stderr[-3000:]
    return r


@pytest.mark.parametrize("model", ["tiny_gpt2", "tiny_gemma3"])
def test_single_run_writes_results(tmp_path, model):
    out = tmp_path / "job"
    r = run(f"model={model}", SEARCHPATH, *FAST, f"hydra.run.dir={out}", f"model.cache_dir={tmp_path / 'cache'}")
    lines = [json.loads(l) for l in (out / "results.jsonl").read_text().splitlines()]
    assert len(lines) == 2 * 8  # cases x eval languages
    assert {l["eval_lang"] for l in lines} == {"en", "de", "fr", "it", "es", "hi", "ta", "kn"}
    ok = [l for l in lines if l["status"] == "ok"]
    assert ok and all(l["post"] is not None and "reliability.token_acc" in l["pre"] for l in ok)
    assert all(l["elfi"] == (l["eval_lang"] == "en") for l in lines)
    assert ok[0]["subject"]["method"] == "exact"
    assert "edit_s" in ok[0]["timings"] and ok[0]["edit"]["covariance"].startswith("builtin")
    summary = (out / "summary.csv").read_text().splitlines()
    assert summary[0].startswith("method,variant,edit_lang,eval_lang,phase,n,reliability.token_acc")
    assert summary[1].startswith("rome,published,")  # which configuration made the numbers
    assert any(row.startswith("rome,published,en,ELFO,post") for row in summary)
    info = json.loads((out / "run_info.json").read_text())
    assert info["case_status"] == {"ok": 2}
    assert info["provenance"]["packages"]["torch"] and "code" in info["provenance"]
    assert info["outcome"] == "2 case(s): 2 edited"
    assert "reliability.token_acc (post-edit)" in r.stdout
    header = next(l for l in r.stdout.splitlines() if l.startswith("edit\\eval"))
    for code in ("de", "en", "es", "fr", "hi", "it", "kn", "ta", "ELFI", "ELFO"):
        assert code in header


def test_sweep_over_edit_languages(tmp_path):
    sweep = tmp_path / "sweep"
    run("-m", "model=tiny_llama", "edit_lang=en,hi,ta", *FAST, "eval_langs=[en,hi,ta]",
        f"hydra.sweep.dir={sweep}", f"model.cache_dir={tmp_path / 'cache'}")
    jobs = sorted(p.name for p in sweep.iterdir() if p.is_dir() and (p / "results.jsonl").exists())
    assert len(jobs) == 3 and [j.split("_")[-1] for j in jobs] == ["en", "hi", "ta"]
    for j in jobs:
        lines = (sweep / j / "results.jsonl").read_text().splitlines()
        assert len(lines) == 2 * 3


def test_covariance_cache_is_reused(tmp_path):
    cache = tmp_path / "cache"
    run("model=tiny_llama", *FAST, f"hydra.run.dir={tmp_path / 'a'}", f"model.cache_dir={cache}")
    stats = list((cache / "stats").glob("*.safetensors"))
    assert len(stats) == 1
    mtime = stats[0].stat().st_mtime_ns
    run("model=tiny_llama", *FAST, f"hydra.run.dir={tmp_path / 'b'}", f"model.cache_dir={cache}")
    assert stats[0].stat().st_mtime_ns == mtime
    log = (tmp_path / "b" / "run.log").read_text()
    assert "loaded from cache" in log


def test_job_dirs_and_resume_do_not_depend_on_the_working_directory(tmp_path):
    """A relative output root is taken from the project root: started from two directories, the
    job lands in the same place and resume=true there finds it."""
    out = tmp_path / "out"
    env = {**os.environ, "XLING_EDIT_OUTPUTS": os.path.relpath(out, ROOT)}  # relative, outside the repo
    common = ["model=tiny_llama", "stats.per_lang=4", "eval_langs=[en,de]", "print_tables=false",
              f"model.cache_dir={tmp_path / 'cache'}"]
    for d in ("a", "b"):
        (tmp_path / d).mkdir()
    run(*common, "data.max_cases=1", cwd=tmp_path / "a", env=env)
    [job] = [p.parent for p in out.glob("outputs/*/*/results.jsonl")]
    assert job.name.endswith("_tiny_llama_rome_en") and len((job / "results.jsonl").read_text().splitlines()) == 2
    r = run(*common, "data.max_cases=2", "resume=true", cwd=tmp_path / "b", env=env)
    assert f"resuming into {job}" in r.stdout + r.stderr
    assert len((job / "results.jsonl").read_text().splitlines()) == 2 * 2  # the second case added there
    assert [p.parent for p in out.glob("outputs/*/*/results.jsonl")] == [job]
    assert json.loads((job / "run_info.json").read_text())["resumed_cases"] == 1
    assert not list((tmp_path / "a").iterdir()) and not list((tmp_path / "b").iterdir())  # nothing in the cwd


def test_help_and_cfg_job():
    r = subprocess.run([sys.executable, "run.py", "--help"], cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 0 and "edit_lang" in r.stdout and "$XLING_EDIT_OUTPUTS" in r.stdout
    r = subprocess.run([sys.executable, "run.py", "--cfg", "job"], cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 0 and "gemma3_270m" in r.stdout


@pytest.mark.shared
def test_bmike_tamil_reports_localisation(tmp_path, shared_data):
    out = tmp_path / "job"
    r = run("model=tiny_llama", "data=bmike53_counterfact", "edit_lang=ta", "data.max_cases=6",
            f"data.root={shared_data}", "eval_langs=[en,ta,kn]", "stats.per_lang=4",
            f"hydra.run.dir={out}", f"model.cache_dir={tmp_path / 'cache'}")
    info = json.loads((out / "run_info.json").read_text())
    assert sum(info["subject_localisation"].values()) == 6
    assert info["missing_languages"].get("kn") == 6
    assert "subject localisation (ta)" in r.stdout


@pytest.mark.parametrize("mode,extra", [("single", []), ("batch", ["method.num_edits=2"]),
                                        ("sequential", ["method.num_edits=2"]),
                                        ("all_languages", [])])
def test_memit_modes(tmp_path, mode, extra):
    out = tmp_path / "job"
    run("model=tiny_llama", "method=memit", f"method.mode={mode}", *extra, *FAST,
        "eval_langs=[en,de,hi]", f"hydra.run.dir={out}", f"model.cache_dir={tmp_path / 'cache'}")
    lines = [json.loads(l) for l in (out / "results.jsonl").read_text().splitlines()]
    assert len(lines) == 2 * 3 and all(l["mode"] == mode for l in lines)
    assert all(l["status"] == "ok" for l in lines), [l["reason"] for l in lines]
    edit = lines[0]["edit"]
    assert edit["method"] == "memit" and edit["layers"] == [0, 1]
    if mode == "batch":
        assert edit["n_requests"] == 2 and {l["group"] for l in lines} == {0}
    if mode == "sequential":
        assert sorted({l["edit"]["position"] for l in lines}) == [0, 1]
    if mode == "all_languages":
        assert edit["n_requests"] == 3 and all(l["edit_lang"] == "all" and l["elfi"] for l in lines)
        assert all(l["subject"]["method"] == "exact" for l in lines)  # per-language localisation
    summary = (out / "summary.csv").read_text()
    assert ("all,ELFI,post" if mode == "all_languages" else "en,ELFO,post") in summary


def test_rome_rejects_batch_mode(tmp_path):
    r = subprocess.run([sys.executable, "run.py", "model=tiny_llama", "method.mode=batch",
                        f"hydra.run.dir={tmp_path}"], cwd=ROOT, capture_output=True, text=True)
    assert r.returncode != 0 and "memit" in r.stderr
