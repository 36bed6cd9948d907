"""ROME (Meng et al., 2022): a rank-one update of one MLP output projection.

1. key: the projection's input at the subject's last token, averaged over the bare prompt and
   seeded, model-generated context prefixes;
2. value: a vector delta added to the projection's output at the subject's last token,
   optimised so the model emits target_new (mean token NLL) while "{subject} is a" keeps its
   next-token distribution (KL) and delta stays small (weight decay, norm clamp);
3. update: W <- W + delta u^T / (u^T k*), u = C^-1 k_bar (or k_bar without statistics).

With ``consistent_key`` (r-ROME, the default) k* = k_bar, the key u was built from, so
W' k* = W k* + delta exactly and no edit can blow up through a small denominator. The original
form uses the bare prompt's key as k*.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from typing import Any, Callable, Mapping

import torch
import torch.nn.functional as F

from xling_edit.editing.base import EditOutcome, EditRequest, SkipCase, WeightDelta, register_editor
from xling_edit.editing.context import generate_prefixes
from xling_edit.editing.localize import find_subject
from xling_edit.evaluation.forward import capture_output, logits_at, model_device, pad_right
from xling_edit.evaluation.text import encode, last_token_in_span
from xling_edit.models.spec import ModelSpec, is_transposed, weight_as_out_in


# ------------------------------------------------------------------ pure maths
def rank_one_update(delta_v: torch.Tensor, u: torch.Tensor, k_star: torch.Tensor) -> torch.Tensor:
    """ΔW (out × in) = delta_v u^T / (u^T k*), so that ΔW k* = delta_v. Computed in float64."""
    u64, k64 = u.double(), k_star.double()
    denom = torch.dot(u64, k64)
    if not torch.isfinite(denom) or denom.abs() < 1e-12:
        raise FloatingPointError(f"degenerate ROME denominator u.k* = {float(denom):.3e}")
    return torch.outer(delta_v.double(), u64) / denom


def left_vector(k_mean: torch.Tensor, cov: torch.Tensor | None) -> torch.Tensor:
    """u = C^-1 k_mean (float64 solve), or k_mean when no statistics are given."""
    if cov is None:
        return k_mean.double()
    return torch.linalg.solve(cov.double(), k_mean.double())


def project_to_ball(x: torch.Tensor, radius: float) -> torch.Tensor:
    n = x.norm()
    return x * (radius / n) if n > radius else x


# ------------------------------------------------------------------ the editor
@dataclass
class RomeHparams:
    layer: int
    v_steps: int
    v_lr: float
    v_loss_stop: float
    clamp_norm_factor: float
    kl_factor: float
    weight_decay: float
    n_context: int
    context_lengths: list
    use_covariance: bool
    consistent_key: bool
    subject_match_threshold: float

    @classmethod
    def from_mapping(cls, m: Mapping[str, Any]) -> "RomeHparams":
        return cls(**{k: m[k] for k in cls.__dataclass_fields__})


@register_editor("rome")
class RomeEditor:
    """ROME for any architecture described by a :class:`ModelSpec`.

    Args:
        hparams: a ``RomeConfig`` mapping (already merged with the model's overrides).
        spec: module templates.
        seed: seed of the context-prefix sampling.
        covariance: ``layer -> C`` (d_in × d_in second moment) or None; returns None when no
            statistics exist, in which case the identity is used and results say so.
        covariance_label: what the statistics are (recorded in results).
    Raises:
        SkipCase: the subject cannot be located in the prompt.
    """

    def __init__(self, hparams: Mapping[str, Any], spec: ModelSpec, seed: int = 0,
                 covariance: Callable[[int], torch.Tensor | None] | None = None,
                 covariance_label: str | None = None):
        self.hp = RomeHparams.from_mapping(hparams)
        self.spec = spec
        self.seed = seed
        self.covariance = covariance
        self.covariance_label = covariance_label
        self._prefixes: dict[str, list[str]] = {}

    def prefixes(self, model, tok, lang) -> list[str]:
        """["", "<generated>. ", ...]: the bare prompt first, then the context prefixes."""
        code = lang["code"]
        if code not in self._prefixes:
            gen = generate_prefixes(model, tok, list(lang["context_seeds"]),
                                    list(self.hp.context_lengths), self.hp.n_context, self.seed)
            self._prefixes[code] = [""] + [g + lang["context_join"] for g in gen]
        return self._prefixes[code]

    def edit(self, model, tok, request: EditRequest) -> EditOutcome:
        hp, rec, lang = self.hp, request.record, request.lang
        t0 = time.perf_counter()
        match = find_subject(rec.prompt, rec.subject, hp.subject_match_threshold)
        if match is None:
            raise SkipCase(f"subject {rec.subject!r} not found in prompt {rec.prompt!r}")
        prompt = rec.prompt + request.answer_prefix
        sep = lang["word_sep"]

        encs, subj = [], []
        for pre in self.prefixes(model, tok, lang):
            e = encode(tok, pre + prompt, rec.target_new, sep)
            pos = last_token_in_span(e, len(pre) + match.start, len(pre) + match.end)
            if pos >= e.n_prompt:
                raise SkipCase("subject overlaps the target tokens")
            encs.append(e)
            subj.append(pos)
        kl_text = lang["kl_prompt"].format(subject=rec.subject)
        kl_enc = encode(tok, kl_text)
        ks = kl_text.find(rec.subject)
        subj.append(last_token_in_span(kl_enc, ks, ks + len(rec.subject)))

        device = model_device(model)
        ids, mask = pad_right([e.input_ids for e in encs] + [kl_enc.input_ids],
                              tok.pad_token_id, device)
        rows, pos, tgt, seg = [], [], [], []
        for r, e in enumerate(encs):
            for p in e.target_positions:
                rows.append(r)
                pos.append(p - 1)
                tgt.append(e.input_ids[p])
                seg.append(r)
        kl_row = len(encs)
        rows.append(kl_row)
        pos.append(len(kl_enc.input_ids) - 1)
        rows_t = torch.tensor(rows, device=device)
        pos_t = torch.tensor(pos, device=device)
        tgt_t = torch.tensor(tgt, device=device)
        seg_t = torch.tensor(seg, device=device)
        n_prompts = len(encs)
        n_tok = torch.bincount(seg_t, minlength=n_prompts).float()
        sub_rows = torch.arange(len(subj), device=device)
        sub_pos = torch.tensor(subj, device=device)

        down = self.spec.module(model, "down_proj", hp.layer)
        # Pass 1 (no grad): keys and outputs at the subject, reference KL distribution.
        keys: dict = {}
        hook = down.register_forward_hook(lambda m, i, o: keys.update(k=i[0], v=o))
        try:
            with torch.no_grad():
                logits0 = logits_at(model, self.spec, ids, mask, rows_t, pos_t)
        finally:
            hook.remove()
        k_all = keys["k"][sub_rows[:n_prompts], sub_pos[:n_prompts]].detach().float()
        v0 = keys["v"][0, subj[0]].detach().float()
        kl_ref = torch.log_softmax(logits0[-1:], dim=-1)
        nll0 = self._nll(logits0[:-1], tgt_t, seg_t, n_tok)

        # Pass 2: optimise delta at the subject's last token.
        sel = torch.zeros(ids.shape[0], ids.shape[1], 1, device=device, dtype=keys["v"].dtype)
        sel[sub_rows, sub_pos] = 1.0
        delta = torch.zeros_like(v0, requires_grad=True)
        opt = torch.optim.Adam([delta], lr=hp.v_lr)
        radius = hp.clamp_norm_factor * float(v0.norm())
        hook = down.register_forward_hook(lambda m, i, o: o + sel * delta.to(o.dtype))
        trajectory, steps = [], 0
        try:
            for steps in range(1, hp.v_steps + 1):
                logits = logits_at(model, self.spec, ids, mask, rows_t, pos_t)
                nll = self._nll(logits[:-1], tgt_t, seg_t, n_tok)
                kl = F.kl_div(torch.log_softmax(logits[-1:], dim=-1), kl_ref, log_target=True,
                              reduction="batchmean")
                wd = hp.weight_decay * delta.norm() / v0.norm() ** 2
                loss = nll + hp.kl_factor * kl + wd
                trajectory.append(round(float(nll.detach()), 4))
                if not torch.isfinite(loss):
                    raise FloatingPointError(f"non-finite ROME loss at step {steps}")
                if trajectory[-1] < hp.v_loss_stop:
                    break
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                with torch.no_grad():
                    delta.copy_(project_to_ball(delta, radius))
        finally:
            hook.remove()
        delta_v = delta.detach()

        # Rank-one update.
        w = weight_as_out_in(down).detach()
        k_bar = k_all.mean(0)
        k_star = k_bar if hp.consistent_key else k_all[0]
        cov = self.covariance(hp.layer) if (hp.use_covariance and self.covariance) else None
        u = left_vector(k_bar, cov)
        dw = rank_one_update(delta_v, u, k_star)
        bias = getattr(down, "bias", None)
        v_star = (w.double() @ k_star.double() + delta_v.double()
                  + (bias.double() if bias is not None else 0.0))
        stored = dw.T if is_transposed(down) else dw
        param = self.spec.down_proj_weight_name(hp.layer)
        info = {
            "method": "rome", "layer": hp.layer, "steps": steps,
            "nll_before": round(float(nll0), 4), "nll_after": trajectory[-1] if trajectory else None,
            "nll_trajectory": trajectory, "delta_norm": float(delta_v.norm()),
            "v0_norm": float(v0.norm()),
            "update_rel_norm": float(dw.norm() / w.double().norm()),
            "covariance": (self.covariance_label or "provided") if cov is not None else "identity",
            "key_form": "consistent" if hp.consistent_key else "original",
            "n_context": n_prompts, "subject": match.to_dict(),
            "edit_s": round(time.perf_counter() - t0, 3),
        }
        return EditOutcome(
            deltas=[WeightDelta(param, stored.to(w.dtype))], info=info,
            tensors={"k_star": k_star, "v_star": v_star, "u": u, "delta_v": delta_v},
        )

    @staticmethod
    def _nll(logits, tgt, seg, n_tok):
        """Mean over prompts of the mean token NLL of the target."""
        lp = torch.log_softmax(logits, dim=-1).gather(1, tgt[:, None])[:, 0]
        per_prompt = torch.zeros_like(n_tok).index_add(0, seg, -lp)
        return (per_prompt / n_tok).mean()
