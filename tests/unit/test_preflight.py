"""Errors early and in one line: configuration, data, model files, templates and layers are
checked before any weights load (the model loader is replaced by one that fails the test)."""

import json

import pytest
from hydra import compose, initialize_config_dir

from tests.conftest import ROOT
from xling_edit import pipeline
from xling_edit.configstore import register_configs
from xling_edit.errors import ConfigError, UserError, WeightsNotReachable
from xling_edit.models.loading import model_skeleton
from xling_edit.models.spec import ModelSpec

register_configs()

HALF = {"case_id": 1, "subject": "S", "src": "Where is S?", "rephrase": "Where can S be found?",
        "old": "A", "alt": "B", "loc": "L?", "loc_ans": "C", "port": "P?", "port_ans": "D"}


def cfg(*overrides):
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        return compose(config_name="config", overrides=["model=tiny_llama", *overrides])


@pytest.fixture
def no_weights(monkeypatch):
    def boom(*a, **k):
        raise AssertionError("the model's weights were loaded")

    monkeypatch.setattr(pipeline, "load_model", boom)


def fails_before_loading(tmp_path, *overrides) -> str:
    with pytest.raises(UserError) as e:
        pipeline.run(cfg(*overrides), out_dir=tmp_path / "job")
    msg = str(e.value)
    assert "\n" not in msg.strip()  # one line
    assert not (tmp_path / "job" / "job.json").exists()  # no job started
    return msg


def bmike_dir(tmp_path, text: str) -> list[str]:
    d = tmp_path / "data" / "bm"
    d.mkdir(parents=True)
    (d / "cf_de.json").write_text(text, encoding="utf-8")
    return [f"data.root={tmp_path / 'data'}", "data=bmike53_counterfact", "data.dir=bm",
            "data.pattern='cf_{lang}.json'", "eval_langs=[en,de]"]


def test_wrong_templates_are_all_listed_with_nearby_modules(tmp_path, no_weights):
    msg = fails_before_loading(tmp_path, "model.templates.down_proj='model.layers.{}.mlp.c_proj'",
                               "model.templates.final_norm=model.ln_f")
    assert msg.startswith("model.templates do not match model tiny_llama (LlamaForCausalLM): ")
    assert ("down_proj='model.layers.{}.mlp.c_proj': no module 'model.layers.0.mlp.c_proj' "
            "(model.layers.0.mlp has: gate_proj, up_proj, down_proj, act_fn)") in msg
    assert "final_norm='model.ln_f': no module 'model.ln_f' (model has: embed_tokens, layers, norm" in msg


@pytest.mark.parametrize("method,override,shown", [("memit", "method.layers=[1,99]", "method.layers=[1, 99]"),
                                                   ("rome", "method.layer=99", "method.layer=99")])
def test_out_of_range_layer_names_the_depth(tmp_path, no_weights, method, override, shown):
    msg = fails_before_loading(tmp_path, f"method={method}", override)
    assert msg.startswith(f"{shown}: model tiny_llama (LlamaForCausalLM) has 3 layers (0-2)")


def test_hub_model_without_weights(tmp_path, no_weights, monkeypatch):
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    with pytest.raises(WeightsNotReachable, match="weights not reachable, set model.allow_download=true "
                                                  "or model.path"):
        pipeline.run(cfg("model=tamil_llama", "method=memit", "edit_lang=ta"), out_dir=tmp_path / "job")


def test_missing_model_path(tmp_path, no_weights):
    assert fails_before_loading(tmp_path, "model=hf_llama").startswith(
        "model.path is required for source='hub': a hub id or a local checkpoint directory")
    msg = fails_before_loading(tmp_path, "model=hf_llama", "model.source=local",
                               f"model.path={tmp_path / 'nowhere'}")
    assert "is not a directory (model.source=local)" in msg


@pytest.mark.parametrize("text,expected", [
    ("{not json", "invalid JSON"),
    (json.dumps([{"en": HALF, "de": HALF}] * 3)[:150], "invalid JSON"),  # truncated file
])
def test_broken_files_fail_before_loading(tmp_path, no_weights, text, expected):
    msg = fails_before_loading(tmp_path, *bmike_dir(tmp_path, text))
    assert "cf_de.json" in msg and expected in msg


def test_missing_field_names_file_case_and_field(tmp_path, no_weights):
    broken = {k: v for k, v in HALF.items() if k != "alt"}
    args = bmike_dir(tmp_path, json.dumps([{"en": HALF, "de": broken}]))
    msg = fails_before_loading(tmp_path, *args, "data.on_invalid=error")
    assert "cf_de.json: case '1': field 'de.alt': missing" in msg
    # with skip, the only case is left out: nothing valid remains
    assert "no valid cases" in fails_before_loading(tmp_path, *args, "data.on_invalid=skip")


