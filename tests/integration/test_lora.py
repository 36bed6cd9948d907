"""LoRA / AdaLoRA (through peft) and FT-L on tiny random models: the published forms (EasyEdit's
AdaLoRA on every q/v projection; ROME's FT-L with its loss position and clamp), their named
variants, merged deltas that compute what the adapters computed, a model left exactly as it
was, and end-to-end runs."""

import json
import math
import subprocess
import sys
from types import SimpleNamespace

import pytest
import torch
from torch import nn
from transformers.pytorch_utils import Conv1D

from tests.conftest import ROOT, language
from xling_edit.data.schema import LangRecord
from xling_edit.editing import lora as lora_mod
from xling_edit.editing.base import EditRequest, applied
from xling_edit.editing.lora import (
    LoraEditConfig, LoraEditor, adalora_delta, clamp_to_ball, orthogonality_penalty,
    prompt_last_nll, target_nll as lm_target_nll,
)
from xling_edit.evaluation.text import Encoded, encode

FACT = LangRecord(subject="Eiffel Tower", prompt="The Eiffel Tower is located in", target_new="Rome")
#: the published LoRA, shortened for a tiny model
PUBLISHED_QUICK = {"steps": 4}
#: the single-layer variant (conf/method/lora_down.yaml), shortened
DOWN_QUICK = {"kind": "lora", "target": ["down_proj"], "layers": [1], "rank": 4, "alpha": 8.0,
              "dropout": 0.0, "orth_reg_weight": 0.0, "steps": 5, "lr": 1.0e-2, "loss_stop": 0.0}
#: ROME's FT-L (conf/method/ft_l.yaml) on block 1
FT_L = {"kind": "full", "target": ["down_proj"], "layers": [1], "steps": 25, "lr": 5.0e-4,
        "loss": "prompt_last", "loss_stop": 1.0e-2, "norm_constraint": 5.0e-4}


def request(rec=FACT):
    return EditRequest("eiffel", language("en"), rec)


def snapshot(model):
    """Everything the edit must leave as it found it."""
    return {"state": {k: v.detach().clone() for k, v in model.state_dict().items()},
            "types": [(n, type(m)) for n, m in model.named_modules()],
            "grad": [(n, p.requires_grad) for n, p in model.named_parameters()],
            "training": model.training}


def assert_untouched(model, snap):
    assert [(n, type(m)) for n, m in model.named_modules()] == snap["types"]
    assert not any(type(m).__module__.startswith("peft") for m in model.modules())
    assert not hasattr(model, "peft_config")
    state = model.state_dict()
    assert list(state) == list(snap["state"])
    assert all(torch.equal(state[k], v) for k, v in snap["state"].items())  # bit for bit
    assert [(n, p.requires_grad) for n, p in model.named_parameters()] == snap["grad"]
    assert model.training == snap["training"]


def target_nll(model, tok, rec=FACT):
    enc = encode(tok, rec.prompt, rec.target_new, " ")
    ids = torch.tensor([enc.input_ids])
    with torch.no_grad():
        logits = model(input_ids=ids).logits[0, enc.n_prompt - 1: -1]
    return float(torch.nn.functional.cross_entropy(logits.float(), ids[0, enc.n_prompt:]))


def with_deltas(model, tok, out):
    """(the edited model's logits at the target positions of the edit's encoded sequence, its
    target NLL on FACT), with ``out``'s deltas applied (and restored afterwards)."""
    enc = out.tensors["encoded"]
    ids = torch.tensor([enc.input_ids])
    with applied(model, out.deltas):
        with torch.no_grad():
            merged = model(input_ids=ids).logits[0, enc.n_prompt - 1: -1]
        return merged, target_nll(model, tok)


def qv_paths(name, spec, model):
    """Every block's q and v projection (GPT-2: the fused c_attn, once per block)."""
    n = spec.n_layers(model)
    if name == "tiny_gpt2":
        return [f"transformer.h.{i}.attn.c_attn.weight" for i in range(n)]
    return [f"model.layers.{i}.self_attn.{p}.weight" for i in range(n) for p in ("q_proj", "v_proj")]


