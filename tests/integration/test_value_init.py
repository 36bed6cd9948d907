"""``method.v_init`` (issue 15): where the value optimisation starts, on tiny random models.

``zero`` is the published loop (also compared with the plain oracle, through the editors, by
tests/integration/test_oracle.py); ``bare`` warms up on the bare prompt and the KL prompt alone,
then runs the published loop from there with Adam's moments.

The fixture's random models hardly respond to a delta at the subject (their logits span about
one nat, and a subject in mid-prompt reaches the answer only through random attention), so these
tests use a copy of each architecture with its LM head scaled by 10, prompts that end with the
subject, one-character targets joined without a space, and delta in the residual stream: there
the published loop falls from 6-14 nats to below 1.5 within a few steps.
"""

from __future__ import annotations

import pytest
import torch
from omegaconf import OmegaConf

from tests.conftest import language
from tests.oracle import plain_editing as pe
from xling_edit.editing.memit import MemitConfig
from xling_edit.editing.rome import RomeConfig
from xling_edit.data.schema import LangRecord
from xling_edit.editing.base import EditRequest
from xling_edit.editing.memit import MemitEditor
from xling_edit.editing.rome import RomeEditor
from xling_edit.editing.value import optimise_values, prepare, value_options
from xling_edit.models import load_model

RECORDS = [LangRecord(subject="Eiffel Tower", prompt="Where is the Eiffel Tower", target_new="R"),
           LangRecord(subject="Danielle Darrieux", prompt="The language of Danielle Darrieux",
                      target_new="T")]
PREFIXES = ["", "Hello there. ", "I think so. "]
LAYER = 1  # tiny models have 3 blocks (tiny_gpt2: 2): one after the edited block
OPTS = dict(steps=20, lr=0.5, loss_stop=1.5, clamp_norm_factor=4.0, kl_factor=0.0625,
            weight_decay=1e-3, space="residual")
REL = 1e-4
_STEERABLE: dict = {}


def steerable(tiny):
    """(model, tok, spec, two prepared requests): the fixture's architecture, a fresh copy with
    the LM head scaled by 10 (the fixture's shared model is left alone)."""
    name, _, _, spec, cfg = tiny
    if name not in _STEERABLE:
        model, tok = load_model(cfg, seed=0)
        with torch.no_grad():
            spec.module(model, "lm_head").weight.mul_(10.0)
        lang = {**language("en"), "word_sep": ""}
        preps = [prepare(tok, EditRequest(str(i), lang, r), PREFIXES, 0.8, torch.device("cpu"))
                 for i, r in enumerate(RECORDS)]
        _STEERABLE[name] = model, tok, spec, preps, lang
    return _STEERABLE[name]


def oracle_prompts(tok, lang, record):
    return pe.request_prompts(tok, record.prompt, record.subject, record.target_new, PREFIXES,
                              "", lang["word_sep"], lang["kl_prompt"])


def assert_close(prod, ref, what):
    assert len(prod) == len(ref), f"{what}: {len(prod)} forwards, oracle {len(ref)}\n{prod}\n{ref}"
    worst = max(abs(p - r) / max(abs(r), 1e-12) for p, r in zip(prod, ref))
    assert worst < REL, f"{what}: max rel diff {worst:.2e}\n prod {prod}\n ref  {ref}"


def test_zero_is_the_default_and_the_published_loop(tiny):
    assert RomeConfig().v_init == "zero" and MemitConfig().v_init == "zero"
    assert value_options(RomeConfig())["init"] == "zero"
    model, tok, spec, preps, lang = steerable(tiny)
    default = optimise_values(model, spec, LAYER, preps, **OPTS)
    zero = optimise_values(model, spec, LAYER, preps, init="zero", **OPTS)
    site = spec.module(model, "layer", LAYER)
    for rec, d, z in zip(RECORDS, default, zero):
        assert torch.equal(d.delta, z.delta) and d.loss_trajectory == z.loss_trajectory
        assert z.init == "zero" and z.init_forwards == 0 and z.init_losses == []
        prompts, kl = oracle_prompts(tok, lang, rec)
        ref = pe.optimise_delta(model, site, prompts, kl, **{k: v for k, v in OPTS.items() if k != "space"})
        assert_close(z.loss_trajectory, ref.losses, "zero start vs oracle")
        assert 2 <= z.steps < OPTS["steps"] and z.loss_trajectory[-1] < OPTS["loss_stop"]


