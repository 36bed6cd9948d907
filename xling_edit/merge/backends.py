"""TIES backends. Each writes a ``save_pretrained``-style directory (safetensors, config,
tokenizer) for one :class:`MergeJob`.

- ``mergekit`` (optional extra ``merge``): drives ``mergekit.merge.run_merge`` with the job as a
  mergekit config; lazy and out-of-core, the one to use for 7B checkpoints.
- ``peft``: in process, tensor by tensor from the safetensors files; the trim and the sign
  election are peft's (``peft.utils.merge_utils``), the disjoint mean and λ are ``ties.py``'s.
  Holds the merged model in memory (fine for small models).
- ``direct``: in process, ``ties.py`` throughout.

All give the same tensors (tests/unit/test_merge.py); conventions in ``ties.py``, vocabulary
handling in ``vocab.py``.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import shutil
from dataclasses import dataclass
from pathlib import Path

import torch

from xling_edit.merge import ties, vocab
from xling_edit.models.loading import torch_dtype

log = logging.getLogger(__name__)

BACKENDS = ("auto", "mergekit", "peft", "direct")
BASE = "\0base"  # key of the base among the inputs (never a models key)


@dataclass
class MergeJob:
    """Everything a backend needs: checkpoint directories and the TIES options."""

    base: Path
    models: list  # [(key, Path, weight, density)]
    scale: float = 1.0
    normalize: bool = True
    sign_method: str = "sum"
    compute_dtype: str = "float32"
    out_dtype: str = "float32"
    tokenizer: str = "union"
    vocab_tensors: tuple = ("model.embed_tokens.weight", "lm_head.weight")
    device: str = "cpu"
    int8_mask: bool = False
    trust_remote_code: bool = False

    def __post_init__(self):
        keys = [k for k, _, _, _ in self.models]
        if self.tokenizer not in ("union", "base", *keys):
            raise ValueError(f"merge.tokenizer={self.tokenizer!r}; union, base or one of {keys}")


def resolve_backend(name: str, sign_method: str = "sum") -> str:
    if name not in BACKENDS:
        raise ValueError(f"merge.backend={name!r}; one of {BACKENDS}")
    has_mergekit = importlib.util.find_spec("mergekit") is not None
    if name == "auto":
        if has_mergekit and sign_method == "sum":
            return "mergekit"
        return "peft" if importlib.util.find_spec("peft") is not None else "direct"
    if name == "mergekit":
        if not has_mergekit:
            raise ImportError("merge.backend=mergekit needs mergekit: pip install -e '.[merge]'")
        if sign_method != "sum":
            raise ValueError("mergekit's TIES elects signs by sum only; use merge.backend=peft "
                             "or direct for sign_method=count")
    if name == "peft" and importlib.util.find_spec("peft") is None:
        raise ImportError("merge.backend=peft needs peft: pip install -e '.[merge]'")
    return name


def run_backend(name: str, job: MergeJob, out: Path) -> None:
    if name == "mergekit":
        merge_mergekit(job, out)
    else:
        merge_in_process(job, out, elect_and_trim=name)


# --------------------------------------------------------------------------- in process

class _Checkpoint:
    """Tensors of a safetensors checkpoint, read one at a time."""

    def __init__(self, path: Path):
        from safetensors import safe_open

        files = sorted(Path(path).glob("*.safetensors"))
        if not files:
            raise FileNotFoundError(f"{path} has no .safetensors files; the in-process TIES "
                                    f"backends read safetensors only (merge.backend=mergekit "
                                    f"also reads .bin)")
        handles = [safe_open(str(f), framework="pt") for f in files]
        self.where = {k: h for h in handles for k in h.keys()}

    def names(self) -> list[str]:
        return list(self.where)

    def get(self, name: str) -> torch.Tensor:
        return self.where[name].get_tensor(name)


def _peft_trim(delta: torch.Tensor, density: float) -> torch.Tensor:
    from peft.utils.merge_utils import magnitude_based_pruning

    k = ties.keep_count(delta.numel(), density)
    if k >= delta.numel():
        return delta
    if k == 0:
        return torch.zeros_like(delta)
    # peft keeps int(density * n) entries; (k + 0.5) / n makes that exactly mergekit's k
    return magnitude_based_pruning(delta, (k + 0.5) / delta.numel())


def _peft_elect(weighted: torch.Tensor, method: str) -> torch.Tensor:
    from peft.utils.merge_utils import calculate_majority_sign_mask

    peft_method = {"sum": "total", "count": "frequency"}.get(method)
    if peft_method is None:
        raise ValueError(f"merge.sign_method={method!r}; one of {ties.SIGN_METHODS}")
    return calculate_majority_sign_mask(weighted, method=peft_method)


def _text_config(cfg):
    return cfg.get_text_config() if hasattr(cfg, "get_text_config") else cfg


def merge_in_process(job: MergeJob, out: Path, elect_and_trim: str = "direct") -> None:
    from safetensors.torch import save_file
    from transformers import AutoConfig, AutoTokenizer

    trim, elect = (_peft_trim, _peft_elect) if elect_and_trim == "peft" else (ties.trim, ties.elect_sign)
    paths = {BASE: job.base, **{k: p for k, p, _, _ in job.models}}
    keys = [k for k, _, _, _ in job.models]
    weights = [float(w) for _, _, w, _ in job.models]
    densities = [float(d) for _, _, _, d in job.models]
    rc = job.trust_remote_code
    toks = {k: AutoTokenizer.from_pretrained(p, trust_remote_code=rc) for k, p in paths.items()}
    cfgs = {k: AutoConfig.from_pretrained(p, trust_remote_code=rc) for k, p in paths.items()}
    vocabs = {k: vocab.usable_vocab(toks[k], getattr(_text_config(cfgs[k]), "vocab_size", None))
              for k in paths}
    out_tok = _output_tokenizer(job.tokenizer, toks, vocabs, keys)
    out_vocab = out_tok.get_vocab()
    perms = vocab.permutations(out_vocab, vocabs)
    ckpts = {k: _Checkpoint(p) for k, p in paths.items()}
    names = ckpts[BASE].names()
    for k in keys:
        missing = sorted(set(names) ^ set(ckpts[k].names()))
        if missing:
            raise ValueError(f"merge input {k!r} and the base differ in tensors {missing[:5]}")
    cdt, odt = torch_dtype(job.compute_dtype), torch_dtype(job.out_dtype)
    merged = {}
    for name in names:
        ts = {k: ckpts[k].get(name).to(device=job.device, dtype=cdt) for k in paths}
        if name in job.vocab_tensors:
            ts = vocab.align_rows(ts, perms, BASE)
        else:
            shapes = {k: tuple(t.shape) for k, t in ts.items()}
            if len(set(shapes.values())) > 1:
                raise ValueError(f"tensor {name} differs in shape across merge inputs: {shapes}")
        base = ts[BASE]
        trimmed = torch.stack([trim(ts[k] - base, d) for k, d in zip(keys, densities)])
        t = ties.combine(base, trimmed, weights, job.scale, job.normalize, job.sign_method, elect)
        merged[name] = t.to(odt).cpu().contiguous()
        del ts, trimmed
    save_file(merged, str(out / "model.safetensors"), metadata={"format": "pt"})
    config = cfgs[job.tokenizer] if job.tokenizer in keys else cfgs[BASE]
    _text_config(config).vocab_size = max(out_vocab.values()) + 1
    config.dtype = odt
    config.save_pretrained(out)
    out_tok.save_pretrained(out)
    gen = Path(job.base) / "generation_config.json"
    if gen.exists():
        shutil.copy(gen, out / "generation_config.json")


def _output_tokenizer(policy: str, toks: dict, vocabs: dict, keys: list):
    if policy == "base":
        return toks[BASE]
    if policy == "union":
        added = vocab.new_tokens(vocabs[BASE], [vocabs[k] for k in keys])
        return vocab.union_tokenizer(toks[BASE], added)
    return toks[policy]  # a models key (MergeJob checked the policy)


# --------------------------------------------------------------------------- mergekit

def mergekit_config(job: MergeJob) -> dict:
    """The job as a mergekit YAML/dict config (``merge_method: ties``)."""
    if job.tokenizer in ("union", "base"):
        source = job.tokenizer
    else:  # a models key (MergeJob checked the policy)
        source = str({k: p for k, p, _, _ in job.models}[job.tokenizer])
    return {
        "merge_method": "ties",
        "base_model": str(job.base),
        "dtype": job.compute_dtype,
        "out_dtype": job.out_dtype,
        "tokenizer": {"source": source},
        "parameters": {"normalize": bool(job.normalize), "lambda": float(job.scale),
                       "int8_mask": bool(job.int8_mask)},
        "models": [{"model": str(p), "parameters": {"weight": float(w), "density": float(d)}}
                   for _, p, w, d in job.models],
    }


def merge_mergekit(job: MergeJob, out: Path) -> None:
    from mergekit.config import MergeConfiguration
    from mergekit.merge import run_merge
    from mergekit.options import MergeOptions

    if job.sign_method != "sum":
        raise ValueError("mergekit's TIES elects signs by sum only")
    cfg = mergekit_config(job)
    (out / "mergekit_config.json").write_text(json.dumps(cfg, indent=2))
    device = str(job.device)
    options = MergeOptions(device=device, cuda=device.startswith("cuda"), copy_tokenizer=True,
                           lazy_unpickle=True, write_model_card=False, safe_serialization=True,
                           trust_remote_code=job.trust_remote_code, quiet=True)
    run_merge(MergeConfiguration.model_validate(cfg), str(out), options=options)
