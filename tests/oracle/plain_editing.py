"""A deliberately plain reference for ROME and MEMIT, written from the papers' equations.

ROME: Meng et al. 2022, "Locating and Editing Factual Associations in GPT", eqs. 2-4 and the
published ``compute_u`` / ``compute_v`` procedure. MEMIT: Meng et al. 2023, "Mass-Editing Memory
in a Transformer", eqs. 14-16 and Algorithm 1. /work/shared/notes/METHODS.md summarises both.

Nothing here is fast, on purpose: every prompt gets its own forward pass of the whole model
(``model(input_ids).logits``: full depth, full vocabulary at every position), there is no
batching, padding, caching or early exit, activations are read with plain forward hooks, and
every solve runs in float64. The production code (``xling_edit.editing``) is tested against this
module; it shares no code with it (the tokenizer and the model are the only common parts).

Conventions:
- ΔW is returned as (out × in), whatever the weight's storage layout (GPT-2's Conv1D stores
  its weight as (in × out); :func:`stored_layout` converts).
- A *prompt* is a :class:`Tokenised`: token ids, the subject's last token, and (for prompts
  scored against a target) the positions of the target's tokens.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Sequence

import torch
from torch import nn

try:
    from transformers.pytorch_utils import Conv1D
except ImportError:  # pragma: no cover
    Conv1D = None


# ------------------------------------------------------------------ text and tokens
@dataclass(frozen=True)
class Tokenised:
    text: str
    ids: tuple[int, ...]
    subj: int  # index of the subject's last token
    targets: tuple[int, ...] = ()  # indices of the target's tokens (empty: no target)


def join(prompt: str, target: str, word_sep: str) -> tuple[str, int]:
    """prompt + target with ``word_sep`` between them unless the prompt ends in whitespace (or
    is empty, or the target starts with whitespace); returns (text, where the prompt ends)."""
    sep = word_sep
    if prompt == "" or prompt[-1].isspace() or target[:1].isspace():
        sep = ""
    return prompt + sep + target, len(prompt)


def tokenise(tok, prompt: str, subject: str, target: str | None = None, word_sep: str = " ",
             search_from: int = 0) -> Tokenised:
    """Tokenise ``prompt`` (joined with ``target`` when given). The subject is the exact string
    ``subject`` at its first occurrence in ``prompt`` at or after ``search_from`` (so a context
    prefix cannot hide it); its position is the last token whose characters overlap it. Target
    tokens are the non-special tokens whose characters end after the prompt."""
    start = prompt.find(subject, search_from)
    if start < 0:
        raise ValueError(f"subject {subject!r} not in {prompt!r}")
    end = start + len(subject)
    if target is None:
        text, cut = prompt, len(prompt)
    else:
        text, cut = join(prompt, target, word_sep)
    enc = tok(text, return_offsets_mapping=True)
    ids = list(enc["input_ids"])
    offsets = [tuple(o) for o in enc["offset_mapping"]]
    special = set(tok.all_special_ids)
    while len(ids) > 1 and ids[-1] in special:  # e.g. an appended EOS: not text
        ids.pop()
        offsets.pop()
    subj = max(i for i, (s, e) in enumerate(offsets) if e > s and s < end and e > start)
    targets: tuple[int, ...] = ()
    if target is not None:
        targets = tuple(i for i, (s, e) in enumerate(offsets) if ids[i] not in special and e > cut)
        if not targets or targets[0] == 0:
            raise ValueError(f"no predictable target tokens in {text!r}")
        if subj >= targets[0]:
            raise ValueError("the subject overlaps the target")
    return Tokenised(text, tuple(ids), subj, targets)


# ------------------------------------------------------------------ forward passes
def _hidden(output):
    """A module's main output tensor (decoder blocks may return a tuple)."""
    return output[0] if isinstance(output, tuple) else output