# ------------------------------------------------------------------ the published LoRA
def test_published_adalora_targets_every_q_v_layer_and_the_merge_reproduces_the_adapted_model(tiny):
    name, model, tok, spec, cfg = tiny
    snap = snapshot(model)
    nll0 = target_nll(model, tok)
    ed = LoraEditor(PUBLISHED_QUICK, spec)
    assert ed.hp.kind == "adalora" and ed.hp.layers == [] and ed.hp.rank == 12 and ed.hp.dropout == 0.1
    out = ed.edit(model, tok, request())
    assert_untouched(model, snap)  # no peft wrapper, original weights, flags and mode

    params = dict(model.named_parameters())
    assert [d.param for d in out.deltas] == qv_paths(name, spec, model)  # every block, q and v
    assert out.info["layers"] == list(range(spec.n_layers(model)))
    for d in out.deltas:
        ad = out.tensors["adapters"][d.param]
        a, e, b = ad["A"], ad["E"], ad["B"]
        assert a.shape[0] == e.shape[0] == b.shape[1] == 12  # AdaLoRA's init_r, not EasyEdit's r=8
        assert ad["ranknum"] == 12.0 and ad["scaling"] == 32.0  # never reallocated
        assert e.abs().max() > 0  # the singular values start at 0 and were trained
        # B (A * E) * alpha / (ranknum + 1e-5), written out here (float64)
        product = (b.double() @ (a.double() * e.double())) * (32.0 / (12.0 + 1e-5))
        conv = isinstance(model.get_submodule(d.param[: -len(".weight")]), Conv1D)
        assert conv == (name == "tiny_gpt2")
        expected = product.T if conv else product  # GPT-2's Conv1D stores (in, out)
        assert d.delta.shape == params[d.param].shape
        assert torch.allclose(d.delta.double(), expected, rtol=1e-5, atol=1e-9)

    # the merged deltas compute what the trained adapters computed (dropout off)
    merged, nll1 = with_deltas(model, tok, out)
    assert torch.allclose(merged, out.tensors["final_logits"], atol=1e-5, rtol=1e-5)
    assert_untouched(model, snap)  # applied() restored bit for bit
    assert nll1 < nll0
    assert out.info["kind"] == "adalora" and out.info["steps"] == 4
    assert len(out.info["penalty_trajectory"]) == 5  # 4 updates + the final measurement


def test_peft_merge_agrees_with_ours(tiny):
    """peft's own SVDLinear.get_delta_weight and forward agree with :func:`adalora_delta`."""
    from peft import AdaLoraConfig
    from peft.tuners.adalora import AdaLoraModel

    name, model, tok, spec, cfg = tiny
    snap = snapshot(model)
    path = qv_paths(name, spec, model)[0][: -len(".weight")]
    torch.manual_seed(0)
    tuner = AdaLoraModel(model, AdaLoraConfig(target_modules=[path], total_step=1, lora_alpha=32,
                                              fan_in_fan_out=name == "tiny_gpt2"), "xling_edit")
    try:
        m = model.get_submodule(path)
        with torch.no_grad():
            m.lora_E["xling_edit"].normal_()
        ours = adalora_delta(m.lora_A["xling_edit"], m.lora_E["xling_edit"], m.lora_B["xling_edit"],
                             m.scaling["xling_edit"], float(m.ranknum["xling_edit"]), name == "tiny_gpt2")
        assert torch.allclose(ours.float(), m.get_delta_weight("xling_edit").detach(), atol=1e-7)
        x = torch.randn(2, m.get_base_layer().weight.shape[0 if name == "tiny_gpt2" else 1])
        with torch.no_grad():
            base = m.get_base_layer()
            w = base.weight.double() + ours
            y = x.double() @ (w if name == "tiny_gpt2" else w.T)
            if base.bias is not None:
                y = y + base.bias.double()
            assert torch.allclose(m(x).double(), y, atol=1e-5)
    finally:
        tuner.unload()
    assert_untouched(model, snap)