@pytest.mark.parametrize("overrides,expected", [
    (["eval_langs=[en,xx]"], "eval_langs ['xx'] unknown; available:"),
    (["data.max_cases=0"], "data.max_cases must be >= 1"),
    (["data=bmike53_counterfact", "data.root=/nonexistent"], "BMIKE-53 directory not found: /nonexistent/bmike53/counterfact"),
    (["method=rome", "method.mode=batch"], "method.mode=batch needs a method that edits many facts at once"),
    (["stats.langs=[xx]"], "stats.langs ['xx']: none has a built-in statistics text"),
    (["+model.hparams.rome.nonsense=1"], "model.hparams.rome has unknown fields ['nonsense']"),
    # what generated-answer evaluation reads from a language file, and its token cap
    (["edit_lang.script=Klingon"], "conf/edit_lang/en.yaml: script 'Klingon' is not a Unicode script name"),
    (["edit_lang.morphology.suffixes=[a b]"], "conf/edit_lang/en.yaml: morphology.suffixes: 'a b' is not a non-empty string without spaces"),
    (["edit_lang.morphology.min_stem=0"], "morphology.min_stem must be an integer >= 1"),
    (["eval.max_new_tokens=0"], "eval.max_new_tokens must be an integer >= 1"),
])
def test_configuration_errors_fail_before_loading(tmp_path, no_weights, overrides, expected):
    assert expected in fails_before_loading(tmp_path, *overrides)


def test_nearby_modules_of_a_phi_style_model():
    """The issue's example: Llama names on a Phi-2 model list what its MLP has instead."""
    model = model_skeleton({"source": "random", "random_init": {
        "model_type": "phi", "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
        "num_attention_heads": 4}})
    spec = ModelSpec.from_config(cfg("model=tiny_llama").model.templates)
    with pytest.raises(ConfigError) as e:
        spec.check(model, [0], "model phi")
    assert "model.layers.0.mlp has: activation_fn, fc1, fc2" in str(e.value)
    assert ("final_norm='model.norm': no module 'model.norm' (model has: embed_tokens, layers, "
            "rotary_emb, embed_dropout, final_layernorm)") in str(e.value)


def test_a_post_mlp_norm_model_wired_without_its_template_is_stopped(tmp_path, no_weights):
    """A Gemma-style block (post_feedforward_layernorm) whose templates lack mlp_out_norm: MEMIT
    would write residual shares the norm rescales; said before loading, naming the fix."""
    from tests.conftest import SEARCHPATH

    msg = fails_before_loading(tmp_path, SEARCHPATH, "model=tiny_gemma3", "method=memit",
                               "model.templates.mlp_out_norm=null")
    assert "post_feedforward_layernorm" in msg and "model.templates.mlp_out_norm=" in msg
    assert "method.z_space=mlp_out method.invert_out_norm=true" in msg


def test_merge_without_models_and_resume_into_another_configs_job_are_one_line(tmp_path, no_weights):
    assert "needs merge.base and at least one entry in merge.models" in \
        fails_before_loading(tmp_path, "merge=ties")
    other = tmp_path / "other"
    other.mkdir()
    (other / "job.json").write_text('{"fingerprint": "0000", "status": "finished"}')
    msg = fails_before_loading(tmp_path, f"resume={other}")
    assert "holds a job with another config" in msg
    assert "no job directory there" in fails_before_loading(tmp_path, f"resume={tmp_path / 'nothing'}")


def test_a_runaway_prompt_is_a_broken_record_found_before_loading(tmp_path, no_weights):
    huge = {**HALF, "src": "Where is S? " + "x" * 66_000}
    args = bmike_dir(tmp_path, json.dumps([{"en": HALF, "de": huge}]))
    msg = fails_before_loading(tmp_path, *args, "data.on_invalid=error")
    assert "field 'de.src': 66012 characters (at most 2000" in msg


def test_an_output_directory_that_cannot_be_written_is_one_line_before_loading(tmp_path, no_weights,
                                                                              monkeypatch):
    (tmp_path / "afile").write_text("x")
    with pytest.raises(ConfigError) as e:
        pipeline.run(cfg(), out_dir=tmp_path / "afile" / "job")
    assert str(e.value).startswith(f"output directory {tmp_path / 'afile' / 'job'}: cannot write there "
                                   f"({tmp_path / 'afile'} is a file, not a directory)")
    # not writable (simulated: this machine's root may write anywhere); nothing is created
    from xling_edit import paths

    real = paths.os.access
    monkeypatch.setattr(paths.os, "access", lambda p, mode: p != tmp_path and real(p, mode))
    with pytest.raises(ConfigError, match=f"cannot write there \\({tmp_path} is not writable\\)"):
        pipeline.run(cfg(), out_dir=tmp_path / "ro" / "job")
    assert not (tmp_path / "ro").exists()
