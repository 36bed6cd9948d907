"""Spread a job's cases over processes, GPUs and nodes with Lightning Fabric.

Three ways a job runs (``runner`` config, :class:`xling_edit.config.RunnerConfig`):

* **single** — one process, no process group (``devices=1, num_nodes=1`` and no cluster
  launcher around us). Fabric is not even imported: it costs seconds on a small CPU.
* **spawn** — ``devices>1`` inside a plain ``python run.py``: Fabric's ``ddp_spawn`` starts the
  ranks with ``torch.multiprocessing`` (the ``ddp`` strategy would re-execute ``sys.argv``,
  restarting a whole Hydra multirun in every rank).
* **joined** — the processes already exist (SLURM via ``hydra-submitit-launcher`` with one task
  per GPU, or ``torchrun``): Fabric's ``ddp`` strategy joins the process group without spawning.

Every rank loads its own model copy and takes ``groups[rank::world]``; results travel from the
other ranks to rank zero through per-rank shard files (see :mod:`xling_edit.pipeline`), so no
collective call ever waits on a slow case and nothing is held only in memory.
"""

from __future__ import annotations

import logging
import os
import time
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any, Callable, Iterator

import torch

log = logging.getLogger(__name__)

PRECISION_DTYPES = {"32-true": "float32", "32": "float32", "bf16-true": "bfloat16",
                    "16-true": "float16"}


