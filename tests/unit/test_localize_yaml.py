"""Subject localisation reads each language's declared ``morphology`` (``conf/edit_lang/<code>.yaml``,
the rules of the answer matcher's ``inflected`` rung), so a new language gets inflected subjects
found by its YAML alone. Bengali (the template's values) and Marathi
(``tests/fixtures/edit_lang/mr.yaml``) are added through a temporary conf directory, as a user
adds a language, so that the project's default evaluation set does not change."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from tests.conftest import ROOT
from tests.unit.test_localize import scores, summary
from xling_edit.editing.localize import find_subject, inflection_stem
from xling_edit.evaluation import matching
from xling_edit.evaluation.matching import Morphology, check_script, match_answer, parse_morphology
from xling_edit.languages import load_languages

FIXTURES = ROOT / "tests" / "fixtures"
CASES = json.loads((FIXTURES / "localize_bn_mr.json").read_text(encoding="utf-8"))["records"]
NEW = {"bn": ROOT / "conf" / "edit_lang" / "_template.yaml.example",  # its values are Bengali's
       "mr": FIXTURES / "edit_lang" / "mr.yaml"}


def conf_with_new_languages(tmp: Path, morphology: bool = True) -> Path:
    """A copy of the project's language files with bn.yaml and mr.yaml added (``morphology``
    False: the same files without their ``morphology`` block)."""
    conf = tmp / "conf"
    shutil.copytree(ROOT / "conf" / "edit_lang", conf / "edit_lang")
    for code, source in NEW.items():
        node = OmegaConf.load(source)
        if not morphology:
            node.pop("morphology")
        OmegaConf.save(node, conf / "edit_lang" / f"{code}.yaml")
    return conf


@pytest.fixture
def registry(monkeypatch):
    """Registers languages' rules as the pipeline does (``set_morphology`` for each composed
    language), in a registry of this test's own."""
    monkeypatch.setattr(matching, "_MORPHOLOGY", dict(matching._MORPHOLOGY))

    def register(conf: Path, codes=("bn", "mr")):
        langs = load_languages(conf)
        for code in codes:
            matching.set_morphology(code, OmegaConf.to_container(langs[code].morphology))
        return langs
    return register


@pytest.fixture
def with_yaml(tmp_path, registry):
    return registry(conf_with_new_languages(tmp_path))


@pytest.fixture
def without_morphology(tmp_path, registry):
    return registry(conf_with_new_languages(tmp_path, morphology=False))


def cases(lang=None):
    return [(r["lang"], r["prompt"], r["subject"], r["src"], i) for i, r in enumerate(CASES)
            if lang in (None, r["lang"])]


def span(prompt, subject, **kw):
    m = find_subject(prompt, subject, **kw)
    return None if m is None else prompt[m.start:m.end]


# the issue's examples: "France's", "Japan's" in Bengali and Marathi
ISSUE = [pytest.param("bn", "ফ্রান্সের রাজধানী কোন শহর?", "ফ্রান্স", "ফ্রান্স", id="bn-France's"),
         pytest.param("bn", "জাপানের রাজধানী কোন শহর?", "জাপান", "জাপান", id="bn-Japan's"),
         pytest.param("mr", "फ्रान्सची राजधानी कोणती आहे?", "फ्रान्स", "फ्रान्स", id="mr-France's"),
         pytest.param("mr", "भारताची राजधानी कोणती आहे?", "भारत", "भारत", id="mr-India's")]


def test_new_language_files_are_complete(with_yaml):
    for code in NEW:
        lang = with_yaml[code]
        assert lang.code == code
        check_script(str(lang.script))  # what preflight checks
        parse_morphology(OmegaConf.to_container(lang.morphology))
        assert lang.morphology.suffixes


@pytest.mark.parametrize("lang, prompt, subject, expected", ISSUE)
def test_issue_subjects_found_by_yaml(with_yaml, lang, prompt, subject, expected):
    # the span ends at the name, before the case ending (the key is the name's last token)
    assert span(prompt, subject, lang=lang) == expected
    assert span(prompt, subject) == expected  # no language named: every registered language


@pytest.mark.parametrize("lang, prompt, subject, expected", ISSUE)
def test_issue_subjects_not_found_without_morphology(without_morphology, lang, prompt, subject,
                                                     expected):
    assert find_subject(prompt, subject, lang=lang) is None
    assert find_subject(prompt, subject) is None


@pytest.mark.parametrize("lang", ["bn", "mr"])
def test_labelled_bn_mr_fixture(with_yaml, lang, record_property):
    s = scores(cases(lang), lambda prompt, subject, code: find_subject(prompt, subject, lang=code))
    line = f"localize {lang} fixture ({s['n']} records, by its YAML): {summary(s)}"
    print(line)
    record_property("summary", line)
    # the known miss of each precision: a derived adjective taken as a spelling variant of the
    # name (পাকিস্তানি "Pakistani", अमेरिकन "American"), language-independent, not a suffix
    assert s["precision"] >= 0.9, s["wrong"]
    assert s["recall"] >= 0.85, s


