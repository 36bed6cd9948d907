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


def test_edit_sequence_keeps_every_edit_each_on_top_of_the_last(tmp_path):
    overrides = ["model=tiny_llama", "method.v_steps=3", "stats.per_lang=4",
                 f"model.cache_dir={tmp_path / 'cache'}"]
    first = dict(subject="Paris", prompt="The capital of France is Paris, it", target="Rome")
    second = dict(subject="Berlin", prompt="Berlin is the capital of", target="Spain")
    one, _ = api.edit(overrides, **first)
    both, _ = api.edit_sequence(overrides, [first, second])
    name = next(n for n, _ in one.named_parameters() if n.endswith("layers.0.mlp.down_proj.weight"))
    w1, w2 = dict(one.named_parameters())[name], dict(both.named_parameters())[name]
    assert not torch.equal(w1, w2) and len(both.xling_edit_info) == 2
    # the second edit was computed on the model the first left: replaying it by hand agrees
    again, _ = api.edit_sequence(overrides, [second], model=one, tok=_)
    assert torch.allclose(dict(again.named_parameters())[name], w2, atol=1e-6)


def test_sequential_mode_exports_the_edited_model(tmp_path):
    from transformers import AutoModelForCausalLM

    from xling_edit.models import load_model

    overrides = ["model=tiny_llama", "debug=quick", "method=rome", "method.mode=sequential",
                 "method.num_edits=2", "export_model=export", f"model.cache_dir={tmp_path / 'cache'}"]
    api.run(overrides, out_dir=tmp_path / "job")
    exported = tmp_path / "job" / "export" / "group0"
    assert (exported / "model.safetensors").exists() and (exported / "tokenizer_config.json").exists()
    base, _ = load_model(api.compose(overrides).model, seed=0)
    saved = AutoModelForCausalLM.from_pretrained(exported)
    changed = [n for n, p in saved.named_parameters()
               if not torch.equal(p, dict(base.named_parameters())[n])]
    assert changed and all(n.endswith("mlp.down_proj.weight") for n in changed)
    with pytest.raises(Exception, match="needs method.mode=sequential"):
        api.run(["model=tiny_llama", "debug=quick", "export_model=x",
                 f"model.cache_dir={tmp_path / 'cache'}"], out_dir=tmp_path / "job2")