def test_the_loss_is_easyedits_labels_loss_plus_peft_penalty():
    """What EasyEdit's execute_lora backpropagates: peft's AdaLoRA model called with labels (the
    prompt masked with -100) returns the model's NLL + 0.5 · the orthogonality penalty."""
    from peft import AdaLoraConfig
    from peft.tuners.adalora import AdaLoraModel
    from tests.conftest import model_cfg
    from xling_edit.models import load_model

    model, tok = load_model(model_cfg("tiny_llama"), seed=0)
    model.eval()
    enc = encode(tok, FACT.prompt, FACT.target_new, " ")
    full = tok(f"{FACT.prompt} {FACT.target_new}", return_tensors="pt")["input_ids"]
    n_prompt = len(tok(FACT.prompt)["input_ids"])
    assert full[0].tolist() == list(enc.input_ids) and n_prompt == enc.n_prompt
    labels = full.clone()
    labels[0, :n_prompt] = -100
    torch.manual_seed(0)
    tuner = AdaLoraModel(model, AdaLoraConfig(r=8, lora_alpha=32, lora_dropout=0.1,
                                              target_modules=["q_proj", "v_proj"], total_step=70), "d")
    try:
        layers = [m for m in model.modules() if hasattr(m, "lora_E")]
        for m in layers:
            with torch.no_grad():
                m.lora_E["d"].normal_()  # the adapters act
            m.lora_dropout["d"].eval()
        peft_loss = float(tuner(input_ids=full, labels=labels).loss.detach())
        pairs = [(m.lora_A["d"], m.lora_B["d"]) for m in layers]
        with torch.no_grad():
            ours = float(lm_target_nll(model, full, enc)[0] + 0.5 * orthogonality_penalty(pairs))
            without = float(lm_target_nll(model, full, enc)[0])
    finally:
        tuner.unload()
    assert ours == pytest.approx(peft_loss, rel=1e-6)
    assert abs(without - peft_loss) > 0.1  # the penalty is there: without it the loss differs


def test_orthogonality_penalty_on_hand_numbers():
    a = torch.tensor([[1.0, 0.0], [0.0, 2.0]])  # A Aᵀ = diag(1, 4): ‖. − I‖ = 3
    b = torch.tensor([[0.0, 0.0], [0.0, 0.0]])  # Bᵀ B = 0: ‖. − I‖ = √2
    assert float(orthogonality_penalty([(a, b)])) == pytest.approx((3 + math.sqrt(2)) / 2)


# ------------------------------------------------------------------ the single-layer variant
def test_lora_down_delta_is_the_adapter_product_and_the_model_is_left_as_it_was(tiny):
    name, model, tok, spec, cfg = tiny
    snap = snapshot(model)
    nll0 = target_nll(model, tok)
    out = LoraEditor(DOWN_QUICK, spec).edit(model, tok, request())
    assert_untouched(model, snap)
    params = dict(model.named_parameters())
    (delta,) = out.deltas
    assert delta.param == spec.down_proj_weight_name(1)
    assert delta.delta.shape == params[delta.param].shape
    ad = out.tensors["adapters"][delta.param]
    a, b = ad["A"].double(), ad["B"].double()
    assert a.shape[0] == 4 and b.shape[1] == 4 and b.abs().max() > 0  # rank 4, B trained from 0
    product = (8.0 / 4) * b @ a  # (out, in)
    conv = isinstance(spec.module(model, "down_proj", 1), Conv1D)
    expected = product.T if conv else product
    assert torch.allclose(delta.delta.double(), expected, rtol=1e-5, atol=1e-7)
    merged, nll1 = with_deltas(model, tok, out)
    assert torch.allclose(merged, out.tensors["final_logits"], atol=1e-4, rtol=1e-4)
    assert nll1 < nll0 and out.info["kind"] == "lora"


def test_lora_norm_constraint_bounds_the_merged_change(tiny):
    name, model, tok, spec, cfg = tiny
    ed = LoraEditor({**DOWN_QUICK, "lr": 5.0e-2, "norm_constraint": 1.0e-3}, spec)
    out = ed.edit(model, tok, request())
    unbounded = LoraEditor({**DOWN_QUICK, "lr": 5.0e-2}, spec).edit(model, tok, request())
    assert float(unbounded.deltas[0].delta.abs().max()) > 1.0e-3  # the bound is active
    assert float(out.deltas[0].delta.abs().max()) <= 1.0e-3 * (1 + 1e-5)


