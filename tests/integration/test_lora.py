"""LoRA (through peft) and FT-L on tiny random models: merged deltas, a model left exactly as it
was, exact restoration, the L∞ bound, and an end-to-end run."""

import json
import subprocess
import sys

import pytest
import torch
from transformers.pytorch_utils import Conv1D

from tests.conftest import ROOT, language
from xling_edit.data.schema import LangRecord
from xling_edit.editing import lora as lora_mod
from xling_edit.editing.base import EditRequest, applied
from xling_edit.editing.lora import LoraEditor
from xling_edit.evaluation.text import encode

FACT = LangRecord(subject="Eiffel Tower", prompt="The Eiffel Tower is located in", target_new="Rome")
QUICK = {"steps": 5, "lr": 1.0e-2, "loss_stop": 0.0, "layers": [1]}


def request(rec=FACT):
    return EditRequest("eiffel", language("en"), rec)


def snapshot(model):
    """Everything the edit must leave as it found it."""
    return {"state": {k: v.detach().clone() for k, v in model.state_dict().items()},
            "types": [(n, type(m)) for n, m in model.named_modules()],
            "grad": [(n, p.requires_grad) for n, p in model.named_parameters()]}


def assert_untouched(model, snap):
    assert [(n, type(m)) for n, m in model.named_modules()] == snap["types"]
    assert not any(type(m).__module__.startswith("peft") for m in model.modules())
    assert not hasattr(model, "peft_config")
    state = model.state_dict()
    assert list(state) == list(snap["state"])
    assert all(torch.equal(state[k], v) for k, v in snap["state"].items())  # bit for bit
    assert [(n, p.requires_grad) for n, p in model.named_parameters()] == snap["grad"]


def target_nll(model, tok, rec=FACT):
    enc = encode(tok, rec.prompt, rec.target_new, " ")
    ids = torch.tensor([enc.input_ids])
    with torch.no_grad():
        logits = model(input_ids=ids).logits[0, enc.n_prompt - 1: -1]
    return float(torch.nn.functional.cross_entropy(logits.float(), ids[0, enc.n_prompt:]))


def test_lora_delta_is_the_adapter_product_and_the_model_is_left_as_it_was(tiny):
    name, model, tok, spec, cfg = tiny
    snap = snapshot(model)
    nll0 = target_nll(model, tok)
    ed = LoraEditor({**QUICK, "rank": 4, "alpha": 8.0}, spec)
    out = ed.edit(model, tok, request())
    assert_untouched(model, snap)  # no peft wrapper, original weights and flags

    params = dict(model.named_parameters())
    (delta,) = out.deltas
    assert delta.param == spec.down_proj_weight_name(1)
    assert delta.delta.shape == params[delta.param].shape
    ad = out.tensors["adapters"][delta.param]
    a, b = ad["A"].double(), ad["B"].double()
    assert a.shape[0] == 4 and b.shape[1] == 4 and b.abs().max() > 0  # rank 4, B trained from 0
    product = (8.0 / 4) * b @ a  # (out, in)
    conv = isinstance(spec.module(model, "down_proj", 1), Conv1D)
    assert conv == (name == "tiny_gpt2")
    expected = product.T if conv else product  # GPT-2's Conv1D stores (in, out)
    assert torch.allclose(delta.delta.double(), expected, rtol=1e-5, atol=1e-7)

    # the merged delta computes what the adapters computed at the end of training
    enc = out.tensors["encoded"]
    ids = torch.tensor([enc.input_ids])
    with applied(model, out.deltas):
        with torch.no_grad():
            merged = model(input_ids=ids).logits[0, enc.n_prompt - 1: -1]
        nll1 = target_nll(model, tok)
    assert torch.allclose(merged, out.tensors["final_logits"], atol=1e-4, rtol=1e-4)
    assert_untouched(model, snap)  # applied() restored bit for bit
    assert nll1 < nll0  # the edit made the target more likely
    assert out.info["edit_kind"] == "weights" and out.info["kind"] == "lora"
    assert out.info["nll_after"] < out.info["nll_before"]


