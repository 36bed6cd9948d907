"""method=route: the router finds an English subject in Hindi/Tamil prompts and puts the fact
before them only; nothing translated is read at edit time; the pipeline runs it end to end."""

import json

import pytest
from hydra import compose, initialize_config_dir

from tests.conftest import ROOT, language
from xling_edit import pipeline
from xling_edit.configstore import register_configs
from xling_edit.data.schema import QA, EditCase, LangRecord
from xling_edit.editing.base import EditRequest
from xling_edit.editing.route import RouteConfig, RouteEditor
from xling_edit.evaluation.answers import answer_prompts
from xling_edit.evaluation.evaluate import context_for

register_configs()

EN = LangRecord(subject="Spike Hughes", prompt="Where does Spike Hughes originate from?",
                target_new="Philadelphia", target_true="London",
                locality=(QA("What is the capital of Spain?", "Madrid"),))
# translated fields carry markers that must never reach the context
HI = LangRecord(subject="TRANSLATED-SUBJECT", prompt="स्पाइक ह्यूजेस कहाँ से आते हैं?",
                target_new="TRANSLATED-TARGET", target_true="लंदन",
                locality=(QA("स्पेन की राजधानी क्या है?", "मैड्रिड"),))
TA = LangRecord(subject="TRANSLATED-SUBJECT", prompt="ஸ்பைக் ஹியூஸ் எங்கிருந்து வருகிறார்?",
                target_new="TRANSLATED-TARGET", target_true="லண்டன்",
                locality=(QA("ஸ்பெயினின் தலைநகரம் எது?", "மாட்ரிட்"),))


def test_router_finds_the_subject_in_every_script_and_nothing_else():
    out = RouteEditor({}).edit(None, None, EditRequest("c1", language("en"), EN))
    assert out.kind == "context" and out.deltas == []
    case = EditCase("c1", {"en": EN, "hi": HI, "ta": TA})
    prompts = answer_prompts(case, ["en", "hi", "ta"], "en", context=out.context)
    by = {(p.lang, p.kind): p.text for p in prompts}
    assert by[("en", "rel")].startswith("Spike Hughes (Spike Hughes): Philadelphia\n")
    assert by[("hi", "rel")].startswith("स्पाइक ह्यूजेस (Spike Hughes): Philadelphia (")
    assert by[("ta", "rel")].startswith("ஸ்பைக் ஹியூஸ் (Spike Hughes): Philadelphia (")
    for lang, rec in (("en", EN), ("hi", HI), ("ta", TA)):  # unrelated prompts: untouched
        assert by[(lang, "loc")] == rec.locality[0].prompt
    assert not any("TRANSLATED" in t for t in by.values())


def test_no_native_form_when_switched_off():
    ed = RouteEditor({"target_script": False})
    ctx = ed.edit(None, None, EditRequest("c1", language("en"), EN)).context
    assert context_for(ctx, "hi", HI.prompt) == "स्पाइक ह्यूजेस (Spike Hughes): Philadelphia\n"
    assert RouteConfig().threshold == 80.0


def test_edit_reads_only_the_edit_language_record():
    """The editor gets the English record alone and stores only it; routing a translated prompt
    reads that prompt's text (the query), nothing else of its record."""
    ed = RouteEditor({})
    out = ed.edit(None, None, EditRequest("c1", language("en"), EN))
    assert out.info["stored"] == {"subject": "Spike Hughes", "target": "Philadelphia", "lang": "en"}
    assert context_for(out.context, "hi", HI.prompt)  # routing reads only the prompt text


def test_route_end_to_end(tmp_path):
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose(config_name="config", overrides=[
            "model=tiny_llama", "method=route", "data.max_cases=3", "eval_langs=[en,de,hi]",
            "print_tables=false", "eval.max_new_tokens=3", f"model.cache_dir={tmp_path / 'cache'}"])
    info = pipeline.run(cfg, out_dir=tmp_path / "job")
    assert info["case_status"] == {"ok": 3}
    lines = [json.loads(l) for l in (tmp_path / "job" / "results.jsonl").read_text().splitlines()]
    assert all(l["edit"]["edit_kind"] == "context" and l["method"] == "route" for l in lines)
    # English prompts name their subject: the fact is routed, so the English rows changed
    en = [l for l in lines if l["eval_lang"] == "en"]
    assert all(l["post"]["reliability.gen"] is not None for l in en)


