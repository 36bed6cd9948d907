"""The reference oracle (tests/oracle/plain_editing.py) checked before anything is compared with
it: against hand-computed numbers on tiny examples, and against a second, independent
computation (keys, NLLs and hidden states read from one batched forward pass or from the
model's ``output_hidden_states`` instead of the oracle's per-prompt hooks; the first Adam step
worked out by hand). ROME's update maps k* to v0 + δ in a real forward pass, MEMIT's last layer
reaches z, the loop and the clamp behave as published, and the model is left untouched.

No assertion here restates how the oracle computes a value (a mean against the mean it was
computed as, a loss against an inequality that holds by construction): each can fail when the
oracle is wrong."""

from types import SimpleNamespace

import pytest
import torch

from tests.oracle import plain_editing as pe

PROMPT, SUBJECT, TARGET = "The Eiffel Tower is located in", "Eiffel Tower", "Rome"
PREFIXES = ["", "Hello there. ", "You know it. "]
HP = dict(steps=4, lr=0.5, loss_stop=0.0, clamp_norm_factor=4.0, kl_factor=1.0, weight_decay=1e-3)


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.double().cpu(), b.double().cpu()
    return float((a - b).norm() / b.norm().clamp_min(1e-300))


def batched(model, prompts, module=None, add=None):
    """One forward pass of all ``prompts`` right-padded into a batch (not the oracle's one pass
    per prompt): (logits [B, T, V] float64, ``module``'s inputs at each prompt's subject [B, d]).
    ``add = (site, delta)`` adds delta to ``site``'s output at every row's subject token."""
    width = max(len(p.ids) for p in prompts)
    ids = torch.tensor([list(p.ids) + [p.ids[-1]] * (width - len(p.ids)) for p in prompts])
    rows, subj = torch.arange(len(prompts)), torch.tensor([p.subj for p in prompts])
    got, handles = {}, []
    if module is not None:
        handles.append(module.register_forward_hook(
            lambda m, i, o: got.update(k=i[0][rows, subj].double())))
    if add is not None:
        site, delta = add

        def hook(m, i, o):
            h = (o[0] if isinstance(o, tuple) else o).clone()
            h[rows, subj] = h[rows, subj] + delta.to(h.dtype)
            return (h,) + tuple(o[1:]) if isinstance(o, tuple) else h

        handles.append(site.register_forward_hook(hook))
    try:
        logits = model(input_ids=ids, use_cache=False).logits.double()
    finally:
        for h in handles:
            h.remove()
    return logits, got.get("k")


def nll_and_kl(model, prompts, kl, site=None, delta=None):
    """The published value loss's parts, computed from :func:`batched`: mean over prompts of the
    mean target-token NLL, and KL(p_now ‖ p_before) at the KL prompt's subject token."""
    add = None if delta is None else (site, delta)
    logits, _ = batched(model, list(prompts) + [kl], add=add)
    nlls = []
    for b, p in enumerate(prompts):
        logp = torch.log_softmax(logits[b], dim=-1)
        nlls.append(torch.stack([-logp[t - 1, p.ids[t]] for t in p.targets]).mean())
    before, _ = batched(model, [kl])
    lp_now = torch.log_softmax(logits[len(prompts), kl.subj], dim=-1)
    lp_before = torch.log_softmax(before[0, kl.subj], dim=-1)
    return float(torch.stack(nlls).mean()), float((lp_now.exp() * (lp_now - lp_before)).sum())


