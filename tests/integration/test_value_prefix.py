"""Prefix reuse in the value optimisation (``EditPaths.v_prefix_cache``): recording every block's
keys and values of the positions before each prompt's subject once, and running each step on
the later positions only, gives the optimisation of the whole prompts (tiny models of every
layout the project supports), and a wrongly built prefix is caught."""

import logging
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from tests.conftest import ROOT, SEARCHPATH, language
from xling_edit.editing.memit import MemitConfig
from xling_edit.editing.rome import RomeConfig
from xling_edit.configstore import register_configs
from xling_edit.data.schema import LangRecord
from xling_edit.editing import value as V
from xling_edit.editing.base import EditRequest
from xling_edit.editing.memit import MemitEditor
from xling_edit.editing.rome import RomeEditor
from xling_edit.editing.value import optimise_values, prefix_cache_unsupported, prepare
from xling_edit.evaluation.forward import model_device
from xling_edit.fastpaths import EditPaths
from xling_edit.models import ModelSpec, load_model

register_configs()

RECORDS = [LangRecord(subject="Eiffel Tower", prompt="The Eiffel Tower is located in",
                      target_new="Rome", target_true="Paris"),
           LangRecord(subject="Angela Merkel", prompt="Angela Merkel was born in",
                      target_new="Paris", target_true="Hamburg")]
# (steps, lr, ...) as ROME/MEMIT use them, loss_stop 0: every step runs
OPTS = dict(steps=6, lr=0.1, loss_stop=0.0, clamp_norm_factor=10.0, kl_factor=0.0625,
            weight_decay=1e-3)
# tiny layouts: tests/conf/model name, random_init overrides. Byte-level tokens make the
# prompts 30-60 positions long, so the short sliding windows below cut through the prefix.
LAYOUTS = {
    "llama": ("tiny_llama", {}),
    "gpt2": ("tiny_gpt2", {}),  # learned absolute positions, Conv1D projections
    "gemma3": ("tiny_gemma3", {}),  # sliding window 16, every layer sliding
    # sliding and global layers, each with its own rotary (local base 10k, global 1M)
    "gemma3_mixed": ("tiny_gemma3", {"sliding_window": 8, "layer_types": [
        "sliding_attention", "full_attention", "sliding_attention"]}),
    "gpt_neox": ("tiny_gpt_neox", {}),  # partial rotary, parallel attention + MLP
    "mistral_window8": ("tiny_mistral", {"sliding_window": 8}),
    "llama3": ("tiny_llama3", {}),
    "qwen2": ("tiny_qwen2", {}),
    "qwen3": ("tiny_qwen3", {}),
    "phi2": ("tiny_phi2", {}),
    "phi3": ("tiny_phi3", {}),
}
_MODELS: dict = {}


def tiny_model(layout: str, attn: str = "sdpa"):
    """(model, tokenizer, spec, model config) of a tiny layout, loaded once per session."""
    key = (layout, attn)
    if key not in _MODELS:
        name, init = LAYOUTS[layout]
        with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
            cfg = compose(config_name="config", overrides=[SEARCHPATH, f"model={name}"]).model
        plain = OmegaConf.to_container(cfg, resolve=True)  # transformers wants real lists
        plain["random_init"].update(init)
        model, tok = load_model(plain, seed=0)
        if attn != model.config._attn_implementation:
            model.set_attn_implementation(attn)
        _MODELS[key] = model, tok, ModelSpec.from_config(cfg.templates), cfg
    return _MODELS[key]


def preps_for(model, tok, spec, cfg, n_requests=1, templates=((5, 2), (10, 2))):
    hp = OmegaConf.merge(OmegaConf.structured(RomeConfig), cfg.hparams.rome,
                         {"context_templates": [list(t) for t in templates]})
    ed = RomeEditor(hp, spec)
    out = []
    for i in range(n_requests):
        req = EditRequest(f"c{i}", language("en"), RECORDS[i])
        out.append(prepare(tok, req, ed.prefixes(model, tok, req.lang), 0.6, model_device(model)))
    return out


def cos(a, b) -> float:
    return float(F.cosine_similarity(a.double().flatten(), b.double().flatten(), dim=0))


def assert_same(on, off, traj_atol=1e-4):
    """Prefix reuse on vs off: same steps, NLL and loss trajectories to float rounding, deltas
    at cosine >= 0.9999 and close."""
    assert len(on) == len(off)
    for a, b in zip(on, off):
        assert a.steps == b.steps
        assert a.nll_before == pytest.approx(b.nll_before, abs=1e-5)
        assert a.trajectory == pytest.approx(b.trajectory, abs=traj_atol)
        assert a.loss_trajectory == pytest.approx(b.loss_trajectory, abs=traj_atol)
        assert float(b.delta.norm()) > 0  # (both paths took an Adam step at least)
        assert cos(a.delta, b.delta) >= 0.9999
        assert torch.allclose(a.delta, b.delta, rtol=1e-3, atol=1e-4 * float(b.delta.abs().max()))
        assert torch.equal(a.keys, b.keys) and torch.equal(a.v0, b.v0)