@pytest.mark.parametrize("lang", ["bn", "mr"])
def test_bn_mr_recall_comes_from_the_yaml(without_morphology, lang):
    s = scores(cases(lang), lambda prompt, subject, code: find_subject(prompt, subject, lang=code))
    assert s["recall"] <= 0.4, s  # only uninflected subjects and long near-equal words


def negative_pairs():
    """(another record's prompt, subject, language) for every bn/mr record against the other
    records of its language whose prompts do not name it."""
    for r in CASES:
        for o in CASES:
            if o["lang"] == r["lang"] and o["subject"] != r["subject"] and r["subject"] not in o["prompt"]:
                yield o["prompt"], r["subject"], r["lang"]


def test_bn_mr_negative_control(with_yaml, record_property):
    """Each subject against the other records' prompts that do not name it: never found."""
    pairs = found = 0
    for prompt, subject, lang in negative_pairs():
        pairs += 1
        found += find_subject(prompt, subject, lang=lang) is not None
    line = f"localize negative control bn+mr: {found} of {pairs} mismatched subject/prompt pairs matched"
    print(line)
    record_property("summary", line)
    assert found == 0


def test_localisation_and_answer_matcher_share_the_rules(with_yaml):
    assert match_answer("ফ্রান্সের", "ফ্রান্স", "bn") == "inflected"
    assert inflection_stem("ফ্রান্স", "ফ্রান্সের", "bn") == len("ফ্রান্স")
    assert inflection_stem("ফ্রান্স", "ফ্রান্সের", Morphology()) is None


# --- the study's languages: their former code tables now live in their YAML -------------------

YAML_LANGS = [  # (lang, prompt, subject, span): each needs a rule of the language's YAML
    pytest.param("ta", "லண்டனில் எந்த நதி ஓடுகிறது?", "லண்டன்", "லண்டன", id="ta-pulli-il"),
    pytest.param("ta", "போலந்தின் தலைநகரம் என்ன?", "போலந்து", "போலந்த", id="ta-u-in"),
    pytest.param("ta", "கியோட்டோ மாகாணத்தில் எந்த மொழி?", "கியோட்டோ மாகாணம்", "கியோட்டோ மாகாண",
                 id="ta-am-attil"),
    pytest.param("ta", "இந்தியாவின் தலைநகரம் எது?", "இந்தியா", "இந்தியா", id="ta-glide-vin"),
    pytest.param("ta", "ஹோண்டா இன்சைட்டை யார் தயாரிக்கிறார்கள்?", "ஹோண்டா இன்சைட்", "ஹோண்டா இன்சைட்",
                 id="ta-doubled-ai"),
    pytest.param("ta", "நாட்டின் தலைநகரம் எது?", "நாடு", "நாட", id="ta-u-doubled-in"),
    pytest.param("hi", "प्राग-पश्चिम जिले की राजधानी क्या है?", "प्राग-पश्चिम जिला", "प्राग-पश्चिम जिल",
                 id="hi-a-e"),
    pytest.param("hi", "इन द्वीपों की भाषा क्या है?", "द्वीप", "द्वीप", id="hi-plural-on"),
    pytest.param("hi", "सामाजिक सेवाओं का मंत्री कौन है?", "सामाजिक सेवाएँ", "सामाजिक सेवा", id="hi-en-on"),
    pytest.param("kn", "ಬೆಂಗಳೂರಿನಲ್ಲಿ ಯಾವ ಭಾಷೆ ಮಾತನಾಡುತ್ತಾರೆ?", "ಬೆಂಗಳೂರು", "ಬೆಂಗಳೂರ", id="kn-u-inalli"),
    pytest.param("kn", "ಭಾರತದ ರಾಜಧಾನಿ ಯಾವುದು?", "ಭಾರತ", "ಭಾರತ", id="kn-a-da"),
    pytest.param("kn", "ದೆಹಲಿಯಲ್ಲಿ ಯಾವ ನದಿ ಹರಿಯುತ್ತದೆ?", "ದೆಹಲಿ", "ದೆಹಲಿ", id="kn-glide-yalli"),
    pytest.param("kn", "ಲಂಡನ್\u200cನಲ್ಲಿ ಯಾವ ನದಿ ಹರಿಯುತ್ತದೆ?", "ಲಂಡನ್", "ಲಂಡನ್", id="kn-virama-zwnj"),
]


