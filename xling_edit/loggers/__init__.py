"""Run loggers: where a job's results stream besides its local files (``conf/logger/``).

``build_logger(cfg)`` returns the logger named by ``cfg.logger.name``; the pipeline drives it
through the :class:`RunLogger` interface (``start`` → ``log_lines``… → ``finish``, ``close`` on
failure; a context manager). ``none`` logs nothing; ``wandb`` is
:class:`xling_edit.loggers.wandb_logger.WandbLogger` (needs the optional ``wandb`` package,
imported only when selected).
"""

from __future__ import annotations

from omegaconf import DictConfig, OmegaConf

from xling_edit.loggers.base import RunLogger

LOGGERS = ("none", "wandb")


def build_logger(cfg: DictConfig) -> RunLogger:
    """The logger for ``cfg.logger`` (a whole job config, or a config without ``logger``:
    no-op). Fails here, before any model is loaded, when ``wandb`` is selected but not installed
    or ``logger.mode`` is unknown."""
    node = OmegaConf.select(cfg, "logger") if isinstance(cfg, DictConfig) else None
    name = str(node.get("name", "none")) if node is not None else "none"
    if name == "none":
        return RunLogger()
    if name == "wandb":
        from xling_edit.loggers.wandb_logger import WandbLogger

        return WandbLogger(node)
    raise ValueError(f"logger={name!r} unknown; available: {list(LOGGERS)}")


__all__ = ["LOGGERS", "RunLogger", "build_logger"]
