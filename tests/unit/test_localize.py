import json
from pathlib import Path

import pytest

from xling_edit.editing.localize import DEFAULT_FALLBACK, _WORD, find_subject, inflection_stem, stem_and_tail

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "localize_bmike53.json"


def span(prompt, subject, **kw):
    m = find_subject(prompt, subject, **kw)
    return None if m is None else (m.method, prompt[m.start:m.end])


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


# --- false positives found by review: every subject word needs its own counterpart -------------

def test_average_similarity_is_not_enough():
    # old matcher: "France is" (translit 0.77) — "Frank"/"France" and "Sinatra"/"is" are no match
    assert find_subject("The capital of France is", "Frank Sinatra") is None


@pytest.mark.parametrize("prompt", ["Indiana is a state of", "The Indiana Pacers play in",
                                    "Which language do Indians speak?"])
def test_subject_is_not_a_prefix_of_another_name(prompt):
    assert find_subject(prompt, "India") is None


@pytest.mark.parametrize("prompt, subject", [
    ("Who was born in Australia?", "Austria"),  # a spelling variant needs near-equal lengths
    ("Jordanian food is known for", "Jordan"),  # "-ian" is no inflection
    ("Was ist die Hauptstadt von Frankreich?", "Frank"),
    ("मोनाको किस देश में है?", "Liminka"),  # a lone transliterated word needs an equal skeleton
    ("Un Paso Adelante की मूल भाषा क्या थी?", "एक कदम आगे"),  # a translation: not in the prompt
])
def test_other_false_positives(prompt, subject):
    assert find_subject(prompt, subject) is None


def test_translit_only_across_scripts():
    # the old matcher took "sich das Gouvernement" by consonant skeleton, Latin against Latin
    assert find_subject("In welchem Staat befindet sich das Gouvernement Saladin?",
                        "Saladin Governorate") is None


def test_translit_span_does_not_swallow_the_next_word():
    # the old window of n+1 words took "मिशेल हौलेबेक कौन"
    assert span("मिशेल हौलेबेक कौन से देश के नागरिक हैं?", "Michel Houellebecq") == \
        ("translit", "मिशेल हौलेबेक")


# --- inflections that are legitimate -----------------------------------------------------------

@pytest.mark.parametrize("prompt, subject, expected", [
    ("Was ist die Hauptstadt des Königreichs Ägypten?", "Königreich Ägypten",
     "Königreichs Ägypten"),
    ("Wo fand der russische Bürgerkrieg statt?", "Russischer Bürgerkrieg", "russische Bürgerkrieg"),
    ("Wer hat den Neuen Nintendo 3DS entwickelt?", "Neuer Nintendo 3DS", "Neuen Nintendo 3DS"),
    ("Was ist Marcos Minnemanns Beruf?", "Marco Minnemann", "Marcos Minnemann"),
    ("Welche Sprache wurde im Betrug verwendet?", "Der Betrug", "Betrug"),  # article: any article
    ("In welcher Stadt hat Maurice Hankey, 1. Baron Hankey gearbeitet?",
     "Maurice Hankey, 1st Baron Hankey", "Maurice Hankey, 1. Baron Hankey"),
    ("கியோட்டோ மாகாணத்தில் எந்த மொழி?", "கியோட்டோ மாகாணம்", "கியோட்டோ மாகாண"),  # -am → -attil
    ("ஹோண்டா இன்சைட்டை யார் தயாரிக்கிறார்கள்?", "ஹோண்டா இன்சைட்", "ஹோண்டா இன்சைட்"),  # doubled ட
    ("போலந்தின் தலைநகரம் என்ன?", "போலந்து", "போலந்த"),  # final -u replaced
    ("ஹூஸ்டனின் இரட்டை நகரம் என்ன?", "ஹூஸ்டன்", "ஹூஸ்டன"),  # the pulli gives way to -in
    ("प्राग-पश्चिम जिले की राजधानी क्या है?", "प्राग-पश्चिम जिला", "प्राग-पश्चिम जिल"),  # -ā → -e
    ("माल्टा के संप्रभु सैन्य आदेश में कौन सी भाषा?", "माल्टा का संप्रभु सैन्य आदेश",
     "माल्टा के संप्रभु सैन्य आदेश"),
])
def test_inflected_subjects(prompt, subject, expected):
    assert span(prompt, subject)[1] == expected


