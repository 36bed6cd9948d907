"""edit.deviations beyond the method config: each item of the published setup, changed, appears."""

import pytest

from tests.conftest import language
from xling_edit.editing.reference import (
    WIKIPEDIA_100K, Published, line_deviations, setup_deviations, statistics_label,
)

ROME_LIKE = Published(source="test", context_seeds=("<|endoftext|>",), context_join=". ",
                      kl_prompt="{subject} is a", statistics=WIKIPEDIA_100K, stats_ridge=0.0,
                      subject_match="exact", answer_cue="")
MCFG = {"context_templates": [[10, 5]], "kl_factor": 0.0625, "use_covariance": True}
WIKI = {"corpus": "hf", "hf_path": "wikimedia/wikipedia", "per_lang": 12500,
        "langs": ["en", "de", "fr", "it", "es", "hi", "ta", "kn"], "ridge": 0.0}
EN = {"context_seeds": ["<|endoftext|>"], "context_join": ". ", "kl_prompt": "{subject} is a"}


def test_the_published_setup_has_no_deviation():
    assert statistics_label(WIKI, True) == WIKIPEDIA_100K
    assert setup_deviations(ROME_LIKE, MCFG, WIKI, EN, True) == {}
    assert setup_deviations(None, MCFG, {"corpus": "none"}, {}, False) == {}  # nothing declared


@pytest.mark.parametrize("change, key, value", [
    ({"stats": {"corpus": "none"}}, "statistics", "none (C = I)"),
    ({"uses": False}, "statistics", "none (C = I)"),
    ({"stats": {**WIKI, "corpus": "builtin", "per_lang": 120, "langs": ["en", "hi"]}},
     "statistics", "builtin:120/lang:en+hi"),
    ({"stats": {**WIKI, "per_lang": 10}}, "statistics", "wikipedia:80"),
    ({"stats": {**WIKI, "ridge": 1e-3}}, "stats.ridge", 1e-3),
    ({"lang": {**EN, "context_seeds": ["The", "I"]}}, "context_seeds", ["The", "I"]),
    ({"lang": {**EN, "context_join": "। "}}, "context_join", "। "),
    ({"lang": {**EN, "kl_prompt": "{subject} एक"}}, "kl_prompt", "{subject} एक"),
])
def test_each_changed_item_appears(change, key, value):
    got = setup_deviations(ROME_LIKE, MCFG, change.get("stats", WIKI), change.get("lang", EN),
                           change.get("uses", True))
    assert got == {key: value}


def test_an_answer_cue_after_the_edit_prompt_is_listed():
    assert setup_deviations(ROME_LIKE, MCFG, WIKI, EN, True, answer_cue=" Answer:") == \
        {"answer_cue": " Answer:"}


def test_items_a_method_does_not_use_are_not_listed():
    hi = {"context_seeds": ["यह"], "context_join": "। ", "kl_prompt": "{subject} एक"}
    # no prefixes, no KL, no statistics field: nothing of the setup applies
    assert setup_deviations(ROME_LIKE, {"kl_factor": 0.0}, {"corpus": "none"}, hi, False) == {}


def test_fields_and_practice_of_the_baselines():
    pub = Published(source="t", fields={"k": 32, "target": ["q_proj", "v_proj"]},
                    practice={"demonstrations": "nearest neighbours"})
    got = setup_deviations(pub, {"k": 6, "target": "down_proj"}, {}, {}, False,
                           {"demonstrations": "random"})
    assert got == {"k": 6, "target": "down_proj", "demonstrations": "random"}
    assert setup_deviations(pub, {"k": 32, "target": ["q_proj", "v_proj"]}, {}, {}, False,
                            {"demonstrations": "nearest neighbours"}) == {}


def test_subject_localisation_per_line():
    assert line_deviations(ROME_LIKE, {"method": "translit"}) == {"subject_match": "translit"}
    assert line_deviations(ROME_LIKE, {"method": "exact"}) == {}
    assert line_deviations(ROME_LIKE, None) == {}


def test_every_method_declares_its_reference_and_the_project_languages_deviate_honestly():
    from xling_edit.editing import discover
    from xling_edit.editing.base import EDITORS

    discover()
    for name in ("rome", "memit", "alphaedit", "keybridge", "lora", "ike"):
        assert EDITORS[name].published is not None and EDITORS[name].published.source, name
    assert EDITORS["route"].published is None  # this project's own method: its setup is itself
    en, hi = language("en"), language("hi")
    rome = EDITORS["rome"].published
    # ROME seeds its prefixes from <|endoftext|>; the English file seeds from words
    assert "context_seeds" in setup_deviations(rome, MCFG, WIKI, en, True)
    memit = EDITORS["memit"].published
    assert setup_deviations(memit, MCFG, WIKI, en, True) == {}  # MEMIT's own five words
    assert set(setup_deviations(memit, MCFG, WIKI, hi, True)) == {"context_seeds", "context_join", "kl_prompt"}


def _baseline_fields():
    """(declaration, field, a changed value) for every field the baselines' published setups fix."""
    from xling_edit.editing.lora import LoraEditor

    other = {bool: lambda v: not v, int: lambda v: v + 1, float: lambda v: v * 2 + 1,
             str: lambda v: v + "_x", list: lambda v: [*v, 3] if v else [0], type(None): lambda v: 1e-3}
    for label, pub in (("lora", LoraEditor.published), ("ft_l", LoraEditor.published_ft_l)):
        for name, value in pub.fields.items():
            yield pytest.param(pub, name, other[type(value)](value), id=f"{label}.{name}")


@pytest.mark.parametrize("pub, name, changed", list(_baseline_fields()))
def test_each_published_field_of_the_baselines_appears_when_changed(pub, name, changed):
    mcfg = dict(pub.fields)
    practice = dict(pub.practice)
    assert setup_deviations(pub, mcfg, {}, {}, False, practice) == {}  # as published: nothing
    assert setup_deviations(pub, {**mcfg, name: changed}, {}, {}, False, practice) == {name: changed}


def test_the_baselines_practice_item_appears_when_it_differs():
    from xling_edit.editing.lora import LoraEditor

    pub = LoraEditor.published
    fused = {"attention_projections": "one fused q/k/v module"}
    assert setup_deviations(pub, dict(pub.fields), {}, {}, False, fused) == fused
    assert LoraEditor.published_ft_l.practice == {}  # ROME's loss and clamp are reproduced
