"""A method is one .py and one .yaml: a toy method written to a temporary folder (its module
file and its config file, nothing in the project touched) runs end to end on a tiny model."""

import json
import shutil
import subprocess
import sys
import textwrap

import pytest

from tests.conftest import ROOT

TOY_PY = '''
"""A toy weight edit: add `scale` to one entry of a down-projection (tests only)."""
from dataclasses import dataclass

import torch

from xling_edit.editing.base import EditOutcome, Editor, WeightDelta, register_editor


@dataclass
class ToyConfig:
    """Args:
        name: registry name.
        layer: block whose down-projection is touched.
        scale: what is added to its first weight entry.
        mode: editing mode.
        num_edits: cases per group.
    """
    name: str = "toy"
    layer: int = 0
    scale: float = 0.25
    mode: str = "single"
    num_edits: int = 1


@register_editor("toy", schema=ToyConfig)
class ToyEditor(Editor):
    def __init__(self, hparams, spec, seed=0, covariance=None, covariance_label=None):
        super().__init__(hparams, spec, seed, covariance, covariance_label)
        self.hp = ToyConfig(**{k: hparams[k] for k in ToyConfig.__dataclass_fields__ if k in hparams})

    @property
    def edit_layers(self):
        return [self.hp.layer]

    def edit(self, model, tok, request):
        name = self.spec.down_proj_weight_name(self.hp.layer)
        w = dict(model.named_parameters())[name]
        d = torch.zeros_like(w)
        d.view(-1)[0] = self.hp.scale
        return EditOutcome([WeightDelta(name, d)], {"method": "toy", "scale": self.hp.scale,
                                                    "case": request.case_id})
'''


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("toy")
    conf = tmp / "conf"
    shutil.copytree(ROOT / "conf", conf)
    (tmp / "toy_method.py").write_text(TOY_PY)
    (conf / "method" / "toy.yaml").write_text(textwrap.dedent(f"""\
        # the toy method: its module is found through `module`; defaults come from its schema
        name: toy
        module: {tmp / 'toy_method.py'}
        layer: ${{hp:layer}}
        scale: ${{hp:scale}}
        mode: single
        num_edits: 1
        """))
    return tmp, conf


def test_toy_method_runs_end_to_end(toy):
    tmp, conf = toy
    out = tmp / "run"
    r = subprocess.run([sys.executable, "run.py", "--config-path", str(conf), "method=toy",
                        "method.scale=0.5", "model=tiny_llama", "data.max_cases=2",
                        "eval_langs=[en,de]", f"hydra.run.dir={out}", "print_tables=false",
                        f"model.cache_dir={tmp / 'cache'}"],
                       cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    lines = [json.loads(l) for l in (out / "results.jsonl").read_text().splitlines()]
    assert lines and all(l["method"] == "toy" and l["status"] == "ok" for l in lines)
    assert lines[0]["edit"]["scale"] == 0.5  # the command line beat the schema default (0.25)
    assert lines[0]["post"] is not None and lines[0]["pre"] is not None
    info = json.loads((out / "run_info.json").read_text())
    assert info["covariance_statistics"] is None  # the toy asked for no statistics
    # nothing of the project was touched: the toy is unknown to a plain run
    plain = subprocess.run([sys.executable, "run.py", "method=toy", "model=tiny_llama", "--cfg", "job"],
                           cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert plain.returncode != 0 and "toy" in (plain.stderr + plain.stdout)


def test_schema_default_and_per_model_value_are_written_once():
    """``${hp:field}``: the model's calibrated value, else the schema's published default."""
    from hydra import compose, initialize_config_dir

    from xling_edit.editing.memit import MemitConfig

    from xling_edit.editing.rome import RomeConfig

    from xling_edit.configstore import register_configs

    register_configs()
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base=None):
        gemma = compose("config", overrides=["method=rome"])
        tiny = compose("config", overrides=["method=rome", "model=tiny_llama"])
        memit = compose("config", overrides=["method=memit", "model=smollm2_135m", "method.v_lr=0.3"])
    assert gemma.method.layer == gemma.model.hparams.rome.layer  # per-model value
    assert gemma.method.v_steps == RomeConfig().v_steps  # schema default
    assert tiny.method.context_templates == [[5, 2]]
    assert memit.method.v_lr == 0.3 and memit.method.weight_decay == MemitConfig().weight_decay


def test_the_registry_owns_what_a_method_can_do():
    from xling_edit.editing import discover
    from xling_edit.editing.base import capabilities

    discover()
    assert capabilities("ike").modes == ("single",) and capabilities("ike").uses_dataset
    assert capabilities("route").kind == "context"
    assert set(capabilities("memit").modes) == {"single", "batch", "all_languages", "sequential"}
    assert capabilities("rome").modes == ("single", "sequential")
    assert capabilities("keybridge").batched and capabilities("keybridge").uses_dataset
    with pytest.raises(ValueError, match="context edit"):
        capabilities("ike").check_mode("sequential", 2)
    with pytest.raises(ValueError, match="many facts at once"):
        capabilities("rome").check_mode("batch", 2)
    with pytest.raises(ValueError, match="unknown method"):
        capabilities("nope")


def test_an_editor_without_the_base_class_is_adopted_with_a_deprecation_warning():
    from dataclasses import dataclass

    from xling_edit.editing import base

    @dataclass
    class OldConfig:
        name: str = "old_style"

    with pytest.warns(DeprecationWarning, match="subclass"):
        @base.register_editor("old_style_test", schema=OldConfig)
        class Old:
            def __init__(self, hparams, spec=None, seed=0, covariance=None, covariance_label=None):
                self.hp = hparams

            def edit(self, model, tok, request):
                return "edited"
    try:
        ed = base.build_editor("old_style_test", hparams={})
        assert isinstance(ed, base.Editor) and ed.edit(None, None, None) == "edited"
        ed.begin_group()  # the base class's hooks
        assert ed.edit_layers == [] and base.capabilities("old_style_test").modes == ("single", "sequential")
    finally:
        base.EDITORS.pop("old_style_test"), base.SCHEMAS.pop("old_style_test")


@pytest.mark.parametrize("override, message", [
    ("method.layerz=[4]", "layerz"),              # the command line
    ("+model.hparams.memit.layerz=[4]", "layerz"),  # the model's values
])
def test_a_misspelt_method_field_is_one_error_naming_it(override, message):
    from hydra import compose, initialize_config_dir

    from xling_edit import preflight
    from xling_edit.configstore import register_configs
    from xling_edit.errors import ConfigError

    register_configs()
    with pytest.raises(Exception, match=message):
        with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
            cfg = compose("config", overrides=["method=memit", override])
        preflight.check(cfg)
