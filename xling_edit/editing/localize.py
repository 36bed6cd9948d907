"""Find a subject in a (possibly translated) prompt.

ROME and MEMIT read the key at the subject's last token, so a wrong span silently edits through
the wrong key: a miss (``None``; the caller skips the case with the reason) is always better
than a guess. Translation inflects names (Tamil "லண்டன்" → "லண்டனில்", German "Königreich" →
"Königreichs", Hindi "जिला" → "जिले"), and BMIKE-53 often keeps a Latin subject ("Laurent
Cars") while the prompt transliterates it ("लॉरेंट कार्स"). Tried in order:

1. ``exact``: the subject verbatim, on word boundaries (or followed only by an inflection);
2. ``normalized``: the same after compatibility normalisation, case folding and decomposition
   (an NFD prompt meets an NFC subject);
3. ``fuzzy`` / ``translit``: the subject's words aligned one to one with consecutive prompt
   words; ``translit`` when at least one pair is written in two different scripts;
4. ``span`` (only with ``fallback``, off by default): step 3 again, where a prompt word may
   also be its subject word followed by any short tail (:func:`stem_and_tail`): no language
   data, so it finds endings no ``morphology`` declares, and derived words too.

In step 3 *every* word must find a good counterpart (an average let "Frank Sinatra" find
"France is"). Two words of one script match when they are equal after folding (case, Latin
diacritics, nuktas, Devanagari candrabindu, zero-width joiners, digits, ordinals "1st"/"1."),
when the prompt's is an inflection of the subject's, or, for spelling variants of names
("Wallonia"/"Wallonien", "Chernomyrdin"/"Tschernomyrdin"), when both are at least
``_VARIANT_MIN_LEN`` characters long, their lengths nearly agree and difflib's ratio reaches
the threshold. Words in different scripts (transliteration) are compared by consonant
skeletons (Brahmic scripts romanised through their shared ISCII-derived code-point layout;
voicing, aspiration and doubling dropped; Latin spellings read several ways: "ch" as k or sh,
soft c and g, ...), must agree on starting with a vowel or not, and a prompt word may carry one
of the language's suffixes after the name ("கான்ராயின்" for "Conroy"). Skeletons are short,
so a transliterated name needs more: a mean similarity of at least (1 + threshold) / 2, at
least ``_MIN_TRANSLIT_CONSONANTS`` consonants or a matching consonant-vowel shape, and a lone
transliterated word an identical skeleton ("Liminka" is not "मोनाको") — unless an identical
word of the same script anchors the match ("Honda N360"). A subject's articles and prepositions
may meet any function word ("Der Betrug" → "im Betrug"), but the last subject word must match
in its own right.

Inflections are the language's own data, not code: the ``morphology`` of its language file
(``conf/edit_lang/<code>.yaml``: ``suffixes``, ``stem_drop``, ``min_stem``; the rules the answer
matcher's ``inflected`` rung reads, :class:`xling_edit.evaluation.matching.Morphology`). A prompt
word inflects a subject word when it is one of the rule's forms of it (a suffix after the word,
or after the word less a dropped ending: Tamil லண்டன் → லண்டனில், Hindi जिला → जिले, Bengali
ফ্রান্স → ফ্রান্সের, Marathi भारत → भारताची), possibly with the consonant before a dropped
ending doubled, as Brahmic orthography writes it (இன்சைட் → இன்சைட்டை). "India" is still not
found in "Indiana" nor "Jordan" in "Jordanian": those endings are no one's suffixes. A new
language gets its inflected subjects found by its YAML alone. What stays in code is generic:
the folding, the doubling, and for Latin-script words German declension (genitive -s, weak
adjective endings), kept as it was since a flat suffix list would also take "Wiener" for
"Wien". ``find_subject``'s ``lang`` names the prompt's language; without it the rules of every
known language apply together (a rule can only meet words of its own script, but two languages
of one script, Hindi and Marathi, then share their suffixes).

The span ends at the inflected stem ("லண்டன" in "லண்டனில்"), so the key is read at the last
token of the name rather than of a case ending, and leaves out leading function words that did
not match.

The language-independent fallback (``fallback="span"``, or ``"no_morphology"``: only for a
language without declared rules) needs no morphology: a prompt word stands for a subject word
when it starts with it (less a final vowel sign or virama) and goes on for one to
``_TAIL_MAX_LETTERS`` letters, the stem keeping ``_STEM_MIN_LETTERS`` letters ("ফ্রান্সের",
"जपानचे", "भारतातही", "জাপানেও"). It cannot tell a case ending from a derivation ("ভারতীয়"
'Indian', "Indiana"), so it runs only when steps 1-3 found nothing, a tail of vowel signs
alone (জাপানি 'Japanese', जपानी) is refused, and every subject word still needs its own
counterpart, so a neighbouring entity that shares one word is not taken. Its matches say
``span``, so every results line shows them (``edit.deviations.subject_match``). Measured
against the declared rules in docs/methods.md (bench/localize_diff.py --fallbacks).
"""

