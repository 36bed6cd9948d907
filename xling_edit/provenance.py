"""Where a run's numbers came from: the code (git commit, or the package version), the packages
that compute them, and the model's files. Recorded in ``run_info.json`` as ``provenance``."""

from __future__ import annotations

import hashlib
import subprocess
from importlib import metadata
from pathlib import Path

#: the packages whose versions can change a result
PACKAGES = ("xling_edit", "torch", "transformers", "peft", "numpy", "hydra-core", "omegaconf",
            "safetensors", "indic-transliteration", "anyascii", "rapidfuzz", "gguf")
#: weight and config files of a model directory that enter its fingerprint
MODEL_FILES = ("*.safetensors", "*.bin", "*.gguf", "*.pt", "config.json", "tokenizer.json",
               "tokenizer.model", "tokenizer_config.json")
_CHUNK = 1 << 20


def code_version(root: Path) -> dict:
    """``{"git_commit", "git_dirty"}`` of the checkout at ``root``, else the installed version."""
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True,
                                text=True, timeout=10)
        if commit.returncode == 0:
            dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                                   cwd=root, capture_output=True, text=True, timeout=10)
            return {"git_commit": commit.stdout.strip(), "git_dirty": bool(dirty.stdout.strip())}
    except (OSError, subprocess.SubprocessError):
        pass
    return {"git_commit": None, "package_version": _version("xling_edit")}


def package_versions() -> dict[str, str | None]:
    return {p: _version(p) for p in PACKAGES}


def _version(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def model_fingerprint(path: str | Path | None) -> dict:
    """A fingerprint of a model directory's files: sha256 over each file's name, size, and first
    and last MiB (whole small files), so that changed or re-converted weights differ while a
    7B checkpoint is not read in full. ``{"files": n, "sha256": ...}``, or a reason when there
    is no directory (random initialisation, a hub id not resolved locally)."""
    if path is None or not Path(path).is_dir():
        return {"sha256": None, "reason": f"no local model directory ({path!r})"}
    files = sorted({f for pattern in MODEL_FILES for f in Path(path).glob(pattern) if f.is_file()})
    h = hashlib.sha256()
    for f in files:
        size = f.stat().st_size
        h.update(f"{f.name}:{size}\n".encode())
        with open(f, "rb") as fh:
            h.update(fh.read(_CHUNK))
            if size > 2 * _CHUNK:
                fh.seek(size - _CHUNK)
                h.update(fh.read(_CHUNK))
    return {"path": str(path), "files": len(files), "sha256": h.hexdigest()}


def provenance(root: Path, model_dir: str | Path | None) -> dict:
    return {"code": code_version(root), "packages": package_versions(),
            "model_files": model_fingerprint(model_dir)}
