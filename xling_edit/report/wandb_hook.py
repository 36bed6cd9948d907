"""Attach a report folder to a Weights & Biases run. ``wandb`` is imported only when
``log_report_to_wandb`` is called (it is not a dependency of the project)."""

from __future__ import annotations

import csv
import os
from pathlib import Path


def _number(s: str):
    if s == "":
        return None
    try:
        f = float(s)
    except ValueError:
        return s
    return int(f) if f.is_integer() and "." not in s and "e" not in s.lower() else f


def log_report_to_wandb(run, report_dir: str | os.PathLike, prefix: str = "report") -> dict:
    """Log every CSV under ``report_dir`` as a ``wandb.Table`` and every PNG as a
    ``wandb.Image`` on ``run`` (a ``wandb.init()`` run), in one ``run.log`` call under keys
    ``<prefix>/<relative path without suffix>``. Returns the logged dict."""
    import wandb  # lazy: optional dependency

    root = Path(report_dir)
    if not root.is_dir():
        raise FileNotFoundError(f"no report folder at {root}")
    payload: dict = {}
    for path in sorted(root.rglob("*.csv")):
        with open(path, newline="", encoding="utf-8") as f:
            rows = list(csv.reader(f))
        if not rows:
            continue
        key = f"{prefix}/{path.relative_to(root).with_suffix('').as_posix()}"
        payload[key] = wandb.Table(columns=rows[0], data=[[_number(v) for v in r] for r in rows[1:]])
    for path in sorted(root.rglob("*.png")):
        key = f"{prefix}/{path.relative_to(root).with_suffix('').as_posix()}"
        payload[key] = wandb.Image(str(path), caption=path.stem)
    if payload:
        run.log(payload)
    return payload