from __future__ import annotations

import difflib
import re
import unicodedata
from dataclasses import asdict, dataclass
from functools import lru_cache
from typing import Tuple

from xling_edit.evaluation.matching import _NUKTAS, Morphology, morphology

_WORD = re.compile(r"[^\s.,;:!?¿¡\"'“”‘’«»()\[\]{}।॥—–-]+")

#: ``fallback`` of :func:`find_subject` (``method.subject_fallback``): ``none``; ``span`` (the
#: stem-and-tail pass after every other step, for every language); ``no_morphology`` (the same,
#: only when the prompt's language declares no ``morphology``)
FALLBACKS = ("none", "span", "no_morphology")
#: off (bench/results/localize_fallback.json, docs/methods.md): after the declared rules it
#: lifts Bengali/Marathi recall 0.89 → 1.00 but lowers precision 0.94 → 0.90; the languages
#: that declare no rules today (en, fr, it, es) gain 1 localisation of 4,123 from it while it
#: would take 13 more of 26 English demonyms ("Jordanian" for "Jordan")
DEFAULT_FALLBACK = "none"
# The fallback's tail: one to this many letters (marks not counted: मध्ये is 3 letters) ...
_TAIL_MAX_LETTERS = 3
# ... after a stem of at least this many letters (short names are prefixes of too many words).
_STEM_MIN_LETTERS = 3

# A spelling variant (not an inflection) needs words at least this long: short names differ by
# a letter from unrelated words too often ("Frank"/"France", "Mario"/"Maria", "Iran"/"Iraq").
_VARIANT_MIN_LEN = 6
# Below this many skeleton consonants a transliteration must also agree in its vowel pattern.
_MIN_TRANSLIT_CONSONANTS = 3


@dataclass(frozen=True)
class SubjectMatch:
    start: int  # character span of the subject in the prompt
    end: int
    method: str  # exact | normalized | fuzzy | translit | span
    score: float
    matched: str

    def to_dict(self) -> dict:
        return asdict(self)


def find_subject(prompt: str, subject: str, threshold: float = 0.8,
                 lang: "str | Morphology | None" = None,
                 fallback: str = DEFAULT_FALLBACK) -> SubjectMatch | None:
    """Character span of ``subject`` in ``prompt``, or None when it cannot be found reliably.

    ``threshold``: the similarity every non-identical word pair must reach (difflib's ratio of
    the folded spellings, or of the consonant skeletons across scripts).
    ``lang``: the prompt's language code, whose ``morphology`` (conf/edit_lang/<code>.yaml, or
    the rules registered for it) says how names inflect; a :class:`Morphology`; or None for
    every known language's rules (:func:`language_rules`).
    ``fallback``: one of :data:`FALLBACKS`: whether the language-independent ``span`` pass
    (module docstring) is tried when nothing else matched.
    """
    check_fallback(fallback)
    subject = subject.strip()
    if not subject:
        return None
    rules = language_rules(lang)
    hit = _verbatim(prompt, subject, rules)
    if hit is not None:
        return hit
    sub = [_Word.of(m) for m in _WORD.finditer(subject)]
    words = [_Word.of(m) for m in _WORD.finditer(prompt)]
    best = _best_window(sub, words, threshold, rules, span=False)
    if best is None and fallback_applies(fallback, rules):
        best = _best_window(sub, words, threshold, rules, span=True)
    if best is None:
        return None
    score, start, end, cross, tailed = best
    method = "span" if tailed else "translit" if cross else "fuzzy"
    return SubjectMatch(start, end, method, round(score, 4), prompt[start:end])


def check_fallback(fallback: str) -> None:
    """Raise ValueError unless ``fallback`` is one of :data:`FALLBACKS`."""
    if fallback not in FALLBACKS:
        raise ValueError(f"subject_fallback={fallback!r} unknown; one of {list(FALLBACKS)}")


def fallback_applies(fallback: str, rules: "Rules") -> bool:
    """Whether ``fallback`` tries the ``span`` pass for a language whose rules are ``rules``."""
    return fallback == "span" or (fallback == "no_morphology" and not rules)


def _best_window(sub: list, words: list, threshold: float, rules: "Rules", span: bool):
    """The best alignment (:func:`_align`) of the subject's words with consecutive prompt words."""
    n, best = len(sub), None
    for w in range(len(words) - n + 1) if n else ():
        got = _align(sub, words[w:w + n], threshold, rules, span)
        if got is not None and (best is None or got[0] > best[0]):
            best = got
    return best


# ---------------------------------------------------------------------------------------------
# Verbatim


