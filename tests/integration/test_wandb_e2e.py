"""``python run.py ... logger=wandb`` offline on the tiny model: the job directory holds the
results and one offline W&B run with streamed case metrics, the summary table, heatmaps and the
config; a sweep gives one run per job in one group."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from tests.conftest import ROOT
from tests.wandb_offline import offline_runs, read_run

pytest.importorskip("wandb")

ARGS = ["model=tiny_llama", "data.max_cases=2", "eval_langs=[en,de]", "stats.per_lang=4",
        "logger.n_boot=50"]


def wandb_env(tmp_path, mode: str | None = "offline") -> dict:
    """No network, no git, no writes outside tmp; ``mode=None``: no ``WANDB_MODE`` and no
    credentials anywhere W&B looks (env, netrc, settings files)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("WANDB_")}
    env["NETRC"] = str(tmp_path / "no_netrc")
    for var, sub in (("WANDB_DIR", "dir"), ("WANDB_CACHE_DIR", "cache"), ("WANDB_DATA_DIR", "data"),
                     ("WANDB_CONFIG_DIR", "config"), ("WANDB_ARTIFACT_DIR", "artifacts")):
        (tmp_path / "wandb_env" / sub).mkdir(parents=True, exist_ok=True)
        env[var] = str(tmp_path / "wandb_env" / sub)
    env.update(WANDB_SILENT="true", WANDB_DISABLE_GIT="true", WANDB_DISABLE_CODE="true", WANDB_CONSOLE="off")
    if mode:
        env["WANDB_MODE"] = mode
    return env


def run_py(tmp_path, *args, mode: str | None = "offline"):
    r = subprocess.run([sys.executable, "run.py", *args, f"model.cache_dir={tmp_path / 'cache'}"],
                       cwd=ROOT, capture_output=True, text=True, timeout=600, env=wandb_env(tmp_path, mode))
    assert r.returncode == 0, r.stderr[-3000:]
    return r


def check_job_run(job, edit: str):
    """The job's results and its one offline W&B run, with everything the logger promises."""
    lines = [json.loads(l) for l in (job / "results.jsonl").read_text().splitlines()]
    assert len(lines) == 2 * 2 and (job / "summary.csv").is_file()
    runs = offline_runs(job)
    assert len(runs) == 1, runs
    run = read_run(runs[0])
    assert run.complete and run.exit_code == 0
    assert run.name == f"tiny_llama_rome_{edit}" and f"edit:{edit}" in run.tags
    assert run.config["model"]["name"] == "tiny_llama" and run.config["logger"]["name"] == "wandb"
    assert run.config["edit_lang"]["code"] == edit
    streamed = [h for h in run.history if "progress/cases_done" in h]
    assert [h["progress/cases_done"] for h in streamed] == [1, 2]
    keys = run.history_keys
    assert {f"case/reliability_token_acc/{l}" for l in ("en", "de")} <= keys
    assert {"ELFI/reliability_token_acc", "ELFO/locality_agree_token", "ELFO/locality_prob_drop",
            "tables/summary"} <= keys
    assert {f"case/locality_agree_token/{l}" for l in ("en", "de")} <= keys
    assert any(k.startswith("report/figures/heatmap_") for k in keys)
    assert run.summary["status"] == "finished" and "ELFI/reliability_token_acc" in run.summary
    return run


@pytest.mark.slow  # ~30 s on 2 busy cores (the tiny model's job ~20 s, W&B and the report ~8 s)
def test_run_py_logger_wandb_offline(tmp_path):
    """logger.mode=auto, no WANDB_MODE and no credentials: W&B's login check finds none and the
    run is written offline (never a prompt, never the network)."""
    job = tmp_path / "job"
    run_py(tmp_path, *ARGS, "logger=wandb", f"hydra.run.dir={job}", mode=None)
    run = check_job_run(job, "en")
    assert run.group == ""  # single run: no group


@pytest.mark.slow
def test_sweep_gives_one_run_per_job_in_one_group(tmp_path):
    sweep = tmp_path / "sweep"
    run_py(tmp_path, "-m", *ARGS, "edit_lang=en,de", "logger=wandb", f"hydra.sweep.dir={sweep}")
    jobs = sorted(p for p in sweep.iterdir() if p.is_dir() and (p / "results.jsonl").exists())
    assert [j.name.split("_")[-1] for j in jobs] == ["en", "de"]
    runs = [check_job_run(j, j.name.split("_")[-1]) for j in jobs]
    assert runs[0].run_id != runs[1].run_id
    assert runs[0].group == runs[1].group and runs[0].group.endswith("sweep")


@pytest.mark.slow
def test_a_resumed_job_continues_its_wandb_run(tmp_path):
    """Same job directory, same W&B run id, the x-axis going on; a per-case table and the
    results file as an artifact; flat keys to group by."""
    job = tmp_path / "job"
    base = [a for a in ARGS if not a.startswith("data.max_cases")]
    run_py(tmp_path, *base, "data.max_cases=1", "logger=wandb", f"hydra.run.dir={job}")
    run_py(tmp_path, *base, "data.max_cases=2", "logger=wandb", f"hydra.run.dir={job}", f"resume={job}")
    first, second = (read_run(p) for p in offline_runs(job))
    assert first.run_id == second.run_id
    assert [h["progress/cases_done"] for h in second.history if "progress/cases_done" in h] == [2]
    assert "tables/cases" in second.history_keys and second.config["x_method"] == "rome"
    assert second.config["x_edit_lang"] == "en"
