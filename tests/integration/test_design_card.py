"""The study's design card command, verbatim: `python run.py -m model=tamil_llama method=memit
edit_lang=en,hi,ta`. Every sweep point composes (the short model names select the 7B configs),
and offline, without the weights, each job stops in one line before anything loads."""

import itertools
import json
import os
import subprocess
import sys

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import OmegaConf

from tests.conftest import ROOT
from xling_edit.configstore import register_configs

register_configs()

CARD = "python run.py -m model=tamil_llama method=memit edit_lang=en,hi,ta"
SHORT = {"tamil_llama": "tamil_llama_7b", "kan_llama": "kan_llama_7b", "openhathi": "openhathi_7b",
         "tower_instruct": "tower_instruct_7b", "mistral": "mistral_7b"}


def sweep_points(command: str) -> list[list[str]]:
    """The override lists of every job a `run.py -m ...` command line launches (Hydra's parser)."""
    args = [a for a in command.split()[2:] if a not in ("-m", "--multirun")]
    axes = []
    for o in OverridesParser.create().parse_overrides(args):
        values = list(o.sweep_string_iterator()) if o.is_sweep_override() else [o.value()]
        axes.append([f"{o.get_key_element()}={v}" for v in values])
    return [list(p) for p in itertools.product(*axes)]


def compose_cfg(overrides):
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        return compose(config_name="config", overrides=list(overrides))


def test_card_command_composes_at_every_sweep_point():
    points = sweep_points(CARD)
    assert [p[-1] for p in points] == ["edit_lang=en", "edit_lang=hi", "edit_lang=ta"]
    for overrides in points:
        cfg = compose_cfg(overrides)
        resolved = OmegaConf.to_container(cfg, resolve=True)  # --cfg job --resolve
        assert resolved["model"]["name"] == "tamil_llama_7b"
        assert resolved["model"]["path"] == "abhinand/tamil-llama-7b-base-v0.1"
        assert resolved["method"]["name"] == "memit" and resolved["method"]["layers"] == [4, 5, 6, 7, 8]
        assert resolved["edit_lang"]["code"] == overrides[-1].split("=")[1]


@pytest.mark.parametrize("short", sorted(SHORT))
def test_short_names_select_the_7b_configs(short):
    a = OmegaConf.to_container(compose_cfg([f"model={short}"]), resolve=True)
    b = OmegaConf.to_container(compose_cfg([f"model={SHORT[short]}"]), resolve=True)
    assert a == b  # same name, weights, templates, hparams: same caches and resume fingerprints


def test_cfg_job_prints_one_sweep_point():
    r = subprocess.run([sys.executable, "run.py", "model=tamil_llama", "method=memit", "edit_lang=hi",
                        "--cfg", "job", "--resolve"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert "name: tamil_llama_7b" in r.stdout and "- 8" in r.stdout and "code: hi" in r.stdout


def test_card_command_offline_fails_in_one_line_per_job(tmp_path):
    env = {**os.environ, "HF_HOME": str(tmp_path / "hf"), "HF_HUB_OFFLINE": "1", "XLING_EDIT_OUTPUTS": str(tmp_path)}
    r = subprocess.run([sys.executable, str(ROOT / "run.py"), *CARD.split()[2:]], cwd=tmp_path,
                       capture_output=True, text=True, timeout=600, env=env)
    assert r.returncode == 2
    errors = [l for l in r.stderr.splitlines() if l.strip()]
    assert len(errors) == 3 and len(set(errors)) == 1, r.stderr[-2000:]
    assert errors[0].startswith("error: model tamil_llama_7b (abhinand/tamil-llama-7b-base-v0.1): "
                                "weights not reachable, set model.allow_download=true or model.path")
    assert "Traceback" not in r.stderr + r.stdout
    # nothing ran: no job started, so no job.json and no results
    jobs = list(tmp_path.glob("multirun/*/*/*"))
    assert len([j for j in jobs if j.is_dir()]) == 3
    assert not list(tmp_path.glob("multirun/**/job.json")) and not list(tmp_path.glob("multirun/**/results.jsonl"))


def test_full_error_env_shows_the_traceback(tmp_path):
    env = {**os.environ, "HF_HOME": str(tmp_path / "hf"), "HF_HUB_OFFLINE": "1", "HYDRA_FULL_ERROR": "1",
           "XLING_EDIT_OUTPUTS": str(tmp_path)}
    r = subprocess.run([sys.executable, str(ROOT / "run.py"), "model=tamil_llama", "method=memit",
                        "edit_lang=hi"], cwd=tmp_path, capture_output=True, text=True, timeout=600, env=env)
    assert r.returncode == 1 and "Traceback" in r.stderr and "WeightsNotReachable" in r.stderr