def test_peft_is_removed_even_when_training_fails(tiny, monkeypatch):
    name, model, tok, spec, cfg = tiny
    snap = snapshot(model)
    calls = []

    def broken(*args):
        calls.append(1)
        assert any(type(m).__module__.startswith("peft") for m in model.modules())  # injected
        raise RuntimeError("boom")

    monkeypatch.setitem(lora_mod.LOSS_FUNCTIONS, "target", broken)
    for hp in (PUBLISHED_QUICK, DOWN_QUICK):
        with pytest.raises(RuntimeError, match="boom"):
            LoraEditor(hp, spec).edit(model, tok, request())
        assert_untouched(model, snap)
    assert len(calls) == 2


# ------------------------------------------------------------------ FT-L
class Positions(nn.Module):
    """A causal stand-in whose logits at position p are row p of ``table`` (whatever follows)."""

    def __init__(self, table):
        super().__init__()
        self.table = table
        self.w = nn.Parameter(torch.zeros(1))

    def forward(self, input_ids, use_cache=False):
        return SimpleNamespace(logits=(self.table[: input_ids.shape[1]] + self.w)[None])


def test_ft_l_loss_reads_every_target_token_at_the_last_prompt_position():
    # prompt = 3 tokens (positions 0-2), target = tokens 2 then 3 (positions 3, 4)
    ln2 = math.log(2.0)
    table = torch.tensor([[9.0, 0, 0, 0],
                          [9.0, 0, 0, 0],
                          [0.0, 0, ln2, 0],   # last prompt position: softmax = [1, 1, 2, 1] / 5
                          [5.0, 0, 0, 0],     # after the first target token
                          [9.0, 0, 0, 0]])
    ids = torch.tensor([[1, 1, 1, 2, 3]])
    enc = Encoded((1, 1, 1, 2, 3), ((0, 0),) * 5, 3)
    loss, logits = prompt_last_nll(Positions(table), ids, enc)
    assert float(loss) == pytest.approx(-(math.log(0.4) + math.log(0.2)) / 2, rel=1e-6)  # 1.2629
    assert torch.equal(logits, table[2:3])
    # teacher forcing reads token 3 at position 3 instead: a different number
    tf, _ = lm_target_nll(Positions(table), ids, enc)
    assert float(tf) == pytest.approx((-math.log(0.4) + math.log(math.exp(5) + 3)) / 2, rel=1e-6)


def test_ft_l_loss_on_a_real_model_is_the_prompt_alone(tiny):
    name, model, tok, spec, cfg = tiny
    enc = encode(tok, FACT.prompt, "Rome and Paris", " ")
    ids = torch.tensor([enc.input_ids])
    with torch.no_grad():
        loss, _ = prompt_last_nll(model, ids, enc)
        logp = torch.log_softmax(model(input_ids=ids[:, :enc.n_prompt]).logits[0, -1].float(), -1)
    assert len(enc.target_ids) > 1
    assert float(loss) == pytest.approx(float(-logp[list(enc.target_ids)].mean()), rel=1e-5)


def test_clamp_to_the_ball_on_hand_numbers():
    w0 = torch.tensor([1.0, -2.0, 0.5])
    w = torch.tensor([1.3, -2.0001, 0.4])
    assert torch.allclose(clamp_to_ball(w, w0, 0.1), torch.tensor([1.1, -2.0001, 0.4]))


def test_ft_l_clamps_after_every_step_and_restores_the_weights(tiny, monkeypatch):
    name, model, tok, spec, cfg = tiny
    snap = snapshot(model)
    c = 2.0e-3
    hp = {**FT_L, "lr": 1.0e-2, "norm_constraint": c, "steps": 5, "loss_stop": 0.0}
    seen = []
    real = lora_mod.clamp_to_ball

    def spy(w, w0, radius):  # every step ends inside the ball
        out = real(w, w0, radius)
        seen.append(float((out - w0).abs().max()))
        return out

    monkeypatch.setattr(lora_mod, "clamp_to_ball", spy)
    out = LoraEditor(hp, spec).edit(model, tok, request())
    assert_untouched(model, snap)  # every trained parameter back to W0 exactly
    n_params = 2 if name == "tiny_gpt2" else 1  # GPT-2's c_proj has a bias: ROME trains it too
    assert len(seen) == 5 * n_params and max(seen) <= c * (1 + 1e-4)
    module = spec.down_proj.format(1)
    assert [d.param for d in out.deltas] == [f"{module}.weight", f"{module}.bias"][:n_params]
    d = out.deltas[0].delta
    assert float(d.abs().max()) <= c * (1 + 1e-4)
    assert float((d.abs() > 0.99 * c).float().mean()) > 0.1  # lr 1e-2 >> c: the bound binds
    with applied(model, out.deltas):
        enc = out.tensors["encoded"]
        with torch.no_grad():
            after, _ = prompt_last_nll(model, torch.tensor([enc.input_ids]), enc)
    assert_untouched(model, snap)
    assert float(after) < out.info["nll_before"]
    assert out.info["kind"] == "full" and out.info["loss"] == "prompt_last"