def _is_word_char(ch: str) -> bool:
    return _WORD.fullmatch(ch) is not None


def _boundary_ok(prompt: str, subject: str, start: int, end: int, rules: Rules) -> bool:
    """A verbatim hit must not be part of a longer word, unless the rest is an inflection."""
    if start > 0 and _is_word_char(prompt[start - 1]) and _is_word_char(subject[0]):
        return False
    if end < len(prompt) and _is_word_char(prompt[end]) and _is_word_char(subject[-1]):
        word = next((m for m in _WORD.finditer(prompt) if m.start() < end < m.end()), None)
        if word is None:  # the hit ends on a non-word character after all
            return True
        last = _WORD.findall(subject)[-1]
        begin = max(word.start(), end - len(last))
        return _inflects(prompt[begin:end], prompt[begin:word.end()], rules) is not None
    return True


def _decomposed(ch: str) -> str:
    """One character compatibility-normalised, case-folded and decomposed (NFKD): an NFC and an
    NFD spelling of a word give the same characters (Bengali ো = ে + া, Tamil ொ = ெ + ா), which
    per-character NFKC would not (it cannot compose across characters)."""
    return unicodedata.normalize("NFKD", unicodedata.normalize("NFKC", ch).casefold())


def _normalized_with_map(text: str) -> tuple[str, list[int]]:
    """:func:`_decomposed` ``text``, and for each output char the index of its source char."""
    out, idx = [], []
    for i, ch in enumerate(text):
        n = _decomposed(ch)
        out.append(n)
        idx.extend([i] * len(n))
    return "".join(out), idx


def _verbatim(prompt: str, subject: str, rules: Rules) -> SubjectMatch | None:
    i = prompt.find(subject)
    while i >= 0:
        if _boundary_ok(prompt, subject, i, i + len(subject), rules):
            return SubjectMatch(i, i + len(subject), "exact", 1.0, subject)
        i = prompt.find(subject, i + 1)
    norm_prompt, back = _normalized_with_map(prompt)
    norm_subject = "".join(map(_decomposed, subject))
    n = len(norm_subject)
    j = norm_prompt.find(norm_subject)
    while j >= 0:
        start, end = back[j], back[j + n - 1] + 1
        whole = (j == 0 or back[j - 1] != start) and (j + n == len(back) or back[j + n] != end - 1)
        if whole and _boundary_ok(prompt, subject, start, end, rules):  # no character split
            return SubjectMatch(start, end, "normalized", 1.0, prompt[start:end])
        j = norm_prompt.find(norm_subject, j + 1)
    return None


# ---------------------------------------------------------------------------------------------
# Scripts and folding


@lru_cache(maxsize=4096)
def _char_script(ch: str) -> str:
    """Unicode script of a letter or mark ("LATIN", "TAMIL", ...); "" for digits, symbols."""
    if not ch or not (ch.isalpha() or unicodedata.category(ch).startswith("M")):
        return ""
    first = unicodedata.name(ch, "").split(" ", 1)[0]
    return "" if first in ("", "COMBINING", "MODIFIER") else first


def _script(word: str) -> str:
    """The script most of ``word``'s letters are written in; "" when it has no letters."""
    counts: dict[str, int] = {}
    for ch in word:
        s = _char_script(ch)
        if s:
            counts[s] = counts.get(s, 0) + 1
    return max(counts, key=counts.get) if counts else ""


# Nuktas dropped (Devanagari क़ = क; Bengali য় = য, as the answer matcher's normalize() and so
# the languages' parsed suffixes read them) and Devanagari candrabindu read as anusvara; the
# Tamil aytham that marks a foreign sound (ஃப = f) dropped; zero-width (non-)joiners dropped
# (Kannada ಲಂಡನ್‌ನಲ್ಲಿ): spellings of one name vary in these.
_MARK_FOLD = {**dict.fromkeys(_NUKTAS, ""),
              "\u0901": "\u0902", "\u0b83": "", "\u200c": "", "\u200d": ""}
_ORDINAL = re.compile(r"(\d+)(?:st|nd|rd|th|er|re|e|°|º|ª|o|a)")  # 1st, 1er, 1°, 2nd, 3a


def _fold_with_map(text: str) -> tuple[str, list[int]]:
    """Folded ``text`` (:func:`_decomposed`, Latin diacritics dropped, ``_MARK_FOLD``, digits of
    any script, ordinals) and, for each folded character, the index of its source character."""
    out, idx = [], []
    for i, ch in enumerate(text):
        n = _decomposed(ch)
        script = _char_script(n[:1])
        if script == "LATIN" or (not script and unicodedata.combining(n[:1])
                                 and i and _char_script(text[i - 1]) == "LATIN"):
            n = "".join(c for c in n if not unicodedata.combining(c))  # n is NFKD already
        elif len(n) == 1 and n.isdecimal():
            n = str(unicodedata.decimal(n))
        n = "".join(_MARK_FOLD.get(c, c) for c in n)
        out.append(n)
        idx.extend([i] * len(n))
    folded = "".join(out)
    m = _ORDINAL.fullmatch(folded)
    if m:  # "1st" ~ "1." ~ "1er": the number alone
        return m.group(1), idx[:len(m.group(1))]
    return folded, idx