def hidden_after(model, block: int, ids, pos: int) -> torch.Tensor:
    """The residual stream after ``block`` at ``pos``, from ``output_hidden_states`` (no hooks)."""
    with torch.no_grad():
        out = model(input_ids=torch.tensor([list(ids)]), output_hidden_states=True, use_cache=False)
    return out.hidden_states[block + 1][0, pos].double()


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
    # the keys again, from one padded batch: each prompt's, and their uniform mean
    down = model.get_submodule(spec.down_proj.format(1))
    with torch.no_grad():
        _, keys = batched(model, r.prompts, down)
    assert rel(r.keys, keys) < 1e-5 and rel(r.k_bar, keys.mean(0)) < 1e-5
    assert torch.allclose(cov @ r.u, r.k_bar)  # the covariance given is the one used
    assert torch.equal(pe.rome_update(r, cov, consistent), r.dw)
    assert torch.allclose(r.dw @ r.k_star, r.value.delta, rtol=1e-9, atol=1e-12)  # ΔW k* = δ
    assert len(r.value.losses) == HP["steps"]
    # δ = 0 at the first forward: the total loss is the NLL, and both are the batched NLL
    with torch.no_grad():
        nll0, kl0 = nll_and_kl(model, r.prompts, r.kl)
    assert abs(kl0) < 1e-9
    assert r.value.losses[0] == pytest.approx(nll0, rel=1e-5)
    assert r.value.nlls[0] == pytest.approx(nll0, rel=1e-5)
    if not consistent:  # the bare prompt's real forward pass now yields v0 + δ at the subject
        with torch.no_grad():
            down.weight.add_(pe.stored_layout(down, r.dw).to(down.weight.dtype))
        try:
            _, v_new = pe.read_at(model, down, r.prompts[0].ids, r.prompts[0].subj)
        finally:
            with torch.no_grad():
                down.weight.copy_(before[spec.down_proj_weight_name(1)])
        assert torch.allclose(v_new, r.value.v0 + r.value.delta, rtol=1e-4, atol=1e-5)


def test_rank_one_update_by_hand():
    """ROME's ΔW = δ uᵀ / (uᵀ k*) and u = C⁻¹ k̄ on numbers worked out by hand."""
    dw = pe.rank_one(torch.tensor([1.0, 2.0]), torch.tensor([1.0, 0.0, 1.0]), torch.tensor([2.0, 1.0, 0.0]))
    assert torch.equal(dw, torch.tensor([[0.5, 0.0, 0.5], [1.0, 0.0, 1.0]], dtype=torch.float64))
    # keys [1, 0] (bare prompt) and [3, 2]: k̄ = [2, 1]; C = diag(2, 4): u = [1, 0.25]
    r = SimpleNamespace(keys=torch.tensor([[1.0, 0.0], [3.0, 2.0]], dtype=torch.float64),
                        k_bar=torch.tensor([2.0, 1.0], dtype=torch.float64),
                        value=SimpleNamespace(delta=torch.tensor([4.0], dtype=torch.float64)))
    cov = torch.diag(torch.tensor([2.0, 4.0], dtype=torch.float64))
    # original k* = [1, 0]: uᵀk* = 1; consistent k* = k̄: uᵀk̄ = 2.25
    assert torch.allclose(pe.rome_update(r, cov, False), torch.tensor([[4.0, 1.0]], dtype=torch.float64))
    assert torch.allclose(pe.rome_update(r, cov, True), torch.tensor([[4.0, 1.0]], dtype=torch.float64) / 2.25)
    assert torch.allclose(pe.rome_update(r, None, False), torch.tensor([[4.0, 2.0]], dtype=torch.float64))  # u = k̄


