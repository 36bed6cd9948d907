"""MEMIT and the statistics on tiny random models."""

import torch
from omegaconf import OmegaConf

from tests.conftest import language
from xling_edit.editing.memit import MemitConfig
from xling_edit.data.schema import LangRecord
from xling_edit.editing.base import EditRequest, applied
from xling_edit.editing.memit import MemitEditor
from xling_edit.editing.stats import CovarianceProvider, layer_second_moments

FACTS = [LangRecord(subject="Eiffel Tower", prompt="The Eiffel Tower is located in", target_new="Rome"),
         LangRecord(subject="Danielle Darrieux", prompt="Danielle Darrieux speaks", target_new="Tamil"),
         LangRecord(subject="Apple", prompt="Apple was founded by", target_new="Nokia")]


def editor(cfg, **kw):
    hp = OmegaConf.merge(OmegaConf.structured(MemitConfig), cfg.hparams.memit,
                         {"v_steps": 20, "v_loss_stop": 0.0, "v_lr": 0.05, "clamp_norm_factor": 50.0,
                          "kl_factor": 0.0, "weight_decay": 0.0, **kw})
    return MemitEditor(hp, cfg_spec(cfg))


def cfg_spec(cfg):
    from xling_edit.models import ModelSpec

    return ModelSpec.from_config(cfg.templates)


def test_batch_moves_every_request_towards_its_target(tiny):
    name, model, tok, spec, cfg = tiny
    # Gemma-3 normalises the MLP output: the published residual-space spreading cannot reach z
    # there (documented), so that architecture runs the named variant, as conf/model/gemma3_270m does
    variant = {"z_space": "mlp_out", "invert_out_norm": True} if spec.mlp_out_norm else {}
    ed = editor(cfg, **variant)
    reqs = [EditRequest(str(i), language("en"), f) for i, f in enumerate(FACTS)]
    before = {k: v.clone() for k, v in model.state_dict().items()}
    h0 = ed._residual_at(model, [__import__("xling_edit.editing.value", fromlist=["x"]).prepare(
        tok, r, ed.prefixes(model, tok, r.lang), 0.6, torch.device("cpu")) for r in reqs], max(cfg.hparams.memit.layers))
    out = ed.edit_batch(model, tok, reqs)
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())  # nothing left applied
    z, h_final = out.tensors["z"], out.tensors["h_final"]
    assert ((z - h_final).norm(dim=1) < (z - h0).norm(dim=1)).all()
    assert len(out.deltas) == len(cfg.hparams.memit.layers)
    with applied(model, out.deltas):
        assert not all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())  # bit-exact restore


def test_statistics_equal_direct_computation(tiny):
    name, model, tok, spec, cfg = tiny
    texts = ["The cat sat on the mat.", "राजधानी दिल्ली है", "Une phrase courte"]
    moments, n = layer_second_moments(model, tok, spec, [0, 1], texts, batch_size=2)
    keys = {0: [], 1: []}
    hooks = [spec.module(model, "down_proj", l).register_forward_hook(
        lambda m, i, o, l=l: keys[l].append(i[0][0, 1:])) for l in (0, 1)]  # skip <bos>
    with torch.no_grad():
        for t in texts:
            model(input_ids=torch.tensor([tok(t)["input_ids"]]))
    for h in hooks:
        h.remove()
    for l in (0, 1):
        k = torch.cat(keys[l]).double()
        assert n == k.shape[0]
        assert torch.allclose(moments[l], k.T @ k / k.shape[0], rtol=1e-5, atol=1e-8)


def test_statistics_cache_is_reused(tiny, tmp_path):
    name, model, tok, spec, cfg = tiny
    mk = lambda: CovarianceProvider(model, tok, spec, name, "builtin", {"en": [], "hi": []},  # noqa: E731
                                    per_lang=3, cache_dir=str(tmp_path))
    a = mk()
    c1 = a(0)
    assert a.last_source == "computed" and len(list((tmp_path / "stats").iterdir())) == 1
    b = mk()
    c2 = b(0)
    assert b.last_source == "disk" and torch.equal(c1, c2)
    assert b.key(0) != b.key(1)


