"""MEMIT (Meng et al., 2023): many facts, several layers, one least-squares update per layer.

As published (defaults):

1. For every request i, a target z_i for the residual stream after the top edited block L:
   the value optimisation (shared with ROME; ``z_space=residual``) adds delta_i to that block's
   output at the subject's last token of the bare prompt and 5 prefixed prompts, clamped to
   0.75 · ||h_L,i||; z_i = h_L,i + delta_i.
2. For each layer l ascending, with the lower layers' updates already applied: keys K (per
   request ½ the bare prompt's key + ½ the mean of the prefixed prompts' keys),
   R = (Z − H_L) / (layers left, l included), ΔW_l = R Kᵀ (λ C_l + K Kᵀ)⁻¹ in float64.

Gemma-2/3 variant (named options, recorded in results): those blocks normalise the MLP output
(``post_feedforward_layernorm``, gains of 40–600×) before the residual add, so a residual-space
share written straight to a projection's output is not what reaches the stream, and the usual
implementation diverges. ``z_space=mlp_out`` optimises delta at the top projection's output and
converts it to residual units through that norm; ``invert_out_norm=true`` maps each layer's
residual share back through its norm (Gauss-Newton) before the update.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Callable, List, Mapping, Sequence

import torch

from xling_edit.editing.base import (
    EditOutcome, EditRequest, Editor, WeightDelta, applied, register_editor,
)
from xling_edit.config import schema_from_mapping
from xling_edit.editing.context import PrefixedEditor
from xling_edit.editing.reference import WIKIPEDIA_100K, Published, published_deviations
from xling_edit.editing.value import (
    EditMethodConfig,
    Prepared, average_keys, optimise_values, prepare, probe_at_subject,
    value_options,
)
from xling_edit.evaluation.forward import model_device
from xling_edit.models.spec import ModelSpec, is_transposed, weight_as_out_in


@dataclass
class MemitConfig(EditMethodConfig):
    """MEMIT (Meng et al., 2023); per-model values come from ``model.hparams.memit``. Shared
    fields: :class:`EditMethodConfig`. Published defaults are the paper's GPT-J settings
    (clamp 0.75 · ||h||, weight decay 0.5, 6 prompts, keys ½ bare ½ prefixed).

    Args:
        layers: blocks whose MLP output projections share the update (ascending).
        mom2_update_weight: λ in ΔW = R Kᵀ (λC + KKᵀ)⁻¹; larger keeps other keys unchanged.
        z_space: where the target z is optimised: ``residual`` (published: the residual stream
            after the top edited block; clamp and weight decay relative to ||h||) or
            ``mlp_out`` (the top block's MLP output projection's output, mapped to the residual
            stream through the block's ``mlp_out_norm``; a variant for Gemma-2/3, whose
            post-MLP norm makes residual-space targets unreachable).
        invert_out_norm: when the model has an ``mlp_out_norm`` (Gemma-2/3), map each layer's
            residual share back through that norm before the least-squares update (Gauss-Newton)
            instead of writing it to the projection's output as is (published MEMIT, which
            assumes the MLP output is added to the residual stream unchanged). No effect on
            models without that norm.
    """

    name: str = "memit"
    clamp_norm_factor: float = 0.75
    weight_decay: float = 0.5
    context_templates: List[List[int]] = field(default_factory=lambda: [[10, 5]])
    key_average: str = "templates"
    layers: List[int] = field(default_factory=lambda: [3, 4, 5, 6, 7, 8])
    mom2_update_weight: float = 15000.0
    z_space: str = "residual"
    invert_out_norm: bool = False


# ------------------------------------------------------------------ pure maths
def memit_update(resid: torch.Tensor, keys: torch.Tensor, cov: torch.Tensor | None,
                 lam: float) -> torch.Tensor:
    """ΔW = R Kᵀ (λC + K Kᵀ)⁻¹ in float64. ``resid``: [d_out, n]; ``keys``: [d_in, n];
    ``cov``: [d_in, d_in] (identity when None)."""
    k = keys.double()
    c = torch.eye(k.shape[0], dtype=torch.float64) if cov is None else cov.double()
    a = lam * c + k @ k.T
    # (λC + KKᵀ) is symmetric: ΔW = R (A⁻¹ K)ᵀ
    return resid.double() @ torch.linalg.solve(a, k).T


def memit_update_factored(resid: torch.Tensor, keys: torch.Tensor, solve: Callable | None,
                          lam: float) -> torch.Tensor:
    """:func:`memit_update` from a cached factorisation of C: ``solve(X)`` = C⁻¹X (identity
    when None). Push-through identity: (λC + KKᵀ)⁻¹K = C⁻¹K (λI + KᵀC⁻¹K)⁻¹, so an edit costs
    O(d² n) instead of factorising a d × d matrix (O(d³)). Needs λ > 0."""
    if lam <= 0:
        raise ValueError("the factorised MEMIT update needs mom2_update_weight > 0")
    k = keys.double()
    x = k if solve is None else solve(k)  # C⁻¹K, [d_in, n]
    small = lam * torch.eye(k.shape[1], dtype=torch.float64) + k.T @ x  # n × n, SPD
    a_inv_k = torch.linalg.solve(small, x.T).T  # (λC + KKᵀ)⁻¹K, [d_in, n]
    return resid.double() @ a_inv_k.T


def invert_output_map(fn: Callable[[torch.Tensor], torch.Tensor] | None, m: torch.Tensor,
                      r: torch.Tensor, iters: int = 10) -> torch.Tensor:
    """d such that fn(m + d) - fn(m) ≈ r; r itself when fn is None (identity).

    Gauss-Newton with minimum-norm least-squares steps and backtracking: a step is taken only
    if it lowers the error, so an unreachable r (a norm's output has a fixed scale) gives the
    closest reachable change instead of a diverging d."""
    if fn is None:
        return r
    m, r = m.double(), r.double()
    base = fn(m)
    d = torch.zeros_like(m)
    err = r - (fn(m + d) - base)
    for _ in range(iters):
        if err.norm() <= 1e-6 * (r.norm() + 1e-12):
            break
        j = torch.autograd.functional.jacobian(fn, m + d)
        # truncated least squares: a norm's Jacobian is singular along its input's scale, so
        # directions with singular values below 1e-6 of the largest are left out (a step along
        # them only rescales the input and never descends)
        step = torch.linalg.lstsq(j, err[:, None], rcond=1e-6, driver="gelsd").solution[:, 0]
        for _ in range(12):
            new_err = r - (fn(m + d + step) - base)
            if torch.isfinite(new_err).all() and new_err.norm() < err.norm():
                d, err = d + step, new_err
                break
            step = step / 2
        else:
            break
    # Norms ignore the input's scale: Gauss-Newton may wander along it. Bring |m + d| back to
    # |m| when that leaves the output unchanged, so the weight update stays small.
    # (eps terms make tiny inputs slightly scale-dependent: try |m|, 2|m|, 4|m|, ...)
    x = m + d
    scale = m.norm().clamp_min(1e-12)
    while scale < x.norm():
        cand = x * (scale / x.norm()) - m
        if (r - (fn(m + cand) - base)).norm() <= err.norm() * 1.01 + 1e-9:
            return cand
        scale = scale * 2
    return d


# ------------------------------------------------------------------ the editor
def _output_map(model, spec: ModelSpec, layer: int):
    """The block's map from MLP output to residual contribution, as a float64 function."""
    if not spec.mlp_out_norm:
        return None
    norm = spec.module(model, "mlp_out_norm", layer)

    def fn(x: torch.Tensor) -> torch.Tensor:
        p = next(norm.parameters(), None)
        dtype = p.dtype if p is not None else torch.float32
        return norm(x.to(dtype)[None])[0].double()

    return fn


@register_editor("memit", schema=MemitConfig)
class MemitEditor(PrefixedEditor):
    """MEMIT for any architecture described by a :class:`ModelSpec`; takes one or many requests.

    Args:
        hparams: a ``MemitConfig`` mapping (per-model values resolved).
        spec: module templates (``mlp_out_norm`` when the block normalises the MLP output).
        seed: seed of the context-prefix sampling.
        covariance: ``layer -> C`` or None (identity).
        covariance_label: what the statistics are (recorded in results).
    """

    batched = True
    schema = MemitConfig
    published = Published(
        source="Meng et al. 2023; kmeng01/memit: memit/memit_main.py (context prefixes generated "
               "from 'The', 'Therefore', 'Because', 'I', 'You', joined with '. '), "
               "rome/compute_v.py via memit/compute_z.py (KL at '{} is a'), hparams "
               "(C from 100,000 Wikipedia samples, no ridge), exact subject templates",
        context_seeds=("The", "Therefore", "Because", "I", "You"), context_join=". ",
        kl_prompt="{subject} is a", statistics=WIKIPEDIA_100K, stats_ridge=0.0,
        subject_match="exact", answer_cue="")

    def __init__(self, hparams: Mapping[str, Any], spec: ModelSpec, seed: int = 0,
                 covariance: Callable[[int], torch.Tensor | None] | None = None,
                 covariance_label: str | None = None):
        self.hp = schema_from_mapping(self.schema, hparams)
        if not self.hp.layers:
            raise ValueError("method.layers must name at least one layer")
        Editor.__init__(self, hparams, spec, seed, covariance, covariance_label)

    @property
    def edit_layers(self) -> list[int]:
        """Blocks whose weights an edit changes."""
        return sorted(int(l) for l in self.hp.layers)

    def edit(self, model, tok, request: EditRequest) -> EditOutcome:
        return self.edit_batch(model, tok, [request])

    def edit_batch(self, model, tok, requests: Sequence[EditRequest]) -> EditOutcome:
        hp, spec = self.hp, self.spec
        t0 = time.perf_counter()
        layers = self.edit_layers
        top = layers[-1]
        device = model_device(model)
        preps: list[Prepared] = []
        for req in requests:  # a request that cannot be localised fails the whole batch
            preps.append(prepare(tok, req, self.prefixes(model, tok, req.lang),
                                 hp.subject_match_threshold, device, hp.subject_fallback))

        # 1. targets z at the top layer, in residual-stream units
        space = hp.z_space
        # every request's delta in one padded batch per step (each still gets its own trajectory)
        values = optimise_values(model, spec, top, preps, **value_options(hp, space, self.paths))
        with torch.no_grad():
            if space == "residual":  # v0 is h_L at the bare prompt's subject: z = h + delta
                resid_target = torch.stack([v.delta.double() for v in values])
                z = torch.stack([v.v0.double() for v in values]) + resid_target
            else:  # mlp_out: the residual change the projection-output delta causes
                post_top = _output_map(model, spec, top)
                resid_target = torch.stack([
                    (post_top(v.v0 + v.delta) - post_top(v.v0)) if post_top else v.delta.double()
                    for v in values])  # [n, d_model]
                z = self._residual_at(model, preps, top) + resid_target
        groups = self.prompt_groups if hp.key_average == "templates" else None

        use_cov = bool(hp.use_covariance and self.covariance)
        if use_cov and hasattr(self.covariance, "prefetch"):
            self.covariance.prefetch(layers)
        # 2. spread over the layers, ascending, each seeing the updates below it
        deltas: list[WeightDelta] = []
        per_layer = []
        key_log: dict[int, torch.Tensor] = {}
        resid_log: dict[int, torch.Tensor] = {}
        with torch.no_grad():
            for i, layer in enumerate(layers):
                with applied(model, deltas):  # one pass per request: keys, outputs, h_top
                    probes = [probe_at_subject(model, spec, p, layer, top) for p in preps]
                h_top = torch.stack([h for _, _, h in probes])
                keys = torch.stack([average_keys(k[:p.n_prompts], groups)
                                    for (k, _, _), p in zip(probes, preps)], dim=1)
                outs = [v[0] for _, v, _ in probes]
                r = (z - h_top) / (len(layers) - i)
                post = _output_map(model, spec, layer) if hp.invert_out_norm else None
                resid = torch.stack([invert_output_map(post, o, ri) for o, ri in zip(outs, r)], dim=1)
                dw = self.layer_update(layer, resid, keys, use_cov)
                key_log[layer], resid_log[layer] = keys, resid
                down = spec.module(model, "down_proj", layer)
                w = weight_as_out_in(down)
                if not torch.isfinite(dw).all():
                    raise FloatingPointError(f"non-finite MEMIT update at layer {layer}")
                stored = (dw.T if is_transposed(down) else dw).to(w.dtype)
                deltas.append(WeightDelta(spec.down_proj_weight_name(layer), stored))
                per_layer.append({"layer": layer, "resid_norm": float(r.norm(dim=1).mean()),
                                  "update_rel_norm": float(dw.norm() / w.double().norm())})
            with applied(model, deltas):
                h_final = self._residual_at(model, preps, top)
        self.after_edit(key_log)
        reached = 1.0 - float(((z - h_final).norm(dim=1) / resid_target.norm(dim=1).clamp_min(1e-12)).mean())
        info = {
            "method": hp.name, "variant": hp.variant, "deviations": published_deviations(hp),
            "layers": layers, "n_requests": len(requests), "z_space": space,
            "invert_out_norm": bool(hp.invert_out_norm and spec.mlp_out_norm),
            "steps": [v.steps for v in values],
            "init_forwards": [v.init_forwards for v in values],  # v_init's forwards outside `steps`
            "nll_before": [round(v.nll_before, 4) for v in values],
            "nll_after": [round(v.trajectory[-1], 4) if v.trajectory else None for v in values],
            "loss_after": [round(v.loss_trajectory[-1], 4) if v.loss_trajectory else None
                           for v in values],
            "per_layer": per_layer, "target_reached": round(reached, 4),
            "covariance": (self.covariance_label or "provided") if use_cov else "identity",
            "covariance_tokens": {l: (getattr(self.covariance, "tokens", {}) or {}).get(l)
                                  for l in layers} if use_cov else None,
            "n_context": preps[0].n_prompts,
            "subject": preps[0].match.to_dict() if len(preps) == 1 else None,
            "subjects": [p.match.to_dict() for p in preps],
            "edit_s": round(time.perf_counter() - t0, 3),
        }
        return EditOutcome(deltas=deltas, info=info, tensors={
            "z": z, "h_final": h_final, "keys": key_log, "resid": resid_log,
            "loss_trajectories": [v.loss_trajectory for v in values],
            "nll_trajectories": [v.trajectory for v in values],
            "subj_pos": [[int(x) for x in p.subj_pos] for p in preps],
            "prompts": [p.prompts for p in preps]})

    def layer_update(self, layer: int, resid: torch.Tensor, keys: torch.Tensor,
                     use_cov: bool) -> torch.Tensor:
        """ΔW_l (out × in, float64) from this layer's residual share R [d_out, n] and keys
        K [d_in, n]: MEMIT's R Kᵀ (λC + KKᵀ)⁻¹. Subclasses change the solve (AlphaEdit)."""
        hp = self.hp
        if (self.paths.cache_factorization and hp.mom2_update_weight > 0
                and (not use_cov or hasattr(self.covariance, "solve"))):
            solve = (lambda x: self.covariance.solve(layer, x)) if use_cov else None
            return memit_update_factored(resid, keys, solve, hp.mom2_update_weight)
        cov = self.covariance(layer) if use_cov else None  # plain: factorise λC + KKᵀ afresh
        return memit_update(resid, keys, cov, hp.mom2_update_weight)

    def after_edit(self, keys: dict[int, torch.Tensor]) -> None:
        """Called with each layer's keys once an edit is computed (AlphaEdit remembers them
        for the later edits of a sequence)."""

    def _residual_at(self, model, preps: Sequence[Prepared], layer: int) -> torch.Tensor:
        """[n, d_model] residual stream after block ``layer`` at each bare prompt's subject."""
        return torch.stack([probe_at_subject(model, self.spec, p, layer, layer, bare_only=True)[2]
                            for p in preps])