def run(model, spec, layer, preps, **kw):
    return optimise_values(model, spec, layer, preps, **{**OPTS, **kw})


@pytest.mark.parametrize("layout", sorted(LAYOUTS))
def test_prefix_reuse_gives_the_same_optimisation(layout, one_thread):
    model, tok, spec, cfg = tiny_model(layout)
    assert prefix_cache_unsupported(model) is None
    if layout == "gemma3_mixed":  # the overrides reached the model
        c = model.config
        assert c.layer_types[1] == "full_attention" and c.sliding_window == 8
        assert c.rope_parameters["sliding_attention"] != c.rope_parameters["full_attention"]
    preps = preps_for(model, tok, spec, cfg)
    assert int(preps[0].subj_pos.min()) > 8  # a real prefix, longer than the short windows
    for layer, space, from_layer in ((1, "mlp_out", True), (1, "residual", True),
                                     (0, "mlp_out", True), (1, "mlp_out", False)):
        kw = dict(space=space, from_layer=from_layer)
        on, off = run(model, spec, layer, preps, prefix_cache=True, **kw), \
            run(model, spec, layer, preps, prefix_cache=False, **kw)
        assert on[0].prefix_cached and not off[0].prefix_cached
        assert_same(on, off)


@pytest.mark.parametrize("layout", ["llama", "gemma3_mixed", "gpt2"])
def test_prefix_reuse_with_eager_attention(layout, one_thread):
    model, tok, spec, cfg = tiny_model(layout, attn="eager")
    assert model.config._attn_implementation == "eager"
    preps = preps_for(model, tok, spec, cfg)
    on, off = run(model, spec, 1, preps, prefix_cache=True), run(model, spec, 1, preps, prefix_cache=False)
    assert on[0].prefix_cached
    assert_same(on, off)


def _threshold_splitting(losses):
    """A loss_stop at which one request stops before its last step and another later: midway
    between the two losses furthest apart that do so (prefix reuse moves losses by ~1e-6), or
    None."""
    vals = sorted({x for traj in losses for x in traj})
    best = None
    for lo, hi in zip(vals, vals[1:]):
        thr = (lo + hi) / 2
        stops = [next((i for i, x in enumerate(t) if x < thr), len(t) - 1) for t in losses]
        if (len(set(stops)) > 1 and 0 < min(stops) < len(losses[0]) - 1
                and (best is None or hi - lo > best[0])):
            best = (hi - lo, thr)
    return best[1] if best is not None and best[0] > 1e-4 else None


@pytest.mark.parametrize("layout", ["llama", "gpt2", "gpt_neox"])
def test_batched_requests_leaving_the_batch(layout, one_thread):
    """Two requests in one batch, one stopping earlier: its rows leave, and the prefix is cut
    anew for the rows left. (The losses of these random models move little; without the KL
    and weight-decay terms they fall monotonically, so a loss_stop can split the requests.)"""
    model, tok, spec, cfg = tiny_model(layout)
    preps = preps_for(model, tok, spec, cfg, n_requests=2)
    kw = dict(steps=10, lr=0.5, kl_factor=0.0, weight_decay=0.0, space="residual")
    probe = run(model, spec, 1, preps, prefix_cache=False, **kw)
    thr = _threshold_splitting([p.loss_trajectory for p in probe])
    assert thr is not None
    on = run(model, spec, 1, preps, prefix_cache=True, loss_stop=thr, **kw)
    off = run(model, spec, 1, preps, prefix_cache=False, loss_stop=thr, **kw)
    assert len({r.steps for r in off}) == 2  # the batch shrank
    assert_same(on, off)


@pytest.mark.parametrize("layout", ["llama", "gemma3_mixed"])
def test_bare_warm_up(layout, one_thread):
    """v_init=bare: the warm-up on each request's bare and KL prompts, then every prompt."""
    model, tok, spec, cfg = tiny_model(layout)
    preps = preps_for(model, tok, spec, cfg, n_requests=2)
    on = run(model, spec, 1, preps, prefix_cache=True, init="bare")
    off = run(model, spec, 1, preps, prefix_cache=False, init="bare")
    assert [r.init_forwards for r in on] == [r.init_forwards for r in off] == [OPTS["steps"]] * 2
    for a, b in zip(on, off):
        assert a.init_losses == pytest.approx(b.init_losses, abs=1e-4)
    assert_same(on, off)