def _fold(text: str) -> str:
    return _fold_with_map(text)[0]


def _lcp(a: str, b: str) -> int:
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


# ---------------------------------------------------------------------------------------------
# Inflection: the language's declared morphology (``morphology:`` in conf/edit_lang/<code>.yaml,
# the rules the answer matcher's ``inflected`` rung reads), plus German declension for Latin words.

_LATIN_ADJ_ENDINGS = ("en", "em", "er", "es", "e")


def _latin_inflection(s: str, p: str) -> int | None:
    """German declension, kept in code for every Latin-script word (as before the languages'
    ``morphology`` drove localisation): genitive -s/-es (Königreichs), -n after -e/-er/-el
    (Ersten, Müllmännern), -en after a consonant, adjective endings exchanged (Souveräner →
    Souveränen, Zweiter → Zweite). A flat suffix list cannot hold these conditions without
    also taking "Wiener" for "Wien" or "Hamburger" for "Hamburg"."""
    if len(s) < 3:
        return None
    if p in (s + "s", s + "es"):
        return len(s)
    if p == s + "n" and s.endswith(("e", "er", "el")):
        return len(s)
    if p == s + "en" and s[-1] not in "aeiouy":
        return len(s)

    def base(w: str) -> str | None:
        for e in _LATIN_ADJ_ENDINGS:
            if w.endswith(e) and len(w) - len(e) >= 3:
                return w[:-len(e)]
        return None

    b = base(s)
    if b is not None and base(p) == b:  # both end in an adjective ending
        return _lcp(s, p)
    return None


Rules = Tuple[Morphology, ...]


@lru_cache(maxsize=256)
def _folded_rules(m: Morphology) -> Morphology:
    """``m`` with its suffixes and dropped endings folded like the words they meet (candrabindu
    as anusvara, nukta dropped, ...), duplicates and empty strings left out."""
    def fold_all(xs):
        return tuple(dict.fromkeys(f for f in map(_fold, xs) if f))
    return Morphology(fold_all(m.suffixes), fold_all(m.stem_drop), m.min_stem)


@lru_cache(maxsize=1)
def _project_codes() -> tuple[str, ...]:
    from xling_edit.languages import DEFAULT_CONF_DIR

    return tuple(p.stem for p in sorted((DEFAULT_CONF_DIR / "edit_lang").glob("*.yaml")))


def _known_morphologies() -> list[Morphology]:
    """Every language's rules: the project's language files and whatever was registered
    (:func:`xling_edit.evaluation.matching.set_morphology`: the pipeline registers the
    composed languages, a user's own conf directory included)."""
    from xling_edit.evaluation import matching

    for code in _project_codes():
        morphology(code)  # read once, then registered
    return list(matching.registered_morphologies().values())


def language_rules(lang: "str | Morphology | None" = None) -> Rules:
    """The (folded) inflection rules localisation uses for ``lang``: a language code (its
    ``morphology``: registered, else ``conf/edit_lang/<code>.yaml``; none for a language
    without a file), a :class:`Morphology`, or None for every known language's rules together
    (each rule can only meet words of its own script, since suffixes are written in it; two
    languages of one script, e.g. Hindi and Marathi, then share their suffixes)."""
    if isinstance(lang, Morphology):
        found = [lang]
    elif isinstance(lang, str):
        found = [morphology(lang)]
    elif lang is None:
        found = _known_morphologies()
    else:  # e.g. a language config: its code is meant, and silence would drop every rule
        raise TypeError(f"lang must be a language code, a Morphology or None, got {type(lang)}")
    rules = (_folded_rules(m) for m in found)
    return tuple(dict.fromkeys(m for m in rules if m.suffixes))


@lru_cache(maxsize=65536)
def _forms(m: Morphology, s: str) -> frozenset[str]:
    return frozenset(m.forms(s))


def _is_vowel_sign(ch: str) -> bool:
    return unicodedata.category(ch) in ("Mn", "Mc") and unicodedata.combining(ch) != 9