def test_partial_subject_finds_a_translated_title_by_its_name():
    rec = LangRecord(subject="The Revenge of Shinobi", prompt="Who created The Revenge of Shinobi?",
                     target_new="Adobe")
    hi_prompt = "शिनोबी की प्रतिशोध किसने बनाई?"
    with_partial = RouteEditor({}).edit(None, None, EditRequest("c", language("en"), rec)).context
    assert context_for(with_partial, "hi", hi_prompt).startswith("शिनोबी (The Revenge of Shinobi): Adobe")
    whole_only = RouteEditor({"partial": False}).edit(None, None, EditRequest("c", language("en"), rec)).context
    assert context_for(whole_only, "hi", hi_prompt) == ""
    # generic words never stand for the subject alone
    from xling_edit.editing.route import distinctive_words

    assert distinctive_words("Royal Moroccan Football Federation", 5) == ["Moroccan"]
    assert distinctive_words("Honda Insight", 5) == ["Insight"]  # a brand alone names others
    assert distinctive_words("Honda N360", 5) == []
    assert context_for(with_partial, "hi", "बदला क्या है?") == ""


@pytest.mark.parametrize("subject, lang, prompt", [
    ("Honda Insight", "ta", "ஹோண்டா சில்வர் விங் எந்த நிறுவனத்தின் தயாரிப்பு?"),  # same brand
    ("Ferrari Daytona", "hi", "कौन सी कंपनी ने फेरारी 400 विकसित की?"),
    ("Sambir", "ta", "சிம்பெரோபோலின் அதிகாரப்பூர்வ மொழி என்ன?"),  # a prefix of a longer name
    ("Mariana Pineda", "ta", "கொல்லுதல் என்ற படத்தில் எது மொழி பயன்படுத்தப்பட்டது?"),
    ("Guillaume Durand", "ta", "கிளெமெண்ட் தேவாலயத்தில் எந்த பங்கு வகிக்கிறார்?"),  # one word of two
    ("BMW E23", "ta", "BMW M30 ஐ யார் உருவாக்கினார்கள்?"),  # another model number
    ("Windows XP", "en", "Which company produced Windows 3.0?"),
    ("Vevo", "en", "Who owns Google Vault?"),  # a short key meets a common word
    ("India", "en", "Which language is understood in Jamshedpur?"),
])
def test_router_leaves_neighbouring_subjects_alone(subject, lang, prompt):
    """BMIKE-53 locality prompts the router used to route (rows 0-1030)."""
    rec = LangRecord(subject=subject, prompt=f"Who made {subject}?", target_new="Nokia")
    ctx = RouteEditor({}).edit(None, None, EditRequest("c", language("en"), rec)).context
    assert context_for(ctx, lang, prompt) == ""


@pytest.mark.parametrize("subject, lang, prompt, span", [
    ("Simferopol", "ta", "சிம்பெரோபோலின் அதிகாரப்பூர்வ மொழி என்ன?", "சிம்பெரோபோலின்"),  # + ின்
    ("Honda Insight", "hi", "होंडा इनसाइट किसने बनाई?", "होंडा इनसाइट"),
    ("BMW M40", "ta", "BMW M40 ஐ யார் உருவாக்கினார்கள்?", "BMW M40"),
    ("India", "hi", "इंडिया की राजधानी क्या है?", "इंडिया"),  # a short name written out
])
def test_router_still_finds_inflected_and_numbered_subjects(subject, lang, prompt, span):
    rec = LangRecord(subject=subject, prompt=f"Who made {subject}?", target_new="Nokia")
    ctx = RouteEditor({}).edit(None, None, EditRequest("c", language("en"), rec)).context
    assert context_for(ctx, lang, prompt).startswith(f"{span} ({subject}): Nokia")
