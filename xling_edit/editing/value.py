"""What ROME and MEMIT share: tokenised edit requests, keys, and the value optimisation.

The value optimisation (ROME's ``compute_v``, MEMIT's ``compute_z``) adds a vector delta to a
hidden state at the subject's last token of every context prompt and of the KL prompt
"{subject} is a", and minimises, as published,

    mean over prompts of the mean token NLL of target_new
      +  kl_factor · KL(p_now || p_before)   (next-token distribution at the subject's last
                                              token of the KL prompt)
      +  weight_decay · |delta| / |v0|²,

with Adam; after every step delta is projected into the ball of radius
clamp_norm_factor · |v0|, and the loop stops once the **total** loss is below ``loss_stop``
(the last of ``steps`` forwards only measures). Where delta lives (``space``):

- ``mlp_out``: the MLP output projection's output (published ROME); v0 = that output;
- ``residual``: the residual stream after the block (published MEMIT); v0 = the block's output.
"""

from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import Sequence

import torch
import torch.nn.functional as F

from xling_edit.editing.base import EditRequest, SkipCase
from xling_edit.editing.localize import SubjectMatch, find_subject
from xling_edit.evaluation.forward import (
    _StopForward, capture_output, full_logits_at, logits_at, pad_right, skip_below,
)
from xling_edit.evaluation.text import Encoded, encode, last_token_in_span
from xling_edit.models.spec import ModelSpec


@dataclass
class Prepared:
    """One request tokenised for editing: context prompts + target, and the KL prompt."""

    match: SubjectMatch
    encs: list[Encoded]  # prefix + prompt + target_new, one per context prefix ("" first)
    ids: torch.Tensor  # [n_prompts + 1, T] right-padded; the last row is the KL prompt
    mask: torch.Tensor
    subj_pos: torch.Tensor  # [n_prompts + 1] subject's last token per row
    rows: torch.Tensor  # logit rows: target positions of every prompt, then the KL position
    pos: torch.Tensor
    tgt: torch.Tensor  # target token ids at those positions (KL excluded)
    seg: torch.Tensor  # which prompt each target token belongs to
    n_tok: torch.Tensor  # target tokens per prompt
    prompts: list[str]  # prefix + prompt (+ answer prefix), without the target; then the KL prompt

    @property
    def n_prompts(self) -> int:
        return len(self.encs)


def prepare(tok, request: EditRequest, prefixes: list[str], threshold: float, device) -> Prepared:
    rec, lang = request.record, request.lang
    match = find_subject(rec.prompt, rec.subject, threshold)
    if match is None:
        raise SkipCase(f"subject {rec.subject!r} not found in prompt {rec.prompt!r}")
    prompt = rec.prompt + request.answer_prefix
    encs, subj = [], []
    for pre in prefixes:
        e = encode(tok, pre + prompt, rec.target_new, lang["word_sep"])
        p = last_token_in_span(e, len(pre) + match.start, len(pre) + match.end)
        if p >= e.n_prompt:
            raise SkipCase("subject overlaps the target tokens")
        encs.append(e)
        subj.append(p)
    kl_text = lang["kl_prompt"].format(subject=rec.subject)
    kl_enc = encode(tok, kl_text)
    ks = kl_text.find(rec.subject)
    kl_subj = last_token_in_span(kl_enc, ks, ks + len(rec.subject))
    subj.append(kl_subj)
    ids, mask = pad_right([e.input_ids for e in encs] + [kl_enc.input_ids], tok.pad_token_id, device)
    rows, pos, tgt, seg = [], [], [], []
    for r, e in enumerate(encs):
        for p in e.target_positions:
            rows.append(r)
            pos.append(p - 1)
            tgt.append(e.input_ids[p])
            seg.append(r)
    # Published compute_v / compute_z read the KL distribution at the subject's last token of
    # the KL prompt (not at the prompt's last token).
    rows.append(len(encs))
    pos.append(kl_subj)
    t = lambda x: torch.tensor(x, device=device)  # noqa: E731
    seg_t = t(seg)
    return Prepared(match, encs, ids, mask, t(subj), t(rows), t(pos), t(tgt), seg_t,
                    torch.bincount(seg_t, minlength=len(encs)).float(),
                    [pre + prompt for pre in prefixes] + [kl_text])


