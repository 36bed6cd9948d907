"""Second-moment statistics C = E[k kᵀ] of an MLP output projection's inputs, per layer.

ROME's published update uses u = C⁻¹ k; without C every prompt whose key points the same way as
the subject's (e.g. "The capital of Japan" vs "The capital of France") moves with the edit.
The reference computes C from 100k English Wikipedia articles; an English-only C describes
English keys only. Here the corpus is a config choice:

- ``builtin`` (offline default): the short encyclopedic paragraphs shipped in
  ``xling_edit/data/stats_corpus/<lang>.txt`` (written for this project; they avoid stating
  the built-in evaluation facts), equal numbers of paragraphs per language (the evaluation
  languages unless ``langs`` is given);
- ``generated``: text sampled from the model itself, seeded, in equal shares per language,
  starting from each language's ``context_seeds`` (slow on a CPU: generation dominates);
- ``files``: local UTF-8 text files, one document per non-empty line;
- ``hf``: a Hugging Face dataset when the user has one (e.g. per-language Wikipedia:
  ``hf_path=wikimedia/wikipedia hf_name=20231101.{lang}``), streamed, ``per_lang`` documents
  per language; needs the ``datasets`` package and, unless cached, network access.

Over non-special tokens, each batch's product in float32 and the total in float64
(:class:`SecondMoment`); the forward pass ends before the highest statistics layer's projection.
Results are cached on disk keyed by model, layer, corpus spec and sample count (safetensors,
written to a temporary file then renamed).
"""

from __future__ import annotations

import hashlib
import importlib.resources
import json
import logging
import os
import time
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm

from xling_edit.atomic import atomic_path
from xling_edit.evaluation.forward import _StopForward, model_device, pad_right
from xling_edit.models.spec import ModelSpec

log = logging.getLogger(__name__)

#: fewer tokens than this many times the key dimension triggers a warning (C is then dominated by
#: sampling noise; ROME's u = C⁻¹k amplifies it)
MIN_TOKENS_PER_DIM = 10


class SecondMoment:
    """Σ k kᵀ over the rows of every ``add(keys)`` ([n, d]), totalled in float64.

    Fast path (``batch_float32``, the default): each batch's KᵀK is computed in float32, the
    keys' own precision (summing one batch's few hundred rows loses ~1e-7 relative), as its upper
    triangle only — KᵀK is symmetric, so row strip i of ``SYM_STRIPS`` needs only the columns from
    its own diagonal on, 5/8 of the multiply-adds — into a preallocated float32 buffer, then
    added to the float64 total through a preallocated float64 buffer, strip by strip (a fresh
    d × d allocation or a mixed-precision add per batch costs a third of the product itself on
    a CPU). The plain
    path (``batch_float32=False``, for the benchmark) converts the keys to float64 and adds their
    full product."""

    #: row strips of the upper-triangle product (1 = one full product)
    SYM_STRIPS = 4

    def __init__(self, batch_float32: bool = True):
        self.batch_float32 = batch_float32
        self.acc: torch.Tensor | None = None
        self._b32: torch.Tensor | None = None
        self._b64: torch.Tensor | None = None

    def add(self, keys: torch.Tensor) -> None:
        if not self.batch_float32:
            k = keys.double()
            s = k.T @ k
            self.acc = s if self.acc is None else self.acc.add_(s)
            return
        k = keys.float()
        d = k.shape[1]
        if self.acc is None:
            self.acc = torch.zeros(d, d, dtype=torch.float64, device=k.device)
            self._b32 = torch.zeros(d, d, dtype=torch.float32, device=k.device)
            self._b64 = torch.zeros(d, d, dtype=torch.float64, device=k.device)
        strips = min(self.SYM_STRIPS, d)
        edges = [round(i * d / strips) for i in range(strips + 1)]
        for lo, hi in zip(edges, edges[1:]):  # strip [lo:hi) × columns [lo:d), then its float64 add
            torch.mm(k[:, lo:hi].T, k[:, lo:], out=self._b32[lo:hi, lo:])
            self.acc[lo:hi, lo:].add_(self._b64[lo:hi, lo:].copy_(self._b32[lo:hi, lo:]))

    def total(self) -> torch.Tensor:
        """Σ k kᵀ (float64, exactly symmetric)."""
        if self.acc is None:
            raise ValueError("no keys were added")
        if self.batch_float32:  # only the upper triangle is meaningful: mirror it
            return torch.triu(self.acc) + torch.triu(self.acc, 1).T
        return self.acc


