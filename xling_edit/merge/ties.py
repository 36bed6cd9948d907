"""TIES merging (Yadav et al., 2023) as pure tensor functions.

    τ_i = θ_i − θ_base                       task vector of model i (per tensor)
    trim:   keep the k = max(1, ⌊density_i · n⌋) largest |τ_i| entries, zero the rest
    weight: τ_i ← w_i τ_i
    elect:  s = sign(Σ_i τ_i) ("sum": total mass, the paper) or sign(Σ_i sign τ_i) ("count");
            s = +1 where that sum is 0
    merge:  τ = Σ_{i: sign τ_i = s} τ_i / Σ_{i: sign τ_i = s} w_i   (disjoint mean; entries
            that are 0 after trimming agree with no sign and take part nowhere; a divisor of 0
            becomes 1). normalize=false keeps the sum.
    θ = θ_base + λ τ, cast back to the base tensor's dtype.

These are mergekit's conventions (``merge_methods/generalized_task_arithmetic.py``: signs are
elected on the weighted task vectors, the mean divides by the weights of the agreeing models),
which reduce to the paper's when every weight is 1. peft's ``ties`` differs in two places:
it elects signs on unweighted vectors and divides by the number of agreeing models; the peft
backend (``backends.py``) therefore uses peft's trim and sign election on the weighted vectors
and this module's disjoint mean. With the operations in the same order the three
implementations give bit-identical tensors (tests/unit/test_merge.py). The one freedom left is
which of several entries of exactly equal magnitude survives at the trim threshold (argsort vs
topk); on float32 weights this does not arise in practice.
"""

from __future__ import annotations

from typing import Sequence

import torch

SIGN_METHODS = ("sum", "count")


def keep_count(numel: int, density: float) -> int:
    """Entries kept by the trim: max(1, ⌊density · n⌋) for a non-empty tensor (mergekit)."""
    if density >= 1:
        return numel
    if density <= 0 or numel == 0:
        return 0
    return max(1, int(density * numel))


def trim(delta: torch.Tensor, density: float) -> torch.Tensor:
    """Zero all but the ``keep_count`` largest-magnitude entries of a task vector."""
    k = keep_count(delta.numel(), density)
    if k >= delta.numel():
        return delta
    mask = torch.zeros(delta.numel(), dtype=delta.dtype, device=delta.device)
    order = torch.argsort(delta.abs().reshape(-1).float(), descending=True)
    mask[order[:k]] = 1
    return delta * mask.reshape(delta.shape)


def elect_sign(deltas: torch.Tensor, method: str = "sum") -> torch.Tensor:
    """Boolean mask (models × ...) of entries whose sign is the elected one. ``deltas`` are the
    stacked, trimmed, weighted task vectors."""
    sign = deltas.sign()
    if method == "sum":
        total = deltas.sum(dim=0)
    elif method == "count":
        total = sign.sum(dim=0)
    else:
        raise ValueError(f"merge.sign_method={method!r}; one of {SIGN_METHODS}")
    elected = (total >= 0).to(deltas.dtype) * 2 - 1
    return sign == elected


def disjoint_mean(deltas: torch.Tensor, weights: torch.Tensor, agree: torch.Tensor,
                  normalize: bool = True) -> torch.Tensor:
    """Σ of the agreeing weighted entries, divided by the agreeing models' summed weights."""
    mixed = (deltas * agree).sum(dim=0)
    if not normalize:
        return mixed
    divisor = (weights * agree).sum(dim=0)
    divisor[divisor == 0] = 1
    return mixed / divisor


def stack_weights(weights: Sequence[float], like: torch.Tensor) -> torch.Tensor:
    """Weights as a (models, 1, 1, ...) tensor broadcasting against stacked task vectors."""
    w = torch.tensor(list(weights), dtype=like.dtype, device=like.device)
    while w.dim() < like.dim():
        w = w.unsqueeze(-1)
    return w


def ties_merge(base: torch.Tensor, tensors: Sequence[torch.Tensor], weights: Sequence[float],
               densities: Sequence[float], scale: float = 1.0, normalize: bool = True,
               sign_method: str = "sum") -> torch.Tensor:
    """One merged tensor: trim → weight → elect sign → disjoint mean → λ → add to base."""
    if not tensors:
        return base
    deltas = torch.stack([trim(t - base, d) for t, d in zip(tensors, densities)])
    return combine(base, deltas, weights, scale, normalize, sign_method)


def combine(base: torch.Tensor, trimmed: torch.Tensor, weights: Sequence[float], scale: float,
            normalize: bool, sign_method: str, elect=elect_sign) -> torch.Tensor:
    """The steps after the trim, shared by the in-process backends (``elect`` may be peft's)."""
    w = stack_weights(weights, trimmed)
    weighted = trimmed * w
    agree = elect(weighted, sign_method)
    mixed = disjoint_mean(weighted, w, agree, normalize)
    if scale != 1:
        mixed = mixed * scale
    return (base + mixed).to(base.dtype)
