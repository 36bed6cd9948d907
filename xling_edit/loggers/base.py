"""The logger interface the pipeline calls; the base class logs nothing (``logger=none``)."""

from __future__ import annotations

from pathlib import Path
from typing import Mapping, Sequence

from omegaconf import DictConfig


class RunLogger:
    """Streams a job's results somewhere besides the local files.

    The pipeline calls, on rank zero only::

        with build_logger(cfg) as logger:          # __exit__ calls close(exc)
            logger.start(cfg, out_dir)              # before the case loop
            logger.log_lines(lines, progress)       # after every finished case group
            logger.finish(out_dir, info, summary_rows)  # after run_info.json is written

    ``close(exc)`` ends the run if ``finish`` did not (a job that raised); it is idempotent, never
    raises, and is what makes a sweep's next job start a fresh run. This base class is the no-op
    logger (``logger=none``).
    """

    name = "none"

    def start(self, cfg: DictConfig, out_dir: Path) -> None:
        """Open the run (``cfg``: the job's composed config; ``out_dir``: its output directory)."""

    def log_lines(self, lines: Sequence[Mapping], progress: Mapping[str, int]) -> None:
        """One finished case group: ``lines`` as written to results.jsonl (every eval language of
        every case in the group); ``progress = {"done": n, "total": N, "failed": k}`` in cases."""

    def finish(self, out_dir: Path, info: Mapping, summary_rows: Sequence[Mapping]) -> None:
        """End of the job: ``info`` is run_info.json's content, ``summary_rows`` what
        ``xling_edit.results.summarize`` returned. Ends the run."""

    def close(self, exc: BaseException | None = None) -> None:
        """End the run if it is still open (``exc``: why the job stopped, None if it did not
        fail). Safe to call at any time and more than once."""

    def __enter__(self) -> "RunLogger":
        return self

    def __exit__(self, exc_type, exc, tb) -> bool:
        self.close(exc)
        return False
