"""Production AlphaEdit in ``mode=sequential`` agrees with the plain oracle
(``tests/oracle/plain_editing.py``: ``alphaedit_sequence``, ``null_space_projector``,
``alphaedit_solve``).

On tiny Llama, GPT-2 (Conv1D, transposed storage) and Gemma-3 (with the Gemma variant,
``z_space=mlp_out`` and ``invert_out_norm``, on one layer as conf/model/gemma3_270m.yaml runs
it), three edits are made one after another as the pipeline does (``xling_edit.modes.run_group``:
``begin_group()``, then each edit computed with the earlier ones applied); the oracle makes the
same edits on its own model state, with its own projector (an SVD of the preserved-key second
moment C), its own K_p (the earlier edits' keys read again on the edited model, as AlphaEdit's
reference code does) and the published solve ΔW = R Kᵀ P (K_p K_pᵀ P + K Kᵀ P + α I)⁻¹ written
with an explicit inverse. Every edit's ΔW must agree at every layer (relative error < 1e-4, the
tolerance of tests/integration/test_oracle.py: float32 forwards, Adam on float32 δ).

Each test also shows that it can fail: the same comparison against a solve without K_p, with K_p
holding only the latest edit, with P = I, and production runs with its K_p bookkeeping switched
off (``after_edit`` a no-op) or its projector replaced by I, must each miss by far more than the
tolerance.

Set-up chosen so that each ingredient matters: C has a known null space (48 of the key
dimensions, eigenvalues 1e-6..1e-3, the rest 0.5..2, published threshold 2e-2 in the gap);
production's statistics provider adds a ridge (0.1 × mean diag C) when C is asked for, which
would lift every eigenvalue above the threshold, so a projector taken from the ridged C instead
of the raw one (as published) gives P = 0. α is 1e-3 rather than the published 10: the tiny
models' keys have |k|² ~ 1e-2, and against α = 10 dropping K_p changes ΔW by only 3e-5..3e-4
(measured), not distinguishable from the 1e-4 tolerance; at α = 1e-3 by 0.03..0.5.
"""

from __future__ import annotations

import time

import pytest
import torch

from tests.conftest import language
from tests.integration.test_oracle import DARRIEUX, DW_REL, EIFFEL, MEMIT_HP, TAJ, groups_of, hparams, rel
from tests.oracle import plain_editing as pe
from xling_edit.editing import alphaedit as _alphaedit
from xling_edit.editing.alphaedit import AlphaEditConfig, AlphaEditEditor
from xling_edit.editing.base import EditRequest, applied, build_editor
from xling_edit.editing.stats import CovarianceProvider

SEQUENCE = [(EIFFEL, "en"), (DARRIEUX, "en"), (TAJ, "hi")]
# The top edited block is not the model's last (see test_oracle's MEMIT cases). Gemma-3 edits one
# layer, as conf/model/gemma3_270m.yaml does: there the top layer's share is N(v0 + δ) − N(v0),
# always in the post-MLP norm's range, whereas a lower layer's share under AlphaEdit's projected
# (partial) updates leaves it (mean((y/gain)²) = 1.56 measured), where no inverse exists
# (pe.rms_norm_inverse; tests/integration/test_memit_gemma_oracle.py covers reachable lower
# layers with MEMIT).
LAYERS_OF = {"tiny_gemma3": [1]}
TEMPLATES = [[5, 2]]
N_NULL = 48  # dimensions of C's null space
THRESHOLD = 2e-2  # published
RIDGE = 0.1
ALPHA = 1e-3
#: a wrong ingredient must miss by this much more than the tolerance
MARGIN = 20


def second_moment(d: int, layer: int) -> torch.Tensor:
    """C = Q diag(λ) Qᵀ with Q a seeded random rotation: N_NULL eigenvalues 1e-6..1e-3 (the
    null space: below THRESHOLD), the others 0.5..2 (far above it)."""
    g = torch.Generator().manual_seed(2000 + layer)
    q, _ = torch.linalg.qr(torch.randn(d, d, generator=g, dtype=torch.float64))
    lam = torch.cat([torch.logspace(-6, -3, N_NULL, dtype=torch.float64),
                     torch.linspace(0.5, 2.0, d - N_NULL, dtype=torch.float64)])
    return q @ torch.diag(lam) @ q.T


class PreservedStats(CovarianceProvider):
    """Production's statistics provider (``raw`` C for the projector, C + ridge otherwise)
    serving :func:`second_moment` instead of statistics measured on a corpus."""

    def __init__(self, model, tok, spec, d: int):
        super().__init__(model, tok, spec, "alphaedit-oracle-test", "builtin", {"en": []},
                         cache_dir=None, ridge=RIDGE)
        self.d = d

    def _compute(self, layers):
        for layer in layers:
            self._mem[layer] = second_moment(self.d, layer)


