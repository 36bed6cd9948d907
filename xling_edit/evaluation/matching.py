"""Does a generated answer state the target, and how? A cascade of rungs, strictest first.

:func:`match_answer` returns the first rung that matches (:data:`RUNGS`):

1. ``exact``: the target appears verbatim in the answer, on word boundaries ("Paris" in "Paris,
   France" but not in "Parisian");
2. ``normalized``: the target's words appear as consecutive answer words after
   :func:`normalize`: Unicode NFC, case folding, punctuation and quotes removed, ZWJ/ZWNJ
   dropped, nukta variants unified (क़ = क), every script's digits read as ASCII digits;
3. ``romanized``: the answer writes the target in another script: both sides romanised (Indic scripts by ``indic-transliteration``'s ISO
   scheme, every other script by ``anyascii``), reduced to a coarse phonetic key
   (:func:`phonetic_key`: aspiration and voicing merged, vowel runs folded, a final schwa
   dropped, doubled letters single) and compared with ``rapidfuzz``'s ratio over windows of
   answer words the target's length (±1); a match needs a ratio of at least
   :data:`ROMANIZED_THRESHOLD` (set by measurement on the committed cross-script fixture,
   ``tests/fixtures/cross_script_pairs.json``, with ``bench/match_threshold.py``), and keys
   shorter than :data:`MIN_KEY_LEN` letters must be identical. "Philadelphia" in a Hindi answer matches the target
   फिलाडेल्फिया here: an answer in the right language's meaning but another script;
4. ``inflected``: the target's last word, as the stem of an answer word with one of the
   language's declared suffixes (``morphology`` in ``conf/edit_lang/<code>.yaml``: Tamil
   லண்டன் → லண்டனில், "in London"); a new language gets this rung by YAML alone;
5. ``other_form``: one of ``also`` (e.g. the English spelling of a Hindi target) appears,
   normalised, in the answer. It counts as success, and is reported apart;
6. ``none``.

Every function here is pure (no model, no I/O beyond reading a language file once).
"""

from __future__ import annotations

import math
import unicodedata
from collections import Counter
from dataclasses import dataclass
from functools import lru_cache
from typing import Iterable, Mapping, Sequence

import regex

#: the cascade's rungs in order; every rung but ``none`` counts as success
RUNGS = ("exact", "normalized", "romanized", "inflected", "other_form", "none")
SUCCESS_RUNGS = RUNGS[:-1]

#: rapidfuzz ratio (0-100) a romanised window must reach. Chosen on the cross-script fixture
#: (bench/match_threshold.py): the lowest value with precision >= 0.98 on every language's
#: negatives.
ROMANIZED_THRESHOLD = 80.0
#: phonetic keys shorter than this match by romanisation only when identical
MIN_KEY_LEN = 3

_ZERO_WIDTH = dict.fromkeys(map(ord, "\u200b\u200c\u200d\u2060\ufeff\u00ad"))
# nukta signs of the Brahmic scripts: a letter with a nukta is read as the letter
_NUKTAS = "\u093c\u09bc\u0a3c\u0abc\u0b3c\u0cbc\u0c3c"
_INDIC_SCRIPTS = ("Devanagari", "Bengali", "Gurmukhi", "Gujarati", "Oriya", "Tamil", "Telugu",
                  "Kannada", "Malayalam")
_SCRIPT_RE = {s: regex.compile(rf"\p{{Script={s}}}") for s in (
    "Latin", *_INDIC_SCRIPTS, "Cyrillic", "Greek", "Arabic", "Hebrew", "Han", "Hiragana",
    "Katakana", "Hangul", "Thai", "Lao", "Khmer", "Myanmar", "Sinhala", "Tibetan", "Georgian",
    "Armenian", "Ethiopic", "Bopomofo", "Mongolian", "Syriac", "Thaana", "Cherokee", "Ol_Chiki",
    "Javanese", "Balinese", "Sundanese", "Tifinagh", "Canadian_Aboriginal")}


