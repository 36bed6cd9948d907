"""Find a subject in a (possibly translated) prompt.

Translation inflects names: Tamil and Kannada attach case suffixes ("சென்னை" → "சென்னையில்"),
Hindi and French change forms. Tried in order:

1. ``exact``: the subject verbatim;
2. ``normalized``: after NFKC and case folding;
3. ``fuzzy``: the window of prompt words most similar to the subject's words, where a word's
   similarity is the larger of its shared-prefix share and difflib's ratio. The span ends where
   the shared prefix ends, so the key is read at the last token of the subject's stem.
4. ``translit``: across scripts. BMIKE-53 often keeps a Latin subject ("Laurent Cars") while
   the prompt transliterates it ("लॉरेंट कार्स"). Both sides are reduced to a consonant
   skeleton (Brahmic scripts romanised through their shared ISCII-derived code-point layout,
   voicing and aspiration dropped) and compared with difflib's ratio over word windows.

A miss returns ``None``; the caller records the case-language as skipped with the reason.
"""

from __future__ import annotations

import difflib
import re
import unicodedata
from dataclasses import asdict, dataclass

_WORD = re.compile(r"[^\s.,;:!?¿¡\"'“”‘’«»()\[\]{}।॥—–-]+")


@dataclass(frozen=True)
class SubjectMatch:
    start: int  # character span of the subject in the prompt
    end: int
    method: str  # exact | normalized | fuzzy | translit
    score: float
    matched: str

    def to_dict(self) -> dict:
        return asdict(self)


def _normalized_with_map(text: str) -> tuple[str, list[int]]:
    """NFKC + casefold of ``text``, and for each output char the index of its source char."""
    out, idx = [], []
    for i, ch in enumerate(text):
        n = unicodedata.normalize("NFKC", ch).casefold()
        out.append(n)
        idx.extend([i] * len(n))
    return "".join(out), idx


def _norm(s: str) -> str:
    return unicodedata.normalize("NFKC", s).casefold()


def _prefix_len(a: str, b: str) -> int:
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


def word_similarity(subject_word: str, prompt_word: str) -> tuple[float, int]:
    """(similarity in [0, 1], length of the matched part of ``prompt_word``)."""
    a, b = _norm(subject_word), _norm(prompt_word)
    if not a or not b:
        return 0.0, 0
    p = _prefix_len(a, b)
    prefix_score = p / len(a)
    ratio = difflib.SequenceMatcher(None, a, b).ratio()
    # A long shared prefix is an inflected stem ("லண்டன்" → "லண்டனில்"): end the span there.
    if p > 0 and (prefix_score >= ratio or prefix_score >= 0.75):
        return max(prefix_score, ratio), p
    return ratio, len(b)


def find_subject(prompt: str, subject: str, threshold: float = 0.6) -> SubjectMatch | None:
    subject = subject.strip()
    if not subject:
        return None
    i = prompt.find(subject)
    if i >= 0:
        return SubjectMatch(i, i + len(subject), "exact", 1.0, subject)
    norm_prompt, back = _normalized_with_map(prompt)
    norm_subject = _norm(subject)
    j = norm_prompt.find(norm_subject)
    if j >= 0:
        start, end = back[j], back[j + len(norm_subject) - 1] + 1
        return SubjectMatch(start, end, "normalized", 1.0, prompt[start:end])
    return _fuzzy(prompt, subject, threshold) or _translit(prompt, subject, threshold)


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


def romanize(text: str) -> str:
    out = []
    for ch in unicodedata.normalize("NFD", text):
        cp = ord(ch)
        block = next((b for b in _BRAHMIC_BLOCKS if b <= cp < b + 0x80), None)
        if block is not None:
            out.append(_OFFSETS.get(cp - block, ""))
        elif not unicodedata.combining(ch):
            out.append(ch)
    return "".join(out).casefold()


def skeleton(text: str) -> str:
    """Consonant skeleton: romanised, voicing/aspiration folded, vowels and spaces dropped."""
    r = romanize(text).translate(_SKELETON_MAP)
    return "".join(ch for ch in r if ch.isalnum() and ch not in "aeiou")


def _translit(prompt: str, subject: str, threshold: float) -> SubjectMatch | None:
    target = skeleton(subject)
    if len(target) < 2:
        return None
    words = [(m.start(), m.end(), m.group()) for m in _WORD.finditer(prompt)]
    n = max(1, len(_WORD.findall(subject)))
    best: tuple[float, int, int] | None = None
    for size in {max(1, n - 1), n, n + 1}:
        for w in range(len(words) - size + 1):
            window = words[w:w + size]
            cand = skeleton(prompt[window[0][0]:window[-1][1]])
            score = difflib.SequenceMatcher(None, target, cand).ratio()
            if best is None or score > best[0]:
                best = (score, window[0][0], window[-1][1])
    if best is None or best[0] < threshold:
        return None
    score, start, end = best
    return SubjectMatch(start, end, "translit", round(score, 4), prompt[start:end])


def _fuzzy(prompt: str, subject: str, threshold: float) -> SubjectMatch | None:
    words = [(m.start(), m.end(), m.group()) for m in _WORD.finditer(prompt)]
    sub_words = _WORD.findall(subject) or [subject]
    n = len(sub_words)
    best: tuple[float, int, int] | None = None
    for w in range(len(words) - n + 1):
        window = words[w:w + n]
        scores = [word_similarity(sw, pw[2]) for sw, pw in zip(sub_words, window)]
        score = sum(s for s, _ in scores) / n
        end = window[-1][0] + max(1, scores[-1][1])
        if best is None or score > best[0]:
            best = (score, window[0][0], end)
    if best is None or best[0] < threshold:
        return None
    score, start, end = best
    return SubjectMatch(start, end, "fuzzy", round(score, 4), prompt[start:end])