def _geminated(m: Morphology, s: str, p: str) -> bool:
    """``p`` is ``s`` with a dropped ending (a final virama or vowel sign, declared in
    ``stem_drop``), its last consonant doubled, and a suffix that starts with a vowel sign:
    Tamil இன்சைட் → இன்சைட்டை, நாடு → நாட்டின், Kannada ಬಸ್ → ಬಸ್ಸಿನಲ್ಲಿ. Brahmic
    orthography (the doubled consonant written with the script's virama), not a list."""
    for d in m.stem_drop:
        t = s[:-len(d)] if d else ""
        if (not t or not s.endswith(d) or len(t) < m.min_stem
                or unicodedata.category(t[-1]) != "Lo"):
            continue
        n = len(t)
        if (p.startswith(t) and len(p) > n + 2 and unicodedata.combining(p[n]) == 9
                and p[n + 1] == t[-1] and p[n + 2:] in m.suffixes and _is_vowel_sign(p[n + 2])):
            return True
    return False


def _inflection(s: str, p: str, script: str, rules: Rules) -> int | None:
    """Where the stem of the folded prompt word ``p`` ends when it is the folded subject word
    ``s`` inflected: one of ``rules``' forms of ``s`` (a suffix after ``s`` or after ``s``
    less a dropped ending: லண்டன் → லண்டனில், जिला → जिले) or such a form with the doubled
    consonant of :func:`_geminated`; for a Latin word also German declension. The span ends
    where ``s`` and ``p`` part (லண்டன / லண்டனில் → "லண்டன"), None when ``p`` is no such form."""
    if not s or not p or s == p:
        return None
    if script == "LATIN":
        k = _latin_inflection(s, p)
        if k is not None:
            return k
    for m in rules:
        if p in _forms(m, s) or _geminated(m, s, p):
            return _lcp(s, p)
    return None


def inflection_stem(subject_word: str, prompt_word: str,
                    lang: "str | Morphology | None" = None) -> int | None:
    """Length of the stem of the folded ``prompt_word`` when it inflects ``subject_word``
    (``lang``: as in :func:`find_subject`)."""
    return _inflects(subject_word, prompt_word, language_rules(lang))


def _inflects(subject_word: str, prompt_word: str, rules: Rules) -> int | None:
    """:func:`_inflection` of the two words folded, in the prompt word's script."""
    return _inflection(_fold(subject_word), _fold(prompt_word), _script(prompt_word), rules)


def _is_mark(ch: str) -> bool:
    return unicodedata.category(ch).startswith("M")


def _letters(text: str) -> int:
    """Characters of ``text`` that are not combining marks (vowel signs, viramas, ...)."""
    return sum(not _is_mark(c) for c in text)


def stem_and_tail(subject_word: str, prompt_word: str) -> int | None:
    """The ``span`` fallback's language-independent inflection, on folded words of one script:
    the length of the stem of ``prompt_word`` when it is ``subject_word``, less any trailing
    combining marks (a final vowel sign or virama: अमेरिका → अमेरिकेचे, लंडन् → लंडनमधून), then a
    tail of 1 to ``_TAIL_MAX_LETTERS`` letters, the stem keeping at least
    ``_STEM_MIN_LETTERS`` letters; else None. A tail of marks alone (জাপানি 'Japanese',
    जपानी) is refused: a changed final vowel derives as often as it inflects."""
    core = subject_word.rstrip("".join(c for c in subject_word if _is_mark(c)))
    k = _lcp(subject_word, prompt_word)
    if not core or k < len(core) or k >= len(prompt_word):
        return None
    tail = _letters(prompt_word[k:])
    if not 1 <= tail <= _TAIL_MAX_LETTERS or _letters(prompt_word[:k]) < _STEM_MIN_LETTERS:
        return None
    return k


def _stems(word: str, rules: Rules) -> list[int]:
    """Candidate stem lengths of a folded prompt word: itself, then without one of the rules'
    suffixes, longest first (for transliterated names, whose citation form is unknown:
    கான்ராயின் → கான்ராய)."""
    cut = {len(word) - len(x) for m in rules for x in m.suffixes
           if word.endswith(x) and len(word) - len(x) >= m.min_stem}
    return [len(word), *sorted(cut - {len(word)}, reverse=True)]


# ---------------------------------------------------------------------------------------------
# Transliteration