# ------------------------------------------------------------------ scripts
def check_script(name: str) -> None:
    """Raise ``ValueError`` unless ``name`` is a Unicode script name (``regex``'s
    ``\\p{Script=...}``; e.g. Latin, Devanagari, Tamil, Kannada, Bengali, Han)."""
    try:
        regex.compile(rf"\p{{Script={name}}}")
    except regex.error:
        raise ValueError(f"script {name!r} is not a Unicode script name (e.g. Latin, Devanagari, "
                         f"Tamil, Kannada, Bengali, Cyrillic, Han)") from None


@lru_cache(maxsize=4096)
def char_script(ch: str) -> str | None:
    """The Unicode script of a letter or combining mark, None for anything else (digits,
    punctuation, spaces: the Common and Inherited scripts)."""
    if not unicodedata.category(ch)[0] in "LM":
        return None
    for name, pat in _SCRIPT_RE.items():
        if pat.match(ch):
            return name
    return None


def answer_script(text: str) -> str | None:
    """The script most of the answer's letters are written in; None when it has no letters."""
    counts = Counter(s for s in map(char_script, text) if s is not None)
    return counts.most_common(1)[0][0] if counts else None


# ------------------------------------------------------------------ normalisation
def normalize(text: str) -> str:
    """NFC, case folded, zero-width joiners dropped, nukta removed, digits as ASCII,
    punctuation / quotes / symbols as spaces, whitespace collapsed."""
    t = unicodedata.normalize("NFD", text.translate(_ZERO_WIDTH))
    t = "".join(ch for ch in t if ch not in _NUKTAS)
    t = unicodedata.normalize("NFC", t).casefold()
    out = []
    for ch in t:
        cat = unicodedata.category(ch)
        if cat == "Nd":
            out.append(str(unicodedata.digit(ch)))
        elif cat[0] in "PSZC":
            out.append(" ")
        else:
            out.append(ch)
    return " ".join("".join(out).split())


def _words(text: str) -> list[str]:
    return normalize(text).split()


def _contains(hay: Sequence[str], needle: Sequence[str]) -> bool:
    n = len(needle)
    return n > 0 and any(list(hay[i: i + n]) == list(needle) for i in range(len(hay) - n + 1))


def _verbatim(answer: str, target: str) -> bool:
    start = answer.find(target)
    while start >= 0:
        end = start + len(target)
        before = answer[start - 1] if start else " "
        after = answer[end] if end < len(answer) else " "
        if not _wordish(before) and not _wordish(after):
            return True
        start = answer.find(target, start + 1)
    return False


def _wordish(ch: str) -> bool:
    return unicodedata.category(ch)[0] in "LMN"


# ------------------------------------------------------------------ romanisation
@lru_cache(maxsize=8192)
def romanize(word: str) -> str:
    """ASCII romanisation of one word, lower case: Indic scripts through
    ``indic-transliteration`` (ISO 15919; the anusvara read as ``n``, ISO's ``c`` as English
    "ch"), every other script through ``anyascii``. A Latin-script word is also respelled as
    it sounds in English, where Indic transliterations of names follow the sound: soft ``c``
    and ``g`` before e/i/y become ``s`` / ``j``, ``cz`` is "ch", a final ``ch`` is ``k``
    (Munich, Czech), ``x`` is "ks"."""
    from anyascii import anyascii

    script = answer_script(word)
    if script in _INDIC_SCRIPTS:
        from indic_transliteration import sanscript

        iso = sanscript.transliterate(word, getattr(sanscript, script.upper()), sanscript.ISO)
        # the anusvara is a nasal (n before most consonants); the library writes Tamil's
        # final ம் with the same sign, which is an m
        nasal = "m" if script == "Tamil" else "n"
        iso = iso.replace("ṁ", nasal).replace("ṃ", nasal)
        text = anyascii(iso).lower().replace("c", "ch").replace("chh", "ch")
    else:
        text = anyascii(word).lower()
        if script == "Latin":
            text = regex.sub(r"cz", "ch", text)
            text = regex.sub(r"(?<=[ei])ch$", "k", text)
            text = text.replace("tch", "ch")
            text = regex.sub(r"c(?=[eiy])", "s", text)
            text = regex.sub(r"g(?=[eiy])", "j", text)
            text = text.replace("x", "ks")
    return "".join(ch for ch in text if ch.isalpha())


