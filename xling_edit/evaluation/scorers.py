"""Pure scoring functions on per-token tensors (no model, no I/O)."""

from __future__ import annotations

import math

import torch


def token_accuracy(argmax: torch.Tensor, target: torch.Tensor) -> float:
    """EasyEdit's teacher-forced score: share of target tokens that are the argmax (partial credit)."""
    return float((argmax == target).float().mean())


def exact_match(argmax: torch.Tensor, target: torch.Tensor) -> float:
    """1.0 when every target token is the argmax (no partial credit), else 0.0."""
    return float(bool((argmax == target).all()))


def mean_nll(logprobs: torch.Tensor) -> float:
    return float(-logprobs.mean())


def prob_success(nll_preferred: float, nll_other: float) -> float:
    """ROME/MEMIT CounterFact protocol: 1.0 when the preferred string is more likely."""
    return float(nll_preferred < nll_other)


def prob_magnitude(nll_preferred: float, nll_other: float) -> float:
    """exp(-mean NLL) difference, the protocol's magnitude variant."""
    return math.exp(-nll_preferred) - math.exp(-nll_other)


def agreement(post_argmax: torch.Tensor, pre_argmax: torch.Tensor) -> float:
    """EasyEdit locality: share of positions where post-edit argmax equals pre-edit argmax."""
    return float((post_argmax == pre_argmax).float().mean())