@torch.inference_mode()
def layer_second_moments(model, tok, spec: ModelSpec, layers: Sequence[int], texts: Sequence[str],
                         batch_size: int = 8, max_length: int = 128,
                         desc: str = "covariance", stop_early: bool = True,
                         texts_are_ids: bool = False, stop_before_projection: bool = True,
                         batch_float32: bool = True) -> tuple[dict[int, torch.Tensor], int]:
    """({layer: C}, number of tokens): C = mean over non-special tokens of k kᵀ, float64.

    The forward pass ends at the highest requested block's projection (``stop_early``; False
    runs the whole model). ``stop_before_projection``: a forward pre-hook takes the keys and ends
    the pass before that projection's own product (False: a hook after it, the path before this
    option). ``batch_float32``: see :class:`SecondMoment`. The three False settings
    are the plain paths the benchmark compares; callers leave them at their defaults.
    ``texts_are_ids``: ``texts`` are already token-id lists."""
    device = model_device(model)
    sums = {l: SecondMoment(batch_float32) for l in layers}
    captured: dict[int, torch.Tensor] = {}
    last = max(layers)

    def grab(layer, inp):
        captured[layer] = inp[0]
        if layer == last and stop_early:  # nothing above the last statistics layer is needed
            raise _StopForward

    hooks = []
    for l in layers:
        mod = spec.module(model, "down_proj", l)
        if stop_before_projection:
            hooks.append(mod.register_forward_pre_hook(lambda m, i, l=l: grab(l, i)))
        else:
            hooks.append(mod.register_forward_hook(lambda m, i, o, l=l: grab(l, i)))
    special = torch.tensor(sorted(set(tok.all_special_ids)), device=device)
    n_tokens = 0
    t0 = time.perf_counter()
    try:
        if texts_are_ids:
            encoded = [list(t)[:max_length] for t in texts]
        else:  # one call: the fast tokenizer batches it
            encoded = tok(list(texts), truncation=True, max_length=max_length)["input_ids"] if texts else []
        encoded = sorted((e for e in encoded if len(e) > 1), key=len)  # less padding
        bar = tqdm(range(0, len(encoded), batch_size), desc=desc, unit="batch", dynamic_ncols=True)
        for b in bar:
            ids, mask = pad_right(encoded[b: b + batch_size], tok.pad_token_id, device)
            try:
                model(input_ids=ids, attention_mask=mask, logits_to_keep=1, use_cache=False)
            except _StopForward:
                pass
            keep = mask.bool() & ~torch.isin(ids, special)
            n_tokens += int(keep.sum())
            for l in layers:
                sums[l].add(captured.pop(l)[keep])
            bar.set_postfix(tok_s=f"{n_tokens / (time.perf_counter() - t0):.0f}")
    finally:
        for h in hooks:
            h.remove()
    if n_tokens == 0:
        raise ValueError("the statistics corpus produced no tokens")
    return {l: s.total() / n_tokens for l, s in sums.items()}, n_tokens


