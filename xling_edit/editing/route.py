"""Retrieval-routed context edit across scripts (``method=route``): an English-only edit that
a Hindi or Tamil question can find.

The edit stores the request: its subject, prompt and new target, in the edit language only.
At evaluation every prompt, in every language, goes through a **router**:

1. it looks for a stored subject in the prompt in any script
   (:func:`xling_edit.evaluation.matching.find_name`: the prompt's words romanised with
   ``indic-transliteration`` / ``anyascii``, reduced to phonetic keys, fuzzy-matched with
   ``rapidfuzz`` at ``threshold``; the same libraries and keys as the answer matcher);
2. on a match it puts the new fact before the prompt, written code-mixed: the span the router
   itself found (the subject as the prompt writes it), the stored subject, the new target and,
   where a maintained library can write it, the target in the prompt's script. With the
   default ``fact`` template:
   ``स्पाइक ह्यूजेस (Spike Hughes): Philadelphia (फिलाडेल्फिया)``;
3. without a match it adds nothing, so unrelated prompts see exactly the unedited model.

What it needs: the English request only. The prompt's translation is read only as the query
the router answers (never the dataset's translated subject or target: the router's span comes
from its own match; ``tests/integration/test_route.py`` checks that no translated field of the
case reaches the context). What it costs: no weight change, no optimisation; evaluation of a
routed prompt is a few tokens longer.

The target's native-script form (``target_script``) is a rule-based rendering of the English
spelling (``indic-transliteration``'s ITRANS reading of the lower-cased word): an
approximation, which is why the Latin form always comes first.
"""

from __future__ import annotations

from dataclasses import dataclass

from xling_edit.editing.base import EditOutcome, EditRequest, Editor, register_editor
from xling_edit.editing.localize import DEFAULT_FALLBACK
from xling_edit.evaluation.matching import ROMANIZED_THRESHOLD, answer_script, find_name

_SCHEMES = {"Devanagari": "DEVANAGARI", "Tamil": "TAMIL", "Kannada": "KANNADA", "Bengali": "BENGALI",
            "Telugu": "TELUGU", "Malayalam": "MALAYALAM", "Gujarati": "GUJARATI",
            "Gurmukhi": "GURMUKHI", "Oriya": "ORIYA"}


@dataclass
class RouteConfig:
    """Retrieval-routed context edit (``method=route``; the module docstring says how it works).

    Args:
        name: registry name.
        variant: configuration label recorded in results.
        threshold: the router's rapidfuzz ratio (0-100) between the stored subject's phonetic
            key and a prompt span's; default the answer matcher's ``romanized`` threshold.
        fact: how the routed fact is written before the prompt: ``{span}`` the subject as the
            prompt writes it, ``{subject}`` the stored subject, ``{target}`` the new target,
            ``{target_native}`` `` (<target in the prompt's script>)`` or empty, ``{prompt}``
            the stored edit prompt (with the edit's answer cue).
        target_script: add ``{target_native}`` for prompts in an Indic script (rule-based
            rendering of the English spelling by ``indic-transliteration``).
        partial: when the whole subject is not found, look for its distinctive words alone
            (capitalised, at least ``partial_min_len`` letters, not a generic word such as
            "University", "Republic", "River": :data:`GENERIC_WORDS`), longest first, as one
            prompt word with a phonetic key of 4 letters or more, at ``partial_threshold``: a translated title keeps its name ("The Revenge of
            Shinobi" → शिनोबी की प्रतिशोध).
        partial_threshold: the stricter ratio a single distinctive word must reach.
        partial_min_len: the shortest distinctive word (letters).
        mode: only ``single``.
        num_edits: unused (1).
        subject_match_threshold: unused (kept so batch checks read the same field).
        subject_fallback: unused, likewise.
    """

    name: str = "route"
    variant: str = "published"
    threshold: float = ROMANIZED_THRESHOLD
    fact: str = "{span} ({subject}): {target}{target_native}\n"
    target_script: bool = True
    partial: bool = True
    partial_threshold: float = 90.0
    partial_min_len: int = 5
    mode: str = "single"
    num_edits: int = 1
    subject_match_threshold: float = 0.8
    subject_fallback: str = DEFAULT_FALLBACK


