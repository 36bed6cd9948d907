"""The reference oracle (tests/oracle/plain_editing.py) checked against the papers' identities,
before anything is compared with it: ROME's update maps k* to v0 + δ, MEMIT's last layer reaches
z, the loop and the clamp behave as published, and the model is left untouched."""

import pytest
import torch

from tests.oracle import plain_editing as pe

PROMPT, SUBJECT, TARGET = "The Eiffel Tower is located in", "Eiffel Tower", "Rome"
PREFIXES = ["", "Hello there. ", "You know it. "]
HP = dict(steps=4, lr=0.5, loss_stop=0.0, clamp_norm_factor=4.0, kl_factor=1.0, weight_decay=1e-3)


def test_tokenise_subject_and_target(tiny):
    _, _, tok, _, _ = tiny
    text = "Eiffel Tower. The Eiffel Tower is located in"
    t = pe.tokenise(tok, text, SUBJECT, TARGET, " ", search_from=len("Eiffel Tower. "))
    assert t.text == text + " Rome"
    assert tok.decode([t.ids[i] for i in t.targets]) == " Rome"
    # byte tokenizer: the subject's last token is its last character, in the second occurrence
    assert tok.decode([t.ids[t.subj]]) == "r"
    assert tok.decode(list(t.ids[1:t.subj + 1])) == text[:text.rfind("Tower") + len("Tower")]
    assert pe.join("a ", "b", " ") == ("a b", 2) and pe.join("a", "b", "") == ("ab", 1)
    assert pe.join("a", "b", " ") == ("a b", 1)
    with pytest.raises(ValueError):
        pe.tokenise(tok, "The tower is tall", SUBJECT, TARGET)


def test_read_at_matches_the_weight_layout(tiny):
    """The captured key and output satisfy out = W k + b, whatever the storage layout."""
    _, model, tok, spec, _ = tiny
    t = pe.tokenise(tok, PROMPT, SUBJECT, TARGET)
    down = model.get_submodule(spec.down_proj.format(1))
    k, v = pe.read_at(model, down, t.ids, t.subj)
    bias = down.bias.double() if getattr(down, "bias", None) is not None else 0.0
    assert torch.allclose(pe.weight_out_in(down).double() @ k + bias, v, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("consistent", [False, True])
def test_rome_update_writes_v0_plus_delta(tiny, consistent):
    _, model, tok, spec, _ = tiny
    before = {k: v.clone() for k, v in model.state_dict().items()}
    d_in = pe.weight_out_in(model.get_submodule(spec.down_proj.format(1))).shape[1]
    g = torch.Generator().manual_seed(1)
    a = torch.randn(d_in, d_in, generator=g, dtype=torch.float64)
    cov = a @ a.T / d_in + 0.5 * torch.eye(d_in, dtype=torch.float64)
    r = pe.rome(model, tok, down_template=spec.down_proj, layer=1, prompt=PROMPT, subject=SUBJECT,
                target=TARGET, prefixes=PREFIXES, cov=cov, consistent_key=consistent, **HP)
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    assert len(r.keys) == len(PREFIXES) and len(r.subj_pos) == len(PREFIXES) + 1
    assert torch.allclose(r.k_bar, r.keys.mean(0))
    assert torch.allclose(cov @ r.u, r.k_bar)
    assert torch.equal(pe.rome_update(r, cov, consistent), r.dw)
    # ΔW k* = δ, rank one along u
    assert torch.allclose(r.dw @ r.k_star, r.value.delta, rtol=1e-9, atol=1e-12)
    sv = torch.linalg.svdvals(r.dw)
    assert sv[1] < 1e-10 * sv[0]
    assert len(r.value.losses) == HP["steps"]
    assert r.value.losses[0] == pytest.approx(r.value.nlls[0])  # δ = 0: no KL, no decay
    if not consistent:  # the bare prompt's real forward pass now yields v0 + δ at the subject
        down = model.get_submodule(spec.down_proj.format(1))
        with torch.no_grad():
            down.weight.add_(pe.stored_layout(down, r.dw).to(down.weight.dtype))
        try:
            _, v_new = pe.read_at(model, down, r.prompts[0].ids, r.prompts[0].subj)
        finally:
            with torch.no_grad():
                down.weight.copy_(before[spec.down_proj_weight_name(1)])
        assert torch.allclose(v_new, r.value.v0 + r.value.delta, rtol=1e-4, atol=1e-5)


def test_value_loop_stops_and_clamps_as_published(tiny):
    _, model, tok, spec, _ = tiny
    prompts, kl = pe.request_prompts(tok, PROMPT, SUBJECT, TARGET, PREFIXES[:2], "", " ", "{subject} is a")
    site = model.get_submodule(spec.down_proj.format(0))
    hp = dict(HP, steps=5)
    full = pe.optimise_delta(model, site, prompts, kl, **hp)
    assert len(full.losses) == 5  # 5 forwards, 4 updates
    assert float(full.delta.norm()) <= hp["clamp_norm_factor"] * float(full.v0.norm()) * (1 + 1e-6)
    once = pe.optimise_delta(model, site, prompts, kl, **dict(hp, loss_stop=1e9))
    assert len(once.losses) == 1 and float(once.delta.norm()) == 0.0
    # the stop is on the total loss: a threshold between a later NLL and every earlier total
    # loss does not stop there
    t = next(i for i in range(1, 4) if full.nlls[i] < min(full.losses[:i + 1]))
    thr = min(full.losses[:t + 1])
    part = pe.optimise_delta(model, site, prompts, kl, **dict(hp, loss_stop=thr))
    assert part.losses[:t + 1] == pytest.approx(full.losses[:t + 1], rel=1e-6)
    assert len(part.losses) > t + 1 or t == 4


def test_grouped_key_weights():
    keys = torch.tensor([[1.0], [3.0], [5.0], [13.0]], dtype=torch.float64)
    assert float(pe.grouped_key(keys, [0, 1, 1, 2])[0]) == pytest.approx((1 + 4 + 13) / 3)
    assert float(pe.grouped_key(keys[:3], [0, 1, 1])[0]) == pytest.approx(0.5 * 1 + 0.5 * 4)


def test_memit_top_layer_reaches_z(tiny):
    """With λ → 0, one request and the bare prompt only (so the key is the bare prompt's own) the
    last layer's update is exact: on an architecture whose MLP output adds to the residual stream
    unchanged the top block then outputs z. (Gemma-3's post-feed-forward norm breaks that
    premise; there only the bookkeeping is checked.)"""
    name, model, tok, spec, _ = tiny
    before = {k: v.clone() for k, v in model.state_dict().items()}
    r = pe.memit(model, tok, down_template=spec.down_proj, layer_template=spec.layer, layers=[0, 1],
                 facts=[pe.Fact(PROMPT, SUBJECT, TARGET)], groups=[0], lam=1e-9,
                 **dict(HP, clamp_norm_factor=0.75, weight_decay=0.5))
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    delta = r.values[0].delta
    assert float(delta.norm()) > 0
    assert torch.allclose(r.resid[0][:, 0], (r.z - r.h[0])[0] / 2)
    assert torch.allclose(r.z[0], r.values[0].v0 + delta)
    for layer in (0, 1):  # ΔW K = R when λ → 0 and n = 1
        assert torch.allclose(r.dw[layer] @ r.keys[layer], r.resid[layer], rtol=1e-6, atol=1e-9)
    if spec.mlp_out_norm is None:
        err = (r.h_final - r.z).norm() / delta.norm()
        assert err < 1e-3, float(err)


pytestmark = pytest.mark.usefixtures("one_thread")
