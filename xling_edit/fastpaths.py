"""The fast paths' switches: not part of a user's config.

Every fast path gives the published result (the same trajectory, update, argmax metrics; NLLs
equal to float rounding); its plain counterpart exists so that ``bench/edit_bench.py`` can time
both in one process and the tests can compare them. Editing paths are an editor's ``paths``
(:class:`EditPaths`); evaluation paths are fields of
:class:`xling_edit.evaluation.forward.EvalOptions`; the statistics' are arguments of
:func:`xling_edit.editing.stats.layer_second_moments`.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class EditPaths:
    """An editor's fast paths.

    Args:
        v_from_layer: the value optimisation computes the blocks below the edited one once and
            runs only the edited block and up at each step (plain: full depth every step).
        v_head_at_targets: the value optimisation applies the LM head only at the target and KL
            positions (plain: full logits at every position).
        cache_factorization: the covariance statistics are factorised (Cholesky) once per layer
            and reused by every edit (ROME's C⁻¹k, MEMIT's (λC + KKᵀ)⁻¹K by the push-through
            identity); plain: solve with C afresh at every edit.
        v_prefix_cache: the value optimisation records every block's keys and values of each
            prompt's positions before the subject's last token once (they cannot see delta) and
            runs each step on the later positions only, attending to them (plain: every
            position of every prompt at every step). Models it is not verified on run the plain
            form, logged once (:func:`xling_edit.editing.value.prefix_cache_unsupported`).
    """

    v_from_layer: bool = True
    v_head_at_targets: bool = True
    cache_factorization: bool = True
    v_prefix_cache: bool = True

    @classmethod
    def plain(cls) -> "EditPaths":
        return cls(v_from_layer=False, v_head_at_targets=False, cache_factorization=False,
                   v_prefix_cache=False)


#: config keys that were benchmark switches before this module (accepted, ignored, one release)
MOVED_KEYS = ("method.v_from_layer", "method.v_head_at_targets", "method.cache_factorization",
              "eval.batched", "eval.head_at_targets", "eval.reuse_lower_layers",
              "eval.inference_mode")
