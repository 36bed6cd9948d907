"""Issue 7's fast paths give the results of the plain paths they replace (tiny models)."""

import pytest
import torch
from omegaconf import OmegaConf

from tests.conftest import language
from xling_edit.editing.memit import MemitConfig
from xling_edit.editing.rome import RomeConfig
from xling_edit.data.schema import QA, EditCase, LangRecord
from xling_edit.editing.base import EditRequest, WeightDelta, applied
from xling_edit.editing.memit import MemitEditor, memit_update, memit_update_factored
from xling_edit.editing.rome import RomeEditor
from xling_edit.editing.value import optimise_value, prepare
from xling_edit.evaluation.evaluate import EvalOptions, build_rows, lang_metrics, score_rows
from xling_edit.evaluation.forward import LowerStates, edited_layers, model_device
from xling_edit.fastpaths import EditPaths

RECORD = LangRecord(subject="Eiffel Tower", prompt="The Eiffel Tower is located in",
                    target_new="Rome", target_true="Paris",
                    rephrases=["Where is the Eiffel Tower? It is in"],
                    locality=[QA("The capital of Japan is", "Tokyo")],
                    portability=[QA("The Eiffel Tower's country has the capital", "Roma")])
HINDI = LangRecord(subject="एफिल टॉवर", prompt="एफिल टॉवर स्थित है", target_new="रोम",
                   target_true="पेरिस", locality=[QA("जापान की राजधानी है", "टोक्यो")])
CASE = EditCase("c0", {"en": RECORD, "hi": HINDI})
SEPS = {"en": " ", "hi": " "}
FAST = EvalOptions(batch_size=4)


def rome_hp(cfg, **kw):
    return OmegaConf.merge(OmegaConf.structured(RomeConfig), cfg.hparams.rome, kw)


def same_metrics(a, b):
    """Argmax-based and comparison metrics identical; mean NLLs equal to float rounding."""
    assert a.keys() == b.keys()
    for lang in a:
        for k, v in a[lang].items():
            if ".nll_" in k and v is not None:
                assert v == pytest.approx(b[lang][k], abs=1e-4), (lang, k)
            else:
                assert v == b[lang][k], (lang, k)


def same_scores(a, b, atol=1e-4):
    assert len(a) == len(b)
    for x, y in zip(a, b):
        assert torch.equal(x.target_ids, y.target_ids)
        assert torch.equal(x.argmax, y.argmax)
        assert torch.allclose(x.logprobs, y.logprobs, atol=atol, rtol=1e-4)


@pytest.mark.parametrize("plain", [
    EvalOptions.plain(4),
    EvalOptions(batch_size=4, batched=False),
    EvalOptions(batch_size=4, head_at_targets=False),
    EvalOptions(batch_size=4, inference_mode=False),
    EvalOptions(batch_size=4, head_chunk=1),
], ids=["all-plain", "per-row", "full-logits", "grad-mode", "chunk1"])
def test_scoring_fast_equals_plain(tiny, plain):
    name, model, tok, spec, cfg = tiny
    rows, errors = build_rows(CASE, ["en", "hi"], tok, SEPS)
    assert not errors and len(rows) == 11
    fast = score_rows(model, tok, spec, rows, FAST)
    slow = score_rows(model, tok, spec, rows, plain)
    same_scores(fast, slow)
    same_metrics(lang_metrics(rows, fast, None), lang_metrics(rows, slow, None))


def test_post_edit_from_edited_layer_equals_full_depth(tiny):
    name, model, tok, spec, cfg = tiny
    rows, _ = build_rows(CASE, ["en", "hi"], tok, SEPS)
    layer = 1  # tiny models have 3 blocks (2 for tiny_gpt2): something below to skip
    out = RomeEditor(rome_hp(cfg, layer=layer), spec).edit(
        model, tok, EditRequest("c0", language("en"), RECORD))
    pre = score_rows(model, tok, spec, rows, FAST, keep_from=layer)
    assert pre.lower is not None and pre.lower.layer == layer and pre.lower.states
    with applied(model, out.deltas):
        reused = score_rows(model, tok, spec, rows, FAST, reuse=pre, deltas=out.deltas)
        full = score_rows(model, tok, spec, rows, EvalOptions(batch_size=4, reuse_lower_layers=False))
    same_scores(reused, full, atol=1e-5)
    same_metrics(lang_metrics(rows, reused, pre), lang_metrics(rows, full, pre))
    changed = sum(not torch.allclose(a.logprobs, b.logprobs) for a, b in zip(reused, pre))
    assert changed > 0  # the reused pass really saw the edit


def test_lower_states_refused_when_the_edit_reaches_below(tiny):
    name, model, tok, spec, cfg = tiny
    lower = LowerStates(1)
    lower.states[(0,)] = torch.zeros(1)
    below = WeightDelta(spec.down_proj_weight_name(0), torch.zeros(1))
    at = WeightDelta(spec.down_proj_weight_name(1), torch.zeros(1))
    emb = WeightDelta(spec.embed + ".weight", torch.zeros(1))
    assert edited_layers(spec, [below, at]) == [0, 1]
    assert lower.usable(spec, [at]) and not lower.usable(spec, [below, at])
    assert edited_layers(spec, [emb]) is None and not lower.usable(spec, [emb])