_DIGRAPHS = (("ph", "p"), ("th", "t"), ("sh", "s"), ("ch", "C"), ("kh", "k"), ("gh", "g"),
             ("dh", "d"), ("bh", "b"), ("jh", "j"), ("zh", "j"), ("ck", "k"))
# voicing merged (Tamil script does not write it); s, sh, ch, j and z one sibilant class
# (Hindi writes English z as ज, Tamil ch and s as ச); every vowel a
_SINGLE = str.maketrans({"b": "p", "d": "t", "g": "k", "f": "p", "v": "w", "z": "s", "q": "k",
                         "x": "k", "c": "k", "j": "s", "C": "s", "e": "a", "i": "a", "o": "a",
                         "u": "a"})
_VOWELS = "a"


@lru_cache(maxsize=8192)
def phonetic_key(word: str) -> str:
    """A coarse sound key of one romanised word, so that a name spelled in two scripts meets:
    digraphs and aspiration folded (ph, th, sh, kh, ...; an ``h`` after a consonant), voicing
    merged (b/p, d/t, g/k), the sibilants and affricates one class (s, sh, ch, j, z), f = p,
    v = w, every vowel run one ``a``, a ``y`` between vowels and a ``w`` closing a vowel
    dropped ("iy" = "i", Glasgow = ग्लासगो), a nasal before a consonant ``n``, a word-final
    ``a`` (the Indic schwa) dropped, doubled letters single. "Philadelphia", फिलाडेल्फिया and பிலடெல்பியா all become
    ``palatalp``."""
    w = word.lower().replace("iy", "i")
    for a, b in _DIGRAPHS:
        w = w.replace(a, b)
    w = w.translate(_SINGLE)
    out: list[str] = []
    for ch in w:
        if ch == "h" and out and out[-1] not in _VOWELS:
            continue  # aspiration
        if out and ch == out[-1]:
            continue  # doubled letters, vowel runs
        out.append(ch)
    w = "".join(out)
    w = regex.sub(r"(?<=a)y(?=a)", "", w)
    w = regex.sub(r"[mn](?=[^aymnwrlh])", "n", w)  # a nasal before a consonant
    w = regex.sub(r"(.)\1+", r"\1", w)
    if len(w) > 2 and w.endswith("a"):
        w = w[:-1]
    w = regex.sub(r"(?<=a)w(?=[^a]|$)", "", w)
    return w


def romanized_ratio(answer: str, target: str) -> float:
    """The best rapidfuzz ratio (0-100) between the target's phonetic key and the key of any
    window of consecutive answer words of the target's word count ±1 (a longer window only of
    words with keys of :data:`MIN_KEY_LEN` letters or more) written in another script than the
    target (a same-script window is a spelling matter: 0; 0 also when either side has
    no key of two letters); both keys must start with a vowel or both with a consonant, and keys
    shorter than :data:`MIN_KEY_LEN` letters must be identical."""
    t_words = _words(target)
    t_keys = [phonetic_key(romanize(w)) for w in t_words]
    t = "".join(t_keys)
    if len(t) < 2:
        return 0.0
    t_script = answer_script(target)
    a_words = _words(answer)
    a_keys = [phonetic_key(romanize(w)) for w in a_words]
    n = len(t_keys)
    best = 0.0
    for size in {max(1, n - 1), n, n + 1}:
        for i in range(0, max(0, len(a_keys) - size) + 1):
            if answer_script(" ".join(a_words[i: i + size])) == t_script:
                continue  # same script: spelling, not transliteration
            if size > n and any(len(k) < MIN_KEY_LEN for k in a_keys[i: i + size]):
                continue  # a longer window joins whole words only, not function words ("the soul")
            best = max(best, _key_ratio(t, "".join(a_keys[i: i + size])))
    return best