# Brahmic blocks share one layout (offset from the block start -> sound). Vowels are dropped by
# the skeleton anyway, so only consonants, vowel letters, anusvara and digits matter.
_BRAHMIC_BLOCKS = (0x0900, 0x0980, 0x0A00, 0x0A80, 0x0B00, 0x0B80, 0x0C00, 0x0C80, 0x0D00)
_OFFSETS = {
    0x01: "n", 0x02: "n", 0x03: "h",
    0x05: "a", 0x06: "a", 0x07: "i", 0x08: "i", 0x09: "u", 0x0A: "u", 0x0B: "r",
    0x0E: "e", 0x0F: "e", 0x10: "ai", 0x12: "o", 0x13: "o", 0x14: "au",
    0x15: "k", 0x16: "k", 0x17: "g", 0x18: "g", 0x19: "n", 0x1A: "c", 0x1B: "c", 0x1C: "j",
    0x1D: "j", 0x1E: "n", 0x1F: "t", 0x20: "t", 0x21: "d", 0x22: "d", 0x23: "n", 0x24: "t",
    0x25: "t", 0x26: "d", 0x27: "d", 0x28: "n", 0x29: "n", 0x2A: "p", 0x2B: "f", 0x2C: "b",
    0x2D: "b", 0x2E: "m", 0x2F: "y", 0x30: "r", 0x31: "r", 0x32: "l", 0x33: "l", 0x34: "l",
    0x35: "v", 0x36: "s", 0x37: "s", 0x38: "s", 0x39: "h",
    0x3E: "a", 0x3F: "i", 0x40: "i", 0x41: "u", 0x42: "u", 0x43: "r", 0x45: "e", 0x46: "e",
    0x47: "e", 0x48: "ai", 0x49: "o", 0x4A: "o", 0x4B: "o", 0x4C: "au",
    **{0x66 + d: str(d) for d in range(10)},
}
_SKELETON_MAP = str.maketrans({"c": "k", "q": "k", "g": "k", "d": "t", "b": "p", "w": "v",
                               "z": "j", "x": "k", "f": "p", "y": "", "h": ""})


# Vowel signs, nasalisation, visarga, nukta, virama: whatever follows a consonant in its syllable.
_BRAHMIC_SIGNS = set(range(0x3E, 0x4D)) | {0x01, 0x02, 0x03, 0x3C, 0x4D}


def _brahmic_offset(ch: str) -> int | None:
    cp = ord(ch)
    block = next((b for b in _BRAHMIC_BLOCKS if b <= cp < b + 0x80), None)
    return None if block is None else cp - block


def romanize(text: str, inherent: bool = False) -> str:
    """Latin letters for Brahmic ones (other scripts pass through); ``inherent`` writes the
    inherent vowel of a bare consonant as "a"."""
    chars = unicodedata.normalize("NFD", text)
    out = []
    for i, ch in enumerate(chars):
        off = _brahmic_offset(ch)
        if off is not None:
            out.append(_OFFSETS.get(off, ""))
            if inherent and 0x15 <= off <= 0x39:
                nxt = _brahmic_offset(chars[i + 1]) if i + 1 < len(chars) else None
                if nxt is None or nxt not in _BRAHMIC_SIGNS:
                    out.append("a")
        elif not unicodedata.combining(ch):
            out.append(ch)
    return "".join(out).casefold()


def skeleton(text: str) -> str:
    """Consonant skeleton: romanised, voicing/aspiration folded, vowels and spaces dropped,
    doubled consonants written once ("Minnemann" → "mnmn")."""
    out: list[str] = []
    prev = ""
    for ch in romanize(text, inherent=True).translate(_SKELETON_MAP):
        if ch.isalnum() and ch not in "aeiou" and ch != prev:
            out.append(ch)
        prev = ch
    return "".join(out)


# Latin spellings a transliteration follows the sound of, each tried both ways: German "sch",
# French "ch" (Michel → मिशेल), soft c and g (Cecil, Roger → रॉजर), j as y (Johann), z as ts,
# x as ks, w after a vowel (Mew → மியூ), m before b/p as the anusvara (Lambunao → लंबुनाओ).
_LATIN_SOUNDS = ((re.compile("sch"), "s"), (re.compile("ch"), "s"), (re.compile("c(?=[eiy])"), "s"),
                 (re.compile("g(?=[eiy])"), "j"), (re.compile("j"), "y"), (re.compile("z"), "ts"),
                 (re.compile("x"), "ks"), (re.compile("(?<=[aeiou])w(?![aeiou])"), ""),
                 (re.compile("m(?=[bp])"), "n"))


# English letter names, for acronyms that a transliteration spells out ("SG" → "एसजी").
_LETTER_NAMES = dict(zip("abcdefghijklmnopqrstuvwxyz", (
    "e bi si di i ef ji ech ai je ke el em en o pi kyu ar es ti yu vi dablyu eks vai jed").split()))


@lru_cache(maxsize=8192)
def _skeletons(folded: str, script: str, acronym: bool = False) -> frozenset[str]:
    """Skeletons of a folded word under the readings its spelling allows."""
    if script == "LATIN":
        forms = {folded}
        if acronym and folded.isalpha():
            forms.add("".join(_LETTER_NAMES.get(c, c) for c in folded))
        for pattern, sound in _LATIN_SOUNDS:
            if pattern.search(folded):
                forms |= {pattern.sub(sound, f) for f in forms}
    else:  # a Brahmic palatal also stands for s (Tamil சாலா = Sala)
        forms = {folded}
        r = romanize(folded)
        if "c" in r:
            forms.add(r.replace("c", "s"))
    return frozenset(s for s in map(skeleton, forms) if s)


