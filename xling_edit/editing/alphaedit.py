"""AlphaEdit (Fang et al., ICLR 2025): MEMIT's update projected onto the null space of preserved
knowledge.

Same targets z, keys and per-layer residual shares as MEMIT (:mod:`xling_edit.editing.memit`);
only the solve differs. With K₀ the keys of preserved knowledge (summarised by the cached second
moment C = E[k kᵀ] of the layer's projection inputs), P = Û Ûᵀ projects onto the eigenvectors
of C whose eigenvalues are below ``nullspace_threshold`` (directions the preserved keys hardly
use), and

    ΔW = R Kᵀ P (K_p K_pᵀ P + K Kᵀ P + α I)⁻¹

(published form: ΔWᵀ = (P (K Kᵀ + K_p K_pᵀ) + α I)⁻¹ P K Rᵀ), float64, where K_p holds the keys
of the earlier edits of a sequence (``method.mode=sequential``) and α is the L2 weight. Since
ΔW P⊥ = 0 up to α, preserved keys k₀ (P k₀ ≈ 0) are left unchanged: ΔW k₀ ≈ 0. The projector is
cached per (model, layer, corpus, threshold) beside the statistics.
"""

from __future__ import annotations

import logging
import dataclasses
from dataclasses import dataclass, field
from typing import List
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from xling_edit.atomic import atomic_path
from xling_edit.editing.base import register_editor
from xling_edit.editing.memit import MemitConfig, MemitEditor

log = logging.getLogger(__name__)


@dataclass
class AlphaEditConfig(MemitConfig):
    """AlphaEdit (Fang et al., 2025); per-model values come from ``model.hparams.alphaedit``.
    Fields shared with MEMIT: :class:`xling_edit.config.MemitConfig` (``mom2_update_weight`` is
    not used). Published defaults: the paper's Llama3-8B settings (layers 4–8, v_lr 0.1, clamp
    0.75 · ||h||, weight decay 0.5, threshold 2e-2, α 10).

    Args:
        nullspace_threshold: eigenvalues of the preserved-key second moment C below this span
            the null space the update is projected onto (absolute, as published; depends on
            the scale of the model's keys: see ``edit.null_space_dims`` in results).
        l2: α, the L2 weight in the solve.
    """

    name: str = "alphaedit"
    v_lr: float = 0.1
    layers: List[int] = field(default_factory=lambda: [4, 5, 6, 7, 8])
    nullspace_threshold: float = 2.0e-2
    l2: float = 10.0


def null_space_projector(cov: torch.Tensor, threshold: float) -> torch.Tensor:
    """P = Û Ûᵀ with Û the eigenvectors of the symmetric PSD ``cov`` whose eigenvalues are
    below ``threshold`` (float64)."""
    evals, evecs = torch.linalg.eigh(cov.double())
    u = evecs[:, evals < threshold]
    return u @ u.T


def alphaedit_update(resid: torch.Tensor, keys: torch.Tensor, proj: torch.Tensor,
                     prev_kk: torch.Tensor | None, l2: float) -> torch.Tensor:
    """ΔW [d_out, d_in] = R Kᵀ P ((K Kᵀ + K_p K_pᵀ) P + α I)⁻¹, float64. ``resid``: [d_out, n];
    ``keys``: [d_in, n]; ``proj``: P [d_in, d_in]; ``prev_kk``: K_p K_pᵀ or None."""
    k, p = keys.double(), proj.double()
    kk = k @ k.T if prev_kk is None else k @ k.T + prev_kk.double()
    a = p @ kk + l2 * torch.eye(k.shape[0], dtype=torch.float64)
    return torch.linalg.solve(a, p @ k @ resid.double().T).T


@register_editor("alphaedit", schema=AlphaEditConfig)
class AlphaEditEditor(MemitEditor):
    """AlphaEdit: MEMIT's targets and keys, null-space-projected solve (module docstring).

    Needs covariance statistics (they define the preserved knowledge). In sequential mode the
    keys of the edits made so far in the group join the constraint (K_p); the pipeline calls
    :meth:`begin_group` before each group, which forgets them.
    """

    schema = AlphaEditConfig
    # AlphaEdit's reference code keeps MEMIT's prefixes, KL prompt and Wikipedia statistics
    published = dataclasses.replace(MemitEditor.published, source=(
        "Fang et al. 2025 (AlphaEdit; its reference code keeps MEMIT's context prefixes, KL "
        "prompt, subject templates and 100,000-sample Wikipedia statistics, which also size "
        "the null space)"))

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._projectors: dict[int, torch.Tensor] = {}
        self._prev_kk: dict[int, torch.Tensor] = {}
        self._n_prior = 0  # edits of the current group already in K_p

    def layer_update(self, layer, resid, keys, use_cov):
        if not use_cov:
            raise ValueError("alphaedit needs covariance statistics (method.use_covariance=true "
                             "and stats.corpus other than none): they define what is preserved")
        return alphaedit_update(resid, keys, self.projector(layer), self._prev_kk.get(layer),
                                float(self.hp.l2))

    def begin_group(self) -> None:
        self._prev_kk.clear()
        self._n_prior = 0

    def after_edit(self, keys: dict[int, torch.Tensor]) -> None:
        self._n_prior += 1
        for layer, k in keys.items():
            kk = k.double() @ k.double().T
            self._prev_kk[layer] = kk if layer not in self._prev_kk else self._prev_kk[layer] + kk

    def projector(self, layer: int) -> torch.Tensor:
        """P for ``layer``: memory, then the disk cache beside the statistics, then computed."""
        if layer in self._projectors:
            return self._projectors[layer]
        thr = float(self.hp.nullspace_threshold)
        path = self._projector_path(layer, thr)
        if path is not None and path.exists():
            proj = load_file(str(path))["projector"]
        else:
            raw = getattr(self.covariance, "raw", None)
            cov = raw(layer) if raw is not None else self.covariance(layer)  # without the ridge
            proj = null_space_projector(cov, thr)
            if path is not None:
                with atomic_path(path) as tmp:
                    save_file({"projector": proj.contiguous()}, str(tmp),
                              metadata={"threshold": repr(thr), "layer": str(layer)})
        dim = int(round(float(proj.diagonal().sum())))
        log.info("AlphaEdit layer %d: null space of %d of %d key directions (threshold %g)",
                 layer, dim, proj.shape[0], thr)
        if dim == 0:
            log.warning("AlphaEdit layer %d: no eigenvalue of C is below %g, so P = 0 and no "
                        "edit can happen; raise method.nullspace_threshold", layer, thr)
        self._projectors[layer] = proj
        return proj

    @property
    def null_space_dims(self) -> dict[int, int]:
        return {l: int(round(float(p.diagonal().sum()))) for l, p in self._projectors.items()}

    def edit_batch(self, model, tok, requests):
        prior = self._n_prior
        out = super().edit_batch(model, tok, requests)
        out.info.update(nullspace_threshold=float(self.hp.nullspace_threshold),
                        l2=float(self.hp.l2), null_space_dims=self.null_space_dims,
                        prior_edits_in_constraint=prior)
        return out

    def _projector_path(self, layer: int, thr: float) -> Path | None:
        cache_dir = getattr(self.covariance, "cache_dir", None)
        key = getattr(self.covariance, "key", None)
        if cache_dir is None or key is None:
            return None
        return Path(cache_dir) / "stats" / f"{key(layer)}-nullspace-{thr:g}.safetensors"
