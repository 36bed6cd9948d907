"""Find a subject in a (possibly translated) prompt.

Translation inflects names: Tamil and Kannada attach case suffixes ("சென்னை" → "சென்னையில்"),
Hindi and French change forms. Tried in order:

1. ``exact``: the subject verbatim;
2. ``normalized``: after NFKC and case folding;
3. ``fuzzy``: the window of prompt words most similar to the subject's words, where a word's
   similarity is the larger of its shared-prefix share and difflib's ratio. The span ends where
   the shared prefix ends, so the key is read at the last token of the subject's stem.

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
    method: str  # exact | normalized | fuzzy
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
    if prefix_score >= ratio and p > 0:
        return prefix_score, p
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
    return _fuzzy(prompt, subject, threshold)


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
