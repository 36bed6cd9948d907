"""Ready-made config groups: experiment/ grids, debug/ shrinkers, hydra/launcher choices."""

import json
import subprocess
import sys

import pytest
import yaml

from tests.conftest import ROOT


def run(*args):
    r = subprocess.run([sys.executable, "run.py", *args], cwd=ROOT, capture_output=True, text=True,
                       timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    return r


@pytest.mark.parametrize("name,models,methods,langs", [
    ("paper_counterfact", 5, 2, 8), ("paper_zsre", 5, 2, 8), ("paper_ties", 1, 2, 4)])
def test_paper_grids_compose(name, models, methods, langs):
    hydra_cfg = yaml.safe_load(run(f"experiment={name}", "--cfg", "hydra").stdout)
    params = hydra_cfg["hydra"]["sweeper"]["params"]
    assert len(params["method"].split(",")) == methods
    assert len(params["edit_lang"].split(",")) == langs
    assert len(params.get("model", "x").split(",")) == models
    job = yaml.safe_load(run(f"experiment={name}", "--cfg", "job").stdout)
    assert job["data"]["name"].startswith("bmike53") and job["data"]["max_cases"] is None
    assert job["runner"]["accelerator"] == "cuda" and job["resume"] is True
    if name == "paper_ties":
        assert job["merge"]["name"] == "ties" and job["model"]["name"] == "llama2_7b"


def test_slurm_launcher_composes_with_one_task_per_gpu():
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher")
    from hydra import compose, initialize_config_dir

    from xling_edit.configstore import register_configs

    register_configs()
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose("config", overrides=["hydra/launcher=slurm", "runner.devices=4",
                                           "runner.num_nodes=2"], return_hydra_config=True)
    launcher = cfg.hydra.launcher
    assert launcher._target_.endswith("SlurmLauncher")
    assert (launcher.tasks_per_node, launcher.gpus_per_node, launcher.nodes) == (4, 4, 2)


def test_debug_tiny_and_the_laptop_grid_run_in_seconds(tmp_path):
    sweep = tmp_path / "sweep"
    run("-m", "experiment=laptop", "debug=tiny", f"hydra.sweep.dir={sweep}",
        f"model.cache_dir={tmp_path / 'cache'}", "print_tables=false")
    jobs = sorted(p for p in sweep.iterdir() if (p / "results.jsonl").exists())
    assert len(jobs) == 6  # rome, memit x en, de, hi
    for job in jobs:
        info = json.loads((job / "run_info.json").read_text())
        assert info["model"] == "tiny_llama" and info["n_cases"] == 2
        assert set(info["eval_langs"]) == {"en", "de", info["edit_lang"]}  # the edit language is always evaluated


def test_local_parallel_launcher_runs_jobs(tmp_path):
    pytest.importorskip("hydra_plugins.hydra_joblib_launcher")
    sweep = tmp_path / "sweep"
    run("-m", "hydra/launcher=local_parallel", "debug=tiny", "edit_lang=en,de", "threads=1",
        f"hydra.sweep.dir={sweep}", f"model.cache_dir={tmp_path / 'cache'}", "print_tables=false")
    assert sorted(p.name.split("_")[-1] for p in sweep.iterdir() if (p / "results.jsonl").exists()) == ["de", "en"]