def test_ft_l_stops_once_the_loss_is_below_its_threshold(tiny):
    """ROME's FT: no update once the loss is below the threshold, and the loop ends there."""
    name, model, tok, spec, cfg = tiny
    hp = {**FT_L, "lr": 1.0e-2, "norm_constraint": None, "steps": 8, "loss_stop": 0.0}
    full = LoraEditor(hp, spec).edit(model, tok, request()).info["nll_trajectory"]
    assert full[3] < min(full[:3])  # it was still going down after 3 updates
    threshold = (full[3] + min(full[:3])) / 2
    out = LoraEditor({**hp, "loss_stop": threshold}, spec).edit(model, tok, request())
    assert out.info["nll_trajectory"] == full[:4] and out.info["steps"] == 3


def test_bad_settings_are_one_line_errors(tiny):
    name, model, tok, spec, cfg = tiny
    with pytest.raises(ValueError, match="method.loss='last'"):
        LoraEditConfig(loss="last")
    with pytest.raises(ValueError, match="method.kind='qlora'"):
        LoraEditConfig(kind="qlora")
    with pytest.raises(ValueError, match="stop_at_argmax"):
        LoraEditConfig(loss="prompt_last", stop_at_argmax=True)
    from xling_edit.models import ModelSpec

    bare = ModelSpec(**{**spec.__dict__, "q_proj": None})
    with pytest.raises(ValueError, match="model.templates.q_proj is not set"):
        LoraEditor(PUBLISHED_QUICK, bare).edit(model, tok, request())


# ------------------------------------------------------------------ configs and runs
def compose(*overrides):
    from xling_edit import api

    return api.compose(list(overrides))


@pytest.mark.parametrize("method, variant, kind, loss", [
    ("lora", "published", "adalora", "target"),
    ("lora_down", "lora_down", "lora", "target"),
    ("ft_l", "ft_l", "full", "prompt_last"),
    ("ft_l_nll", "ft_l_nll", "full", "target"),
])
def test_the_method_files_compose(method, variant, kind, loss):
    cfg = compose(f"method={method}", "model=gemma3_270m")
    m = cfg.method
    assert (m.name, m.variant, m.kind, m.loss) == ("lora", variant, kind, loss)
    if method == "lora":  # the published form reads nothing tuned for the old single-layer one
        assert list(m.layers) == [] and list(m.target) == ["q_proj", "v_proj"] and m.steps == 70
    if method == "lora_down":  # ... which its variant keeps
        assert list(m.layers) == list(cfg.model.hparams.lora_down.layers) == [14]
        assert m.lr == cfg.model.hparams.lora_down.lr and m.rank == 8 and m.dropout == 0.0
    if method.startswith("ft_l"):
        assert list(m.layers) == [0] and m.norm_constraint == 5.0e-4 and m.steps == 25
    quick = compose(f"method={method}", "debug=tiny")
    assert quick.method.steps == 3  # debug=quick shortens every form