def logits_of(model: nn.Module, ids: Sequence[int], add_at: tuple[nn.Module, int, torch.Tensor] | None = None
              ) -> torch.Tensor:
    """[T, vocab] logits of one unpadded sequence, with ``delta`` added to ``module``'s output at
    position ``pos`` when ``add_at = (module, pos, delta)``."""
    handle = None
    if add_at is not None:
        module, pos, delta = add_at

        def hook(_m, _inp, out):
            h = _hidden(out).clone()
            h[0, pos] = h[0, pos] + delta.to(h.dtype)
            return (h,) + tuple(out[1:]) if isinstance(out, tuple) else h

        handle = module.register_forward_hook(hook)
    try:
        device = next(model.parameters()).device
        return model(input_ids=torch.tensor([list(ids)], device=device), use_cache=False).logits[0]
    finally:
        if handle is not None:
            handle.remove()


@torch.no_grad()
def read_at(model: nn.Module, module: nn.Module, ids: Sequence[int], pos: int
            ) -> tuple[torch.Tensor, torch.Tensor]:
    """(input, output) of ``module`` at position ``pos`` in one full forward pass, float64."""
    got = {}

    def hook(_m, inp, out):
        got["in"] = inp[0][0, pos].double().clone()
        got["out"] = _hidden(out)[0, pos].double().clone()

    handle = module.register_forward_hook(hook)
    try:
        logits_of(model, ids)
    finally:
        handle.remove()
    return got["in"], got["out"]


def weight_out_in(module: nn.Module) -> torch.Tensor:
    """The projection's weight as (out × in)."""
    if Conv1D is not None and isinstance(module, Conv1D):
        return module.weight.T
    return module.weight


def stored_layout(module: nn.Module, dw_out_in: torch.Tensor) -> torch.Tensor:
    """ΔW (out × in) in the parameter's own layout."""
    if Conv1D is not None and isinstance(module, Conv1D):
        return dw_out_in.T
    return dw_out_in


# ------------------------------------------------------------------ the value optimisation
@dataclass
class Value:
    delta: torch.Tensor  # the optimised addition, float64
    v0: torch.Tensor  # the hidden state delta is added to, bare prompt, subject (float64)
    losses: list[float]  # total loss, one per forward
    nlls: list[float]  # its NLL part
    kls: list[float]  # KL(p_now || p_before), unweighted


def optimise_delta(model: nn.Module, site: nn.Module, prompts: Sequence[Tokenised], kl: Tokenised, *,
                   steps: int, lr: float, loss_stop: float, clamp_norm_factor: float,
                   kl_factor: float, weight_decay: float) -> Value:
    """Find δ added to ``site``'s output at the subject's last token of every prompt and of the KL
    prompt (ROME: the down-projection; MEMIT: the top edited block). ``prompts[0]`` is the bare
    prompt, whose hidden state at the subject is v0.

    loss = mean over prompts of the mean token NLL of the target
           + kl_factor · KL(p_now ‖ p_before)   (next-token distribution at the KL prompt's
                                                  subject token)
           + weight_decay · ‖δ‖ / ‖v0‖²

    Published loop: each iteration measures the loss; it stops when the total loss is below
    ``loss_stop`` or on the last iteration, and otherwise takes an Adam step and projects δ into
    the ball of radius ``clamp_norm_factor · ‖v0‖``.
    """
    _, v0 = read_at(model, site, prompts[0].ids, prompts[0].subj)
    with torch.no_grad():
        logp_before = torch.log_softmax(logits_of(model, kl.ids)[kl.subj].double(), dim=-1)
    dtype = next(model.parameters()).dtype
    delta = torch.zeros(v0.shape[0], dtype=dtype, device=v0.device, requires_grad=True)
    opt = torch.optim.Adam([delta], lr=lr)
    v0_norm = v0.norm().to(dtype)
    radius = clamp_norm_factor * float(v0.norm())
    losses, nlls, kls = [], [], []
    for it in range(steps):
        per_prompt = []
        for p in prompts:
            logp = torch.log_softmax(logits_of(model, p.ids, (site, p.subj, delta)), dim=-1)
            token_nll = [-logp[t - 1, p.ids[t]] for t in p.targets]
            per_prompt.append(torch.stack(token_nll).mean())
        nll = torch.stack(per_prompt).mean()
        logp_now = torch.log_softmax(logits_of(model, kl.ids, (site, kl.subj, delta))[kl.subj], dim=-1)
        kl_term = (logp_now.exp() * (logp_now - logp_before.to(logp_now.dtype))).sum()
        loss = nll + kl_factor * kl_term + weight_decay * delta.norm() / v0_norm ** 2
        losses.append(float(loss.detach()))
        nlls.append(float(nll.detach()))
        kls.append(float(kl_term.detach()))
        if losses[-1] < loss_stop or it == steps - 1:
            break
        (grad,) = torch.autograd.grad(loss, delta)  # only δ: leaves the model's .grad alone
        delta.grad = grad
        opt.step()
        with torch.no_grad():
            n = float(delta.norm())
            if n > radius:
                delta.mul_(radius / n)
    return Value(delta.detach().double(), v0, losses, nlls, kls)