# ------------------------------------------------------------------ finding a name in a text
_TOKEN = regex.compile(r"[\p{L}\p{M}\p{N}]+")


@dataclass(frozen=True)
class NameSpan:
    """Where :func:`find_name` found a name: characters ``[start, end)`` of the text."""

    start: int
    end: int
    text: str
    score: float  # 100 for a normalised match, else the phonetic-key ratio


def find_name(text: str, name: str, threshold: float = ROMANIZED_THRESHOLD,
              same_length: bool = False, min_key: int = 0, lang: str | None = None) -> NameSpan | None:
    """The span of ``text`` that writes ``name`` — in any script, possibly inflected — or None.

    Windows of the text's words (the name's word count, one more, and one fewer for names of
    three words or more) are compared with the name: equal after :func:`normalize` (score
    100), or by the rapidfuzz ratio of their phonetic keys (:func:`phonetic_key` of
    :func:`romanize`). The window's last word may also be read without one of ``lang``'s
    declared suffixes (``morphology``: Tamil சிம்பெரோபோலின் = சிம்பெரோபோல் + ின்). A window
    is never a match when:

    - its numbers are not the name's ("BMW M40" is not "BMW M62", "Windows XP" not
      "Windows 3");
    - the name's key is shorter than :data:`SHORT_NAME_KEY` letters: then the keys must be
      equal and the score is the ratio of the romanisations themselves, since a short key
      meets common words ("Vevo" and "Who" share the key ``wa``, "India" and எந்த ``ant``;
      इंडिया, ``indiya``, scores 91);
    - the name is capitalised and the window is a Latin-script word in lower case;
    - the keys disagree on starting with a vowel.

    The best window at or above ``threshold`` wins (ties: the first). ``same_length``: windows
    of exactly the name's word count; ``min_key``: None when the name's key is shorter (a
    single short word is too little evidence)."""
    words = [(m.start(), m.end(), m.group()) for m in _TOKEN.finditer(text)]
    n_words = _words(name)
    if not words or not n_words:
        return None
    n_norm = " ".join(n_words)
    n_rom = "".join(romanize(w) for w in n_words)
    t = "".join(phonetic_key(romanize(w)) for w in n_words)
    if len(t) < min_key:
        return None
    numbers = _DIGITS.findall(n_norm)
    capital = name.strip()[:1].isupper()
    rules = morphology(lang) if lang else None
    n = len(n_words)
    sizes = [n] if same_length else sorted({n - 1 if n >= 3 else n, n, n + 1})
    best: NameSpan | None = None
    for size in sizes:
        for i in range(0, max(0, len(words) - size) + 1):
            win = words[i: i + size]
            start, end = win[0][0], win[-1][1]
            chunk = text[start:end]
            norm = normalize(chunk)
            if norm == n_norm:
                score = 100.0
            else:
                if sorted(_DIGITS.findall(norm)) != sorted(numbers):
                    continue
                if capital and win[0][2][:1].islower() and answer_script(win[0][2]) == "Latin":
                    continue
                score = max(_window_ratio(t, n_rom, [x[2] for x in win], rules))
            if score >= threshold and (best is None or score > best.score):
                best = NameSpan(start, end, chunk, score)
    return best


#: a name whose phonetic key is shorter than this matches only when written out
SHORT_NAME_KEY = 4
_DIGITS = regex.compile(r"\d+")


def _window_ratio(t: str, n_rom: str, win: list[str], rules: "Morphology | None") -> list[float]:
    """:func:`_key_ratio` of the name's key ``t`` and the window's, for the window as written
    and with its last word stripped of each of ``rules``' suffixes that it ends with."""
    from rapidfuzz import fuzz

    head = "".join(phonetic_key(romanize(w)) for w in win[:-1])
    last = normalize(win[-1])
    lasts = {last} | (rules.stems(last) if rules else set())
    scores = []
    for form in lasts:
        if len(t) < SHORT_NAME_KEY:  # the spelling itself, not the coarse key
            rom = "".join(romanize(w) for w in win[:-1]) + romanize(form)
            scores.append(fuzz.ratio(rom, n_rom) if t == phonetic_key(rom) else 0.0)
        else:
            scores.append(_key_ratio(t, head + phonetic_key(romanize(form))))
    return scores