def test_verbatim_hit_must_end_a_word_or_an_inflection():
    assert span("Was ist Marcos Beruf?", "Marco") == ("exact", "Marco")  # genitive -s
    assert span("ரோமானியாவின் தலைநகரம்", "ரோமானியா") == ("exact", "ரோமானியா")  # glide + genitive
    assert find_subject("Where is AppleShare made?", "Apple") is None


def test_translit_with_tamil_case_ending():
    # the name transliterated, then the genitive: the span ends at the name
    assert span("பாட்ரிஷியா கான்ராயின் குடியுரிமை எங்கு இருந்து?", "Patricia Conroy") == \
        ("translit", "பாட்ரிஷியா கான்ராய")


@pytest.mark.parametrize("subject, word, stem", [
    ("ಬೆಂಗಳೂರು", "ಬೆಂಗಳೂರಿನಲ್ಲಿ", "ಬೆಂಗಳೂರ"),  # Kannada: -u replaced by -inalli
    ("ಭಾರತ", "ಭಾರತದ", "ಭಾರತ"),  # genitive -da
    ("ದೆಹಲಿ", "ದೆಹಲಿಯಲ್ಲಿ", "ದೆಹಲಿ"),  # glide -y-
])
def test_kannada_case_endings(subject, word, stem):
    assert inflection_stem(subject, word) == len(stem)


def test_mixed_script_subject_and_acronyms():
    assert span("आईबीएम ऑफिसविज़न का विकास किसने किया?", "IBM ऑफिसविज़न")[1] == "आईबीएम ऑफिसविज़न"
    assert span("स्टारगेट एसजी-1 किस देश से आया?", "Stargate SG-1")[1] == "स्टारगेट एसजी-1"


def test_threshold_is_per_word():
    prompt = "Welche Sprache spricht man in Wallonien?"
    assert span(prompt, "Wallonia")[1] == "Wallonien"  # a spelling variant, ratio 0.82
    assert find_subject(prompt, "Wallonia", threshold=0.9) is None


# --- BMIKE-53 -----------------------------------------------------------------------------------

def _rows(shared_data, lang):
    path = shared_data / "bmike53" / "counterfact" / f"counterfact_test_{lang}.json"
    return json.loads(path.read_text(encoding="utf-8"))


def span_is_correct(prompt: str, label: str | None, m) -> bool:
    """A returned span is right when it reaches into the labelled substring's last word (the key
    is read at the subject's last token, possibly the stem of an inflected word) and stays
    inside the labelled substring."""
    if m is None or label is None:
        return False
    start = prompt.index(label)
    end = start + len(label)
    last_word = list(_WORD.finditer(label))[-1]
    return start <= m.start and start + last_word.start() < m.end <= end


def scores(cases, matcher) -> dict:
    """Precision and recall of ``matcher(prompt, subject, lang)`` on labelled cases ``(lang,
    prompt, subject, label, where)`` (``label``: the substring naming the subject, or None;
    ``where``: the record's row, reported with wrong spans), overall and per language
    (``by_lang``)."""
    def tally(rows):
        returned = correct = present = 0
        wrong = []
        for lang, prompt, subject, label, m, where in rows:
            present += label is not None
            returned += m is not None
            ok = span_is_correct(prompt, label, m)
            correct += ok
            if m is not None and not ok:
                wrong.append((lang, where, prompt[m.start:m.end], label))
        return {"n": len(rows), "returned": returned, "correct": correct, "present": present,
                "precision": correct / returned if returned else float("nan"),
                "recall": correct / present if present else float("nan"), "wrong": wrong}

    rows = [(lang, prompt, subject, label, matcher(prompt, subject, lang), where)
            for lang, prompt, subject, label, where in cases]
    out = tally(rows)
    out["by_lang"] = {lang: tally([r for r in rows if r[0] == lang])
                      for lang in dict.fromkeys(r[0] for r in rows)}
    return out


