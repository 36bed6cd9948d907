"""Hydra composition: typed schemas, per-model method values, language registry."""

import pytest
from hydra import compose, initialize_config_dir
from hydra.errors import ConfigCompositionException
from omegaconf import OmegaConf
from omegaconf.errors import ConfigKeyError, ValidationError

from tests.conftest import ROOT, SEARCHPATH
from xling_edit.configstore import register_configs
from xling_edit.languages import load_languages, resolve_eval_langs

register_configs()


def cfg(*overrides):
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        return compose(config_name="config", overrides=[SEARCHPATH, *overrides])


def test_default_composition():
    c = cfg()
    assert c.model.name == "gemma3_270m" and c.method.name == "rome" and c.edit_lang.code == "en"
    assert c.data.loader == "builtin" and c.eval_langs is None
    assert c.method.layer == c.model.hparams.rome.layer  # per-model value reaches the method


def test_cli_beats_model_value():
    assert cfg("method.layer=7").method.layer == 7


def test_unknown_language_lists_options():
    with pytest.raises(ConfigCompositionException) as e:
        cfg("edit_lang=xx")
    msg = str(e.value.__cause__ or e.value) + str(e.value)
    assert "edit_lang/xx" in msg


def test_unknown_language_error_lists_available():
    import subprocess
    import sys

    r = subprocess.run([sys.executable, "run.py", "edit_lang=xx"], cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 2
    assert r.stderr == ("error: edit_lang=xx: no such option (no conf/edit_lang/xx.yaml); available: "
                        "de, en, es, fr, hi, it, kn, ta\n")  # one line (issue 14)
    # HYDRA_FULL_ERROR=1: Hydra's own message, with the config search path
    r = subprocess.run([sys.executable, "run.py", "edit_lang=xx"], cwd=ROOT, capture_output=True, text=True,
                       env={**__import__("os").environ, "HYDRA_FULL_ERROR": "1"})
    assert r.returncode != 0 and "Could not find 'edit_lang/xx'" in r.stderr


@pytest.mark.parametrize("override", ["method.layer=abc", "data.max_cases=many", "seed=x"])
def test_wrong_type_fails_at_compose(override):
    with pytest.raises((ValidationError, ConfigCompositionException)):
        c = cfg(override)
        OmegaConf.to_container(c, resolve=True)


def test_unknown_key_fails_at_compose():
    with pytest.raises((ConfigKeyError, ConfigCompositionException)):
        cfg("model.nonsense=1")


def test_every_language_file_is_valid_and_registry_is_complete():
    langs = load_languages(ROOT / "conf")
    assert set(langs) == {"en", "de", "fr", "it", "es", "hi", "ta", "kn"}
    for code in langs:
        c = cfg(f"edit_lang={code}")
        assert c.edit_lang.code == code and c.edit_lang.name
    assert resolve_eval_langs(None, langs, "ta") == list(langs)
    assert resolve_eval_langs(["de"], langs, "ta") == ["de", "ta"]
    with pytest.raises(ValueError, match="available"):
        resolve_eval_langs(["xx"], langs, "en")


def test_adding_a_language_is_one_file(tmp_path):
    import shutil

    conf = tmp_path / "conf"
    shutil.copytree(ROOT / "conf", conf)
    (conf / "edit_lang" / "sw.yaml").write_text("code: sw\nname: Swahili\nscript: Latin\n")
    langs = load_languages(conf)
    assert "sw" in langs and langs["sw"].word_sep == " "
    with initialize_config_dir(config_dir=str(conf), version_base="1.3"):
        assert compose(config_name="config", overrides=["edit_lang=sw"]).edit_lang.name == "Swahili"


@pytest.mark.parametrize("model", ["gemma3_270m", "smollm2_135m", "gpt2", "tiny_llama", "tiny_gpt2", "tiny_gemma3"])
def test_model_configs_compose(model):
    c = cfg(f"model={model}")
    assert c.model.templates.down_proj.count("{}") == 1
    OmegaConf.to_container(c.method, resolve=True)


def test_the_old_dataset_group_name_still_works_with_a_deprecation_line(capsys):
    from xling_edit import api
    from xling_edit.config import upgrade_overrides

    assert upgrade_overrides(["-m", "dataset=a,b", "+dataset=c", "data.max_cases=3", "data=d"]) == \
        ["-m", "data=a,b", "+data=c", "data.max_cases=3", "data=d"]
    assert capsys.readouterr().err.count("deprecated: `dataset=` is now `data=`") == 2
    assert api.compose(["dataset=bmike53_zsre"]).data.name == "bmike53_zsre"
    assert api.compose(["data=bmike53_zsre", "data.max_cases=2"]).data.max_cases == 2


def test_mode_and_stats_groups_set_their_sections():
    from xling_edit import api

    cfg = api.compose(["method=memit", "mode=batch", "stats=none"])
    assert (cfg.method.mode, cfg.method.num_edits, cfg.stats.corpus) == ("batch", 10, "none")
    seq = api.compose(["method=rome", "mode=sequential", "method.num_edits=3"])
    assert (seq.method.mode, seq.method.num_edits, seq.method.eval_every) == ("sequential", 3, 0)
    plain = api.compose(["method=rome"])
    assert plain.method.mode == "single" and plain.stats.corpus == "builtin"
    assert api.compose(["stats=hf_wikipedia"]).stats.hf_path == "wikimedia/wikipedia"


def test_benchmark_switches_left_the_user_config_with_a_deprecation_line(capsys):
    from xling_edit import api
    from xling_edit.config import EvalConfig, upgrade_overrides
    from xling_edit.editing.value import EditMethodConfig

    for name in ("batched", "head_at_targets", "reuse_lower_layers", "inference_mode"):
        assert name not in EvalConfig.__dataclass_fields__
    for name in ("v_from_layer", "v_head_at_targets", "cache_factorization"):
        assert name not in EditMethodConfig.__dataclass_fields__
    assert upgrade_overrides(["eval.batched=false", "method.cache_factorization=false", "seed=1"]) == ["seed=1"]
    assert capsys.readouterr().err.count("is no longer a setting") == 2
    assert api.compose(["eval.inference_mode=false"]).seed == 0  # accepted, ignored
    with pytest.raises(Exception):  # and not a config key any more
        cfg("eval.batched=false")


def test_help_is_the_projects_short_help():
    import subprocess
    import sys

    r = subprocess.run([sys.executable, "run.py", "--help"], cwd=ROOT, capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 0
    assert "Exit status: 0; 2 configuration or data error" in r.stdout
    assert "method: alphaedit" in r.stdout and "docs/README.md" in r.stdout
