"""Merge inputs as checkpoint directories, and what identifies their weights (the cache key).

A merge input is a model config (``conf/model/*.yaml`` schema). Hub models are used from the
local hub cache (downloaded only with ``allow_download``), local directories as they are, GGUF
packages through the project's safetensors conversion, random models are saved once, and
``finetune`` inputs (the offline demo) are trained briefly from their model and saved as
ordinary checkpoints. Everything produced here is cached under ``cache_dir/merge_inputs``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import time
from collections import Counter
from pathlib import Path
from typing import Any, Mapping

import torch
from omegaconf import DictConfig, OmegaConf

from xling_edit.atomic import build_once

log = logging.getLogger(__name__)

WEIGHT_FIELDS = ("source", "path", "revision", "gguf_package", "gguf_file", "random_init")


def plain(node) -> Any:
    return OmegaConf.to_container(node, resolve=True) if isinstance(node, DictConfig) else node


def digest(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()


def identity(model: Mapping[str, Any], seed: int, finetune: Mapping[str, Any] | None = None) -> dict:
    """What decides an input's weights: its source fields, a fingerprint of local files, the
    seed of random models, the fine-tune recipe and its text."""
    ident = {k: plain(model.get(k)) for k in WEIGHT_FIELDS}
    if model.get("source") == "local" and model.get("path"):
        ident["files"] = _fingerprint(Path(os.path.expanduser(str(model["path"]))))
    if model.get("source") == "random":
        ident["seed"] = seed
    if model.get("source") == "hub" and not model.get("revision"):
        ident["revision"] = "main"  # pin model.revision for merges that must not move
    if finetune:
        ft = plain(finetune)
        ident["finetune"] = ft
        ident["corpus_sha"] = hashlib.sha256(_corpus_path(ft["lang"]).read_bytes()).hexdigest()
    return ident


def _fingerprint(path: Path) -> list:
    if not path.is_dir():
        raise FileNotFoundError(f"merge input {path} is not a directory")
    return sorted((p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in path.iterdir()
                  if p.is_file() and not p.name.endswith(".lock"))


def materialize(model: Mapping[str, Any], cache_root: Path, seed: int,
                finetune: Mapping[str, Any] | None = None) -> Path:
    """A local checkpoint directory holding this input (built and cached when needed)."""
    if finetune:
        src = materialize(model, cache_root, seed)
        ft = plain(finetune)
        target = cache_root / "merge_inputs" / (f"{model.get('name')}-ft-{ft['lang']}-"
                                                f"{digest(identity(model, seed, ft))[:16]}")
        t0 = time.perf_counter()
        if build_once(target, lambda tmp: finetune_variant(src, ft, tmp)):
            log.info("merge input %s fine-tuned on %s in %.1fs -> %s", model.get("name"),
                     ft["lang"], time.perf_counter() - t0, target)
        return target
    source = model.get("source")
    if source == "local":
        return Path(os.path.expanduser(str(model["path"])))
    if source == "hub":
        from huggingface_hub import snapshot_download

        patterns = ["*.json", "*.safetensors", "*.model", "tokenizer*"]
        if model.get("allow_pickle"):
            patterns.append("*.bin")
        try:
            return Path(snapshot_download(str(model["path"]), revision=model.get("revision"),
                                          allow_patterns=patterns,
                                          local_files_only=not model.get("allow_download", False)))
        except Exception as exc:
            raise OSError(f"merge input {model['path']!r} is not in the local hub cache ({exc}); "
                          f"set allow_download=true on it (e.g. merge.base.allow_download=true) "
                          f"or use source=local with a path") from exc
    if source == "gguf_package":
        from xling_edit.models.loading import _gguf_cache

        return Path(_gguf_cache(model))
    if source == "random":
        target = cache_root / "merge_inputs" / f"{model.get('name')}-random-{digest(identity(model, seed))[:16]}"
        build_once(target, lambda tmp: _save_random(model, seed, tmp))
        return target
    raise ValueError(f"merge input source {source!r}; one of local, hub, gguf_package, random")


def _save_random(model: Mapping[str, Any], seed: int, out: Path) -> None:
    from xling_edit.models.loading import random_model, save_checkpoint

    m, tok = random_model(dict(plain(model.get("random_init")) or {}), seed=seed)
    save_checkpoint(m, tok, out)


def _corpus_path(lang: str) -> Path:
    from xling_edit.editing.stats import _builtin_path  # the shipped corpus the stats use too

    path = _builtin_path(lang)
    if not path.exists():
        raise FileNotFoundError(f"no fine-tuning text for {lang!r} ({path})")
    return path


def frequent_words(text: str, n: int, tok) -> list[str]:
    """The ``n`` most frequent words (letters and marks, >= 3 characters) that the tokenizer
    does not already hold; ties by the word, so the choice is deterministic."""
    words = re.findall(r"[^\W\d_][\w\u0900-\u0DFF]{2,}", text)
    counts = Counter(words)
    vocab = tok.get_vocab()
    ranked = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))
    return [w for w, _ in ranked if w not in vocab][:n]


def finetune_variant(src: Path, ft: Mapping[str, Any], out: Path) -> None:
    """Fine-tune the checkpoint in ``src`` on one language's paragraphs (full parameters,
    Adam, deterministic given the seed) and save it as an ordinary checkpoint in ``out``."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from xling_edit.models.loading import save_checkpoint

    tok = AutoTokenizer.from_pretrained(src)
    model = AutoModelForCausalLM.from_pretrained(src, dtype=torch.float32)
    text = _corpus_path(ft["lang"]).read_text(encoding="utf-8")
    paragraphs = [p.strip() for p in text.splitlines() if p.strip()]
    seed, steps = int(ft.get("seed", 0)), int(ft.get("steps", 30))
    if steps < 1:
        raise ValueError(f"finetune.steps must be >= 1 for a fine-tuned merge input, got {steps}")
    gen = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        if ft.get("add_tokens"):
            tok.add_tokens(frequent_words(text, int(ft["add_tokens"]), tok))
            model.resize_token_embeddings(len(tok), mean_resizing=False)
        if tok.pad_token is None:
            tok.pad_token = tok.eos_token
        model.train()
        opt = torch.optim.Adam(model.parameters(), lr=float(ft.get("lr", 1e-3)))
        order = torch.randperm(len(paragraphs), generator=gen).tolist()
        bs = int(ft.get("batch_size", 4))
        for step in range(steps):
            idx = [order[(step * bs + j) % len(order)] for j in range(bs)]
            enc = tok([paragraphs[i] for i in idx], return_tensors="pt", padding=True,
                      truncation=True, max_length=int(ft.get("max_length", 64)))
            labels = enc["input_ids"].masked_fill(enc["attention_mask"] == 0, -100)
            loss = model(**enc, labels=labels).loss
            opt.zero_grad()
            loss.backward()
            opt.step()
            if step == 0:
                first = float(loss.detach())
    model.eval()
    log.info("fine-tuned on %s: loss %.3f -> %.3f over %d steps", ft["lang"], first, float(loss.detach()),
             steps)
    save_checkpoint(model, tok, out)
