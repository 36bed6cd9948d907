"""The Python API: api.run returns the job's lines as a DataFrame; api.edit keeps an edit in
the model, and the edited model saves and reloads with the edit in it."""

import pytest
import torch

from xling_edit import api


def test_run_returns_the_results_lines(tmp_path):
    pytest.importorskip("pandas")
    df = api.run(["model=tiny_llama", "debug=quick", f"model.cache_dir={tmp_path / 'cache'}"],
                 out_dir=tmp_path / "job")
    assert len(df) == 4 and set(df["eval_lang"]) == {"en", "de"}  # 2 cases x 2 languages
    assert {"post.reliability.exact", "post.reliability.gen", "edit.steps"} <= set(df.columns)
    assert isinstance(df["answers"][0], list) and df.attrs["out_dir"] == str(tmp_path / "job")


def test_edit_is_kept_and_saves(tmp_path):
    from transformers import AutoModelForCausalLM

    overrides = ["model=tiny_llama", "method.v_steps=3", "stats.per_lang=4",
                 f"model.cache_dir={tmp_path / 'cache'}"]
    from xling_edit.models import load_model

    base, _ = load_model(api.compose(overrides).model, seed=0)
    model, tok = api.edit(overrides, subject="Paris", prompt="The capital of France is Paris, it",
                          target="Rome")
    changed = [n for n, p in model.named_parameters()
               if not torch.equal(p, dict(base.named_parameters())[n])]
    assert len(changed) == 1 and changed[0].endswith("mlp.down_proj.weight")  # ROME: one matrix
    model.save_pretrained(tmp_path / "edited")
    again = AutoModelForCausalLM.from_pretrained(tmp_path / "edited")
    name = changed[0]
    assert torch.equal(dict(again.named_parameters())[name], dict(model.named_parameters())[name])
    assert (tmp_path / "edited" / "model.safetensors").exists()


def test_context_edit_returns_its_context(tmp_path):
    model, _ = api.edit(["model=tiny_llama", "method=route", f"model.cache_dir={tmp_path / 'cache'}"],
                        subject="Spike Hughes", prompt="Where does Spike Hughes come from?",
                        target="Philadelphia")
    assert model.xling_edit_context("hi", "स्पाइक ह्यूजेस कहाँ से आया है?").startswith("स्पाइक ह्यूजेस")
