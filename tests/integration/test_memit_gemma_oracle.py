"""MEMIT's Gemma variant (``z_space=mlp_out``, ``invert_out_norm=true``; MemitConfig in
xling_edit/config.py, xling_edit/editing/memit.py's module docstring) agrees with the plain
oracle on tiny Gemma-3.

The oracle (``tests/oracle/plain_editing.py``: ``memit`` with ``z_space="mlp_out"``,
``out_norm_template``, ``invert_out_norm``) optimises δ at the top projection's output, reads z
from a forward pass with δ added there (what the block's ``post_feedforward_layernorm`` makes of
it), and maps each layer's residual-stream share r back through that layer's norm in closed
form: N(x) = gain ⊙ x / sqrt(mean(x²) + eps) has the single preimage x = c·y/gain,
c = sqrt(eps / (1 − q)), q = mean((y/gain)²) < 1, for y = N(o) + r (``pe.rms_norm_inverse``).
Production inverts by Gauss-Newton (``invert_output_map``).

Tolerance: z and keys within test_oracle.py's 1e-4; the mapped shares and ΔW within 2e-4
(DW_REL_GEMMA), because the inversion adds its own error. Production's Gauss-Newton stops at an
output error of 1e-6 |r| (and evaluates N in float32, ~1e-7 relative); the closed form turns a
relative output error ε into a relative error of about ε · q / (1 − q) in x = o + d, so of
ε · q / (1 − q) · |x| / |d| in the share d written to the projection. The test asserts
q ≤ 0.97 and |x| ≤ 5 |d| for every inverted share: at most 1e-6 · 32 · 5 ≈ 1.6e-4 in the worst
case (measured: 1.1e-5 on the mapped shares, 1.2e-5 on ΔW, q ≤ 0.951). Each test also shows that
it can fail: the oracle without the inversion, or production with its inversion or its norm map
switched off, misses by far more (relative error ~1).

Targets that leave the norm's range (q ≥ 1) have no preimage: production then promises "the
closest reachable change"; :func:`test_unreachable_share_gets_the_closest_reachable_change`
measures how close it gets against the oracle's projection onto the range's closure.
"""

from __future__ import annotations

import pytest
import torch

from tests.conftest import language, model_cfg
from tests.integration.test_oracle import (
    DARRIEUX, DW_REL, EIFFEL, MEMIT_HP, groups_of, hparams, rel, spd,
)
from tests.oracle import plain_editing as pe
from xling_edit.editing.memit import MemitConfig
from xling_edit.editing import memit as _memit
from xling_edit.editing.base import EditRequest, build_editor
from xling_edit.models import ModelSpec, load_model

DW_REL_GEMMA = 2e-4  # module docstring
MAX_Q = 0.97  # well-conditioned inversions only (module docstring)
MARGIN = 20  # a wrong ingredient must miss by this much more than the tolerance
TEMPLATES = [[5, 2]]
VARIANT = dict(z_space="mlp_out", invert_out_norm=True)

_MODELS: dict = {}


def gemma(gain_spread: float):
    """A fresh tiny Gemma-3 (seed 0). Its post-MLP norms start at gain 1 (w = 0); with
    ``gain_spread`` > 0 their gains become exp(spread · N(0, 1)) per channel (seeded), so the
    inversion has to undo a non-uniform gain as on real Gemma."""
    if gain_spread not in _MODELS:
        cfg = model_cfg("tiny_gemma3")
        model, tok = load_model(cfg, seed=0)
        spec = ModelSpec.from_config(cfg.templates)
        g = torch.Generator().manual_seed(5)
        with torch.no_grad():
            for layer in range(model.config.num_hidden_layers):
                w = spec.module(model, "mlp_out_norm", layer).weight
                w.copy_(torch.exp(gain_spread * torch.randn(w.shape, generator=g)) - 1.0)
        _MODELS[gain_spread] = (f"tiny_gemma3_gain{gain_spread}", model, tok, spec, cfg)
    return _MODELS[gain_spread]


CASES = {
    # name: (gain spread, layers, records)
    "gain1_2layers": (0.0, [0, 1], [(EIFFEL, "en"), (DARRIEUX, "en")]),
    "gains_2layers": (0.1, [0, 1], [(EIFFEL, "en"), (DARRIEUX, "en")]),
    "gains_top_only": (0.1, [1], [(EIFFEL, "en")]),
}


def run_case(tiny, layers, records):
    """Production's MEMIT batch with the Gemma variant, and the hyperparameters."""
    name, model, tok, spec, cfg = tiny
    d = pe.weight_out_in(model.get_submodule(spec.down_proj.format(0))).shape[1]
    hp = hparams(MemitConfig, cfg.hparams.memit, **{**MEMIT_HP, **VARIANT}, layers=layers,
                 context_templates=TEMPLATES)
    editor = build_editor("memit", hparams=hp, spec=spec, seed=0,
                          covariance=lambda layer: spd(d, layer))
    requests = [EditRequest(f"r{i}", language(code), rec) for i, (rec, code) in enumerate(records)]
    return editor, requests, editor.edit_batch(model, tok, requests), hp