@pytest.mark.parametrize("flags", [dict(from_layer=False), dict(head_at_targets=False),
                                   dict(from_layer=False, head_at_targets=False)],
                         ids=["full-depth", "full-logits", "plain"])
def test_value_optimisation_same_trajectory(tiny, flags):
    name, model, tok, spec, cfg = tiny
    req = EditRequest("c0", language("en"), RECORD)
    prefixes = RomeEditor(rome_hp(cfg), spec).prefixes(model, tok, req.lang)
    prep = prepare(tok, req, prefixes, 0.6, model_device(model))
    kw = dict(steps=6, lr=0.1, loss_stop=0.0, clamp_norm_factor=10.0, kl_factor=0.0625,
              weight_decay=1e-3)
    layer = 1
    fast = optimise_value(model, spec, layer, prep, **kw)
    slow = optimise_value(model, spec, layer, prep, **kw, **flags)
    assert fast.steps == slow.steps
    assert fast.trajectory == pytest.approx(slow.trajectory, abs=2e-4)
    assert torch.allclose(fast.delta, slow.delta, atol=1e-4, rtol=1e-3)
    assert torch.allclose(fast.keys, slow.keys) and torch.allclose(fast.v0, slow.v0)


class _Cov:
    """A statistics provider with ``solve`` (the cached-factor path) and ``__call__`` (plain)."""

    def __init__(self, d):
        g = torch.Generator().manual_seed(0)
        a = torch.randn(d, 3 * d, generator=g, dtype=torch.float64)
        self.c = a @ a.T / (3 * d) + 0.1 * torch.eye(d, dtype=torch.float64)
        self.solves = 0

    def __call__(self, layer):
        return self.c

    def solve(self, layer, rhs):
        self.solves += 1
        return torch.cholesky_solve(rhs.double(), torch.linalg.cholesky(self.c))


def test_cached_factorisation_gives_the_same_rome_update(tiny):
    name, model, tok, spec, cfg = tiny
    d_in = spec.module(model, "down_proj", 0).weight.shape[1 if name != "tiny_gpt2" else 0]
    cov = _Cov(d_in)
    req = EditRequest("c0", language("en"), RECORD)
    fast = RomeEditor(rome_hp(cfg, layer=0), spec, covariance=cov).edit(model, tok, req)
    assert cov.solves == 1
    plain_ed = RomeEditor(rome_hp(cfg, layer=0), spec, covariance=cov)
    plain_ed.paths = EditPaths(cache_factorization=False)
    plain = plain_ed.edit(model, tok, req)
    assert cov.solves == 1
    assert torch.allclose(fast.tensors["u"], plain.tensors["u"], rtol=1e-8, atol=1e-10)
    assert torch.allclose(fast.deltas[0].delta, plain.deltas[0].delta, rtol=1e-5, atol=1e-7)


def test_memit_push_through_equals_direct_solve():
    g = torch.Generator().manual_seed(1)
    d_in, d_out, n = 12, 7, 5
    a = torch.randn(d_in, 2 * d_in, generator=g, dtype=torch.float64)
    c = a @ a.T / d_in + 0.05 * torch.eye(d_in, dtype=torch.float64)
    k = torch.randn(d_in, n, generator=g, dtype=torch.float64)
    r = torch.randn(d_out, n, generator=g, dtype=torch.float64)
    chol = torch.linalg.cholesky(c)
    for lam in (1e-2, 1.0, 1.5e4):
        direct = memit_update(r, k, c, lam)
        pushed = memit_update_factored(r, k, lambda x: torch.cholesky_solve(x, chol), lam)
        assert torch.allclose(direct, pushed, rtol=1e-8, atol=1e-10)
    assert torch.allclose(memit_update(r, k, None, 0.3), memit_update_factored(r, k, None, 0.3),
                          rtol=1e-8, atol=1e-10)


def test_memit_fast_equals_plain(tiny):
    name, model, tok, spec, cfg = tiny
    hp = OmegaConf.merge(OmegaConf.structured(MemitConfig), cfg.hparams.memit)
    d_in = spec.module(model, "down_proj", 0).weight.shape[1 if name != "tiny_gpt2" else 0]
    cov = _Cov(d_in)
    reqs = [EditRequest("c0", language("en"), RECORD),
            EditRequest("c1", language("en"), LangRecord(subject="Angela Merkel",
                        prompt="Angela Merkel was born in", target_new="Paris"))]
    fast = MemitEditor(hp, spec, covariance=cov).edit_batch(model, tok, reqs)
    plain_ed = MemitEditor(hp, spec, covariance=cov)
    plain_ed.paths = EditPaths.plain()
    plain = plain_ed.edit_batch(model, tok, reqs)
    assert fast.info["steps"] == plain.info["steps"]
    for a, b in zip(fast.deltas, plain.deltas):
        assert a.param == b.param
        assert torch.allclose(a.delta, b.delta, rtol=1e-3, atol=1e-5 * float(b.delta.abs().max()))
