"""A model by configuration only: each shipped family config (Qwen2/2.5, Qwen3, Mistral, Llama-3,
Phi-3, Phi-2, GPT-NeoX/Pythia) runs one ROME and one MEMIT edit end to end (the whole pipeline:
checks, load, statistics, edit, evaluation, restore) on a tiny random model of the same class
that inherits the family config's templates (conf/model/tiny_<family>.yaml)."""

import json

import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from tests.conftest import ROOT, SEARCHPATH, language
from xling_edit import pipeline
from xling_edit.editing.rome import RomeConfig
from xling_edit.configstore import register_configs
from xling_edit.data.schema import LangRecord
from xling_edit.editing.base import EditRequest, applied
from xling_edit.editing.rome import RomeEditor
from xling_edit.models import ModelSpec, load_model
from xling_edit.models.loading import model_skeleton
from xling_edit.models.spec import weight_as_out_in

register_configs()

# tiny config -> (family config it inherits, transformers class of the family's checkpoints)
FAMILIES = {
    "tiny_qwen2": ("qwen2_5_7b", "Qwen2ForCausalLM"),
    "tiny_qwen3": ("qwen3_8b", "Qwen3ForCausalLM"),
    "tiny_mistral": ("mistral_7b", "MistralForCausalLM"),
    "tiny_llama3": ("llama3_8b", "LlamaForCausalLM"),
    "tiny_phi3": ("phi3_mini", "Phi3ForCausalLM"),
    "tiny_phi2": ("phi2", "PhiForCausalLM"),
    "tiny_gpt_neox": ("pythia_6_9b", "GPTNeoXForCausalLM"),
}


RECORD = LangRecord(subject="Eiffel Tower", prompt="The Eiffel Tower is located in",
                    target_new="Rome", target_true="Paris")


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    """One statistics cache for the module: ROME and MEMIT of a family share layer 0."""
    return tmp_path_factory.mktemp("cache")


def compose_cfg(*overrides):
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        return compose(config_name="config", overrides=[SEARCHPATH, *overrides])


@pytest.mark.parametrize("tiny", sorted(FAMILIES))
def test_tiny_config_uses_its_family_templates(tiny):
    family, cls = FAMILIES[tiny]
    t, f = compose_cfg(f"model={tiny}").model, compose_cfg(f"model={family}").model
    assert t.templates == f.templates and t.source == "random" and f.source == "hub"
    assert type(model_skeleton(t)).__name__ == cls
    # the family's own hub config keeps its depth-appropriate layers
    assert f.hparams.rome.layer >= 5 and len(f.hparams.memit.layers) >= 5


@pytest.mark.parametrize("method", ["rome", "memit"])
@pytest.mark.parametrize("tiny", sorted(FAMILIES))
def test_family_edits_end_to_end(tmp_path, cache, tiny, method):
    cfg = compose_cfg(f"model={tiny}", f"method={method}", "debug=quick", "data.max_cases=1",
                      "eval_langs=[en]", "method.v_steps=15", f"model.cache_dir={cache}",
                      "print_tables=false")
    info = pipeline.run(cfg, out_dir=tmp_path / "job")
    assert info["case_status"] == {"ok": 1}, info["failures"]
    (line,) = [json.loads(l) for l in (tmp_path / "job" / "results.jsonl").read_text().splitlines()]
    edit = line["edit"]
    if method == "rome":
        assert edit["layer"] == 0 and edit["update_rel_norm"] > 0
    else:
        assert [p["layer"] for p in edit["per_layer"]] == [0, 1]
        assert all(p["update_rel_norm"] > 0 for p in edit["per_layer"])
    assert edit["covariance"].startswith("builtin:")
    # the update reached the model's output (a random model barely learns the target in 15 steps,
    # so only the change is asserted; the closed form is checked below)
    assert line["post"]["reliability.nll_new"] != line["pre"]["reliability.nll_new"]


@pytest.mark.parametrize("tiny", sorted(FAMILIES))
def test_rome_closed_form_through_family_templates(tiny):
    """W' k* = v* at the family's down_proj: the templates name the projection the key is read
    at and the value written to (a template pointing elsewhere breaks the identity)."""
    cfg = compose_cfg(f"model={tiny}")
    model, tok = load_model(cfg.model, seed=0)
    spec = ModelSpec.from_config(cfg.model.templates)
    hp = OmegaConf.merge(OmegaConf.structured(RomeConfig), cfg.model.hparams.rome,
                         {"context_templates": [[5, 1]]})
    out = RomeEditor(hp, spec, seed=0).edit(model, tok, EditRequest("c0", language("en"), RECORD))
    (d,) = out.deltas
    assert d.param == spec.down_proj_weight_name(0)
    down = spec.module(model, "down_proj", 0)
    with applied(model, out.deltas):
        w = weight_as_out_in(down).double()
        bias = down.bias.double() if getattr(down, "bias", None) is not None else 0.0
        assert torch.allclose(w @ out.tensors["k_star"].double() + bias, out.tensors["v_star"],
                              rtol=1e-4, atol=1e-4)


#: where each family's q and v projections live (one fused module where the attention fuses them)
QV = {"tiny_phi3": ["self_attn.qkv_proj"], "tiny_gpt_neox": ["attention.query_key_value"]}


@pytest.mark.parametrize("tiny", sorted(FAMILIES))
def test_published_lora_trains_every_q_and_v_projection_of_the_family(tiny):
    """The family's templates give per-block q_proj / v_proj paths (a fused q/k/v module once)."""
    from xling_edit.editing.lora import LoraEditor

    cfg = compose_cfg(f"model={tiny}").model
    model, tok = load_model(cfg, seed=0)
    spec = ModelSpec.from_config(cfg.templates)
    ed = LoraEditor({"steps": 1}, spec)
    out = ed.edit(model, tok, EditRequest("eiffel", language("en"), RECORD))
    n = spec.n_layers(model)
    block = spec.layer
    names = QV.get(tiny, ["self_attn.q_proj", "self_attn.v_proj"])
    assert [d.param for d in out.deltas] == [f"{block.format(i)}.{p}.weight" for i in range(n) for p in names]
    assert ("attention_projections" in ed.practice()) and (
        ("fused" in ed.practice()["attention_projections"]) == (tiny in QV))