def test_lora_norm_constraint_bounds_the_merged_change(tiny):
    name, model, tok, spec, cfg = tiny
    ed = LoraEditor({**QUICK, "lr": 5.0e-2, "norm_constraint": 1.0e-3}, spec)
    out = ed.edit(model, tok, request())
    unbounded = LoraEditor({**QUICK, "lr": 5.0e-2}, spec).edit(model, tok, request())
    assert float(unbounded.deltas[0].delta.abs().max()) > 1.0e-3  # the bound is active
    assert float(out.deltas[0].delta.abs().max()) <= 1.0e-3 * (1 + 1e-5)


def test_ft_l_respects_the_linf_bound_and_restores_the_weight(tiny):
    name, model, tok, spec, cfg = tiny
    snap = snapshot(model)
    nll0 = target_nll(model, tok)
    c = 2.0e-3
    ed = LoraEditor({**QUICK, "kind": "full", "norm_constraint": c}, spec)
    out = ed.edit(model, tok, request())
    assert_untouched(model, snap)  # the trained weight is back to W0 exactly
    (delta,) = out.deltas
    assert delta.param == spec.down_proj_weight_name(1)
    d = delta.delta
    assert d.abs().max() <= torch.tensor(c, dtype=d.dtype)  # c as the weight's dtype holds it
    assert float((d.abs() == c).float().mean()) > 0.1  # lr 1e-2 >> c: the bound binds
    with applied(model, out.deltas):
        nll1 = target_nll(model, tok)
    assert_untouched(model, snap)
    assert nll1 < nll0
    assert out.info["kind"] == "full" and out.info["delta_max_abs"] == float(d.abs().max())


def test_peft_is_removed_even_when_training_fails(tiny, monkeypatch):
    name, model, tok, spec, cfg = tiny
    snap = snapshot(model)
    calls = []

    def broken(*args):
        calls.append(1)
        assert any(type(m).__module__.startswith("peft") for m in model.modules())  # injected
        raise RuntimeError("boom")

    monkeypatch.setattr(lora_mod, "target_nll", broken)
    with pytest.raises(RuntimeError, match="boom"):
        LoraEditor(QUICK, spec).edit(model, tok, request())
    assert calls
    assert_untouched(model, snap)


def test_config_files_select_the_kind():
    from hydra import compose, initialize_config_dir

    from xling_edit.configstore import register_configs

    register_configs()
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base=None):
        lora = compose("config", overrides=["method=lora", "model=tiny_llama"])
        ftl = compose("config", overrides=["method=ft_l", "model=tiny_llama"])
    assert lora.method.kind == "lora" and lora.method.variant == "lora"
    assert lora.method.layers == list(lora.model.hparams.lora.layers)  # the model's value
    assert ftl.method.name == "lora" and ftl.method.kind == "full" and ftl.method.variant == "full"
    assert ftl.method.norm_constraint == 5.0e-4


def test_run_py_end_to_end(tmp_path):
    out = tmp_path / "job"
    r = subprocess.run([sys.executable, "run.py", "model=tiny_llama", "method=lora", "data.max_cases=2",
                        "eval_langs=[en,de]", "stats.per_lang=4", f"hydra.run.dir={out}",
                        f"model.cache_dir={tmp_path / 'cache'}", "print_tables=false"],
                       cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    lines = [json.loads(l) for l in (out / "results.jsonl").read_text().splitlines()]
    assert len(lines) == 4 and all(l["status"] == "ok" for l in lines)
    assert all(l["method"] == "lora" and l["variant"] == "lora" for l in lines)
    assert all(l["edit"]["edit_kind"] == "weights" for l in lines)
    assert all(l["post"] is not None and l["edit"]["nll_after"] < l["edit"]["nll_before"] for l in lines)