# ------------------------------------------------------------------ ROME
@dataclass
class RomeResult:
    prompts: list[Tokenised]
    kl: Tokenised
    keys: torch.Tensor  # [n_prompts, d_in]
    k_bar: torch.Tensor
    k_star: torch.Tensor
    u: torch.Tensor  # C⁻¹ k̄
    value: Value
    dw: torch.Tensor  # (out × in), float64

    @property
    def subj_pos(self) -> list[int]:
        return [p.subj for p in self.prompts] + [self.kl.subj]


def request_prompts(tok, prompt: str, subject: str, target: str, prefixes: Sequence[str],
                    answer_prefix: str, word_sep: str, kl_prompt: str) -> tuple[list[Tokenised], Tokenised]:
    """The context prompts P_i + prompt + answer_prefix (each joined with the target) and the
    KL prompt."""
    prompts = [tokenise(tok, pre + prompt + answer_prefix, subject, target, word_sep,
                        search_from=len(pre)) for pre in prefixes]
    return prompts, tokenise(tok, kl_prompt.format(subject=subject), subject)


def rome(model: nn.Module, tok, *, down_template: str, layer: int, prompt: str, subject: str,
         target: str, prefixes: Sequence[str], kl_prompt: str = "{subject} is a",
         word_sep: str = " ", answer_prefix: str = "", cov: torch.Tensor | None = None,
         consistent_key: bool = False, steps: int, lr: float, loss_stop: float,
         clamp_norm_factor: float, kl_factor: float, weight_decay: float) -> RomeResult:
    """ROME at block ``layer``: ΔW = δ uᵀ / (uᵀ k*), u = C⁻¹ k̄ with k̄ the uniform mean of the
    keys over all prompts; k* the bare prompt's key (original) or k̄ (``consistent_key``)."""
    if prefixes[0] != "":
        raise ValueError("the first prompt must be the bare one")
    prompts, kl = request_prompts(tok, prompt, subject, target, prefixes, answer_prefix, word_sep,
                                  kl_prompt)
    down = model.get_submodule(down_template.format(layer))
    keys = torch.stack([read_at(model, down, p.ids, p.subj)[0] for p in prompts])
    k_bar = keys.mean(0)
    u = k_bar if cov is None else torch.linalg.solve(cov.double(), k_bar)
    value = optimise_delta(model, down, prompts, kl, steps=steps, lr=lr, loss_stop=loss_stop,
                           clamp_norm_factor=clamp_norm_factor, kl_factor=kl_factor,
                           weight_decay=weight_decay)
    k_star = k_bar if consistent_key else keys[0]
    return RomeResult(prompts, kl, keys, k_bar, k_star, u, value, rank_one(value.delta, u, k_star))


def rank_one(delta: torch.Tensor, u: torch.Tensor, k_star: torch.Tensor) -> torch.Tensor:
    """ROME's ΔW = δ uᵀ / (uᵀ k*), (out × in), float64."""
    u, k_star = u.double(), k_star.double()
    return torch.outer(delta.double(), u) / torch.dot(u, k_star)


def rome_update(result: RomeResult, cov: torch.Tensor | None, consistent_key: bool) -> torch.Tensor:
    """ΔW for another covariance / key form from the keys and δ of ``result`` (they do not
    depend on either)."""
    u = result.k_bar if cov is None else torch.linalg.solve(cov.double(), result.k_bar)
    return rank_one(result.value.delta, u, result.k_bar if consistent_key else result.keys[0])


# ------------------------------------------------------------------ MEMIT
@dataclass
class Fact:
    """One MEMIT request with its language's context prefixes (bare prompt first), KL prompt
    and prompt/target separator."""

    prompt: str
    subject: str
    target: str
    prefixes: Sequence[str] = ("",)
    kl_prompt: str = "{subject} is a"
    word_sep: str = " "
    answer_prefix: str = ""


