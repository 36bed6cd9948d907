"""The Fabric runner, resuming after kill -9, failures and exit status, determinism — through
``python run.py`` on tiny models, as a user would run them."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from tests.conftest import ROOT

BASE = ["model=tiny_llama", "stats.per_lang=4", "eval_langs=[en,de]", "print_tables=false",
        "threads=1"]


def run(*args, expect=0):
    r = subprocess.run([sys.executable, "run.py", *args], cwd=ROOT, capture_output=True, text=True,
                       timeout=600)
    assert r.returncode == expect, r.stderr[-3000:]
    return r


def comparable(path):
    """results.jsonl without what legitimately differs between runs (wall-clock timings)."""
    lines = [json.loads(l) for l in path.read_text().splitlines()]
    for l in lines:
        l.pop("timings", None)
        (l.get("edit") or {}).pop("edit_s", None)
    return lines


def test_two_processes_give_the_same_results_as_one(tmp_path):
    common = [*BASE, "data.max_cases=4", f"model.cache_dir={tmp_path / 'cache'}"]
    run(*common, f"hydra.run.dir={tmp_path / 'one'}")
    run(*common, "runner.devices=2", "runner.accelerator=cpu", f"hydra.run.dir={tmp_path / 'two'}")
    one, two = comparable(tmp_path / "one" / "results.jsonl"), comparable(tmp_path / "two" / "results.jsonl")
    assert len(one) == 4 * 2 and one == two  # case for case, in dataset order
    info = json.loads((tmp_path / "two" / "run_info.json").read_text())
    assert info["world_size"] == 2 and info["case_status"] == {"ok": 4}
    logs = tmp_path / "two" / "logs"
    assert "[rank 1]" in (logs / "rank1.log").read_text()  # rank-aware logs, one file per rank
    assert not (tmp_path / "two" / ".shards").exists()  # shards were merged and removed


def test_same_config_gives_identical_results(tmp_path):
    # MEMIT samples context prefixes from the model: the seed must fix them too
    common = [*BASE, "method=memit", "data.max_cases=2", f"model.cache_dir={tmp_path / 'cache'}"]
    run(*common, f"hydra.run.dir={tmp_path / 'a'}")
    run(*common, f"hydra.run.dir={tmp_path / 'b'}")
    a, b = comparable(tmp_path / "a" / "results.jsonl"), comparable(tmp_path / "b" / "results.jsonl")
    assert a == b and all(l["status"] == "ok" for l in a)
    other = [*BASE, "method=memit", "data.max_cases=2", "seed=1", f"model.cache_dir={tmp_path / 'cache'}"]
    run(*other, f"hydra.run.dir={tmp_path / 'c'}")
    c = comparable(tmp_path / "c" / "results.jsonl")
    assert [l["edit"]["per_layer"] for l in c] != [l["edit"]["per_layer"] for l in a]  # the seed matters


def _lines_in(path):
    return len(path.read_text().splitlines()) if path.exists() else 0


@pytest.mark.parametrize("devices", [1, 2])
def test_kill_9_then_resume_equals_an_uninterrupted_run(tmp_path, devices):
    n = 24
    common = [*BASE, f"data.max_cases={n}", "method.v_steps=12", f"runner.devices={devices}",
              "runner.accelerator=cpu", f"model.cache_dir={tmp_path / 'cache'}",
              f"resume_roots=[{tmp_path / 'outputs'}]"]
    run(*common, f"hydra.run.dir={tmp_path / 'ref'}")

    first = tmp_path / "outputs" / "first"
    proc = subprocess.Popen([sys.executable, "run.py", *common, f"hydra.run.dir={first}"], cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    results = first / "results.jsonl"
    deadline = time.monotonic() + 300
    while _lines_in(results) < 2 * 4 and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)  # the whole process group: spawned ranks too
    proc.wait()
    done = _lines_in(results)
    assert 0 < done < 2 * n, "the kill should land mid-run"
    if devices == 2:
        assert (first / ".shards").exists()

    # the same command, in a new directory, with resume=true: continues `first`
    r = run(*common, f"hydra.run.dir={tmp_path / 'outputs' / 'second'}", "resume=true")
    assert "resuming into" in r.stdout + r.stderr
    assert not (tmp_path / "outputs" / "second" / "results.jsonl").exists()
    assert comparable(results) == comparable(tmp_path / "ref" / "results.jsonl")
    info = json.loads((first / "run_info.json").read_text())
    assert info["case_status"] == {"ok": n} and info["resumed_cases"] > 0


def test_failures_are_recorded_and_set_the_exit_status(tmp_path):
    out = tmp_path / "job"
    # a NaN KL weight makes the value optimisation's loss non-finite
    r = run(*BASE, "data.max_cases=2", "method.kl_factor=nan", f"hydra.run.dir={out}",
            f"model.cache_dir={tmp_path / 'cache'}", expect=3)
    lines = [json.loads(l) for l in (out / "results.jsonl").read_text().splitlines()]
    assert len(lines) == 2 * 2 and all(l["status"] == "failed" for l in lines)
    assert all("FloatingPointError" in l["reason"] for l in lines)
    info = json.loads((out / "run_info.json").read_text())
    assert info["case_status"] == {"failed": 2} and len(info["failures"]) == 2
    assert "failed" in r.stdout + r.stderr
    # strict=false forgives some cases not edited, never a run where no case was edited
    lax = run(*BASE, "data.max_cases=2", "method.kl_factor=nan", "strict=false",
              f"hydra.run.dir={tmp_path / 'lax'}", f"model.cache_dir={tmp_path / 'cache'}", expect=3)
    assert "exit 3: no case was edited: 2 case(s): 0 edited, 2 failed: FloatingPointError" in lax.stderr


def test_resume_refuses_a_directory_of_another_config(tmp_path):
    out = tmp_path / "job"
    run(*BASE, "data.max_cases=1", f"hydra.run.dir={out}", f"model.cache_dir={tmp_path / 'cache'}")
    config_yaml = (out / ".hydra" / "config.yaml").read_text()
    log_size = (out / "run.log").stat().st_size
    r = run(*BASE, "data.max_cases=1", "seed=7", f"hydra.run.dir={out}",
            f"model.cache_dir={tmp_path / 'cache'}", expect=2)  # a configuration error, one line
    assert "another config" in r.stderr and "Traceback" not in r.stderr
    # refused before Hydra wrote anything into the other job's directory
    assert (out / ".hydra" / "config.yaml").read_text() == config_yaml
    assert (out / "run.log").stat().st_size == log_size


def test_bad_runner_settings_fail_clearly(tmp_path):
    r = run(*BASE, "runner.num_nodes=2", f"hydra.run.dir={tmp_path}", expect=1)
    assert "cluster launcher" in r.stdout + r.stderr