def fixture_cases(shared_data) -> list[tuple]:
    """(lang, prompt, subject, label, row) of every record of the hand-labelled fixture."""
    records = json.loads(FIXTURE.read_text(encoding="utf-8"))["records"]
    files = {lang: _rows(shared_data, lang) for lang in {r["lang"] for r in records}}
    cases = []
    for r in records:
        half = files[r["lang"]][r["row"]][r["lang"]]
        assert half["case_id"] == r["case_id"], r
        cases.append((r["lang"], half["src"], half["subject"], r["src"], r["row"]))
    return cases


def fixture_scores(matcher, shared_data) -> dict:
    """Precision and recall of ``matcher(prompt, subject)`` on the hand-labelled fixture."""
    return scores(fixture_cases(shared_data),
                  lambda prompt, subject, lang: matcher(prompt, subject))


def summary(s: dict) -> str:
    return (f"precision {s['precision']:.3f} ({s['correct']}/{s['returned']}), recall "
            f"{s['recall']:.3f} ({s['correct']}/{s['present']})")


@pytest.mark.shared
def test_fixture_is_well_formed(shared_data):
    records = json.loads(FIXTURE.read_text(encoding="utf-8"))["records"]
    counts = {lang: sum(r["lang"] == lang for r in records) for lang in ("de", "hi", "ta")}
    assert all(c >= 20 for c in counts.values()), counts
    for r in records:
        half = _rows(shared_data, r["lang"])[r["row"]][r["lang"]]
        assert half["case_id"] == r["case_id"]
        assert r["src"] is None or half["src"].count(r["src"]) == 1, r


@pytest.mark.shared
def test_precision_on_hand_labelled_bmike53(shared_data, record_property):
    s = fixture_scores(find_subject, shared_data)
    line = f"localize fixture ({s['n']} BMIKE-53 de/hi/ta records): {summary(s)}"
    line += "".join(f"; {lang} {summary(t)}" for lang, t in s["by_lang"].items())
    print(line)
    record_property("summary", line)
    assert s["precision"] >= 0.98, s["wrong"]
    assert s["recall"] >= 0.7, s  # a matcher that finds nothing is not precise, just useless


@pytest.mark.shared
def test_review_false_positive_bmike53_hi(shared_data):
    # row 463: the subject is the Hindi translation of a title the prompt keeps in Spanish; the
    # old matcher returned 'की भाषा क्या थी' ("what was the language of")
    half = _rows(shared_data, "hi")[463]["hi"]
    assert half["subject"] == "एक कदम आगे"
    assert find_subject(half["src"], half["subject"]) is None


@pytest.mark.shared
@pytest.mark.parametrize("lang", ["de", "hi", "ta"])
def test_no_matches_in_other_cases_prompts(shared_data, lang, record_property):
    """Negative control: a subject against another case's prompt (not naming the same entity)
    must not be found; the old matcher found something in ~15-18% of such pairs."""
    rows = [r for r in _rows(shared_data, lang) if lang in r]
    pairs = found = 0
    for i, r in enumerate(rows):
        for shift in (1, 97):
            other = rows[(i + shift) % len(rows)]
            en_subject = r["en"]["subject"]
            if (en_subject == other["en"]["subject"]
                    or en_subject.lower() in other["en"]["src"].lower()
                    or r[lang]["subject"] in other[lang]["src"]):
                continue
            pairs += 1
            found += find_subject(other[lang]["src"], r[lang]["subject"]) is not None
    line = (f"localize negative control {lang}: {found} of {pairs} mismatched subject/prompt "
            f"pairs matched")
    print(line)
    record_property("summary", line)
    assert found <= 0.001 * pairs


