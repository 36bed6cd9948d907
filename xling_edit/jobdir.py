"""The job directory's format, in one place: every file a job writes, and its name.

::

    <job>/
      job.json            written when the job starts, updated when it finishes or fails:
                          status, the config's fingerprint, the resolved config
      results.jsonl       one line per (case, edit language, evaluation language), appended per
                          finished case group (flushed and fsynced); dataset order at the end
      summary.csv         means per (method, edit language, evaluation language, ELFI/ELFO)
      run_info.json       what happened: case counts, failures, timings, statistics, config
      curve.jsonl         sequential mode's stability curve (rank r > 0: curve.rank<r>.jsonl)
      logs/               one log file per rank
      .shards/            ranks > 0 while a distributed job runs: rank<r>.jsonl (their lines,
                          forwarded by rank zero) and rank<r>.done (finished); removed at the end

Everything that reads or writes a job directory takes these names from here (:class:`JobDir`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

RESULTS = "results.jsonl"
JOB_FILE = "job.json"
SUMMARY = "summary.csv"
RUN_INFO = "run_info.json"
SHARDS = ".shards"
LOGS = "logs"
CURVE_GLOB = "curve*.jsonl"


@dataclass(frozen=True)
class JobDir:
    """Paths of one job directory (module docstring)."""

    path: Path

    def __post_init__(self):
        object.__setattr__(self, "path", Path(self.path))

    @property
    def results(self) -> Path:
        return self.path / RESULTS

    @property
    def job_file(self) -> Path:
        return self.path / JOB_FILE

    @property
    def summary(self) -> Path:
        return self.path / SUMMARY

    @property
    def run_info(self) -> Path:
        return self.path / RUN_INFO

    @property
    def logs(self) -> Path:
        return self.path / LOGS

    @property
    def shards(self) -> Path:
        return self.path / SHARDS

    def lines_file(self, rank: int) -> Path:
        """Where ``rank`` writes its lines: ``results.jsonl`` (rank zero) or its shard."""
        return self.results if rank == 0 else self.shard(rank)

    def shard(self, rank: int) -> Path:
        return self.shards / f"rank{rank}.jsonl"

    def shard_files(self) -> list[Path]:
        return sorted(self.shards.glob("rank*.jsonl")) if self.shards.is_dir() else []

    def done_marker(self, rank: int) -> Path:
        """Written by rank ``rank`` > 0 when it has written all its lines."""
        return self.shards / f"rank{rank}.done"

    def curve(self, rank: int) -> Path:
        return self.path / ("curve.jsonl" if rank == 0 else f"curve.rank{rank}.jsonl")

    def curve_files(self) -> list[Path]:
        return sorted(self.path.glob(CURVE_GLOB))