@pytest.mark.parametrize("clamp", [1e6, 0.5], ids=["free", "clamped"])
def test_first_adam_step_by_hand(tiny, clamp):
    """Two forwards, one update, worked out independently: at δ = 0 the KL term and its gradient
    vanish and the decay ‖δ‖ has a zero subgradient, so the gradient g is the NLL's alone (taken
    here through the batched forward); Adam's first step is −lr · g / (|g| + 1e-8) elementwise
    (bias-corrected moments g and g²), then projected into the ball of radius clamp · ‖v0‖. The
    second recorded loss is the batched loss at that δ. (``clamped``: the projection binds.)"""
    _, model, tok, spec, _ = tiny
    prompts, kl = pe.request_prompts(tok, PROMPT, SUBJECT, TARGET, PREFIXES[:2], "", " ", "{subject} is a")
    site = model.get_submodule(spec.down_proj.format(0))
    hp = dict(HP, steps=2, clamp_norm_factor=clamp)
    v = pe.optimise_delta(model, site, prompts, kl, **hp)
    assert len(v.losses) == 2
    zero = torch.zeros_like(v.v0, dtype=next(model.parameters()).dtype, requires_grad=True)
    logits, _ = batched(model, prompts, add=(site, zero))
    nll = torch.stack([torch.stack([-torch.log_softmax(logits[b], -1)[t - 1, p.ids[t]] for t in p.targets]).mean()
                       for b, p in enumerate(prompts)]).mean()
    (g,) = torch.autograd.grad(nll, zero)
    g = g.double()
    step = -hp["lr"] * g / (g.abs() + 1e-8)
    radius = clamp * float(v.v0.norm())
    expect = step * min(1.0, radius / float(step.norm()))
    assert (clamp < 1e6) == (float(step.norm()) > radius)  # each case tests what it says
    assert rel(v.delta, expect) < 1e-5, f"δ after one step: {rel(v.delta, expect):.1e}"
    with torch.no_grad():
        nll1, kl1 = nll_and_kl(model, prompts, kl, site, expect)
    loss1 = nll1 + hp["kl_factor"] * kl1 + hp["weight_decay"] * float(expect.norm()) / float(v.v0.norm()) ** 2
    assert kl1 > 0 and v.nlls[1] == pytest.approx(nll1, rel=1e-5) and v.kls[1] == pytest.approx(kl1, rel=1e-3)
    assert v.losses[1] == pytest.approx(loss1, rel=1e-5)


def test_value_loop_stops_and_clamps_as_published(tiny):
    _, model, tok, spec, _ = tiny
    prompts, kl = pe.request_prompts(tok, PROMPT, SUBJECT, TARGET, PREFIXES[:2], "", " ", "{subject} is a")
    site = model.get_submodule(spec.down_proj.format(0))
    hp = dict(HP, steps=5)
    full = pe.optimise_delta(model, site, prompts, kl, **hp)
    assert len(full.losses) == 5  # 5 forwards, 4 updates
    # a clamp that binds (Adam's steps of ~lr per component are far larger): ‖δ‖ is the radius
    tight = pe.optimise_delta(model, site, prompts, kl, **dict(hp, clamp_norm_factor=0.5))
    assert float(tight.delta.norm()) == pytest.approx(0.5 * float(tight.v0.norm()), rel=1e-5)
    assert float(full.delta.norm()) > 0.5 * float(full.v0.norm())
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
    ids, subj = r.prompts[0][0].ids, r.prompts[0][0].subj
    # h and R read again from output_hidden_states, with the lower layers' updates applied by hand
    applied = []
    try:
        for j, layer in enumerate((0, 1)):
            h = hidden_after(model, 1, ids, subj)
            if j == 0:  # z = h + δ for the residual stream of the unedited model
                assert rel(r.z[0], h + delta) < 1e-5
            assert rel(r.h[layer][0], h) < 1e-5
            assert rel(r.resid[layer][:, 0], (r.z[0] - h) / (2 - j)) < 1e-5
            down = model.get_submodule(spec.down_proj.format(layer))
            applied.append((down.weight, down.weight.detach().clone()))
            with torch.no_grad():
                down.weight.add_(pe.stored_layout(down, r.dw[layer]).to(down.weight.dtype))
        h_final = hidden_after(model, 1, ids, subj)
    finally:
        with torch.no_grad():
            for param, original in reversed(applied):
                param.copy_(original)
    assert rel(r.h_final[0], h_final) < 1e-5
    for layer in (0, 1):  # ΔW K = R when λ → 0 and n = 1
        assert torch.allclose(r.dw[layer] @ r.keys[layer], r.resid[layer], rtol=1e-6, atol=1e-9)
    if spec.mlp_out_norm is None:
        err = (h_final - r.z[0]).norm() / delta.norm()
        assert err < 1e-3, float(err)


pytestmark = pytest.mark.usefixtures("one_thread")