@pytest.mark.shared
@pytest.mark.parametrize("lang", ["hi", "ta"])
def test_verbatim_subjects_are_exact(shared_data, lang):
    halves = [r[lang] for r in _rows(shared_data, lang) if lang in r]
    checked = 0
    for h in halves:
        src, subject = h["src"], h["subject"]
        i = src.find(subject)
        j = i + len(subject)
        if i < 0 or (i and _WORD.match(src[i - 1])) or (j < len(src) and _WORD.match(src[j])):
            continue  # not verbatim on word boundaries
        m = find_subject(src, subject)
        assert (m.method, m.start, m.end) == ("exact", i, j), h
        checked += 1
    assert checked > 0.5 * len(halves)  # not vacuous


@pytest.mark.parametrize("prompt, subject", [
    ("টয়োটা কোন দেশের কোম্পানি?", "টয়োটা"),  # ো is ে + া in NFD
    ("மொனாக்கோவின் தலைநகரம் எது?", "மொனாக்கோ"),  # ொ, ோ are two signs in NFD
])
def test_nfc_and_nfd_spellings_meet(prompt, subject):
    import unicodedata

    for p_form in ("NFC", "NFD"):
        for s_form in ("NFC", "NFD"):
            p, s = unicodedata.normalize(p_form, prompt), unicodedata.normalize(s_form, subject)
            m = find_subject(p, s)
            assert m is not None, (p_form, s_form)
            assert unicodedata.normalize("NFC", p[m.start:m.end]) == subject
            # the same normal form on both sides is verbatim; different ones are "normalized"
            assert m.method == ("exact" if p_form == s_form else "normalized")


# --- the language-independent fallback (fallback="span" / "no_morphology") ----------------------

@pytest.mark.parametrize("subject, word, stem", [
    ("फ्रान्स", "फ्रान्सची", 7),  # France's: the whole name, then -cī
    ("अमेरिका", "अमेरिकेचे", 6),  # the final vowel sign ा gives way: अमेरिक
    ("मुंबई", "मुंबईतल्या", 5),  # a three-letter tail (त ल य; the virama and ा are marks)
    ("भारत", "भारतातही", 4),  # two stacked endings, two letters
    ("জাপান", "জাপানেও", 5),  # locative + clitic: ও is a letter
    ("லண்டன்", "லண்டனில்", 5),  # the final pulli gives way
    ("india", "indiana", 5),  # a derived name is taken too: why the fallback is off by default
])
def test_stem_and_tail(subject, word, stem):
    assert stem_and_tail(subject, word) == stem


@pytest.mark.parametrize("subject, word", [
    ("जपान", "जपानी"),  # a tail of vowel signs alone: 'Japanese'
    ("লন্ডন", "লন্ডনে"),  # ... even when it is a case ending (the rules know it)
    ("चीन", "चीनची"),  # a stem of two letters (च न)
    ("apple", "appleshare"),  # a tail of five letters
    ("लंडन", "लंडन"),  # no tail: equality is another step's
    ("frank", "france"),  # a letter of the subject may not give way, only marks
])
def test_stem_and_tail_refuses(subject, word):
    assert stem_and_tail(subject, word) is None


def test_fallback_is_off_by_default_and_named():
    from xling_edit.editing.value import EditMethodConfig

    assert DEFAULT_FALLBACK == EditMethodConfig().subject_fallback == "none"
    prompt = "Jordanian food is known for which dish?"
    # English declares no morphology: "no_morphology" would take the demonym (measured: 17 of 26
    # English derived words, tests/fixtures/localize_derived_en.json), which is why it is off
    assert find_subject(prompt, "Jordan", lang="en") is None
    m = find_subject(prompt, "Jordan", lang="en", fallback="no_morphology")
    assert (m.method, m.matched) == ("span", "Jordan")
    with pytest.raises(ValueError, match="subject_fallback='spans' unknown"):
        find_subject(prompt, "Jordan", fallback="spans")


def test_fallback_comes_after_every_other_step():
    # found verbatim / by German declension: the fallback changes nothing, nor the method
    assert span("Was ist Marcos Minnemanns Beruf?", "Marco Minnemann", fallback="span") == \
        span("Was ist Marcos Minnemanns Beruf?", "Marco Minnemann")
    assert span("Where does Spike Hughes live?", "Spike Hughes", fallback="span") == \
        ("exact", "Spike Hughes")
