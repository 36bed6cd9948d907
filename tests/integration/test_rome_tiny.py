"""ROME on tiny random GPT-2 / Llama / Gemma-3 models: closed forms and exact restoration."""

import pytest
import torch
from omegaconf import OmegaConf

from tests.conftest import language
from xling_edit.editing.rome import RomeConfig
from xling_edit.data.schema import LangRecord
from xling_edit.editing.base import EditRequest, SkipCase, applied
from xling_edit.editing.rome import RomeEditor
from xling_edit.models.spec import is_transposed, weight_as_out_in

RECORD = LangRecord(subject="Eiffel Tower", prompt="The Eiffel Tower is located in",
                    target_new="Rome", target_true="Paris")


def hparams(model_cfg, **kw):
    base = OmegaConf.merge(OmegaConf.structured(RomeConfig), model_cfg.hparams.rome)
    return OmegaConf.merge(base, kw)


def edit(tiny, covariance=None, **kw):
    name, model, tok, spec, cfg = tiny
    editor = RomeEditor(hparams(cfg, **kw), spec, seed=0, covariance=covariance)
    return editor, editor.edit(model, tok, EditRequest("c0", language("en"), RECORD))


@pytest.mark.parametrize("consistent", [True, False])
def test_edit_maps_key_to_value_and_is_rank_one(tiny, consistent):
    name, model, tok, spec, cfg = tiny
    _, out = edit(tiny, consistent_key=consistent)
    down = spec.module(model, "down_proj", cfg.hparams.rome.layer)
    (d,) = out.deltas
    assert d.param == spec.down_proj_weight_name(cfg.hparams.rome.layer)
    delta = d.delta.T if is_transposed(down) else d.delta
    sv = torch.linalg.svdvals(delta.double())
    assert sv[0] > 0 and sv[1] / sv[0] < 1e-5  # rank one up to float32 storage rounding
    k, v = out.tensors["k_star"].double(), out.tensors["v_star"]
    with applied(model, out.deltas):
        w_new = weight_as_out_in(down).double()
        bias = down.bias.double() if getattr(down, "bias", None) is not None else 0.0
        assert torch.allclose(w_new @ k + bias, v, rtol=1e-4, atol=1e-4)


def test_original_form_real_forward_reaches_v_star(tiny):
    """With the bare-prompt key, the edited layer's real output at the subject equals v*."""
    from xling_edit.evaluation.forward import capture_output
    from xling_edit.evaluation.text import encode, last_token_in_span

    name, model, tok, spec, cfg = tiny
    _, out = edit(tiny, consistent_key=False)
    enc = encode(tok, RECORD.prompt)
    s = RECORD.prompt.find(RECORD.subject)
    pos = last_token_in_span(enc, s, s + len(RECORD.subject))
    down = spec.module(model, "down_proj", cfg.hparams.rome.layer)
    with applied(model, out.deltas), capture_output(down) as cap, torch.no_grad():
        model(input_ids=torch.tensor([enc.input_ids]))
    assert torch.allclose(cap["out"][0, pos].double(), out.tensors["v_star"], rtol=1e-4, atol=1e-4)


def test_restore_is_bit_exact(tiny):
    name, model, tok, spec, cfg = tiny
    before = {k: v.clone() for k, v in model.state_dict().items()}
    _, out = edit(tiny)
    with applied(model, out.deltas):
        changed = [k for k, v in model.state_dict().items() if not torch.equal(v, before[k])]
        assert changed == [out.deltas[0].param]
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k


def test_restore_on_exception(tiny):
    name, model, tok, spec, cfg = tiny
    before = {k: v.clone() for k, v in model.state_dict().items()}
    _, out = edit(tiny)
    with pytest.raises(RuntimeError):
        with applied(model, out.deltas):
            raise RuntimeError("boom")
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())


def test_covariance_changes_left_vector(tiny):
    name, model, tok, spec, cfg = tiny
    d_in = weight_as_out_in(spec.module(model, "down_proj", cfg.hparams.rome.layer)).shape[1]
    scale = torch.linspace(1, 5, d_in, dtype=torch.float64)
    _, out = edit(tiny, covariance=lambda layer: torch.diag(scale))
    k_bar = out.tensors["k_bar"].double()  # u comes from the averaged key in both forms
    assert torch.allclose(out.tensors["u"], k_bar / scale)
    assert torch.allclose(k_bar, out.tensors["keys"].double().mean(0))  # ROME: uniform mean
    assert out.info["covariance"] != "identity"