def _initials_agree(s: _Word, p: _Word) -> bool:
    """A Latin name and its Brahmic transliteration both start with a vowel or both with a
    consonant. Latin u-/eu-/ou- may be written with य/व ("Euroclear" → यूरोक्लियर), a Latin
    h/y/j/w may be silent or a vowel, and acronyms are spelled out ("SG" → "एसजी")."""
    if "LATIN" not in (s.script, p.script):
        return True
    lat, bra = (s, p) if s.script == "LATIN" else (p, s)
    off = _brahmic_offset(bra.folded[:1]) if bra.folded else None
    if off is None or lat.text.isupper():
        return True
    vowel = 0x05 <= off <= 0x14
    first = lat.folded[:1]
    if first in "iu" and lat.folded[1:2] in tuple("aeiou"):
        return True  # Iohannis → जोहानिस: a glide
    if first in "aeiou":
        return vowel or off in (0x2F, 0x35)
    return first in "hyjw" or not vowel


def _cv_shape(folded: str, script: str) -> str:
    """Consonant-vowel shape: skeleton consonants, each vowel run as "V" ("Ufa" and "உபா"
    both give "VpV"); a Devanagari inherent vowel, often silent (schwa deletion: कुकली is
    "kukli"), is "v". A Latin final -e after a consonant is silent and left out."""
    out: list[str] = []

    def put(x: str) -> None:
        if x and (not out or out[-1] != x or x == "v"):
            out.append(x)

    if script == "LATIN":
        word = folded[:-1] if len(folded) > 2 and folded.endswith("e") \
            and folded[-2] not in "aeiouy" else folded
        for ch in word:
            put("V" if ch in "aeiouy" else ch.translate(_SKELETON_MAP) if ch.isalnum() else "")
        return "".join(out)
    chars = unicodedata.normalize("NFD", folded)
    for i, ch in enumerate(chars):
        off = _brahmic_offset(ch)
        if off is None:
            put(ch if ch.isalnum() else "")
        elif 0x05 <= off <= 0x14 or 0x3E <= off <= 0x4C:
            put("V")
        elif 0x15 <= off <= 0x39:
            put(_OFFSETS[off].translate(_SKELETON_MAP))
            nxt = _brahmic_offset(chars[i + 1]) if i + 1 < len(chars) else None
            if nxt is None or nxt not in _BRAHMIC_SIGNS:
                put("v" if script == "DEVANAGARI" else "V")  # the inherent vowel
        elif off in (0x01, 0x02):
            put("n")
    return "".join(out)


def _shapes_agree(a: str, b: str) -> bool:
    """Whether two shapes agree, reading each "v" as a vowel or as nothing."""
    if "v" in b:
        a, b = b, a
    pattern = "".join("V?" if c == "v" else re.escape(c) for c in a)
    return re.fullmatch(pattern, b.replace("v", "V")) is not None or a.replace("v", "") == b


# ---------------------------------------------------------------------------------------------
# Words and their alignment

# Articles, prepositions and conjunctions inside names ("Valdemar IV of Denmark", "Der Betrug",
# "माल्टा का संप्रभु सैन्य आदेश"): translation changes them, so a subject's function word may
# meet any function word of the prompt.
_FUNCTION_WORDS = frozenset("""
the of and a an in on at for to
der die das des dem den ein eine einer eines einem einen von vom und im am zum zur
le la les l de du d et un une au aux en
il lo i gli di del dello della dei degli delle dell e ed al allo alla
el los las y
का के की में और से पर को ने
மற்றும்
""".split())


@dataclass(frozen=True)
class _Word:
    text: str
    start: int
    end: int
    folded: str
    back: tuple[int, ...]  # folded index -> index in text
    script: str

    @classmethod
    def of(cls, m: re.Match) -> "_Word":
        folded, back = _fold_with_map(m.group())
        return cls(m.group(), m.start(), m.end(), folded, tuple(back), _script(m.group()))

    def offset(self, folded_len: int) -> int:
        """Prompt offset just after the first ``folded_len`` folded characters of the word."""
        if folded_len >= len(self.folded):
            return self.end
        return self.start + self.back[folded_len - 1] + 1 if folded_len else self.start

    @property
    def is_function(self) -> bool:
        return self.folded in _FUNCTION_WORDS


@dataclass(frozen=True)
class _Pair:
    score: float
    end: int  # prompt offset where the matched part of the prompt word ends
    cross: bool = False  # the two words are written in different scripts
    consonants: int = 0  # skeleton consonants behind a cross-script match
    same_shape: bool = False  # cross-script words of one consonant-vowel shape
    same_skeleton: bool = False  # cross-script words of one consonant skeleton
    tailed: bool = False  # found by the fallback's stem_and_tail only


