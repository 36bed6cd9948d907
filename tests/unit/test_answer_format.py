"""Answer format for question prompts (issue 11, item 7): ``data.answer_format`` picks what is
appended to every prompt; with ``cue`` each language uses its own ``answer_cue``, in the
evaluation rows and in the edit request."""

from __future__ import annotations

import pytest
from omegaconf import OmegaConf

from tests.conftest import ROOT
from xling_edit.config import DatasetConfig
from xling_edit.data.schema import QA, EditCase, LangRecord
from xling_edit.evaluation.evaluate import answer_prefixes, build_rows
from xling_edit.languages import load_languages
from xling_edit.models.tokenizers import byte_level_tokenizer
from xling_edit.modes import CaseEval as _CaseEval, Ctx as _Ctx, requests_for as _requests
from xling_edit.results import case_lines as _lines

REG = load_languages(ROOT / "conf")
CUES = {"en": " Answer:", "de": " Antwort:", "fr": " Réponse :", "it": " Risposta:",
        "es": " Respuesta:", "hi": " उत्तर:", "ta": " பதில்:", "kn": " ಉತ್ತರ:"}


def data(**kw):
    return OmegaConf.merge(OmegaConf.structured(DatasetConfig), {"name": "x", **kw})


def test_every_language_file_has_its_cue():
    assert {c: str(REG[c].answer_cue) for c in REG} == CUES


def test_formats_resolve_to_per_language_prefixes():
    langs = ["en", "de", "hi"]
    assert answer_prefixes(data(answer_format="cue"), REG, langs) == \
        ("cue", {"en": " Answer:", "de": " Antwort:", "hi": " उत्तर:"})
    assert answer_prefixes(data(answer_format="none"), REG, langs) == ("none", dict.fromkeys(langs, ""))
    assert answer_prefixes(data(answer_format="prefix", answer_prefix=" A:"), REG, langs) == \
        ("prefix", dict.fromkeys(langs, " A:"))
    # null format: the old behaviour of answer_prefix alone
    assert answer_prefixes(data(answer_prefix=" A:"), REG, langs) == ("prefix", dict.fromkeys(langs, " A:"))
    assert answer_prefixes(data(), REG, langs) == ("none", dict.fromkeys(langs, ""))


def test_format_errors_are_explicit():
    with pytest.raises(ValueError, match="answer_format=prefix"):
        answer_prefixes(data(answer_format="cue", answer_prefix=" A:"), REG, ["en"])
    with pytest.raises(ValueError, match="unknown"):
        answer_prefixes(data(answer_format="cues"), REG, ["en"])
    no_cue = {"en": OmegaConf.merge(REG["en"], {"answer_cue": ""})}
    with pytest.raises(ValueError, match="answer_cue"):
        answer_prefixes(data(answer_format="cue"), no_cue, ["en"])


def test_dataset_defaults_cue_for_question_prompts_only():
    bmike = sorted((ROOT / "conf" / "data").glob("bmike53_*.yaml"))
    assert len(bmike) >= 2
    for path in bmike:  # question prompts
        assert OmegaConf.load(path).answer_format == "cue", path.name
    for name in ("builtin", "easyedit_counterfact"):  # fill-in prompts
        assert OmegaConf.load(ROOT / "conf" / "data" / f"{name}.yaml").answer_format == "none", name


def record(q: str, ans: str) -> LangRecord:
    return LangRecord(subject="Spike Hughes", prompt=f"{q}?", target_new="Paris", target_true=ans,
                      rephrases=[f"{q}, really?"], locality=[QA(f"{q} too?", ans)],
                      portability=[QA(f"{q} then?", ans)])


CASE = EditCase("c0", {"en": record("Where is Spike Hughes from", "London"),
                       "de": record("Woher kommt Spike Hughes", "London"),
                       "hi": record("स्पाइक ह्यूज कहाँ से है", "लंदन")})


def test_rows_carry_each_languages_cue():
    tok = byte_level_tokenizer()
    _, prefixes = answer_prefixes(data(answer_format="cue"), REG, ["en", "de", "hi"])
    rows, errors = build_rows(CASE, ["en", "de", "hi"], tok, {"en": " ", "de": " ", "hi": " "}, prefixes)
    assert not errors and {r.lang for r in rows} == {"en", "de", "hi"}
    prompts = {"rel": lambda rec, i: rec.prompt, "gen": lambda rec, i: rec.rephrases[i],
               "loc": lambda rec, i: rec.locality[i].prompt, "port": lambda rec, i: rec.portability[i].prompt}
    for r in rows:
        prompt = tok.decode(list(r.enc.input_ids[:r.enc.n_prompt]), skip_special_tokens=True)
        assert prompt == prompts[r.kind](CASE.langs[r.lang], r.index) + CUES[r.lang], (r.lang, r.kind)
        answer = tok.decode(list(r.enc.target_ids))
        assert answer.startswith(" ") and not answer.startswith("  ")  # word_sep after the cue


def ctx(mode: str, prefixes: dict, langs=("en", "de", "hi"), tok=None) -> _Ctx:
    return _Ctx(None, tok, None, None, REG, "de", list(langs), {}, prefixes, None, mode)


def test_edit_request_uses_the_edit_languages_cue():
    _, prefixes = answer_prefixes(data(answer_format="cue"), REG, ["en", "de", "hi"])
    ev = _CaseEval(CASE, [], {}, [], {})
    (req,) = _requests(ev, ctx("single", prefixes))
    assert req.lang.code == "de" and req.answer_prefix == " Antwort:" and req.record is CASE.langs["de"]
    reqs = _requests(ev, ctx("all_languages", prefixes))
    assert {r.lang.code: r.answer_prefix for r in reqs} == {"en": " Answer:", "de": " Antwort:", "hi": " उत्तर:"}


def test_results_lines_record_the_format():
    tok = byte_level_tokenizer()
    _, prefixes = answer_prefixes(data(answer_format="cue"), REG, ["en", "de", "kn"])
    c = ctx("single", prefixes, ("en", "de", "kn"), tok)
    rows, _ = build_rows(CASE, ["en", "de", "kn"], tok, {}, prefixes)
    ev = _CaseEval(CASE, rows, {}, [], {}, status="failed", reason="boom")
    lines = _lines(ev, c, {"answer_format": "cue", "edit_lang": "de"})
    assert [(l["eval_lang"], l["answer_format"], l["answer_prefix"]) for l in lines] == \
        [("en", "cue", " Answer:"), ("de", "cue", " Antwort:"), ("kn", "cue", " ಉತ್ತರ:")]
    assert lines[2]["status"] == "missing_eval_lang"  # recorded even where the case lacks the language