@pytest.mark.parametrize("method, expected", [
    ("lora", {}),
    ("ft_l", {}),
    ("lora_down", {"kind": "lora", "target": ["down_proj"], "layers": [14], "rank": 8,
                   "dropout": 0.0, "orth_reg_weight": 0.0, "steps": 25, "lr": 5.0e-4,
                   "loss_stop": 1.0, "target_suffix": ""}),
    ("ft_l_nll", {"loss": "target"}),
])
def test_published_forms_list_no_deviation_and_variants_list_theirs(method, expected):
    from xling_edit.editing import method_config
    from xling_edit.editing.reference import setup_deviations
    from xling_edit.models import ModelSpec

    cfg = compose(f"method={method}", "model=gemma3_270m")
    mcfg = method_config(cfg)
    ed = LoraEditor(mcfg, ModelSpec.from_config(cfg.model.templates))
    got = setup_deviations(ed.published_setup(), mcfg, cfg.stats, cfg.edit_lang, False, ed.practice())
    assert got == expected


def test_a_fused_qkv_projection_is_listed():
    from xling_edit.editing.reference import setup_deviations
    from xling_edit.models import ModelSpec
    from tests.conftest import model_cfg

    spec = ModelSpec.from_config(model_cfg("tiny_gpt2").templates)
    ed = LoraEditor({}, spec)
    got = setup_deviations(ed.published_setup(), LoraEditConfig().__dict__, {}, {}, False, ed.practice())
    assert list(got) == ["attention_projections"] and "c_attn" in got["attention_projections"]


def test_run_py_end_to_end(tmp_path):
    out = tmp_path / "job"
    r = subprocess.run([sys.executable, "run.py", "model=tiny_llama", "method=lora", "data.max_cases=2",
                        "eval_langs=[en,de]", "stats.per_lang=4", f"hydra.run.dir={out}",
                        f"model.cache_dir={tmp_path / 'cache'}", "print_tables=false", "threads=1"],
                       cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    lines = [json.loads(l) for l in (out / "results.jsonl").read_text().splitlines()]
    assert len(lines) == 4 and all(l["status"] == "ok" for l in lines)
    assert all(l["method"] == "lora" and l["variant"] == "published" for l in lines)
    assert all(l["edit"]["edit_kind"] == "weights" and l["edit"]["kind"] == "adalora" for l in lines)
    # tiny_llama's model.hparams.lora shortens the run to 5 steps: the only deviation
    assert all(l["edit"]["deviations"] == {"steps": 5} for l in lines)
    assert all(l["post"] is not None and l["edit"]["nll_after"] < l["edit"]["nll_before"] for l in lines)
    info = json.loads((out / "run_info.json").read_text())
    assert "EasyEdit" in info["published_reference"]


def test_one_target_name_without_brackets():
    from xling_edit.editing import method_config

    cfg = compose("method=lora_down", "model=gemma3_270m", "method.target=down_proj")
    from xling_edit.config import schema_from_mapping

    assert schema_from_mapping(LoraEditConfig, method_config(cfg)).target == ["down_proj"]
    assert LoraEditConfig(target="o_proj").target == ["o_proj"]


def test_easyedits_literal_suffix_is_trained_after_the_target(tiny):
    """EasyEdit trains on f"{prompt} {target} <|endoftext|>": the published form's loss covers the
    suffix's tokens too; lora_down (target_suffix "") the target's alone."""
    name, model, tok, spec, cfg = tiny
    pub = LoraEditor({**PUBLISHED_QUICK, "steps": 1}, spec).edit(model, tok, request())
    bare = LoraEditor({**PUBLISHED_QUICK, "steps": 1, "target_suffix": ""}, spec).edit(model, tok, request())
    enc = pub.tensors["encoded"]
    suffix = tok.decode(enc.input_ids[enc.n_prompt:])
    assert suffix.strip().endswith("<|endoftext|>") and FACT.target_new in suffix
    assert pub.info["n_target_tokens"] > bare.info["n_target_tokens"]
    assert tok.decode(bare.tensors["encoded"].input_ids[enc.n_prompt:]).strip() == FACT.target_new


@pytest.mark.parametrize("section", ["lora_down", "ft_l", "lora"])
def test_a_misspelt_model_value_for_a_named_form_is_an_error(section):
    from xling_edit.editing import method_config

    cfg = compose("method=lora_down", "model=gemma3_270m", f"+model.hparams.{section}.lyers=[3]")
    with pytest.raises(ValueError, match=rf"model\.hparams\.{section} has unknown fields \['lyers'\]"):
        method_config(cfg)
    method_config(compose("method=lora_down", "model=gemma3_270m"))  # the shipped values are known
