import json

import pytest

from xling_edit.editing.localize import find_subject


def test_exact():
    m = find_subject("Where does Spike Hughes originate from?", "Spike Hughes")
    assert (m.start, m.end, m.method) == (11, 23, "exact")


def test_normalized_casefold():
    m = find_subject("where does spike hughes live?", "Spike Hughes")
    assert m.method == "normalized" and m.matched == "spike hughes"


def test_fuzzy_tamil_case_suffix():
    # "லண்டன்" (London) + locative "-இல்": the final pulli goes, so no verbatim match
    prompt = "லண்டனில் எந்த நதி ஓடுகிறது?"
    m = find_subject(prompt, "லண்டன்")
    assert m.method == "fuzzy"
    assert prompt[m.start:m.end] == "லண்டன"  # the span ends where the stem ends


def test_translit_latin_subject_in_devanagari_prompt():
    prompt = "लॉरेंट कार्स को किस शहर में नौकरी मिली?"
    m = find_subject(prompt, "Laurent Cars")
    assert m.method == "translit" and m.matched == "लॉरेंट कार्स"


def test_not_found_returns_none():
    assert find_subject("The capital of Japan is", "Angela Merkel") is None


@pytest.mark.shared
@pytest.mark.parametrize("lang", ["ta", "hi"])
def test_real_bmike_examples(shared_data, lang):
    rows = json.load(open(shared_data / "bmike53" / "counterfact" / f"counterfact_test_{lang}.json",
                          encoding="utf-8"))
    halves = [r[lang] for r in rows if lang in r][:300]
    methods = [getattr(find_subject(h["src"], h["subject"]), "method", "skipped") for h in halves]
    not_verbatim = [h for h in halves if h["subject"] not in h["src"]]
    assert not_verbatim, "expected some translated prompts without the verbatim subject"
    # every verbatim case is exact; most non-verbatim ones are recovered by the fuzzy match
    assert methods.count("exact") >= len(halves) - len(not_verbatim)
    recovered = sum(m in ("normalized", "fuzzy", "translit") for m in methods)
    assert recovered >= 0.8 * len(not_verbatim), (recovered, len(not_verbatim))
    for h in not_verbatim:
        m = find_subject(h["src"], h["subject"])
        if m is not None:  # a found span lies inside the prompt and is non-empty
            assert 0 <= m.start < m.end <= len(h["src"])