def variant(name: str) -> dict:
    """Published MEMIT targets on Llama/GPT-2; the Gemma variant on Gemma-3 (how
    conf/model/gemma3_270m.yaml runs AlphaEdit)."""
    if name == "tiny_gemma3":
        return dict(z_space="mlp_out", invert_out_norm=True)
    return dict(z_space="residual", invert_out_norm=False)


def layers_of(tiny) -> list[int]:
    return LAYERS_OF.get(tiny[0], [0, 1])


def key_dim(model, spec) -> int:
    return pe.weight_out_in(model.get_submodule(spec.down_proj.format(0))).shape[1]


def production_sequence(tiny, hp, records=SEQUENCE):
    """Production's edits as ``mode=sequential`` runs them (modes.run_group): one group, each
    edit computed on the model with the earlier edits applied. Returns the outcomes and the
    editor; the model is left as it was."""
    name, model, tok, spec, cfg = tiny
    editor = build_editor("alphaedit", hparams=hp, spec=spec, seed=0,
                          covariance=PreservedStats(model, tok, spec, key_dim(model, spec)))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    editor.begin_group()
    deltas, outs = [], []
    for i, (rec, code) in enumerate(records):
        with applied(model, deltas):  # each edit sees the ones before it
            out = editor.edit(model, tok, EditRequest(f"s{i}", language(code), rec))
        deltas.extend(out.deltas)
        outs.append(out)
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    return outs, editor


_ORACLE: dict = {}


def oracle_sequence(tiny, hp, editor, records=SEQUENCE):
    """The oracle's edits for the same requests and context prefixes (cached per model)."""
    name, model, tok, spec, cfg = tiny
    if name in _ORACLE:
        return _ORACLE[name]
    facts = []
    for rec, code in records:
        lang = language(code)
        facts.append([pe.Fact(rec.prompt, rec.subject, rec.target_new,
                              prefixes=editor.prefixes(model, tok, lang),
                              kl_prompt=lang["kl_prompt"], word_sep=lang["word_sep"])])
    d = key_dim(model, spec)
    layers = layers_of(tiny)
    projectors = {layer: pe.null_space_projector(second_moment(d, layer), THRESHOLD)
                  for layer in layers}
    before = {k: v.clone() for k, v in model.state_dict().items()}
    steps = pe.alphaedit_sequence(
        model, tok, edits=facts, projector=projectors.__getitem__, alpha=ALPHA,
        down_template=spec.down_proj, layers=layers, groups=groups_of(TEMPLATES),
        layer_template=spec.layer, steps=hp.v_steps, lr=hp.v_lr, loss_stop=hp.v_loss_stop,
        clamp_norm_factor=hp.clamp_norm_factor, kl_factor=hp.kl_factor,
        weight_decay=hp.weight_decay, z_space=hp.z_space,
        out_norm_template=spec.mlp_out_norm, invert_out_norm=hp.invert_out_norm)
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    _ORACLE[name] = (steps, projectors)
    return _ORACLE[name]


def alpha_hp(tiny):
    name, model, tok, spec, cfg = tiny
    return hparams(AlphaEditConfig, cfg.hparams.memit,
                   **{**MEMIT_HP, **variant(name), "layers": layers_of(tiny), "context_templates": TEMPLATES,
                      "l2": ALPHA, "nullspace_threshold": THRESHOLD})


def dw_errors(tiny, outs, steps) -> list[dict[int, float]]:
    """Per edit, per layer: production's ΔW against the oracle's, relative."""
    name, model, tok, spec, cfg = tiny
    errs = []
    for out, step in zip(outs, steps, strict=True):
        by_param = {d.param: d.delta for d in out.deltas}
        assert list(by_param) == [spec.down_proj_weight_name(l) for l in layers_of(tiny)]
        errs.append({layer: rel(by_param[spec.down_proj_weight_name(layer)],
                                pe.stored_layout(spec.module(model, "down_proj", layer),
                                                 step.result.dw[layer]))
                     for layer in layers_of(tiny)})
    return errs


def worst(errs) -> float:
    return max(e for per_edit in errs for e in per_edit.values())