def native_form(word: str, script: str | None) -> str | None:
    """``word`` (Latin) written in ``script`` by ``indic-transliteration`` (ITRANS reading of
    its lower-cased letters), or None for scripts it does not cover or non-Latin words."""
    if script not in _SCHEMES or answer_script(word) != "Latin":
        return None
    from indic_transliteration import sanscript

    return sanscript.transliterate(word.lower(), sanscript.ITRANS, getattr(sanscript, _SCHEMES[script]))


#: words of a subject never searched alone (``RouteConfig.partial``): generic parts of names
GENERIC_WORDS = frozenset("""the and for with from university college school church river lake
mount saint station airport republic kingdom national international football club association
company party city county district province state museum hospital festival award prize street
road bridge park island islands north south east west northern southern eastern western new old
great royal first second third central united american british english french german indian
world history league cup championship series film album song band group team federation press
society institute foundation corporation municipality rural records airlines motors""".split())


def distinctive_words(subject: str, min_len: int) -> list[str]:
    """The subject's words that can stand for it alone (``RouteConfig.partial``), longest first:
    capitalised, at least ``min_len`` letters, not generic. The leading name word of a subject
    with another name word (capitalised and not generic, or with a digit) is not one: a brand or
    first name alone names other things too ("Honda" of "Honda Insight" is also in "Honda
    Silver Wing"; "Windows" of "Windows XP" in "Windows 3.0")."""
    words = [w.strip(".,'\"()") for w in subject.replace("-", " ").split()]
    names = [w for w in words if (w[:1].isupper() and w.lower() not in GENERIC_WORDS)
             or any(c.isdigit() for c in w)]
    keep = [w for w in names if w[:1].isupper() and len(w) >= min_len and w.lower() not in GENERIC_WORDS]
    if len(names) >= 2 and keep and keep[0] == names[0]:
        keep = keep[1:]
    return sorted(dict.fromkeys(keep), key=len, reverse=True)


class Router:
    """``(lang, prompt) -> context``: the stored fact before a prompt that names its subject.
    Records what it did for every prompt (``decisions``)."""

    def __init__(self, subject: str, target: str, hp: RouteConfig, prompt: str = ""):
        self.subject, self.target, self.hp, self.prompt = subject, target, hp, prompt
        self.decisions: list[dict] = []

    def __call__(self, lang: str, prompt: str) -> str:
        span = find_name(prompt, self.subject, float(self.hp.threshold), lang=lang)
        if span is None and self.hp.partial:
            for word in distinctive_words(self.subject, int(self.hp.partial_min_len)):
                span = find_name(prompt, word, float(self.hp.partial_threshold), same_length=True,
                                 min_key=4, lang=lang)
                if span is not None:
                    break
        self.decisions.append({"lang": lang, "prompt": prompt, "span": span.text if span else None,
                               "score": round(span.score, 1) if span else None})
        if span is None:
            return ""
        native = native_form(self.target, answer_script(prompt)) if self.hp.target_script else None
        return self.hp.fact.format(span=span.text, subject=self.subject, target=self.target,
                                   target_native=f" ({native})" if native else "", prompt=self.prompt)


@register_editor("route", schema=RouteConfig)
class RouteEditor(Editor):
    """``method=route`` (module docstring): a context edit whose context is a :class:`Router`."""

    kind = "context"

    def __init__(self, hparams, spec=None, seed: int = 0, covariance=None, covariance_label=None):
        super().__init__(hparams, spec, seed, covariance, covariance_label)
        self.hp = RouteConfig(**{f: hparams[f] for f in RouteConfig.__dataclass_fields__ if f in hparams})

    def edit(self, model, tok, request: EditRequest) -> EditOutcome:
        rec = request.record  # the edit language's record: subject, prompt, target_new
        router = Router(rec.subject.strip(), rec.target_new.strip(), self.hp,
                        rec.prompt.strip() + request.answer_prefix)
        return EditOutcome(deltas=[], context=router, info={
            "method": "route", "variant": self.hp.variant, "threshold": float(self.hp.threshold),
            "stored": {"subject": router.subject, "target": router.target,
                       "lang": str(request.lang["code"])}})