_REF: dict = {}


def oracle(tiny, editor, requests, layers, hp):
    name, model, tok, spec, cfg = tiny
    key = (name, tuple(layers), len(requests))
    if key not in _REF:
        d = pe.weight_out_in(model.get_submodule(spec.down_proj.format(0))).shape[1]
        facts = [pe.Fact(r.record.prompt, r.record.subject, r.record.target_new,
                         prefixes=editor.prefixes(model, tok, r.lang), kl_prompt=r.lang["kl_prompt"],
                         word_sep=r.lang["word_sep"]) for r in requests]
        before = {k: v.clone() for k, v in model.state_dict().items()}
        _REF[key] = pe.memit(
            model, tok, down_template=spec.down_proj, layer_template=spec.layer, layers=layers,
            facts=facts, groups=groups_of(TEMPLATES), cov=lambda layer: spd(d, layer),
            lam=hp.mom2_update_weight, steps=hp.v_steps, lr=hp.v_lr, loss_stop=hp.v_loss_stop,
            clamp_norm_factor=hp.clamp_norm_factor, kl_factor=hp.kl_factor,
            weight_decay=hp.weight_decay, z_space="mlp_out", out_norm_template=spec.mlp_out_norm,
            invert_out_norm=True)
        assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    return _REF[key]


def dw_errors(tiny, out, ref, layers, resid=None) -> dict[int, float]:
    """Production's ΔW against the oracle's per layer (``resid``: the oracle's ΔW re-solved from
    other R, a counterfactual)."""
    name, model, tok, spec, cfg = tiny
    d = pe.weight_out_in(model.get_submodule(spec.down_proj.format(0))).shape[1]
    by_param = {x.param: x.delta for x in out.deltas}
    assert list(by_param) == [spec.down_proj_weight_name(l) for l in layers]
    errs = {}
    for layer in layers:
        dw = ref.dw[layer] if resid is None else \
            pe.memit_solve(resid[layer], ref.keys[layer], spd(d, layer), MEMIT_HP["mom2_update_weight"])
        errs[layer] = rel(by_param[spec.down_proj_weight_name(layer)],
                          pe.stored_layout(spec.module(model, "down_proj", layer), dw))
    return errs


def conditioning(tiny, ref, layers) -> list[tuple[int, int, float, float]]:
    """(layer, request, q, |x| / |x − o|) of every share the oracle inverted (module
    docstring); checks that each preimage is one: N(x) = N(o) + share."""
    name, model, tok, spec, cfg = tiny
    rows = []
    for layer in layers:
        gain, eps = pe.rms_norm_params(spec.module(model, "mlp_out_norm", layer))
        for i in range(ref.z.shape[0]):
            o, d, share = ref.proj_out[layer][:, i], ref.resid[layer][:, i], ref.share[layer][:, i]
            y = pe.rms_norm(o, gain, eps) + share
            assert rel(pe.rms_norm(o + d, gain, eps), y) < 1e-12
            q = float(((y / gain) ** 2).mean())
            rows.append((layer, i, q, float((o + d).norm() / d.norm())))
    return rows


@pytest.mark.parametrize("case", list(CASES))
def test_memit_gemma_variant_matches_oracle(case, record_property):
    spread, layers, records = CASES[case]
    tiny = gemma(spread)
    name, model, tok, spec, cfg = tiny
    editor, requests, out, hp = run_case(tiny, layers, records)
    ref = oracle(tiny, editor, requests, layers, hp)
    t = out.tensors
    assert out.info["z_space"] == "mlp_out" and out.info["invert_out_norm"] is True

    cond = conditioning(tiny, ref, layers)
    assert all(q <= MAX_Q and ratio <= 5 for _l, _i, q, ratio in cond), cond
    assert rel(t["z"], ref.z) < DW_REL, f"z {rel(t['z'], ref.z):.2e}"
    for layer in layers:
        assert rel(t["keys"][layer], ref.keys[layer]) < DW_REL
        assert rel(t["resid"][layer], ref.resid[layer]) < DW_REL_GEMMA, \
            f"layer {layer} mapped share: {rel(t['resid'][layer], ref.resid[layer]):.2e}"
    errs = dw_errors(tiny, out, ref, layers)
    assert max(errs.values()) < DW_REL_GEMMA, f"ΔW rel errors {errs}"
    if layers == [1]:  # one layer: the top share is N(v0 + δ) − N(v0), whose preimage is δ
        assert rel(ref.resid[1][:, 0], ref.values[0].delta) < 1e-5  # z read in float32

    # ---- it can fail: the share written without the inversion misses
    skipped = dw_errors(tiny, out, ref, layers, resid=ref.share)
    assert min(skipped.values()) > MARGIN * DW_REL_GEMMA, skipped
    record_property("summary", f"memit gemma variant {case}: ΔW rel err "
                               f"{max(errs.values()):.1e}, mapped shares "
                               f"{max(rel(t['resid'][l], ref.resid[l]) for l in layers):.1e}, without inversion "
                               f"{min(skipped.values()):.1e}, q <= {max(c[2] for c in cond):.3f}")


