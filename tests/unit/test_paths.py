"""Where jobs write (xling_edit/paths.py): job directories and resume roots anchored at the
project root, not the working directory; an output directory that cannot be written is found
without creating anything and reported in one line."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.utils import setup_globals
from omegaconf import OmegaConf

from tests.conftest import ROOT
from xling_edit import paths
from xling_edit.configstore import register_configs
from xling_edit.errors import ConfigError

register_configs()
setup_globals()  # Hydra's ${now:...}


def hydra_dirs(*overrides) -> tuple[Path, Path, list[Path]]:
    """(run dir, sweep dir, resume roots) as ``python run.py <overrides>`` would resolve them."""
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        c = compose(config_name="config", overrides=["model=tiny_llama", *overrides],
                    return_hydra_config=True)
    run, sweep = (Path(OmegaConf.select(c, k)) for k in ("hydra.run.dir", "hydra.sweep.dir"))
    return run, sweep, paths.resume_roots(c)


def test_project_path_anchors_relative_paths_at_the_project_root(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert paths.project_path(".") == str(ROOT)
    assert paths.project_path("outputs") == str(ROOT / "outputs")
    assert paths.project_path("../elsewhere") == str(ROOT.parent / "elsewhere")
    assert paths.project_path(tmp_path / "x") == str(tmp_path / "x")
    monkeypatch.setenv("HOME", str(tmp_path))
    assert paths.project_path("~/runs") == str(tmp_path / "runs")


def test_job_dirs_and_resume_roots_do_not_depend_on_the_working_directory(tmp_path, monkeypatch):
    monkeypatch.delenv(paths.OUTPUT_ROOT_ENV, raising=False)
    seen = []
    for cwd in (ROOT, tmp_path):
        monkeypatch.chdir(cwd)
        run, sweep, roots = hydra_dirs()
        assert run.parent.parent == ROOT / "outputs" and run.name.endswith("_tiny_llama_rome_en")
        assert sweep.parent.parent == ROOT / "multirun"
        assert roots == [ROOT / "outputs", ROOT / "multirun"]
        seen.append((run.parent, roots))
    assert seen[0] == seen[1]


def test_output_root_from_the_environment_or_the_command_line(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv(paths.OUTPUT_ROOT_ENV, str(tmp_path / "env"))
    run, sweep, roots = hydra_dirs()
    assert run.parent.parent == tmp_path / "env" / "outputs" and sweep.parent.parent == tmp_path / "env" / "multirun"
    assert roots == [tmp_path / "env" / "outputs", tmp_path / "env" / "multirun"]
    run, _, roots = hydra_dirs(f"output_root={tmp_path / 'cli'}", f"resume_roots=[old,{tmp_path / 'abs'}]")
    assert run.parent.parent == tmp_path / "cli" / "outputs"
    assert roots == [tmp_path / "cli" / "old", tmp_path / "abs"]
    monkeypatch.setenv(paths.OUTPUT_ROOT_ENV, "runs")  # relative: from the project root too
    assert hydra_dirs()[0].parent.parent == ROOT / "runs" / "outputs"


def test_unwritable_looks_without_creating(tmp_path, monkeypatch):
    blocker = tmp_path / "afile"
    blocker.write_text("x")
    assert paths.unwritable(tmp_path / "new" / "job") is None
    assert not (tmp_path / "new").exists()  # nothing created
    assert paths.unwritable(blocker / "job" / "x") == f"{blocker} is a file, not a directory"
    assert paths.unwritable(blocker) == f"{blocker} is a file, not a directory"
    # root may write anywhere: a read-only directory is simulated through the access check
    real = os.access
    monkeypatch.setattr(paths.os, "access", lambda p, mode: False if Path(p) == tmp_path else real(p, mode))
    assert paths.unwritable(tmp_path / "new" / "job") == f"{tmp_path} is not writable"
    assert paths.unwritable(tmp_path / "afile2") == f"{tmp_path} is not writable"


def test_ensure_output_dir_creates_or_fails_in_one_line(tmp_path):
    job = paths.ensure_output_dir(tmp_path / "a" / "b")
    assert job.is_dir()
    (tmp_path / "afile").write_text("x")
    with pytest.raises(ConfigError) as e:
        paths.ensure_output_dir(tmp_path / "afile" / "job")
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith(f"output directory {tmp_path / 'afile' / 'job'}: cannot write "
                                              f"there ({tmp_path / 'afile'} is a file, not a directory); ")
    assert "output_root=<dir>" in msg and paths.OUTPUT_ROOT_ENV in msg


def test_hydra_callback_stops_before_hydra_writes(tmp_path, capsys, monkeypatch):
    (tmp_path / "afile").write_text("x")
    cfg = OmegaConf.create({"hydra": {"run": {"dir": str(tmp_path / "afile" / "job")},
                                      "sweep": {"dir": str(tmp_path / "ok" / "sweep")}}})
    check = paths.OutputDirCheck()
    check.on_multirun_start(cfg)  # writable: nothing happens, nothing is created
    assert not (tmp_path / "ok").exists()
    monkeypatch.delenv("HYDRA_FULL_ERROR", raising=False)
    with pytest.raises(SystemExit) as e:
        check.on_run_start(cfg)
    assert e.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"error: hydra.run.dir={tmp_path / 'afile' / 'job'}: cannot write")
    monkeypatch.setenv("HYDRA_FULL_ERROR", "1")  # the traceback wanted: an exception
    with pytest.raises(ConfigError, match="afile is a file"):
        check.on_run_start(cfg)