@torch.no_grad()
def generate_corpus(model, tok, seeds_by_lang: Mapping[str, Sequence[str]], per_lang: int,
                    length: int, seed: int = 0, batch_size: int = 16) -> list[str]:
    """Seeded samples from the model, ``per_lang`` per language, starting from the seed words."""
    device = model_device(model)
    texts: list[str] = []
    pad_side = tok.padding_side
    tok.padding_side = "left"
    try:
        with torch.random.fork_rng(devices=[] if device.type == "cpu" else [device]):
            torch.manual_seed(seed)
            for lang, seeds in tqdm(list(seeds_by_lang.items()), desc="stats corpus", unit="lang"):
                starts = [seeds[i % len(seeds)] for i in range(per_lang)]
                for b in range(0, len(starts), batch_size):
                    enc = tok(starts[b: b + batch_size], return_tensors="pt", padding=True).to(device)
                    gen = model.generate(**enc, max_new_tokens=length, do_sample=True, top_k=40,
                                         pad_token_id=tok.pad_token_id)
                    texts.extend(tok.batch_decode(gen, skip_special_tokens=True))
    finally:
        tok.padding_side = pad_side
    return texts


class CovarianceProvider:
    """``layer -> C`` with an on-disk cache; built lazily on first use of a layer.

    Args:
        model, tok, spec: the (unedited) model.
        ridge: relative diagonal loading added when C is returned (not stored).
        model_key: identifies the weights (name + source) in the cache key.
        corpus: ``builtin``, ``generated``, ``files`` or ``hf``.
        langs: {code: context_seeds} for the generated corpus (equal share per language).
        per_lang, length: generated samples per language and their token length.
        files: text files for ``files``.
        max_length: truncation of each document in tokens.
        cache_dir: where statistics are stored; None disables the disk cache.
        seed: sampling seed.
    """

    def __init__(self, model, tok, spec: ModelSpec, model_key: str, corpus: str,
                 langs: Mapping[str, Sequence[str]], per_lang: int = 16, length: int = 64,
                 files: Sequence[str] = (), max_length: int = 128, cache_dir: str | None = None,
                 seed: int = 0, batch_size: int = 8, ridge: float = 0.0,
                 hf: Mapping[str, Any] | None = None):
        hf = dict(hf or {})
        if corpus not in ("builtin", "generated", "files", "hf"):
            raise ValueError(f"unknown stats.corpus {corpus!r}; one of builtin, generated, files, hf, none")
        if corpus == "hf" and not hf.get("path"):
            raise ValueError("stats.corpus=hf needs stats.hf_path")
        if corpus == "files" and not files:
            raise ValueError("stats.corpus=files needs stats.files")
        self.model, self.tok, self.spec = model, tok, spec
        self.spec_dict = {"model": model_key, "corpus": corpus, "seed": seed,
                          "max_length": max_length}
        if corpus == "generated":
            self.spec_dict.update(langs=sorted(langs), per_lang=per_lang, length=length)
        elif corpus == "builtin":
            self.spec_dict.update(langs=sorted(langs), per_lang=per_lang,
                                  digest=_builtin_digest(sorted(langs)))
        elif corpus == "hf":
            self.spec_dict.update(langs=sorted(langs), per_lang=per_lang, hf=hf)
        else:
            self.spec_dict.update(files=[_file_fingerprint(f) for f in files])
        self.corpus, self.langs, self.files, self.hf = corpus, dict(langs), list(files), hf
        self.per_lang, self.length, self.max_length = per_lang, length, max_length
        self.cache_dir = Path(os.path.expanduser(cache_dir)) if cache_dir else None
        self.seed, self.batch_size, self.ridge = seed, batch_size, ridge
        self._mem: dict[int, torch.Tensor] = {}
        self.tokens: dict[int, int] = {}  # layer -> tokens C was measured on
        self.dims: dict[int, int] = {}  # layer -> key dimension d_k
        self._factors: dict[int, tuple[str, Any]] = {}  # layer -> ("chol", L) | ("lu", (LU, piv))
        self.last_source: str | None = None  # "memory" | "disk" | "computed"

    @property
    def label(self) -> str:
        if self.corpus == "generated":
            return (f"generated:{'+'.join(sorted(self.langs))}:"
                    f"{self.per_lang}x{self.length}:seed{self.seed}")
        if self.corpus == "builtin":
            return f"builtin:{'+'.join(sorted(self.langs))}:{self.per_lang}/lang"
        if self.corpus == "hf":
            return f"hf:{self.hf['path']}:{'+'.join(sorted(self.langs))}:{self.per_lang}/lang"
        return f"files:{len(self.files)}"

    def key(self, layer: int) -> str:
        blob = json.dumps({**self.spec_dict, "layer": layer}, sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:20]

    def __call__(self, layer: int) -> torch.Tensor:
        """C for ``layer`` plus ``ridge`` × mean(diag C) × I (keeps C⁻¹k stable when the corpus
        has few tokens relative to the key dimension)."""
        c = self._raw(layer)
        if self.ridge:
            c = c + self.ridge * c.diagonal().mean() * torch.eye(c.shape[0], dtype=c.dtype)
        return c

    def _note_tokens(self, layer: int, n: int, d_k: int) -> None:
        self.tokens[layer], self.dims[layer] = n, d_k
        if n and n < MIN_TOKENS_PER_DIM * d_k:
            log.warning("covariance for layer %d from %d tokens = %.1f x d_k (%d): below %d x d_k, "
                        "C is poorly estimated; use a larger corpus (stats.per_lang, stats.corpus=hf "
                        "or files)", layer, n, n / d_k, d_k, MIN_TOKENS_PER_DIM)

    def summary(self) -> dict:
        """What the statistics were measured on, for results: label, tokens per layer, and
        tokens / d_k (the key dimension)."""
        return {"label": self.label, "tokens": dict(self.tokens),
                "tokens_per_dk": {l: round(n / self.dims[l], 2) for l, n in self.tokens.items()}}

    def raw(self, layer: int) -> torch.Tensor:
        """C for ``layer`` as measured (no ridge): what AlphaEdit's null space is taken of."""
        return self._raw(layer)

    def solve(self, layer: int, rhs: torch.Tensor) -> torch.Tensor:
        """(C + ridge)⁻¹ rhs in float64 from a factorisation computed once per layer and kept
        (Cholesky; LU if C is not numerically positive definite). ``rhs``: [d, n]."""
        if layer not in self._factors:
            c = self(layer)
            chol, info = torch.linalg.cholesky_ex(c)
            if int(info) == 0:
                self._factors[layer] = ("chol", chol)
            else:
                self._factors[layer] = ("lu", torch.linalg.lu_factor(c))
            del c
            if self._cached(layer):  # the factor is all an edit needs; C reloads if asked for
                self._mem.pop(layer, None)
        kind, f = self._factors[layer]
        rhs = rhs.double()
        if kind == "chol":
            return torch.cholesky_solve(rhs, f)
        return torch.linalg.lu_solve(f[0], f[1], rhs)

    def prefetch(self, layers: Sequence[int]) -> None:
        """Compute every missing layer in one pass over the corpus (MEMIT needs several)."""
        missing = [l for l in layers if l not in self._mem and not self._cached(l)]
        if missing:
            self._compute(missing)

    def _path(self, layer: int) -> Path | None:
        return self.cache_dir / "stats" / f"{self.key(layer)}.safetensors" if self.cache_dir else None

    def _cached(self, layer: int) -> bool:
        path = self._path(layer)
        return path is not None and path.exists()

    def _compute(self, layers: Sequence[int]) -> None:
        """One forward sweep over the corpus for ``layers``; results kept in memory and on disk."""
        t0 = time.perf_counter()
        moments, n = layer_second_moments(self.model, self.tok, self.spec, layers, self._texts(),
                                          batch_size=self.batch_size, max_length=self.max_length,
                                          desc=f"covariance L{','.join(map(str, layers))}")
        log.info("covariance for layers %s from %d tokens in %.1fs", list(layers), n,
                 time.perf_counter() - t0)
        for layer, c in moments.items():
            path = self._path(layer)
            if path is not None:
                with atomic_path(path) as tmp:
                    save_file({"second_moment": c.contiguous()}, str(tmp),
                              metadata={"spec": json.dumps(self.spec_dict), "layer": str(layer),
                                        "tokens": str(n)})
            self._mem[layer] = c
            self._note_tokens(layer, n, c.shape[0])

    def _raw(self, layer: int) -> torch.Tensor:
        if layer in self._mem:
            self.last_source = "memory"
        elif self._cached(layer):
            path = self._path(layer)
            self._mem[layer] = load_file(str(path))["second_moment"]
            self.last_source = "disk"
            with safe_open(str(path), "pt") as fh:
                n = int((fh.metadata() or {}).get("tokens", 0))
            self._note_tokens(layer, n, self._mem[layer].shape[0])
            log.info("covariance for layer %d loaded from cache %s", layer, path)
        else:
            self._compute([layer])
            self.last_source = "computed"
        return self._mem[layer]

    def _texts(self) -> list[str]:
        if self.corpus == "builtin":
            return builtin_corpus(sorted(self.langs), self.per_lang)
        if self.corpus == "hf":
            return hf_corpus(sorted(self.langs), self.per_lang, self.hf)
        if self.corpus == "generated":
            return generate_corpus(self.model, self.tok, self.langs, self.per_lang, self.length,
                                   seed=self.seed)
        texts = []
        for f in self.files:
            with open(f, encoding="utf-8") as fh:
                texts.extend(line.strip() for line in fh if line.strip())
        return texts


