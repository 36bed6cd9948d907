"""Build-once directories: a lock serialises concurrent builders, an atomic rename publishes.

Jobs of a sweep that start together all ask for the same merged checkpoint; the first takes the
lock and builds into a temporary directory beside the target, the others wait on the lock and
then find the finished directory. A directory that exists is complete (it only ever appears by
``os.rename``), so a killed builder leaves at most a ``*.tmp-*`` directory behind.
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