@pytest.mark.parametrize("layout", ["llama", "gpt2", "gemma3", "gpt_neox"])
def test_editors_prefix_on_equals_off(layout, one_thread):
    """ROME's delta and ΔW, MEMIT's z and ΔW (two requests), prefix reuse on vs off."""
    model, tok, spec, cfg = tiny_model(layout)
    reqs = [EditRequest(f"c{i}", language("en"), r) for i, r in enumerate(RECORDS)]
    rome_hp = OmegaConf.merge(OmegaConf.structured(RomeConfig), cfg.hparams.rome,
                              {"layer": 1, "v_steps": 8})
    memit_hp = OmegaConf.merge(OmegaConf.structured(MemitConfig), cfg.hparams.memit, {"v_steps": 8})
    outs = {}
    for on in (True, False):
        rome, memit = RomeEditor(rome_hp, spec), MemitEditor(memit_hp, spec)
        rome.paths = memit.paths = EditPaths(v_prefix_cache=on)
        outs[on] = rome.edit(model, tok, reqs[0]), memit.edit_batch(model, tok, reqs)
    (r_on, m_on), (r_off, m_off) = outs[True], outs[False]
    assert r_on.info["steps"] == r_off.info["steps"]
    assert cos(r_on.tensors["delta"], r_off.tensors["delta"]) >= 0.9999
    assert cos(r_on.deltas[0].delta, r_off.deltas[0].delta) >= 0.9999
    assert m_on.info["steps"] == m_off.info["steps"]
    for layer, resid in m_on.tensors["resid"].items():  # each layer's share of z - h
        assert cos(resid, m_off.tensors["resid"][layer]) >= 0.9999
    for a, b in zip(m_on.deltas, m_off.deltas):
        assert a.param == b.param and cos(a.delta, b.delta) >= 0.9999


def test_default_paths():
    assert EditPaths().v_prefix_cache is True
    assert EditPaths.plain() == EditPaths(False, False, False, False)
    assert V.value_options(RomeConfig())["prefix_cache"] is True
    assert V.value_options(RomeConfig(), paths=EditPaths.plain())["prefix_cache"] is False


# ------------------------------------------------------------------ a wrong prefix is caught
def _mutated_suffix(mutate):
    real = V._suffix

    def wrapped(*args, **kwargs):
        return mutate(real(*args, **kwargs))
    return wrapped


def _shift_prefix(suf):  # every cached position one slot to the left (an off-by-one cut)
    suf.kv = [None if e is None else (e[0].roll(-1, dims=2), e[1].roll(-1, dims=2)) for e in suf.kv]
    return suf


def _perturb_values(suf):  # the cached values of the top block slightly wrong
    i = max(i for i, e in enumerate(suf.kv) if e is not None)
    k, v = suf.kv[i]
    suf.kv[i] = (k, v * 1.01)
    return suf


def _positions_off_by_one(suf):  # the suffix's positions counted from the cut, +1
    suf.position_ids = suf.position_ids + 1
    return suf


def _prefix_unmasked(suf):  # the masked (left-padding) prefix slots attended to
    n_pre = suf.mask.shape[1] - suf.st.ids.shape[1]
    suf.mask = suf.mask.clone()
    suf.mask[:, :n_pre] = 1
    return suf


def assert_strict(on, off):
    """Closer than :func:`assert_same`: what float rounding alone leaves (~1e-6 in the losses,
    <1e-6 relative in delta on these models), with a 5-20x margin."""
    for a, b in zip(on, off):
        assert a.steps == b.steps
        assert a.loss_trajectory == pytest.approx(b.loss_trajectory, abs=5e-6)
        assert float((a.delta - b.delta).norm() / b.delta.norm()) <= 2e-5


@pytest.mark.parametrize("layout", ["llama", "gpt2", "gemma3_mixed", "gpt_neox"])
def test_a_wrong_prefix_is_caught(layout, monkeypatch, one_thread):
    """Every block from 0 runs on the suffix (from_layer off: GPT-2's learned positions are
    used too). The right prefix passes the strict comparison; each wrong one fails it, and the
    coarse one (cosine >= 0.9999 ...) catches the gross ones."""
    model, tok, spec, cfg = tiny_model(layout)
    preps = preps_for(model, tok, spec, cfg)
    off = run(model, spec, 1, preps, prefix_cache=False, from_layer=False)
    on = run(model, spec, 1, preps, prefix_cache=True, from_layer=False)
    assert_strict(on, off)
    for mutate in (_shift_prefix, _perturb_values, _positions_off_by_one, _prefix_unmasked):
        with monkeypatch.context() as m:
            m.setattr(V, "_suffix", _mutated_suffix(mutate))
            bad = run(model, spec, 1, preps, prefix_cache=True, from_layer=False)
        assert bad[0].prefix_cached
        with pytest.raises(AssertionError):
            assert_strict(bad, off)
        if mutate in (_shift_prefix, _prefix_unmasked):
            with pytest.raises(AssertionError):
                assert_same(bad, off)


