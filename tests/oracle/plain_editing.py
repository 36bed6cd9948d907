"""A deliberately plain reference for ROME, MEMIT and AlphaEdit, written from the papers' equations.

ROME: Meng et al. 2022, "Locating and Editing Factual Associations in GPT", eqs. 2-4 and the
published ``compute_u`` / ``compute_v`` procedure. MEMIT: Meng et al. 2023, "Mass-Editing Memory
in a Transformer", eqs. 14-16 and Algorithm 1. /work/shared/notes/METHODS.md summarises both.
AlphaEdit: Fang et al. 2025, "AlphaEdit: Null-Space Constrained Knowledge Editing": the closed-form
update for sequential editing (with the earlier edits' keys K_p) and the null-space projector P
taken from an SVD of the preserved keys' second moment, as in its reference code. MEMIT's Gemma
variant (``z_space=mlp_out``, ``invert_out_norm``; the project's own, not published): the
Gemma RMSNorm after the MLP is inverted in closed form (:func:`rms_norm_inverse`).

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
def read_at(model: nn.Module, module: nn.Module, ids: Sequence[int], pos: int,
            add_at: tuple[nn.Module, int, torch.Tensor] | None = None
            ) -> tuple[torch.Tensor, torch.Tensor]:
    """(input, output) of ``module`` at position ``pos`` in one full forward pass, float64
    (with ``add_at``'s addition, as in :func:`logits_of`)."""
    got = {}

    def hook(_m, inp, out):
        got["in"] = inp[0][0, pos].double().clone()
        got["out"] = _hidden(out)[0, pos].double().clone()

    handle = module.register_forward_hook(hook)
    try:
        logits_of(model, ids, add_at)
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
    share: dict[int, torch.Tensor] = field(default_factory=dict)  # layer -> [d_model, n] (Z − H)/(left)
    resid: dict[int, torch.Tensor] = field(default_factory=dict)  # layer -> [d_out, n] what is solved for
    proj_out: dict[int, torch.Tensor] = field(default_factory=dict)  # layer -> [d_out, n] o (inverted norms)
    dw: dict[int, torch.Tensor] = field(default_factory=dict)  # layer -> (out × in), float64
    h_final: torch.Tensor | None = None  # [n, d_model] after all updates


def grouped_key(keys: torch.Tensor, groups: Sequence[int]) -> torch.Tensor:
    """Mean of ``keys`` [n_prompts, d] within each group label, then the mean over groups."""
    labels = sorted(set(groups))
    return torch.stack([keys[[i for i, g in enumerate(groups) if g == lab]].mean(0)
                        for lab in labels]).mean(0)


def memit_solve(r: torch.Tensor, k: torch.Tensor, c: torch.Tensor | None, lam: float) -> torch.Tensor:
    """MEMIT's ΔW = R Kᵀ (λC + KKᵀ)⁻¹ with an explicit inverse (C = I when None), float64."""
    c = torch.eye(k.shape[0], dtype=torch.float64) if c is None else c.double()
    return r @ k.T @ torch.linalg.inv(lam * c + k @ k.T)


def memit(model: nn.Module, tok, *, down_template: str, layer_template: str, layers: Sequence[int],
          facts: Sequence[Fact], groups: Sequence[int],
          cov: Callable[[int], torch.Tensor | None] | None = None, lam: float | None = None, steps: int,
          lr: float, loss_stop: float, clamp_norm_factor: float, kl_factor: float,
          weight_decay: float, z_space: str = "residual", out_norm_template: str | None = None,
          invert_out_norm: bool = False,
          update: Callable[[int, torch.Tensor, torch.Tensor], torch.Tensor] | None = None
          ) -> MemitResult:
    """MEMIT over ``layers`` (ascending) for ``facts``.

    z_i = h_i + δ_i with δ_i optimised at the residual stream after the top layer; then for each
    layer j (lower layers' updates applied): K from the prompts (``groups``: the template group of
    each prompt, bare prompt first), R = (Z − H)/(layers left), ΔW = R Kᵀ (λC + KKᵀ)⁻¹
    (``update(layer, R, K)`` instead when given: AlphaEdit's solve).
    The model's weights are restored before returning.

    Gemma variant: ``z_space="mlp_out"`` optimises δ at the top projection's output instead, and
    z is the residual stream after the top block measured in a forward pass with δ added there
    (what the block's post-MLP norm makes of it). ``invert_out_norm`` with ``out_norm_template``
    (the block's norm after the MLP) replaces each request's share r by the change d of the
    projection's output o that makes the norm's output move by exactly r:
    N(o + d) = N(o) + r, solved in closed form (:func:`rms_norm_inverse`).
    """
    layers = list(layers)
    if layers != sorted(layers) or any(f.prefixes[0] != "" or len(f.prefixes) != len(groups)
                                       for f in facts):
        raise ValueError("layers ascending, bare prompt first, one group label per prompt")
    if z_space not in ("residual", "mlp_out"):
        raise ValueError(f"z_space {z_space!r}")
    if update is None and lam is None:
        raise ValueError("MEMIT's solve needs lam")
    top = model.get_submodule(layer_template.format(layers[-1]))
    top_down = model.get_submodule(down_template.format(layers[-1]))
    site = top if z_space == "residual" else top_down
    all_prompts, kls, values = [], [], []
    for f in facts:
        prompts, kl = request_prompts(tok, f.prompt, f.subject, f.target, f.prefixes,
                                      f.answer_prefix, f.word_sep, f.kl_prompt)
        all_prompts.append(prompts)
        kls.append(kl)
        values.append(optimise_delta(model, site, prompts, kl, steps=steps, lr=lr,
                                     loss_stop=loss_stop, clamp_norm_factor=clamp_norm_factor,
                                     kl_factor=kl_factor, weight_decay=weight_decay))
    if z_space == "residual":
        z = torch.stack([v.v0 + v.delta for v in values])
    else:
        z = torch.stack([read_at(model, top, ps[0].ids, ps[0].subj, (top_down, ps[0].subj, v.delta))[1]
                         for ps, v in zip(all_prompts, values)])
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
            share = (z - h).T / (len(layers) - j)  # [d_model, n]
            r = share
            if invert_out_norm and out_norm_template is not None:
                gain, eps = rms_norm_params(model.get_submodule(out_norm_template.format(layer)))
                outs = torch.stack([read_at(model, down, ps[0].ids, ps[0].subj)[1]  # o
                                    for ps in all_prompts], dim=1)
                r = torch.stack([rms_norm_inverse(rms_norm(o, gain, eps) + sh, gain, eps) - o
                                 for o, sh in zip(outs.T, share.T)], dim=1)
                out.proj_out[layer] = outs
            if update is not None:
                dw = update(layer, r, k)
            else:
                dw = memit_solve(r, k, cov(layer) if cov is not None else None, lam)
            out.keys[layer], out.h[layer], out.share[layer] = k, h, share
            out.resid[layer], out.dw[layer] = r, dw
            with torch.no_grad():
                saved.append((down.weight, down.weight.detach().clone()))
                down.weight.add_(stored_layout(down, dw).to(down.weight.dtype))
        out.h_final = residual_now()
    finally:
        with torch.no_grad():
            for param, original in reversed(saved):
                param.copy_(original)
    return out


# ------------------------------------------------------------------ Gemma's norm after the MLP
def rms_norm(x: torch.Tensor, gain: torch.Tensor, eps: float) -> torch.Tensor:
    """N(x) = gain ⊙ x / sqrt(mean(x²) + eps), float64."""
    x = x.double()
    return gain * x / torch.sqrt((x * x).mean() + eps)


def rms_norm_params(norm: nn.Module) -> tuple[torch.Tensor, float]:
    """(gain, eps) of an RMSNorm module, float64. Gemma stores w with gain 1 + w, Llama the gain
    itself: whichever reproduces the module's own output (at a scale where eps matters and at
    one where it does not) is taken; anything else is not an RMSNorm and raises."""
    w = norm.weight.detach().double().cpu()
    eps = float(getattr(norm, "eps", getattr(norm, "variance_epsilon", 0.0)))
    g = torch.Generator().manual_seed(0)
    probes = [scale * torch.randn(w.shape, generator=g, dtype=torch.float64) for scale in (1e-3, 1.0)]
    with torch.no_grad():
        outs = [norm(x.to(norm.weight.dtype).to(norm.weight.device)[None])[0].double().cpu()
                for x in probes]
    for gain in (1.0 + w, w):
        if all(torch.allclose(rms_norm(x, gain, eps), o, rtol=1e-4, atol=1e-6)
               for x, o in zip(probes, outs)):
            return gain, eps
    raise ValueError(f"{type(norm).__name__} is not an RMSNorm x/sqrt(mean(x²)+eps)·gain")


def rms_norm_inverse(y: torch.Tensor, gain: torch.Tensor, eps: float) -> torch.Tensor:
    """The x with N(x) = y (:func:`rms_norm`), in closed form.

    N(x) is gain ⊙ x times a positive scalar, so x = c·u with u = y / gain, and N(c u) = y iff
    c / sqrt(c² q + eps) = 1 with q = mean(u²), i.e. c = sqrt(eps / (1 − q)): one solution when
    q < 1. When q ≥ 1, y is outside N's range (its closure is the ellipsoid mean((v/gain)²) ≤ 1:
    :func:`closest_reachable`) and there is no x; this raises."""
    y, gain = y.double(), gain.double()
    if bool((gain == 0).any()):
        raise ValueError("a zero gain: N is not invertible")
    u = y / gain
    q = float((u * u).mean())
    if q >= 1.0:
        raise ValueError(f"unreachable: mean((y/gain)²) = {q:.4f} >= 1")
    return (eps / (1.0 - q)) ** 0.5 * u


def closest_reachable(y: torch.Tensor, gain: torch.Tensor) -> tuple[torch.Tensor, float]:
    """The point v of the closure of N's range {v : mean((v/gain)²) ≤ 1} nearest to y, and the
    distance |y − v|: y itself inside, else v_i = y_i gain_i² / (gain_i² + μ) with μ > 0 found by
    bisection so that v lies on the ellipsoid (Lagrange condition of the projection)."""
    y, g2 = y.double(), gain.double() ** 2
    d = y.numel()

    def excess(mu: float) -> float:  # mean((v/gain)²) − 1, decreasing in μ
        return float(((y * gain / (g2 + mu)) ** 2).sum()) / d - 1.0

    if excess(0.0) <= 0:
        return y.clone(), 0.0
    lo, hi = 0.0, 1.0
    while excess(hi) > 0:
        hi *= 2.0
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if excess(mid) > 0 else (lo, mid)
    v = y * g2 / (g2 + hi)
    return v, float((y - v).norm())


# ------------------------------------------------------------------ AlphaEdit
def null_space_projector(c: torch.Tensor, threshold: float) -> torch.Tensor:
    """P = Û Ûᵀ, Û the singular vectors of the (symmetric PSD) second moment C whose singular
    values are below ``threshold`` (AlphaEdit's reference code: an SVD of C), float64."""
    u, s, _ = torch.linalg.svd(c.double())
    small = u[:, s < threshold]
    return small @ small.T


def alphaedit_solve(r: torch.Tensor, k: torch.Tensor, p: torch.Tensor,
                    k_prev: torch.Tensor | None, alpha: float) -> torch.Tensor:
    """AlphaEdit's ΔW = R Kᵀ P (K_p K_pᵀ P + K Kᵀ P + α I)⁻¹ (Fang et al. 2025, sequential
    editing; α the reference code's ``L2`` weight) with an explicit inverse, float64. ``r`` [d_out, n], ``k`` [d_in, n], ``p`` [d_in, d_in], ``k_prev``
    the earlier edits' keys K_p [d_in, m] (None: no earlier edit)."""
    r, k, p = r.double(), k.double(), p.double()
    m = k @ k.T @ p + alpha * torch.eye(k.shape[0], dtype=torch.float64)
    if k_prev is not None:
        k_prev = k_prev.double()
        m = m + k_prev @ k_prev.T @ p
    return r @ k.T @ p @ torch.linalg.inv(m)


@dataclass
class AlphaEditStep:
    """One edit of a sequence: its MEMIT-style quantities (``result``; ``result.dw`` is
    AlphaEdit's ΔW) and the earlier edits' keys K_p it was solved with, per layer."""

    result: MemitResult
    prior_keys: dict[int, torch.Tensor | None]


def alphaedit_sequence(model: nn.Module, tok, *, edits: Sequence[Sequence[Fact]],
                       projector: Callable[[int], torch.Tensor], alpha: float,
                       down_template: str, layers: Sequence[int], groups: Sequence[int],
                       **memit_kw) -> list[AlphaEditStep]:
    """AlphaEdit's edits one after another, each on the model the earlier ones left (Fang et al.
    2025, sequential editing): each edit is MEMIT's targets and keys (:func:`memit`, with
    ``memit_kw``) with AlphaEdit's solve, P = ``projector(layer)`` and K_p the keys of every
    earlier edit of the sequence; after an edit is written, its keys are read again on the edited
    model (as the reference code does) and appended to K_p. The model is restored at the end."""
    prior: dict[int, list[torch.Tensor]] = {layer: [] for layer in layers}
    steps: list[AlphaEditStep] = []
    saved = []
    try:
        for facts in edits:
            k_prev = {layer: (torch.cat(prior[layer], dim=1) if prior[layer] else None)
                      for layer in layers}

            def update(layer, r, k, k_prev=k_prev):
                return alphaedit_solve(r, k, projector(layer), k_prev[layer], alpha)

            res = memit(model, tok, facts=facts, layers=layers, groups=groups,
                        down_template=down_template, update=update, **memit_kw)
            steps.append(AlphaEditStep(res, k_prev))
            with torch.no_grad():  # the edit stays in place for the next one
                for layer in layers:
                    down = model.get_submodule(down_template.format(layer))
                    saved.append((down.weight, down.weight.detach().clone()))
                    down.weight.add_(stored_layout(down, res.dw[layer]).to(down.weight.dtype))
            for layer in layers:
                down = model.get_submodule(down_template.format(layer))
                prior[layer].append(torch.stack([
                    grouped_key(torch.stack([read_at(model, down, p.ids, p.subj)[0] for p in ps]),
                                groups)
                    for ps in res.prompts], dim=1))
    finally:
        with torch.no_grad():
            for param, original in reversed(saved):
                param.copy_(original)
    return steps