def _key_ratio(t: str, w: str) -> float:
    """rapidfuzz ratio (0-100) of two phonetic keys: 0 when one starts with a vowel and the
    other not, identity only for keys shorter than :data:`MIN_KEY_LEN`."""
    from rapidfuzz import fuzz

    if not t or not w:
        return 0.0
    if len(t) < MIN_KEY_LEN or len(w) < MIN_KEY_LEN:
        return 100.0 if t == w else 0.0
    if (t[0] == "a") != (w[0] == "a"):
        return 0.0
    return fuzz.ratio(t, w)


# ------------------------------------------------------------------ morphology
@dataclass(frozen=True)
class Morphology:
    """How a language inflects a name (``morphology`` in ``conf/edit_lang/<code>.yaml``).

    Args:
        suffixes: endings written onto a word (case suffixes, clitics, attached
            postpositions), e.g. Tamil ``ில்`` ("in"), ``க்கு`` ("to").
        stem_drop: endings a word may lose before a suffix attaches (Tamil's final pulli
            ``்``: லண்டன் + ில் = லண்டனில்; Hindi's ``ा`` before the oblique ``े``).
        min_stem: the shortest stem (letters) the rule applies to.
    """

    suffixes: tuple[str, ...] = ()
    stem_drop: tuple[str, ...] = ()
    min_stem: int = 2

    def forms(self, word: str) -> set[str]:
        """Every inflected form of a normalised ``word`` (the word itself not included)."""
        if len(word) < self.min_stem or not self.suffixes:
            return set()
        stems = {word} | {word[: -len(d)] for d in self.stem_drop if d and word.endswith(d)
                          and len(word) - len(d) >= self.min_stem}
        return {s + suf for s in stems for suf in self.suffixes} - {word}

    def stems(self, word: str) -> set[str]:
        """The stems ``word`` can be read as: without one of the suffixes, with each dropped
        ending restored (the inverse of :meth:`forms`; Tamil லண்டனில் → லண்டன், லண்டன)."""
        out: set[str] = set()
        for suf in self.suffixes:
            if word.endswith(suf) and len(word) - len(suf) >= self.min_stem:
                stem = word[: -len(suf)]
                out |= {stem} | {stem + d for d in self.stem_drop if d}
        return out


def parse_morphology(node: Mapping | None, where: str = "morphology") -> Morphology:
    """A :class:`Morphology` from a language file's ``morphology`` mapping; a ``ValueError``
    naming the field for anything that does not parse (unknown keys, empty or spaced
    suffixes, a non-positive ``min_stem``)."""
    if not node:
        return Morphology()
    node = dict(node)
    unknown = sorted(set(node) - {"suffixes", "stem_drop", "min_stem"})
    if unknown:
        raise ValueError(f"{where}: unknown field(s) {unknown}; known: suffixes, stem_drop, min_stem")

    def strings(key):
        vals = node.get(key) or []
        if isinstance(vals, str) or not isinstance(vals, Iterable):
            raise ValueError(f"{where}.{key} must be a list of strings, got {vals!r}")
        out = []
        for v in vals:
            if not isinstance(v, str) or not v or v != v.strip() or any(c.isspace() for c in v):
                raise ValueError(f"{where}.{key}: {v!r} is not a non-empty string without spaces")
            out.append(unicodedata.normalize("NFC", v))
        return tuple(out)

    min_stem = node.get("min_stem", 2)
    if not isinstance(min_stem, int) or isinstance(min_stem, bool) or min_stem < 1:
        raise ValueError(f"{where}.min_stem must be an integer >= 1, got {min_stem!r}")
    # suffixes are matched against normalised words: normalise them the same way
    sufs = tuple(normalize(s).replace(" ", "") for s in strings("suffixes"))
    drops = tuple(normalize(s).replace(" ", "") or s for s in strings("stem_drop"))
    return Morphology(sufs, drops, min_stem)