@pytest.mark.parametrize("lang, prompt, subject, expected", YAML_LANGS)
def test_study_languages_found_through_their_yaml(registry, lang, prompt, subject, expected):
    registry(ROOT / "conf", codes=(lang,))
    assert span(prompt, subject, lang=lang) == expected
    assert span(prompt, subject) == expected
    # the same language without its morphology: no inflection is known any more (the subject is
    # not found, or a long word only as a spelling variant, whole: "सामाजिक सेवाओं")
    matching.set_morphology(lang, None)
    assert span(prompt, subject, lang=lang) != expected
    assert span(prompt, subject) != expected


def test_lang_is_a_code_not_a_config():
    # a language config passed by mistake would otherwise silently drop every rule
    with pytest.raises(TypeError, match="language code"):
        find_subject("ফ্রান্সের রাজধানী", "ফ্রান্স", lang={"code": "bn"})


# --- the language-independent fallback: no morphology needed ------------------------------------

@pytest.mark.parametrize("lang, prompt, subject, expected", ISSUE)
def test_fallback_finds_issue_subjects_without_morphology(without_morphology, lang, prompt,
                                                          subject, expected):
    # the YAML has no morphology: only the fallback finds the possessive, ending at the name
    assert find_subject(prompt, subject, lang=lang) is None
    for fallback in ("no_morphology", "span"):
        m = find_subject(prompt, subject, lang=lang, fallback=fallback)
        assert (m.method, m.matched) == ("span", expected)


@pytest.mark.parametrize("lang", ["bn", "mr"])
def test_fallback_alone_on_the_labelled_fixture(without_morphology, lang, record_property):
    s = scores(cases(lang), lambda prompt, subject, code: find_subject(
        prompt, subject, lang=code, fallback="no_morphology"))
    line = f"localize {lang} fixture ({s['n']} records, no morphology, fallback): {summary(s)}"
    print(line)
    record_property("summary", line)
    # without the fallback recall is at most 0.4 (test_bn_mr_recall_comes_from_the_yaml)
    assert s["recall"] >= 0.85, s
    # its wrong spans are derived adjectives (ভারতীয়, भारतीय, रशियन, ...), never a neighbour
    assert s["precision"] >= 0.85, s["wrong"]


def test_no_morphology_fallback_leaves_a_declared_language_alone(with_yaml):
    prompt, subject = "ভারতীয় রেলের সদর দপ্তর কোথায়?", "ভারত"  # 'Indian', not India
    assert find_subject(prompt, subject, lang="bn", fallback="no_morphology") is None
    # the fallback cannot tell a derivation from a case ending: why it does not follow the rules
    assert span(prompt, subject, lang="bn", fallback="span") == "ভারত"


@pytest.mark.parametrize("prompt, subject, other", [
    ("উত্তর কোরিয়ার রাজধানী কী?", "দক্ষিণ কোরিয়া", "দক্ষিণ কোরিয়ার রাজধানী কী?"),
    ("মিশেল ওবামার জন্ম কোথায়?", "বারাক ওবামা", "বারাক ওবামার জন্ম কোথায়?"),
    ("उत्तर कोरियाची राजधानी कोणती आहे?", "दक्षिण कोरिया", "दक्षिण कोरियाची राजधानी कोणती आहे?"),
    ("मिशेल ओबामा यांचा जन्म कोठे झाला?", "बराक ओबामा", "बराक ओबामांचा जन्म कोठे झाला?"),
])
def test_fallback_does_not_take_a_neighbouring_entity(prompt, subject, other):
    # North Korea is not South Korea, Michelle Obama not Barack Obama: every word needs its own
    # counterpart, the fallback's tail included; the same subject in its own prompt is found
    assert find_subject(prompt, subject, lang=Morphology(), fallback="span") is None
    m = find_subject(other, subject, lang=Morphology(), fallback="span")
    assert m is not None and m.matched.startswith(subject.split()[0])


def test_fallback_bn_mr_negative_control(without_morphology):
    pairs = found = 0
    for prompt, subject, lang in negative_pairs():
        pairs += 1
        found += find_subject(prompt, subject, lang=lang, fallback="span") is not None
    assert pairs > 1000 and found == 0


@pytest.mark.parametrize("p_form", ["NFC", "NFD"])
@pytest.mark.parametrize("s_form", ["NFC", "NFD"])
def test_fallback_nfc_and_nfd(p_form, s_form):
    import unicodedata

    # টোকিও (Tokyo) + locative -তে; ো is ে + া in NFD
    prompt = unicodedata.normalize(p_form, "টোকিওতে কত মানুষ থাকে?")
    subject = unicodedata.normalize(s_form, "টোকিও")
    assert find_subject(prompt, subject, lang=Morphology()) is None
    m = find_subject(prompt, subject, lang=Morphology(), fallback="span")
    assert m.method == "span" and unicodedata.normalize("NFC", m.matched) == "টোকিও"
