"""Every 7B model config of the paper: a tiny random model of the same architecture class with the
same module names takes one ROME edit through that config's templates and hyperparameters."""

import pytest
import torch
from omegaconf import OmegaConf

from tests.conftest import ROOT, language, model_cfg
from xling_edit.editing.memit import MemitConfig
from xling_edit.editing.rome import RomeConfig
from xling_edit.data.schema import LangRecord
from xling_edit.editing.base import EditRequest, applied
from xling_edit.editing.rome import RomeEditor
from xling_edit.models import ModelSpec
from xling_edit.models.loading import random_model

# config -> transformers model_type of the real checkpoint (LlamaForCausalLM / MistralForCausalLM /
# Qwen2ForCausalLM); the other families (Qwen3, Llama-3, Phi, GPT-NeoX) are edited end to end in
# test_model_families.py
ZOO = {"llama2_7b": "llama", "mistral_7b": "mistral", "tower_instruct_7b": "llama",
       "openhathi_7b": "llama", "tamil_llama_7b": "llama", "kan_llama_7b": "llama",
       "qwen2_5_7b": "qwen2"}
CLASSES = {"llama": "LlamaForCausalLM", "mistral": "MistralForCausalLM", "qwen2": "Qwen2ForCausalLM"}
RECORD = LangRecord(subject="Eiffel Tower", prompt="The Eiffel Tower is located in",
                    target_new="Rome", target_true="Paris")


def test_every_7b_config_is_covered():
    assert {p.stem for p in (ROOT / "conf" / "model").glob("*_7b.yaml")} == set(ZOO)


@pytest.mark.parametrize("name", sorted(ZOO))
def test_zoo_config_edits_a_tiny_model_of_its_architecture(name):
    cfg = model_cfg(name)
    assert cfg.source == "hub" and "/" in cfg.path and cfg.dtype == "bfloat16"
    rome = OmegaConf.merge(OmegaConf.structured(RomeConfig), cfg.hparams.rome)
    memit = OmegaConf.merge(OmegaConf.structured(MemitConfig), cfg.hparams.memit)
    n_layers = max([rome.layer, *memit.layers]) + 1  # every layer the config names exists
    init = dict(model_type=ZOO[name], hidden_size=32, intermediate_size=64, num_hidden_layers=n_layers,
                num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256)
    model, tok = random_model(init, seed=0)
    assert type(model).__name__ == CLASSES[ZOO[name]]
    model.eval().requires_grad_(False)
    spec = ModelSpec.from_config(cfg.templates)
    for kind in ("embed", "final_norm", "lm_head"):
        spec.module(model, kind)  # every template names a real module
    for layer in memit.layers:
        spec.module(model, "down_proj", layer)
    hp = OmegaConf.merge(rome, {"v_steps": 2, "context_templates": [[5, 1]]})
    editor = RomeEditor(hp, spec, seed=0)
    out = editor.edit(model, tok, EditRequest("c0", language("en"), RECORD))
    (d,) = out.deltas
    assert d.param == f"model.layers.{rome.layer}.mlp.down_proj.weight"
    before = spec.module(model, "down_proj", rome.layer).weight.clone()
    with applied(model, out.deltas):
        assert not torch.equal(spec.module(model, "down_proj", rome.layer).weight, before)
    assert torch.equal(spec.module(model, "down_proj", rome.layer).weight, before)