def test_alphaedit_sequence_matches_oracle(tiny, record_property):
    name, model, tok, spec, cfg = tiny
    t0 = time.perf_counter()
    hp = alpha_hp(tiny)
    outs, editor = production_sequence(tiny, hp)
    steps, projectors = oracle_sequence(tiny, hp, editor)
    d = key_dim(model, spec)
    layers = layers_of(tiny)

    # the oracle's own bookkeeping: K_p grows by one key per edit, P is C's null space
    for i, step in enumerate(steps):
        for layer in layers:
            kp = step.prior_keys[layer]
            assert (kp is None) if i == 0 else kp.shape == (d, i)
    for layer in layers:
        p = projectors[layer]
        assert abs(float(p.trace()) - N_NULL) < 1e-9
        assert float((p @ second_moment(d, layer)).norm()) < 1e-3 * float(p.norm())

    # production: the same null space, the edits counted into the constraint
    assert editor.null_space_dims == {layer: N_NULL for layer in layers}
    assert [o.info["prior_edits_in_constraint"] for o in outs] == [0, 1, 2]

    t = outs[0].tensors
    assert rel(t["z"], steps[0].result.z) < DW_REL
    errs = dw_errors(tiny, outs, steps)
    for i, (out, step) in enumerate(zip(outs, steps)):
        for layer in layers:
            k_err = rel(out.tensors["keys"][layer], step.result.keys[layer])
            r_err = rel(out.tensors["resid"][layer], step.result.resid[layer])
            assert k_err < DW_REL and r_err < DW_REL, (i, layer, k_err, r_err)
    assert worst(errs) < DW_REL, f"ΔW rel errors per edit/layer: {errs}"

    # ---- the comparison fails when an ingredient is wrong (counterfactual solves on the
    # oracle's own R, K, K_p of the lowest layer, whose inputs no other update of the edit changes)
    layer = layers[0]
    p = projectors[layer]
    eye = torch.eye(d, dtype=torch.float64)
    for i, (out, step) in enumerate(zip(outs, steps)):
        res, kp = step.result, step.prior_keys[layer]
        prod = {x.param: x.delta for x in out.deltas}[spec.down_proj_weight_name(layer)]
        down = spec.module(model, "down_proj", layer)

        def miss(dw):
            return rel(prod, pe.stored_layout(down, dw))

        right = pe.alphaedit_solve(res.resid[layer], res.keys[layer], p, kp, ALPHA)
        assert miss(right) < DW_REL
        no_projection = pe.alphaedit_solve(res.resid[layer], res.keys[layer], eye, kp, ALPHA)
        assert miss(no_projection) > MARGIN * DW_REL, f"edit {i}: P = I indistinguishable"
        if i >= 1:
            no_prior = pe.alphaedit_solve(res.resid[layer], res.keys[layer], p, None, ALPHA)
            assert miss(no_prior) > MARGIN * DW_REL, f"edit {i}: without K_p indistinguishable"
        if i >= 2:
            latest_only = pe.alphaedit_solve(res.resid[layer], res.keys[layer], p, kp[:, -1:], ALPHA)
            assert miss(latest_only) > MARGIN * DW_REL, f"edit {i}: K_p = latest edit only"
    record_property("summary", f"alphaedit oracle {name}: worst ΔW rel err {worst(errs):.1e} "
                               f"({time.perf_counter() - t0:.1f}s)")


def test_alphaedit_oracle_catches_broken_production(tiny, monkeypatch):
    """Production with K_p never recorded, or with P = I, no longer agrees with the oracle."""
    hp = alpha_hp(tiny)
    outs, editor = production_sequence(tiny, hp)
    steps, _ = oracle_sequence(tiny, hp, editor)
    assert worst(dw_errors(tiny, outs, steps)) < DW_REL

    with monkeypatch.context() as m:
        m.setattr(AlphaEditEditor, "after_edit", lambda self, keys: None)
        errs = dw_errors(tiny, production_sequence(tiny, hp)[0], steps)
    assert max(errs[0].values()) < DW_REL  # the first edit has no earlier keys
    assert min(max(e.values()) for e in errs[1:]) > MARGIN * DW_REL, errs

    with monkeypatch.context() as m:
        m.setattr(_alphaedit, "null_space_projector",
                  lambda cov, thr: torch.eye(cov.shape[0], dtype=torch.float64))
        errs = dw_errors(tiny, production_sequence(tiny, hp)[0], steps)
    assert min(max(e.values()) for e in errs) > MARGIN * DW_REL, errs


def test_begin_group_forgets_earlier_edits(tiny):
    """A second group's first edit is solved without the first group's keys: it equals the
    oracle's first edit of a sequence."""
    name, model, tok, spec, cfg = tiny
    hp = alpha_hp(tiny)
    outs, editor = production_sequence(tiny, hp)
    steps, _ = oracle_sequence(tiny, hp, editor)
    editor.begin_group()
    rec, code = SEQUENCE[0]
    again = editor.edit(model, tok, EditRequest("again", language(code), rec))
    assert again.info["prior_edits_in_constraint"] == 0
    assert worst(dw_errors(tiny, [again], steps[:1])) < DW_REL


pytestmark = pytest.mark.usefixtures("one_thread")