@dataclass
class MemitResult:
    prompts: list[list[Tokenised]]  # per request
    kls: list[Tokenised]
    values: list[Value]  # per request
    z: torch.Tensor  # [n, d_model]
    keys: dict[int, torch.Tensor] = field(default_factory=dict)  # layer -> [d_in, n]
    h: dict[int, torch.Tensor] = field(default_factory=dict)  # layer -> [n, d_model] before its update
    resid: dict[int, torch.Tensor] = field(default_factory=dict)  # layer -> [d_model, n]
    dw: dict[int, torch.Tensor] = field(default_factory=dict)  # layer -> (out × in), float64
    h_final: torch.Tensor | None = None  # [n, d_model] after all updates


def grouped_key(keys: torch.Tensor, groups: Sequence[int]) -> torch.Tensor:
    """Mean of ``keys`` [n_prompts, d] within each group label, then the mean over groups."""
    labels = sorted(set(groups))
    return torch.stack([keys[[i for i, g in enumerate(groups) if g == lab]].mean(0)
                        for lab in labels]).mean(0)


def memit(model: nn.Module, tok, *, down_template: str, layer_template: str, layers: Sequence[int],
          facts: Sequence[Fact], groups: Sequence[int],
          cov: Callable[[int], torch.Tensor | None] | None = None, lam: float, steps: int,
          lr: float, loss_stop: float, clamp_norm_factor: float, kl_factor: float,
          weight_decay: float) -> MemitResult:
    """MEMIT over ``layers`` (ascending) for ``facts``.

    z_i = h_i + δ_i with δ_i optimised at the residual stream after the top layer; then for each
    layer j (lower layers' updates applied): K from the prompts (``groups``: the template group of
    each prompt, bare prompt first), R = (Z − H)/(layers left), ΔW = R Kᵀ (λC + KKᵀ)⁻¹.
    The model's weights are restored before returning.
    """
    layers = list(layers)
    if layers != sorted(layers) or any(f.prefixes[0] != "" or len(f.prefixes) != len(groups)
                                       for f in facts):
        raise ValueError("layers ascending, bare prompt first, one group label per prompt")
    top = model.get_submodule(layer_template.format(layers[-1]))
    all_prompts, kls, values = [], [], []
    for f in facts:
        prompts, kl = request_prompts(tok, f.prompt, f.subject, f.target, f.prefixes,
                                      f.answer_prefix, f.word_sep, f.kl_prompt)
        all_prompts.append(prompts)
        kls.append(kl)
        values.append(optimise_delta(model, top, prompts, kl, steps=steps, lr=lr,
                                     loss_stop=loss_stop, clamp_norm_factor=clamp_norm_factor,
                                     kl_factor=kl_factor, weight_decay=weight_decay))
    z = torch.stack([v.v0 + v.delta for v in values])
    out = MemitResult(all_prompts, kls, values, z)

    def residual_now() -> torch.Tensor:
        return torch.stack([read_at(model, top, ps[0].ids, ps[0].subj)[1] for ps in all_prompts])

    saved = []
    try:
        for j, layer in enumerate(layers):
            down = model.get_submodule(down_template.format(layer))
            k = torch.stack([
                grouped_key(torch.stack([read_at(model, down, p.ids, p.subj)[0] for p in ps]), groups)
                for ps in all_prompts], dim=1)  # [d_in, n]
            h = residual_now()
            r = (z - h).T / (len(layers) - j)  # [d_model, n]
            c = cov(layer) if cov is not None else None
            c = torch.eye(k.shape[0], dtype=torch.float64) if c is None else c.double()
            a = lam * c + k @ k.T
            dw = r @ k.T @ torch.linalg.inv(a)
            out.keys[layer], out.h[layer], out.resid[layer], out.dw[layer] = k, h, r, dw
            with torch.no_grad():
                saved.append((down.weight, down.weight.detach().clone()))
                down.weight.add_(stored_layout(down, dw).to(down.weight.dtype))
        out.h_final = residual_now()
    finally:
        with torch.no_grad():
            for param, original in reversed(saved):
                param.copy_(original)
    return out