def test_hf_corpus_streams_per_language(tiny, tmp_path, monkeypatch):
    import sys
    import types

    calls = []

    def load_dataset(path, name, split, streaming):
        calls.append((path, name, split, streaming))
        lang = name.split(".")[-1]
        return iter([{"text": f"{lang} document {i}"} for i in range(10)])

    monkeypatch.setitem(sys.modules, "datasets", types.SimpleNamespace(load_dataset=load_dataset))
    name, model, tok, spec, cfg = tiny
    p = CovarianceProvider(model, tok, spec, name, "hf", {"en": [], "hi": []}, per_lang=3,
                           cache_dir=None, hf={"path": "wiki", "name": "2023.{lang}", "split": "train",
                                               "text_field": "text"})
    assert p._texts() == [f"{l} document {i}" for l in ("en", "hi") for i in range(3)]
    assert calls == [("wiki", "2023.en", "train", True), ("wiki", "2023.hi", "train", True)]
    assert p.label.startswith("hf:wiki") and p(0).shape[0] == p(0).shape[1]


def test_published_memit_records_its_settings(tiny):
    name, model, tok, spec, cfg = tiny
    out = editor(cfg).edit(model, tok, EditRequest("0", language("en"), FACTS[0]))
    info = out.info
    assert info["z_space"] == "residual" and info["invert_out_norm"] is False
    assert info["variant"] == "published"
    # the test's own settings are listed as deviations from the published values
    assert info["deviations"]["clamp_norm_factor"] == 50.0 and info["deviations"]["weight_decay"] == 0.0
    assert "layers" not in info["deviations"]  # a per-model choice, not a deviation
    gem = editor(cfg, z_space="mlp_out", invert_out_norm=True).edit(
        model, tok, EditRequest("0", language("en"), FACTS[0])).info
    assert gem["deviations"]["z_space"] == "mlp_out"
    assert gem["invert_out_norm"] is bool(spec.mlp_out_norm)


def test_batched_value_optimisation_equals_separate_runs(tiny):
    """All requests' deltas optimised in one padded batch (issue 15) give each request the
    delta, trajectory and step count of its own optimisation (early stops differ per request)."""
    from xling_edit.editing.value import optimise_value, optimise_values, prepare

    name, model, tok, spec, cfg = tiny
    ed = editor(cfg, v_steps=8, v_lr=0.3, v_loss_stop=0.0, kl_factor=0.0625, weight_decay=1e-3,
                clamp_norm_factor=4.0)
    preps = [prepare(tok, EditRequest(str(i), language("en"), f), ed.prefixes(model, tok, language("en")),
                     0.6, torch.device("cpu")) for i, f in enumerate(FACTS)]
    for space in ("residual", "mlp_out"):
        opts = dict(steps=8, lr=0.3, loss_stop=0.0, clamp_norm_factor=4.0, kl_factor=0.0625,
                    weight_decay=1e-3, space=space)
        alone = [optimise_value(model, spec, 1, p, **opts) for p in preps]
        # a stop threshold between the requests' losses makes them finish at different steps
        first = min(a.loss_trajectory[0] for a in alone)
        lows = sorted(min(a.loss_trajectory[1:]) for a in alone)
        if lows[0] < first:
            opts["loss_stop"] = (lows[0] + min(lows[-1], first)) / 2
            alone = [optimise_value(model, spec, 1, p, **opts) for p in preps]
        together = optimise_values(model, spec, 1, preps, **opts)
        if opts["loss_stop"] > 0:
            assert len({a.steps for a in alone}) > 1, "want requests that stop at different steps"
        for a, t in zip(alone, together):
            assert a.steps == t.steps
            assert torch.allclose(a.delta, t.delta, rtol=1e-4, atol=1e-5), (space, (a.delta - t.delta).abs().max())
            assert max(abs(x - y) for x, y in zip(a.loss_trajectory, t.loss_trajectory)) < 1e-4
            assert torch.allclose(a.keys, t.keys, atol=1e-5) and torch.allclose(a.v0, t.v0, atol=1e-5)