def _builtin_path(lang: str) -> Path:
    return Path(str(importlib.resources.files("xling_edit.data").joinpath("stats_corpus", f"{lang}.txt")))


def has_builtin_text(lang: str) -> bool:
    """Whether ``xling_edit/data/stats_corpus/<lang>.txt`` exists (the builtin corpus)."""
    return _builtin_path(lang).exists()


def _builtin_digest(langs: Sequence[str]) -> str:
    h = hashlib.sha256()
    for lang in langs:
        p = _builtin_path(lang)
        h.update(p.read_bytes() if p.exists() else b"-")
    return h.hexdigest()[:16]


def builtin_corpus(langs: Sequence[str], per_lang: int) -> list[str]:
    """``per_lang`` paragraphs from each language's shipped file (equal shares; languages
    without a file are skipped with a warning)."""
    per: dict[str, list[str]] = {}
    for lang in langs:
        p = _builtin_path(lang)
        if not p.exists():
            log.warning("no built-in statistics text for %r; it is left out of C", lang)
            continue
        per[lang] = [l.strip() for l in p.read_text(encoding="utf-8").splitlines() if l.strip()]
    if not per:
        raise FileNotFoundError(f"no built-in statistics text for any of {list(langs)}")
    n = min(per_lang, *(len(v) for v in per.values()))
    return [t for lines in per.values() for t in lines[:n]]


def hf_corpus(langs: Sequence[str], per_lang: int, hf: Mapping[str, Any]) -> list[str]:
    """``per_lang`` documents per language streamed from a Hugging Face dataset; ``{lang}`` in
    ``name`` / ``split`` is replaced by the language code."""
    try:
        import datasets
    except ImportError as exc:
        raise ImportError("stats.corpus=hf needs the `datasets` package (pip install datasets)") from exc
    texts = []
    for lang in langs:
        name = hf.get("name")
        ds = datasets.load_dataset(hf["path"], name.format(lang=lang) if name else None,
                                   split=str(hf.get("split") or "train").format(lang=lang),
                                   streaming=True)
        n = 0
        for row in ds:
            text = str(row[hf.get("text_field") or "text"]).strip()
            if text:
                texts.append(text)
                n += 1
            if n >= per_lang:
                break
    return texts


def _file_fingerprint(path: str) -> dict[str, Any]:
    st = os.stat(path)
    return {"path": os.path.abspath(path), "size": st.st_size, "mtime": int(st.st_mtime)}