def _same_script(s: _Word, p: _Word, threshold: float, rules: Rules) -> _Pair | None:
    if s.folded == p.folded:
        return _Pair(1.0, p.end)
    k = _inflection(s.folded, p.folded, p.script, rules)
    if k is not None:
        return _Pair(0.95, p.offset(k))
    a, b = s.folded, p.folded
    short = min(len(a), len(b))
    if short < _VARIANT_MIN_LEN or abs(len(a) - len(b)) > max(1, short // 5):
        return None
    ratio = difflib.SequenceMatcher(None, a, b, autojunk=False).ratio()
    if ratio < 0.9 and _lcp(a, b) < 3 and _lcp(a[::-1], b[::-1]) < 4:
        return None  # variants keep a beginning or an end ("Symbian" is not "Sembilan")
    return _Pair(ratio, p.end) if ratio >= threshold else None


def _cross_script(s: _Word, p: _Word, threshold: float, rules: Rules) -> _Pair | None:
    if not _initials_agree(s, p):
        return None
    targets = _skeletons(s.folded, s.script, s.text.isupper() and len(s.text) <= 5)
    best: tuple[float, int, int] | None = None
    for k in _stems(p.folded, rules):
        for cand in _skeletons(p.folded[:k], p.script, p.text.isupper() and len(p.text) <= 5):
            for target in targets:
                if min(len(target), len(cand)) < 2 and target != cand:
                    continue  # one consonant against another says nothing
                ratio = difflib.SequenceMatcher(None, target, cand, autojunk=False).ratio()
                if ratio >= threshold and (best is None or ratio > best[0]):
                    best = (ratio, k, min(len(target), len(cand)))
    if best is None:
        return None
    ratio, k, consonants = best
    exact = ratio == 1.0
    if consonants < 2:  # one consonant each ("Ray" ~ "रे") is weak evidence
        ratio = min(ratio, (1 + threshold) / 2)
    shape = _shapes_agree(_cv_shape(s.folded, s.script), _cv_shape(p.folded[:k], p.script))
    return _Pair(ratio, p.offset(k), True, consonants, shape, exact)


def _pair(s: _Word, p: _Word, threshold: float, rules: Rules, span: bool = False) -> _Pair | None:
    if not s.script or not p.script or s.script == p.script:
        pair = _same_script(s, p, threshold, rules)
        if pair is None and span:
            k = stem_and_tail(s.folded, p.folded)
            if k is not None:  # score: the share of the prompt word's letters in the stem
                pair = _Pair(_letters(p.folded[:k]) / _letters(p.folded), p.offset(k), tailed=True)
        return pair
    return _cross_script(s, p, threshold, rules)


def _align(sub: list[_Word], window: list[_Word], threshold: float, rules: Rules,
           span: bool = False):
    """(mean score, span start, span end, cross-script?, a fallback pair?) of one alignment
    (``span``: :func:`stem_and_tail` pairs allowed), or None."""
    scores, start, end, crossed = [], None, None, []
    anchored = tailed = False
    for i, (s, p) in enumerate(zip(sub, window)):
        pair = _pair(s, p, threshold, rules, span)
        if pair is None:
            if s.is_function and p.is_function and i < len(sub) - 1:
                continue  # "Der Betrug" → "im Betrug": articles change in translation
            return None
        if start is None:
            start = p.start  # unmatched leading function words stay out of the span
        if not s.is_function:
            scores.append(pair.score)
            anchored |= pair.score == 1.0 and not pair.cross and len(s.folded) >= 2
        if pair.cross:
            crossed.append(pair)
        tailed |= pair.tailed
        end = pair.end
    if not scores or start is None:
        return None
    mean = sum(scores) / len(scores)
    if crossed and not anchored and not _translit_evidence(crossed, mean, len(scores), threshold):
        return None
    return mean, start, end, bool(crossed), tailed


def _translit_evidence(crossed: list[_Pair], mean: float, n_content: int, threshold: float) -> bool:
    """Skeletons are short, so near misses are cheap: a transliterated name needs a higher mean
    similarity, enough consonants or a matching consonant-vowel shape, and a lone transliterated
    word an identical skeleton of four consonants, or of two or three and a matching shape
    ("Liminka" is not "मोनाको"; "Cookley" is "कुकली"; "Ufa", one consonant, is too short)."""
    consonants = sum(p.consonants for p in crossed)
    shapes = all(p.same_shape for p in crossed)
    if n_content == 1:
        return crossed[0].same_skeleton and (consonants >= 4 or consonants >= 2 and shapes)
    return mean >= (1 + threshold) / 2 - 1e-9 and (consonants >= _MIN_TRANSLIT_CONSONANTS or shapes)
