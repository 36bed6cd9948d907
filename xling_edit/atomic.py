"""Files and directories that appear whole or not at all: caches shared by concurrent jobs,
results a killed run must not leave half-written.

* :func:`atomic_path` / :func:`write_text_atomic`: write beside the target, then ``os.replace``.
* :func:`build_once`: build-once directories (merged models, converted GGUF checkpoints,
  fine-tuned variants). Jobs of a sweep that start together all ask for the same directory; the
  first takes the lock and builds into a temporary directory beside the target, the others wait
  on the lock and then find the finished directory. A directory that exists is complete (it only
  ever appears by ``os.rename``), so a killed builder leaves at most a ``*.tmp-*`` directory.
"""

from __future__ import annotations

import fcntl
import logging
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator

log = logging.getLogger(__name__)


@contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """A temporary path beside ``path``, renamed onto ``path`` when the block succeeds (and
    removed when it raises). Readers see the old file or the new one, never half of one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".", suffix=".tmp")
    os.close(fd)
    try:
        yield Path(tmp)
        os.chmod(tmp, 0o644)  # mkstemp creates 0600; caches and results are shared
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def write_text_atomic(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` atomically (fsynced before the rename)."""
    with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8", newline="") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())


@contextmanager
def file_lock(path: Path) -> Iterator[None]:
    """An exclusive ``flock`` on ``path`` (created if needed), released on exit."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


def build_once(target: Path, build: Callable[[Path], None], reuse: bool = True) -> bool:
    """Make sure ``target`` exists, calling ``build(tmp_dir)`` if it does not (or if
    ``reuse`` is false). Returns True when this call built it, False when it was found."""
    target = Path(target)
    with file_lock(target.parent / f"{target.name}.lock"):
        if reuse and target.is_dir():
            return False
        tmp = Path(tempfile.mkdtemp(prefix=f"{target.name}.tmp-", dir=target.parent))
        try:
            build(tmp)
            os.chmod(tmp, 0o755)  # mkdtemp's 0700 would hide the cache from other users' jobs
            if target.exists():
                shutil.rmtree(target)
            os.rename(tmp, target)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return True
