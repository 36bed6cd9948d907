"""ROME (Meng et al., 2022): a rank-one update of one MLP output projection, as published.

1. key: the projection's input at the subject's last token, averaged over the bare prompt and
   20 seeded, model-generated context prefixes (``context_templates``; uniform mean);
2. value: a vector delta added to the projection's output at the subject's last token,
   optimised so the model emits target_new (mean token NLL) while "{subject} is a" keeps its
   next-token distribution at the subject (KL) and delta stays small (weight decay, norm
   clamp) — :func:`xling_edit.editing.value.optimise_value` with ``space="mlp_out"``;
3. update: W <- W + delta u^T / (u^T k*), u = C^-1 k_bar (or k_bar without statistics).

Published, k* is the bare prompt's key while u comes from the averaged key; that mismatch
causes rare exploding edits. ``consistent_key=true`` (r-ROME) uses k* = k_bar, so
W' k* = W k* + delta exactly.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Callable, Mapping

import torch

from xling_edit.editing.base import EditOutcome, EditRequest, WeightDelta, register_editor
from xling_edit.config import schema_from_mapping
from xling_edit.editing.reference import WIKIPEDIA_100K, Published, published_deviations
from xling_edit.editing.context import PrefixedEditor
from xling_edit.editing.value import (
    EditMethodConfig,
    average_keys, optimise_value, prepare, value_options,
)
from xling_edit.evaluation.forward import model_device
from xling_edit.models.spec import ModelSpec, is_transposed, weight_as_out_in


@dataclass
class RomeConfig(EditMethodConfig):
    """ROME (Meng et al., 2022); per-model values come from ``model.hparams.rome``. Shared
    fields: :class:`EditMethodConfig` (delta lives at the MLP output projection's output).

    Args:
        layer: block whose MLP output projection is rewritten.
        consistent_key: false (published): u = C⁻¹k̄ from the averaged key, but the bare
            prompt's key k* in the denominator of ΔW = δ uᵀ / (uᵀk*). True: r-ROME's consistent
            form (k̄ in both; guarantees W'k̄ = v* and avoids the rare exploding edits of the
            mixed form).
    """

    name: str = "rome"
    layer: int = 5
    consistent_key: bool = False


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


# ------------------------------------------------------------------ the editor
@register_editor("rome", schema=RomeConfig)
class RomeEditor(PrefixedEditor):
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

    published = Published(
        source="Meng et al. 2022; kmeng01/rome: rome/rome_main.py (context prefixes generated "
               "from '<|endoftext|>', joined with '. '), rome/compute_v.py (KL at '{} is a'), "
               "rome/layer_stats.py and hparams (C from 100,000 Wikipedia samples, no ridge), "
               "rome/repr_tools.py (the subject is the template's literal fill)",
        context_seeds=("<|endoftext|>",), context_join=". ", kl_prompt="{subject} is a",
        statistics=WIKIPEDIA_100K, stats_ridge=0.0, subject_match="exact", answer_cue="")

    def __init__(self, hparams: Mapping[str, Any], spec: ModelSpec, seed: int = 0,
                 covariance: Callable[[int], torch.Tensor | None] | None = None,
                 covariance_label: str | None = None):
        super().__init__(hparams, spec, seed, covariance, covariance_label)
        self.hp = schema_from_mapping(RomeConfig, hparams)

    @property
    def edit_layers(self) -> list[int]:
        """Blocks whose weights an edit changes."""
        return [int(self.hp.layer)]

    def edit(self, model, tok, request: EditRequest) -> EditOutcome:
        hp = self.hp
        t0 = time.perf_counter()
        prep = prepare(tok, request, self.prefixes(model, tok, request.lang),
                       hp.subject_match_threshold, model_device(model), hp.subject_fallback)
        res = optimise_value(model, self.spec, hp.layer, prep, **value_options(hp, "mlp_out", self.paths))
        down = self.spec.module(model, "down_proj", hp.layer)
        w = weight_as_out_in(down).detach()
        k_bar = average_keys(res.keys, self.prompt_groups if hp.key_average == "templates" else None)
        k_star = k_bar if hp.consistent_key else res.keys[0]
        use_cov = bool(hp.use_covariance and self.covariance)
        if use_cov and self.paths.cache_factorization and hasattr(self.covariance, "solve"):
            u, cov = self.covariance.solve(hp.layer, k_bar[:, None])[:, 0], True  # cached factor
        else:
            cov = self.covariance(hp.layer) if use_cov else None
            u = left_vector(k_bar, cov)  # plain: a fresh solve with C at every edit
        dw = rank_one_update(res.delta, u, k_star)
        bias = getattr(down, "bias", None)
        v_star = (w.double() @ k_star.double() + res.delta.double()
                  + (bias.double() if bias is not None else 0.0))
        stored = dw.T if is_transposed(down) else dw
        info = {
            "method": "rome", "variant": hp.variant, "deviations": published_deviations(hp),
            "layer": hp.layer, "steps": res.steps,
            "init_forwards": res.init_forwards,  # v_init's forwards outside `steps`
            "nll_before": round(res.nll_before, 4),
            "nll_after": round(res.trajectory[-1], 4) if res.trajectory else None,
            "nll_trajectory": [round(x, 4) for x in res.trajectory],
            "loss_trajectory": [round(x, 4) for x in res.loss_trajectory],
            "delta_norm": float(res.delta.norm()),
            "v0_norm": float(res.v0.norm()),
            "update_rel_norm": float(dw.norm() / w.double().norm()),
            "covariance": (self.covariance_label or "provided") if cov is not None else "identity",
            "key_form": "consistent" if hp.consistent_key else "original",
            "covariance_tokens": (getattr(self.covariance, "tokens", {}) or {}).get(hp.layer)
            if cov is not None else None,
            "n_context": prep.n_prompts, "subject": prep.match.to_dict(),
            "edit_s": round(time.perf_counter() - t0, 3),
        }
        return EditOutcome(
            deltas=[WeightDelta(self.spec.down_proj_weight_name(hp.layer), stored.to(w.dtype))],
            info=info,
            tensors={"k_star": k_star, "v_star": v_star, "u": u, "delta_v": res.delta,
                     "delta": res.delta, "v0": res.v0, "keys": res.keys, "k_bar": k_bar,
                     "subj_pos": [int(p) for p in prep.subj_pos], "prompts": prep.prompts,
                     "loss_trajectory": res.loss_trajectory, "nll_trajectory": res.trajectory},
        )