# ------------------------------------------------------------------ fallback
def test_unverified_layout_falls_back_once(monkeypatch, caplog, one_thread):
    model, tok, spec, cfg = tiny_model("llama")
    preps = preps_for(model, tok, spec, cfg)
    monkeypatch.setattr(model.config, "layer_types",
                        ["full_attention", "chunked_attention", "full_attention"], raising=False)
    assert "chunked_attention" in prefix_cache_unsupported(model)
    monkeypatch.setattr(V, "_FALLBACK_LOGGED", set())
    with caplog.at_level(logging.WARNING, logger=V.log.name):
        a = run(model, spec, 1, preps, prefix_cache=True)
        b = run(model, spec, 1, preps, prefix_cache=True)
    warned = [r for r in caplog.records if "no prefix cache" in r.getMessage()]
    assert len(warned) == 1 and "chunked_attention" in warned[0].getMessage()
    off = run(model, spec, 1, preps, prefix_cache=False)
    for x in (a, b):
        assert not x[0].prefix_cached
        assert torch.equal(x[0].delta, off[0].delta) and x[0].trajectory == off[0].trajectory


def test_incomplete_cache_falls_back(monkeypatch, caplog, one_thread):
    """A model whose forward left a block's keys out of the cache: the plain form, logged."""
    model, tok, spec, cfg = tiny_model("gpt2")
    preps = preps_for(model, tok, spec, cfg)
    real = V._layer_kv
    monkeypatch.setattr(V, "_layer_kv", lambda c, i: (None, None) if i == 1 else real(c, i))
    monkeypatch.setattr(V, "_FALLBACK_LOGGED", set())
    with caplog.at_level(logging.WARNING, logger=V.log.name):
        a = run(model, spec, 1, preps, prefix_cache=True)
    assert not a[0].prefix_cached
    assert any("block 1" in r.getMessage() for r in caplog.records)
    off = run(model, spec, 1, preps, prefix_cache=False)
    assert torch.equal(a[0].delta, off[0].delta)


def test_reasons_for_other_configs():
    model, *_ = tiny_model("llama")
    assert prefix_cache_unsupported(model) is None

    class Fake(torch.nn.Module):
        def __init__(self, **config):
            super().__init__()
            self.config = SimpleNamespace(**{"model_type": "llama", "_attn_implementation": "sdpa",
                                             **config})

        def forward(self, input_ids=None, attention_mask=None, cache=None):
            pass

    class NoCache(Fake):
        def forward(self, input_ids=None, attention_mask=None):
            pass

    assert prefix_cache_unsupported(Fake()) is None
    assert prefix_cache_unsupported(Fake(layer_types=["sliding_attention", "full_attention"])) is None
    for fake, why in ((Fake(model_type="bloom"), "model type 'bloom'"),
                      (Fake(_attn_implementation="flash_attention_2"), "flash_attention_2"),
                      (Fake(use_bidirectional_attention=True), "not causal"),
                      (Fake(is_encoder_decoder=True), "encoder-decoder"),
                      (Fake(layer_types=["linear_attention"]), "linear_attention"),
                      (NoCache(), "no KV cache")):
        assert why in (prefix_cache_unsupported(fake) or ""), why


def test_bench_prefix_item(tmp_path):
    """`python bench/edit_bench.py --only prefix` on tiny_llama: both rows, equal edits."""
    from tests.conftest import run_bench

    r, res = run_bench(tmp_path, "--only", "prefix", "--repeats", "1")
    figures = {row["figure"]: row for row in res["summary"]}
    for name in ("ROME edit, published, prefix reuse on vs off (s)",
                 "MEMIT edit, batch 1, prefix reuse on vs off (s)"):
        assert figures[name]["fast"] > 0 and figures[name]["plain"] > 0, name
    p = res["prefix"]
    assert p["unsupported"] is None
    for m in ("rome", "memit"):
        assert all(e["same_steps"] and e["dW_cos"] >= 0.9999 for e in p["same"][m])
        assert all(t["suffix"] < t["whole"] for t in p["tokens"][m])
    assert "prefix reuse" in r.stdout