@dataclass
class RankInfo:
    """Where this process sits: ``rank`` of ``world`` processes, on ``device``; ``spawned``
    when Fabric started it (so Hydra did not configure its logging)."""

    rank: int = 0
    world: int = 1
    device: str = "cpu"
    fabric: Any = None  # lightning_fabric.Fabric, or None in a single process
    spawned: bool = False

    @property
    def is_zero(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.fabric is not None and self.world > 1:
            self.fabric.barrier()

    @contextmanager
    def zero_first(self) -> Iterator[None]:
        """Rank zero runs the block first (e.g. fills a cache); the others then run it."""
        if not self.is_zero:
            self.barrier()
        yield
        if self.is_zero:
            self.barrier()


def external_launcher() -> str | None:
    """``slurm`` / ``torchrun`` when the processes were started for us, else None."""
    if int(os.environ.get("SLURM_NTASKS", "1")) > 1 and os.environ.get("SLURM_JOB_NAME") not in (
            "bash", "interactive"):
        return "slurm"
    if "LOCAL_RANK" in os.environ and int(os.environ.get("WORLD_SIZE", "1")) > 1:
        return "torchrun"
    return None


def resolve_accelerator(name: str) -> str:
    name = str(name)
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name in ("gpu", "cuda"):
        if not torch.cuda.is_available():
            raise ValueError("runner.accelerator=cuda but torch sees no GPU; use runner.accelerator=cpu")
        return "cuda"
    if name == "cpu":
        return "cpu"
    raise ValueError(f"runner.accelerator={name!r}; choose auto, cpu or cuda")


def launch_mode(rcfg) -> str:
    """``single``, ``spawn`` or ``joined`` for a runner config (see the module docstring)."""
    devices, nodes = int(rcfg.devices), int(rcfg.num_nodes)
    if devices < 1 or nodes < 1:
        raise ValueError(f"runner.devices and runner.num_nodes must be >= 1, got {devices}, {nodes}")
    strategy = str(rcfg.strategy)
    if strategy not in ("auto", "ddp_spawn", "ddp"):
        raise ValueError(f"runner.strategy={strategy!r}; choose auto, ddp_spawn or ddp")
    if external_launcher() is not None or strategy == "ddp":
        return "joined"
    if devices * nodes == 1:
        return "single"
    if nodes > 1:
        raise ValueError("runner.num_nodes > 1 needs processes started by a cluster launcher "
                         "(hydra/launcher=slurm or torchrun); spawning only works on one node")
    return "spawn"


def model_dtype(rcfg, default: str) -> str:
    """The model dtype: ``runner.precision`` when set (Fabric's names), else the model's own."""
    if rcfg.precision in (None, "null"):
        return default
    try:
        return PRECISION_DTYPES[str(rcfg.precision)]
    except KeyError:
        raise ValueError(f"runner.precision={rcfg.precision!r}; choose one of "
                         f"{sorted(PRECISION_DTYPES)} or null (the model's dtype)") from None


def make_fabric(rcfg, mode: str):
    from lightning_fabric import Fabric
    from lightning_fabric.strategies import DDPStrategy

    accelerator = resolve_accelerator(rcfg.accelerator)
    timeout = timedelta(minutes=float(rcfg.timeout_min))
    strategy = DDPStrategy(start_method="spawn", timeout=timeout) if mode == "spawn" \
        else DDPStrategy(timeout=timeout)
    return Fabric(accelerator=accelerator, devices=int(rcfg.devices),
                  num_nodes=int(rcfg.num_nodes), strategy=strategy)


def launch(rcfg, fn: Callable, *args) -> Any:
    """Run ``fn(rank_info, *args)`` on every rank; returns rank zero's result (None elsewhere)."""
    mode = launch_mode(rcfg)
    if mode == "single":
        device = resolve_accelerator(rcfg.accelerator)
        return fn(RankInfo(0, 1, device), *args)
    fabric = make_fabric(rcfg, mode)
    if mode == "spawn":
        log.info("spawning %d ranks (%s)", fabric.world_size, rcfg.accelerator)
        return fabric.launch(_rank_entry, fn, True, *args)
    fabric.launch()  # joined: the processes exist; this only sets up the process group
    return _rank_entry(fabric, fn, False, *args)


def _rank_entry(fabric, fn: Callable, spawned: bool, *args) -> Any:
    info = RankInfo(fabric.global_rank, fabric.world_size, str(fabric.device), fabric, spawned)
    return fn(info, *args)


class _RankFilter(logging.Filter):
    def __init__(self, rank: int):
        super().__init__()
        self.rank = rank

    def filter(self, record: logging.LogRecord) -> bool:
        record.rank = self.rank
        return True


def setup_rank_logging(rank: int, world: int, log_dir: Path, spawned: bool) -> None:
    """Rank-aware logs: every record carries ``[rank r]``. In processes Hydra did not configure
    (spawned ranks) each rank logs to ``log_dir/rank<r>.log``; rank zero also to the console,
    the others only warnings."""
    if world <= 1:
        return
    fmt = logging.Formatter("[%(asctime)s][rank %(rank)s][%(name)s][%(levelname)s] - %(message)s")
    root = logging.getLogger()
    if spawned:
        log_dir.mkdir(parents=True, exist_ok=True)
        fh = logging.FileHandler(log_dir / f"rank{rank}.log", encoding="utf-8")
        fh.setLevel(logging.INFO)
        sh = logging.StreamHandler()
        sh.setLevel(logging.INFO if rank == 0 else logging.WARNING)
        root.handlers = [fh, sh]
        root.setLevel(logging.INFO)
    for h in root.handlers:
        h.addFilter(_RankFilter(rank))
        h.setFormatter(fmt)


def rank_threads(threads: int | None, world: int, accelerator: str) -> int | None:
    """CPU threads for one rank: ``threads`` when set, else the cores shared out between the
    ranks of a multi-process CPU run (None = torch's default)."""
    if threads:
        return int(threads)
    if world > 1 and accelerator == "cpu":
        return max(1, (os.cpu_count() or 1) // world)
    return None


def units(lines: list[dict]) -> list[list[dict]]:
    """``lines`` grouped into the units that are written together (a case, or a batch)."""
    from xling_edit import resume

    units: dict[tuple, list[dict]] = {}
    for l in lines:
        units.setdefault(resume.unit_key(l), []).append(l)
    return list(units.values())


def wait_for_ranks(ri: RankInfo, job, forward, timeout_s: float) -> None:
    """Rank zero: keep forwarding the other ranks' lines until every rank has finished
    (``job``: the :class:`~xling_edit.jobdir.JobDir`)."""
    if ri.world == 1:
        return
    shard_dir = job.shards
    last_change, seen = time.monotonic(), -1
    while True:
        forward()
        finished = [r for r in range(1, ri.world) if job.done_marker(r).exists()]
        if len(finished) == ri.world - 1:
            forward()
            return
        size = sum(p.stat().st_size for p in job.shard_files())
        if size != seen:
            last_change, seen = time.monotonic(), size
        elif time.monotonic() - last_change > timeout_s:
            raise TimeoutError(f"no results from ranks {sorted(set(range(1, ri.world)) - set(finished))} "
                               f"for {timeout_s:.0f} s (runner.timeout_min); their shards are kept "
                               f"for a resume")
        time.sleep(1.0)