def average_keys(keys: torch.Tensor, groups: Sequence[int] | None) -> torch.Tensor:
    """Mean key over the context prompts ([n_prompts, d] -> [d]).

    ``groups`` None: uniform over all prompts (published ROME). Otherwise the prompts' context
    template groups (the bare prompt is group 0): mean within each group, then the mean of the
    group means (published MEMIT: ½ bare prompt, ½ mean of the prefixed prompts)."""
    if groups is None:
        return keys.mean(0)
    g = torch.as_tensor(list(groups), device=keys.device)
    if g.numel() != keys.shape[0]:
        raise ValueError(f"{keys.shape[0]} keys but {g.numel()} group labels")
    return torch.stack([keys[g == i].mean(0) for i in torch.unique(g)]).mean(0)


def target_nll(logits: torch.Tensor, prep: Prepared) -> torch.Tensor:
    """Mean over prompts of the mean token NLL of the target (``logits`` without the KL row)."""
    lp = torch.log_softmax(logits, dim=-1).gather(1, prep.tgt[:, None])[:, 0]
    per_prompt = torch.zeros_like(prep.n_tok).index_add(0, prep.seg, -lp)
    return (per_prompt / prep.n_tok).mean()


@torch.no_grad()
def probe_at_subject(model, spec: ModelSpec, prep: Prepared, layer: int, top: int,
                     bare_only: bool = False) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One forward pass, stopped after block ``top`` (>= ``layer``), returning

    - the down-projection's inputs (keys) at ``layer``, [rows, d_in], and
    - its outputs, [rows, d_out], at the subject's last token of every row (only the bare
      prompt's row with ``bare_only``), and
    - the residual stream after block ``top`` at the bare prompt's subject, [d_model] (float64).
    """
    n = 1 if bare_only else prep.ids.shape[0]
    rows = torch.arange(n, device=prep.ids.device)
    pos = prep.subj_pos[:n]
    got: dict = {}

    def at_down(_m, inp, out):
        got["k"], got["v"] = inp[0][rows, pos].float(), out[rows, pos].float()

    def at_top(_m, _i, out):
        got["h"] = (out[0] if isinstance(out, tuple) else out)[0, pos[0]].double()
        raise _StopForward

    handles = [spec.module(model, "down_proj", layer).register_forward_hook(at_down),
               spec.module(model, "layer", top).register_forward_hook(at_top)]
    try:
        model(input_ids=prep.ids[:n], attention_mask=prep.mask[:n], use_cache=False, logits_to_keep=1)
    except _StopForward:
        pass
    finally:
        for h in handles:
            h.remove()
    return got["k"], got["v"], got["h"]


@dataclass
class ValueResult:
    delta: torch.Tensor  # optimised addition at the subject (in ``space``)
    v0: torch.Tensor  # the bare prompt's hidden state there (what delta is measured against)
    keys: torch.Tensor  # [n_prompts, d_in] the layer's projection inputs at the subject, per prompt
    nll_before: float
    trajectory: list[float]  # mean target NLL at every forward
    steps: int  # forwards run (the last one only measures, as published)
    loss_trajectory: list[float] = field(default_factory=list)  # total loss at every forward
    space: str = "mlp_out"


SPACES = ("mlp_out", "residual")


def optimise_value(model, spec: ModelSpec, layer: int, prep: Prepared, *, steps: int, lr: float,
                   loss_stop: float, clamp_norm_factor: float, kl_factor: float,
                   weight_decay: float, space: str = "mlp_out", from_layer: bool = True,
                   head_at_targets: bool = True) -> ValueResult:
    """Optimise delta at block ``layer`` (see the module docstring); ``space`` is ``mlp_out``
    (the down-projection's output) or ``residual`` (the block's output).

    Fast paths (same loss trajectory; the oracle tests compare them with a plain form):

    - ``from_layer``: delta enters at block ``layer``, so blocks below it compute the same thing
      at every step; their output is computed once and each step runs blocks ``layer`` and up
      only (plain: the full depth every step).
    - ``head_at_targets``: the forward stops after the final norm and the LM head is applied at
      the target and KL positions only (plain: full logits at every position).
    """
    if space not in SPACES:
        raise ValueError(f"value space {space!r} unknown; one of {list(SPACES)}")
    down = spec.module(model, "down_proj", layer)
    site = down if space == "mlp_out" else spec.module(model, "layer", layer)
    cap: dict = {}
    hk = down.register_forward_hook(lambda m, i, o: cap.update(k=i[0]))
    hv = site.register_forward_hook(lambda m, i, o: cap.update(v=o[0] if isinstance(o, tuple) else o))
    below = capture_output(spec.module(model, "layer", layer - 1)) if (from_layer and layer > 0) else None
    try:
        with torch.no_grad(), (below if below is not None else nullcontext()) as low:
            logits0 = _logits(model, spec, prep, head_at_targets)
    finally:
        hk.remove()
        hv.remove()
    lower = low["out"].detach() if below is not None else None
    n = prep.n_prompts
    keys = cap["k"][torch.arange(n, device=prep.ids.device), prep.subj_pos[:n]].detach().float()
    v0 = cap["v"][0, prep.subj_pos[0]].detach().float()
    kl_before = torch.log_softmax(logits0[-1:], dim=-1)
    nll0 = float(target_nll(logits0[:-1], prep))
    del logits0
    cap.clear()

    sel = torch.zeros(*prep.ids.shape, 1, device=prep.ids.device, dtype=v0.dtype)
    sel[torch.arange(n + 1, device=prep.ids.device), prep.subj_pos] = 1.0
    delta = torch.zeros_like(v0, requires_grad=True)
    opt = torch.optim.Adam([delta], lr=lr)
    v0_norm = v0.norm()
    radius = clamp_norm_factor * float(v0_norm)

    def add_delta(_m, _i, o):
        if isinstance(o, tuple):
            return (o[0] + sel.to(o[0].dtype) * delta.to(o[0].dtype),) + tuple(o[1:])
        return o + sel.to(o.dtype) * delta.to(o.dtype)

    h = site.register_forward_hook(add_delta)
    trajectory: list[float] = []
    losses: list[float] = []
    step = 0
    try:
        with skip_below(model, spec, layer if lower is not None else 0, lower):
            for step in range(1, steps + 1):
                logits = _logits(model, spec, prep, head_at_targets)
                nll = target_nll(logits[:-1], prep)
                kl_now = torch.log_softmax(logits[-1:], dim=-1)
                # F.kl_div(input, target) = KL(target || input): KL(p_now || p_before), as published
                kl = F.kl_div(kl_before, kl_now, log_target=True, reduction="batchmean")
                loss = nll + kl_factor * kl + weight_decay * delta.norm() / v0_norm ** 2
                if not torch.isfinite(loss):
                    raise FloatingPointError(f"non-finite value loss at step {step}")
                trajectory.append(float(nll.detach()))
                losses.append(float(loss.detach()))
                if losses[-1] < loss_stop or step == steps:
                    break
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                with torch.no_grad():
                    delta.copy_(project_to_ball(delta, radius))
                del logits, nll, kl, loss
    finally:
        h.remove()
    return ValueResult(delta.detach(), v0, keys, nll0, trajectory, step, losses, space)


def value_options(hp, space: str = "mlp_out") -> dict:
    """:func:`optimise_value`'s settings from a method config (``RomeConfig`` / ``MemitConfig``)."""
    return dict(steps=hp.v_steps, lr=hp.v_lr, loss_stop=hp.v_loss_stop,
                clamp_norm_factor=hp.clamp_norm_factor, kl_factor=hp.kl_factor,
                weight_decay=hp.weight_decay, space=space, from_layer=hp.v_from_layer,
                head_at_targets=hp.v_head_at_targets)


def _logits(model, spec: ModelSpec, prep: Prepared, head_at_targets: bool) -> torch.Tensor:
    if head_at_targets:
        return logits_at(model, spec, prep.ids, prep.mask, prep.rows, prep.pos)
    return full_logits_at(model, prep.ids, prep.mask, prep.rows, prep.pos)


def project_to_ball(x: torch.Tensor, radius: float) -> torch.Tensor:
    n = x.norm()
    return x * (radius / n) if n > radius else x