@pytest.mark.parametrize("broken", ["no_inversion", "no_norm_map"])
def test_memit_gemma_oracle_catches_broken_production(broken, monkeypatch):
    """Production with its inversion skipped (each share written as is) or without the norm map
    (z in residual units taken as δ itself, shares not inverted) misses the oracle."""
    spread, layers, records = CASES["gains_2layers"]
    tiny = gemma(spread)
    editor, requests, out, hp = run_case(tiny, layers, records)
    ref = oracle(tiny, editor, requests, layers, hp)
    assert max(dw_errors(tiny, out, ref, layers).values()) < DW_REL_GEMMA
    if broken == "no_inversion":
        monkeypatch.setattr(_memit, "invert_output_map", lambda fn, m, r, iters=10: r)
    else:
        monkeypatch.setattr(_memit, "_output_map", lambda model, spec, layer: None)
    _, _, bad, _ = run_case(tiny, layers, records)
    errs = dw_errors(tiny, bad, ref, layers)
    assert min(errs.values()) > MARGIN * DW_REL_GEMMA, errs


def test_rms_norm_oracle_is_the_module():
    """The oracle's closed forms use the module's own numbers: its N equals the module, its
    inverse inverts the module, and a point outside the range raises."""
    name, model, tok, spec, cfg = gemma(0.1)
    norm = spec.module(model, "mlp_out_norm", 0)
    gain, eps = pe.rms_norm_params(norm)
    assert eps == norm.eps and not torch.allclose(gain, torch.ones_like(gain))
    g = torch.Generator().manual_seed(3)
    y = pe.rms_norm(0.003 * torch.randn(gain.shape, generator=g, dtype=torch.float64), gain, eps)
    x = pe.rms_norm_inverse(y, gain, eps)
    with torch.no_grad():
        assert rel(norm(x.float()[None])[0], y) < 1e-6
    with pytest.raises(ValueError, match="unreachable"):
        pe.rms_norm_inverse(3 * y / float(((y / gain) ** 2).mean()) ** 0.5, gain, eps)
    # the projection onto the range's closure: on the boundary, and nearer than other boundary points
    far = 2 * y / float(((y / gain) ** 2).mean()) ** 0.5 + torch.randn(y.shape, generator=g, dtype=torch.float64)
    v, dist = pe.closest_reachable(far, gain)
    assert abs(float(((v / gain) ** 2).mean()) - 1) < 1e-9
    for _ in range(20):
        u = v + 0.05 * torch.randn(v.shape, generator=g, dtype=torch.float64)
        u = u / float(((u / gain) ** 2).mean()) ** 0.5  # another boundary point
        assert float((far - u).norm()) >= dist


def test_unreachable_share_gets_the_closest_reachable_change(monkeypatch):
    """With wider gains (spread 0.5) the lower layer's share leaves the norm's range. The
    oracle's closest reachable output (projection onto the closure of the range) bounds what any
    inversion can reach; production must come within 5 % of it."""
    tiny = gemma(0.5)
    name, model, tok, spec, cfg = tiny
    seen = []
    orig = _memit.invert_output_map

    def spy(fn, m, r, iters=10):
        d = orig(fn, m, r, iters)
        if fn is not None:
            seen.append((m.double(), r.double(), d.double()))
        return d

    monkeypatch.setattr(_memit, "invert_output_map", spy)
    run_case(tiny, [0, 1], [(EIFFEL, "en"), (DARRIEUX, "en")])
    assert len(seen) == 4  # per layer ascending, per request
    gains = {}
    ratios = []
    for idx, (m, r, d) in enumerate(seen):
        layer = idx // 2
        if layer not in gains:
            gains[layer] = pe.rms_norm_params(spec.module(model, "mlp_out_norm", layer))
        gain, eps = gains[layer]
        y = pe.rms_norm(m, gain, eps) + r
        _, dist = pe.closest_reachable(y, gain)
        if dist > 1e-3 * float(r.norm()):  # unreachable
            got = float((pe.rms_norm(m + d, gain, eps) - y).norm())
            ratios.append(got / dist)
    if not ratios:  # not an AssertionError: a real failure, not the expected one
        pytest.fail("no unreachable share: the case does not test what it claims")
    assert max(ratios) < 1.05, f"error / closest reachable distance: {ratios}"


pytestmark = pytest.mark.usefixtures("one_thread")
