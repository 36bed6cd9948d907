"""Where jobs write, independent of the working directory, and the check that they can.

Job directories go under ``output_root`` (``conf/config.yaml``): single runs to
``<output_root>/outputs/<date>/<time>_<model>_<method>_<lang>/``, sweeps to
``<output_root>/multirun/<date>/<time>/<n>_.../``, and ``resume=true`` looks in
``resume_roots``, relative to ``output_root``. A relative ``output_root`` is taken from the
project root (the folder of ``run.py`` and ``conf/``, where ``data.root`` falls back to as
well), never from the working directory: ``python /path/to/run.py`` writes and resumes in the
same place from any directory. ``$XLING_EDIT_OUTPUTS`` (or ``output_root=<dir>``) puts them
elsewhere; ``hydra.run.dir`` / ``hydra.sweep.dir`` / ``resume=<dir>`` given explicitly are
used as given.

A directory a job cannot write (under a regular file, not writable, a read-only file system)
stops it in one line (:class:`~xling_edit.errors.ConfigError`, exit status 2): in ``run.py``
before Hydra creates the job directory (:class:`OutputDirCheck`, a Hydra callback), in
:func:`xling_edit.pipeline.run` before the model loads (:func:`ensure_output_dir`).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any, Sequence

from hydra.experimental.callback import Callback

from xling_edit.errors import ConfigError

#: environment variable giving the default ``output_root``
OUTPUT_ROOT_ENV = "XLING_EDIT_OUTPUTS"
#: what to change when an output directory is unusable
def where_else(key: str = "hydra.run.dir") -> str:
    """What to change when an output directory is unusable (``key``: the directory's setting)."""
    return f"choose another: output_root=<dir> (or ${OUTPUT_ROOT_ENV}), {key}=<dir>"


def project_path(path: Any) -> str:
    """``path`` made absolute: ``~`` expanded, a relative path taken from the project root (not
    the working directory). The ``${project_path:<path>}`` resolver of ``conf/config.yaml``."""
    from xling_edit.languages import PROJECT_ROOT

    p = Path(os.path.expanduser(str(path)))
    return str(p if p.is_absolute() else (PROJECT_ROOT / p).resolve())


def output_root(cfg) -> Path:
    """The job config's ``output_root``, absolute (:func:`project_path`)."""
    return Path(project_path(cfg.get("output_root") or "."))


def resume_roots(cfg) -> list[Path]:
    """Where ``resume=true`` looks: each of ``cfg.resume_roots``, relative ones under
    :func:`output_root`."""
    root = output_root(cfg)  # joining an absolute path gives that path
    return [root / Path(os.path.expanduser(str(r))) for r in cfg.resume_roots]


def unwritable(path: Path | str) -> str | None:
    """Why a job could not create or write directory ``path``, in a few words; None when it
    can. Looks only (creates nothing): the path itself when it exists, else its nearest existing
    ancestor, must be a directory this process may write into."""
    path = Path(os.path.abspath(os.path.expanduser(str(path))))
    existing = next((p for p in (path, *path.parents) if os.path.lexists(p)), None)
    if existing is None:
        return None
    if not existing.is_dir():
        return f"{existing} is a file, not a directory" if existing.exists() else \
            f"{existing} is a broken link"
    if not os.access(existing, os.W_OK | os.X_OK):
        return f"{existing} is not writable"
    return None


def ensure_output_dir(path: Path | str) -> Path:
    """Create job directory ``path`` (parents too); a :class:`ConfigError` in one line when it
    cannot be created or written."""
    path = Path(path)
    why = unwritable(path)
    if why is None:
        try:
            path.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            why = exc.strerror or type(exc).__name__
    if why is not None:
        raise ConfigError(f"output directory {path}: cannot write there ({why}); {where_else()}")
    return path


class OutputDirCheck(Callback):
    """Hydra callback (``hydra.callbacks.output_dir`` in ``conf/config.yaml``): before Hydra
    creates the job's directory (``hydra.run.dir``) or a sweep's (``hydra.sweep.dir``) and
    starts its log there, one that cannot be written stops ``run.py`` with one line
    ``error: ...`` and exit status 2 (``HYDRA_FULL_ERROR=1``: the traceback)."""

    def on_run_start(self, config, **kwargs) -> None:
        check_hydra_dir(config, "hydra.run.dir")

    def on_multirun_start(self, config, **kwargs) -> None:
        check_hydra_dir(config, "hydra.sweep.dir")


def check_hydra_dir(config, key: str) -> None:
    """The check of :class:`OutputDirCheck` for the directory at ``key`` of Hydra's config."""
    from omegaconf import OmegaConf

    path = str(OmegaConf.select(config, key))
    why = unwritable(path)
    if why is None:
        return
    message = f"{key}={path}: cannot write there ({why}); {where_else(key)}"
    if os.environ.get("HYDRA_FULL_ERROR") == "1":
        raise ConfigError(message)
    print(f"error: {message}", file=sys.stderr, flush=True)
    sys.exit(ConfigError.exit_code)


__all__: Sequence[str] = ("OUTPUT_ROOT_ENV", "OutputDirCheck", "ensure_output_dir", "output_root",
                          "project_path", "resume_roots", "unwritable")