_MORPHOLOGY: dict[str, Morphology] = {}


def set_morphology(lang: str, node: Mapping | Morphology | None) -> None:
    """Use ``node`` (a language file's ``morphology``) for ``lang`` from now on (the pipeline
    registers the composed languages' rules here)."""
    _MORPHOLOGY[lang] = node if isinstance(node, Morphology) else parse_morphology(node, f"{lang}.morphology")


def registered_morphologies() -> dict[str, Morphology]:
    """{language code: rules} registered so far (:func:`set_morphology`, :func:`morphology`)."""
    return dict(_MORPHOLOGY)


def morphology(lang: str) -> Morphology:
    """``lang``'s rules: registered ones, else read once from ``conf/edit_lang/<lang>.yaml``
    (none for a language without a file)."""
    if lang not in _MORPHOLOGY:
        from xling_edit.languages import DEFAULT_CONF_DIR

        path = DEFAULT_CONF_DIR / "edit_lang" / f"{lang}.yaml"
        node = None
        if path.exists():
            from omegaconf import OmegaConf

            node = OmegaConf.to_container(OmegaConf.load(path)).get("morphology")
        set_morphology(lang, node)
    return _MORPHOLOGY[lang]


def _inflected(answer_words: Sequence[str], target_words: Sequence[str], rules: Morphology) -> bool:
    if not target_words or not rules.suffixes:
        return False
    *head, last = target_words
    forms = rules.forms(last)
    n = len(target_words)
    for i in range(len(answer_words) - n + 1):
        if list(answer_words[i: i + n - 1]) == head and answer_words[i + n - 1] in forms:
            return True
    return False


# ------------------------------------------------------------------ the cascade
def match_answer(answer: str, target: str, lang: str, also: Sequence[str] = (),
                 rules: Morphology | None = None) -> str:
    """The first rung of :data:`RUNGS` at which ``answer`` states ``target``.

    Args:
        answer: the generated answer (already cut at its stop).
        target: the expected answer in the question's language ``lang``.
        lang: the question's language code; its ``morphology`` drives the ``inflected`` rung.
        also: other accepted forms (e.g. the English spelling of a Hindi target): a match
            against one of them is ``other_form``.
        rules: the morphology to use instead of ``lang``'s (tests).
    """
    if not answer or not answer.strip() or not target or not target.strip():
        return "none"
    if _verbatim(answer, target.strip()):
        return "exact"
    a_words, t_words = _words(answer), _words(target)
    if not t_words:
        return "none"
    if _contains(a_words, t_words):
        return "normalized"
    if romanized_ratio(answer, target) >= ROMANIZED_THRESHOLD:
        return "romanized"
    if _inflected(a_words, t_words, rules if rules is not None else morphology(lang)):
        return "inflected"
    for form in also:
        f_words = _words(form) if form else []
        if f_words and f_words != t_words and _contains(a_words, f_words):
            return "other_form"
    return "none"


def same_answer(a: str, b: str) -> bool:
    """Two generated answers say the same, after :func:`normalize` (locality agreement)."""
    return normalize(a) == normalize(b)


# ------------------------------------------------------------------ fluency
def ngram_entropy(text: str, ns: Sequence[int] = (2, 3), weights: Sequence[float] = (2 / 3, 4 / 3)
                  ) -> float | None:
    """ROME/MEMIT's fluency measure: the entropy (bits) of the text's word n-gram distribution,
    weighted over bi- and tri-grams (weights 2/3 and 4/3, averaged). Low values mean repetitive,
    degenerate text. None for a text with fewer than two words (no bigram)."""
    words = _words(text)
    if len(words) < 2:
        return None
    parts = []
    for n in ns:
        grams = Counter(tuple(words[i: i + n]) for i in range(len(words) - n + 1))
        total = sum(grams.values())
        if not total:
            parts.append(0.0)
            continue
        parts.append(-sum(c / total * math.log2(c / total) for c in grams.values()))
    return float(sum(w * p for w, p in zip(weights, parts)) / len(parts))