def test_bare_warms_up_on_the_bare_prompt_then_reaches_the_stop(tiny):
    model, tok, spec, preps, lang = steerable(tiny)
    zero = optimise_values(model, spec, LAYER, preps, init="zero", **OPTS)
    bare = optimise_values(model, spec, LAYER, preps, init="bare", **OPTS)
    site = spec.module(model, "layer", LAYER)
    opts = {k: v for k, v in OPTS.items() if k != "space"}
    for rec, z, b in zip(RECORDS, zero, bare):
        prompts, kl = oracle_prompts(tok, lang, rec)
        warm = pe.optimise_delta(model, site, prompts[:1], kl, **opts)  # bare prompt + KL only
        assert_close(b.init_losses, warm.losses, "warm-up vs the oracle on the bare prompt")
        assert b.init == "bare" and b.init_forwards == len(warm.losses)
        # the full loop's first forward measures the warm start: below the loss at delta = 0
        assert b.loss_trajectory[0] <= z.loss_trajectory[0]
        assert b.loss_trajectory[-1] < OPTS["loss_stop"] and b.steps <= z.steps
        assert b.delta.norm() <= OPTS["clamp_norm_factor"] * b.v0.norm() * (1 + 1e-5)


@pytest.mark.parametrize("init", ["zero", "bare"])
def test_batched_requests_get_their_own_start(tiny, init):
    """Several requests in one padded batch: each gets the start and trajectory of its own run,
    also when they stop at different steps."""
    model, tok, spec, preps, lang = steerable(tiny)
    alone = [optimise_values(model, spec, LAYER, [p], init=init, **OPTS)[0] for p in preps]
    together = optimise_values(model, spec, LAYER, preps, init=init, **OPTS)
    for a, t in zip(alone, together):
        assert (a.steps, a.init, a.init_forwards) == (t.steps, t.init, t.init_forwards)
        if init == "bare":
            assert_close(t.init_losses, a.init_losses, f"{init}: init losses, batched vs alone")
        assert_close(t.loss_trajectory, a.loss_trajectory, f"{init}: losses, batched vs alone")
        assert torch.allclose(a.delta, t.delta, rtol=1e-4, atol=1e-5)


def test_v_init_is_recorded_and_checked(tiny):
    name, model, tok, spec, cfg = tiny
    req = EditRequest("c0", language("en"), LangRecord(
        subject="Eiffel Tower", prompt="The Eiffel Tower is located in", target_new="Rome"))
    rome_hp = OmegaConf.merge(OmegaConf.structured(RomeConfig), cfg.hparams.rome)
    published = RomeEditor(rome_hp, spec).edit(model, tok, req).info
    assert "v_init" not in published["deviations"] and published["init_forwards"] == 0
    bare = RomeEditor(OmegaConf.merge(rome_hp, {"v_init": "bare"}), spec).edit(model, tok, req).info
    assert bare["deviations"]["v_init"] == "bare" and bare["init_forwards"] >= 1
    memit_hp = OmegaConf.merge(OmegaConf.structured(MemitConfig), cfg.hparams.memit, {"v_init": "bare"})
    warm = MemitEditor(memit_hp, spec).edit(model, tok, req).info
    assert warm["deviations"]["v_init"] == "bare" and warm["init_forwards"][0] >= 1
    with pytest.raises(ValueError, match="v_init='line'.*one of"):  # measured to save nothing; removed
        RomeEditor(OmegaConf.merge(rome_hp, {"v_init": "line"}), spec)
    with pytest.raises(ValueError, match="v_init='warm'.*one of"):
        RomeEditor(OmegaConf.merge(rome_hp, {"v_init": "warm"}), spec)
    with pytest.raises(ValueError, match="v_init='warm'.*one of"):
        MemitEditor(OmegaConf.merge(memit_hp, {"v_init": "warm"}), spec)
    _, _, _, preps, _ = steerable(tiny)
    with pytest.raises(ValueError, match="v_init='Zero'"):
        optimise_values(model, spec, LAYER, preps, init="Zero", **OPTS)