def test_value_optimisation_lowers_target_nll(tiny):
    _, out = edit(tiny, v_steps=15, v_loss_stop=0.0, v_lr=0.05, clamp_norm_factor=50.0,
                  kl_factor=0.0, weight_decay=0.0)
    assert out.info["nll_trajectory"][-1] < out.info["nll_trajectory"][0]
    assert out.info["delta_norm"] <= 50.0 * out.info["v0_norm"] * (1 + 1e-5)  # norm clamp


def test_subject_not_found_is_a_skip(tiny):
    name, model, tok, spec, cfg = tiny
    editor = RomeEditor(hparams(cfg), spec)
    bad = LangRecord(subject="Angela Merkel", prompt="The Eiffel Tower is in", target_new="Rome")
    with pytest.raises(SkipCase):
        editor.edit(model, tok, EditRequest("c1", language("en"), bad))


def test_context_prefixes_are_seeded(tiny):
    name, model, tok, spec, cfg = tiny
    a = RomeEditor(hparams(cfg), spec, seed=3).prefixes(model, tok, language("hi"))
    b = RomeEditor(hparams(cfg), spec, seed=3).prefixes(model, tok, language("hi"))
    n = sum(count for _, count in cfg.hparams.rome.context_templates)
    assert a == b and a[0] == "" and len(a) == 1 + n


def test_published_context_prompts_and_seed_words():
    from xling_edit.editing.memit import MemitConfig
    from xling_edit.editing.rome import RomeConfig
    from xling_edit.editing.context import seed_word_order, template_groups

    rome, memit = template_groups(RomeConfig().context_templates), template_groups(MemitConfig().context_templates)
    assert len(rome) == 21 and rome.count(1) == 10 and rome.count(2) == 10  # bare + 10×5 + 10×10
    assert memit == [0, 1, 1, 1, 1, 1]  # bare + 5 of 10 tokens
    seeds = ["The", "Therefore", "Because", "I", "You"]
    assert seed_word_order(seeds, 10) == [w for w in seeds for _ in range(2)]
    assert seed_word_order(seeds, 5) == seeds


def test_key_average_by_template_group():
    from xling_edit.editing.value import average_keys

    keys = torch.tensor([[6.0], [0.0], [2.0], [4.0]])  # bare, then three prefixed prompts
    assert average_keys(keys, None).item() == 3.0  # uniform (ROME)
    assert average_keys(keys, [0, 1, 1, 1]).item() == 4.0  # ½·6 + ½·mean(0, 2, 4) (MEMIT)


def test_value_loss_is_published(tiny):
    """KL read at the subject's last token of "{subject} is a", KL(p_now || p_before), early stop
    on the total loss, and the last forward only measures."""
    name, model, tok, spec, cfg = tiny
    _, out = edit(tiny, v_steps=4, v_loss_stop=0.0)
    assert out.info["steps"] == 4 and len(out.info["loss_trajectory"]) == 4
    # the total loss's parts (not "loss >= NLL", which holds whatever the terms are): at δ = 0
    # (the first forward) the KL and decay terms vanish; without the KL term the last forward,
    # which only measures, adds exactly the final δ's decay weight_decay · ‖δ‖ / ‖v0‖²
    t = out.tensors
    assert t["loss_trajectory"][0] == pytest.approx(t["nll_trajectory"][0], rel=1e-6)
    _, no_kl = edit(tiny, v_steps=4, v_loss_stop=0.0, kl_factor=0.0, weight_decay=0.5)
    t = no_kl.tensors
    decay = 0.5 * float(t["delta"].norm()) / float(t["v0"].norm()) ** 2
    assert decay > 0
    assert t["loss_trajectory"][-1] - t["nll_trajectory"][-1] == pytest.approx(decay, rel=1e-4)
    # a stop threshold just above the first total loss stops at the first forward (no update)
    _, first = edit(tiny, v_steps=4, v_loss_stop=out.info["loss_trajectory"][0] + 1e-3)
    assert first.info["steps"] == 1 and first.info["delta_norm"] == 0.0
    kl_prompt = "Eiffel Tower is a"
    assert first.tensors["prompts"][-1] == kl_prompt
    from xling_edit.evaluation.text import encode, last_token_in_span

    enc = encode(tok, kl_prompt)
    assert first.tensors["subj_pos"][-1] == last_token_in_span(enc, 0, len("Eiffel Tower"))
    assert first.tensors["subj_pos"][-1] < len(enc.input_ids) - 1
