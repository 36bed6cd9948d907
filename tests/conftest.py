"""Shared fixtures: tiny random models built from the project's own model configs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from xling_edit.config import ModelConfig
from xling_edit.models import ModelSpec, load_model

ROOT = Path(__file__).resolve().parents[1]
# The reference data beside the project (../shared/data), or wherever XLING_EDIT_DATA points.
SHARED_DATA = Path(os.environ.get("XLING_EDIT_DATA") or ROOT.parent / "shared" / "data")
TINY = ("tiny_llama", "tiny_gpt2", "tiny_gemma3")
# Test-only models (random tiny members of each family) live here, not in the user's conf/model;
# a Hydra composition or run.py reaches them with this override.
TEST_CONF = ROOT / "tests" / "conf"
SEARCHPATH = f"hydra.searchpath=[file://{TEST_CONF}]"

torch.set_num_threads(2)


def model_cfg(name: str):
    path = TEST_CONF / "model" / f"{name}.yaml"
    path = path if path.exists() else ROOT / "conf" / "model" / f"{name}.yaml"
    return OmegaConf.merge(OmegaConf.structured(ModelConfig), OmegaConf.load(path))


@pytest.fixture(scope="session", params=TINY)
def tiny(request):
    """(name, model, tokenizer, spec, model config) for each tiny architecture."""
    cfg = model_cfg(request.param)
    model, tok = load_model(cfg, seed=0)
    return request.param, model, tok, ModelSpec.from_config(cfg.templates), cfg


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip(f"reference data not found at {SHARED_DATA} (../shared/data beside the project, "
                    f"or set XLING_EDIT_DATA)")
    return SHARED_DATA


def language(code: str):
    from xling_edit.languages import load_languages

    return load_languages(ROOT / "conf")[code]


def pytest_terminal_summary(terminalreporter):
    """Measurements a test records with ``record_property("summary", line)`` (e.g. the subject
    localisation precision on the hand-labelled fixture), repeated after the run."""
    lines = [value for key in ("passed", "failed") for rep in terminalreporter.stats.get(key, [])
             for name, value in getattr(rep, "user_properties", ()) if name == "summary"]
    if lines:
        terminalreporter.section("measurements")
        for line in lines:
            terminalreporter.write_line(line)


@pytest.fixture(scope="module")
def one_thread():
    """torch on one thread for the module (tiny models run fastest so, and far faster than on
    two threads of a busy machine); the previous count restored afterwards."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def run_bench(tmp_path: Path, *args: str):
    """``python bench/edit_bench.py`` on tiny_llama (its own cache under ``tmp_path``, 1 thread,
    4 statistics paragraphs per language) with ``args``; asserts it succeeded and returns the
    finished process and its JSON results."""
    out = tmp_path / "bench.json"
    r = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "edit_bench.py"), "--model", "tiny_llama", *args, "--out", str(out),
         "--override", f"model.cache_dir={tmp_path / 'cache'}", "--override", "stats.per_lang=4",
         "--override", "threads=1"],
        cwd=ROOT, capture_output=True, text=True, timeout=600, env={"TQDM_DISABLE": "1", **os.environ})
    assert r.returncode == 0, r.stderr[-3000:]
    return r, json.loads(out.read_text())
