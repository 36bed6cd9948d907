"""The merge pre-step: ``merged_model_config(cfg)`` merges (or finds the cached merge of) what
``cfg.merge`` describes and returns a model config pointing at the merged checkpoint.

    cfg.merge ─► input identities ─► hash ─► cache_dir/merged/ties-<hash>  (lock + atomic rename)
                                              └─ missing: materialize inputs ─► backend ─► save
"""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path

from omegaconf import DictConfig, OmegaConf, open_dict

from xling_edit.merge.backends import MergeJob, resolve_backend, run_backend
from xling_edit.atomic import build_once
from xling_edit.merge.inputs import digest, identity, materialize

log = logging.getLogger(__name__)

FORMAT = 1  # bump when the merge's output for the same config changes


def merge_key(cfg: DictConfig) -> tuple[str, dict]:
    """(hash, what it hashes): the TIES options and every input's identity. Not hashed:
    the backend (all give the same weights), device, int8_mask, cache."""
    m = cfg.merge
    spec = {
        "format": FORMAT, "method": str(m.name),
        "base": identity(m.base, cfg.seed),
        "models": [{"key": str(k), "weight": float(e.weight), "density": _density(m, e),
                    "input": identity(e.model, cfg.seed, e.finetune)} for k, e in m.models.items()],
        "scale": float(m.scale), "normalize": bool(m.normalize), "sign_method": str(m.sign_method),
        "compute_dtype": str(m.compute_dtype), "dtype": _out_dtype(cfg),
        "tokenizer": str(m.tokenizer),
        "vocab_tensors": list(_vocab_tensors(m.base)),
    }
    return digest(spec), spec


def _density(m, entry) -> float:
    return float(m.density if entry.density is None else entry.density)


def _out_dtype(cfg) -> str:
    return str(cfg.merge.dtype or cfg.model.dtype)


def _vocab_tensors(base) -> tuple[str, ...]:
    t = base.templates
    return tuple(f"{p}.weight" for p in (t.embed, t.lm_head) if p)


def check_merge(m) -> None:
    """A ``ValueError`` for a merge config that cannot run (checked before anything loads)."""
    if m.name != "ties":
        raise ValueError(f"merge={m.name!r} unknown; none or ties")
    if m.base is None or not m.models:
        raise ValueError("merge=ties needs merge.base and at least one entry in merge.models "
                         "(e.g. +model@merge.models.hi.model=openhathi_7b; conf/merge/ties.yaml)")


def merged_model_config(cfg: DictConfig) -> DictConfig:
    """A model config like ``cfg.model`` (templates, hparams, name, dtype, device kept) with
    ``source: local`` and ``path`` at the cached merged checkpoint; merges first if needed."""
    m = cfg.merge
    check_merge(m)
    cache_root = Path(os.path.expanduser(str(cfg.model.cache_dir)))
    key, spec = merge_key(cfg)
    target = cache_root / "merged" / f"ties-{key[:16]}"
    label = f"ties[{', '.join(m.models)}] onto {m.base.name}"
    t0 = time.perf_counter()
    backend = None  # resolved only when a merge is built (a cached one needs no backend)

    def build(tmp: Path) -> None:
        nonlocal backend
        backend = resolve_backend(str(m.backend), str(m.sign_method))
        log.info("merging %s with %s (%s) ...", label, backend, key[:16])
        job = MergeJob(
            base=materialize(m.base, cache_root, cfg.seed),
            models=[(str(k), materialize(e.model, cache_root, cfg.seed, e.finetune),
                     float(e.weight), _density(m, e)) for k, e in m.models.items()],
            scale=float(m.scale), normalize=bool(m.normalize), sign_method=str(m.sign_method),
            compute_dtype=str(m.compute_dtype), out_dtype=_out_dtype(cfg),
            tokenizer=str(m.tokenizer), vocab_tensors=_vocab_tensors(m.base),
            device=str(m.device), int8_mask=bool(m.int8_mask),
            trust_remote_code=bool(m.base.trust_remote_code))
        run_backend(backend, job, tmp)
        info = {"key": key, "backend": backend, "spec": spec,
                "inputs": {"base": str(job.base), **{k: str(p) for k, p, _, _ in job.models}},
                "seconds": round(time.perf_counter() - t0, 2)}
        (tmp / "merge_info.json").write_text(json.dumps(info, indent=2, default=str))

    if build_once(target, build, reuse=bool(m.cache)):
        log.info("merged model %s (%s) written to %s in %.1fs", label, backend, target,
                 time.perf_counter() - t0)
    else:
        log.info("merged model %s loaded from cache %s", label, target)
    out = OmegaConf.create(OmegaConf.to_container(cfg.model, resolve=False))
    with open_dict(out):
        out.source = "local"
        out.path = str(target)
        out.random_init = {}
    return out

