"""The context-prefix generator (xling_edit/editing/context.py) starts every sample from its seed
word and conditions the sample on it.

Published ROME/MEMIT sample their context prefixes from the model starting at seed words ("The",
"Therefore", ...); here the seed words come from the edit language's config. Two ways to get
this wrong go unnoticed elsewhere (the oracle tests take production's prefixes as given): a
generator that does not feed the seed word to the model (the prefix does not start with it) and
one that pastes the seed word in front of a sample drawn without it (the prefix starts with it,
but the text after it does not depend on it). The checks here catch both, and
:func:`test_checks_catch_generators_that_ignore_the_seed` shows that they do.
"""

from __future__ import annotations

import pytest

from tests.conftest import language, model_cfg
from xling_edit.editing.memit import MemitConfig
from xling_edit.editing import context
from xling_edit.editing.memit import MemitEditor
from xling_edit.models import ModelSpec, load_model

SEEDS = ["The", "Therefore", "Because", "I", "You"]
TEMPLATES = [[5, 5], [10, 5]]  # one sample per seed word per group
# two lists of equally long seed words (3 bytes each with the byte-level tokenizer): a generator
# that ignores the seed draws the same continuations for both (same RNG seed, same lengths)
SEEDS_A = ["The", "You", "Can", "Why", "Our"]
SEEDS_B = ["Now", "Her", "Its", "Far", "Old"]

_MODEL: dict = {}


def tiny_llama():
    if not _MODEL:
        cfg = model_cfg("tiny_llama")
        model, tok = load_model(cfg, seed=0)
        _MODEL["m"] = (model, tok, ModelSpec.from_config(cfg.templates), cfg)
    return _MODEL["m"]


def production(model, tok, seeds, templates, seed=0):
    return context.generate_prefixes(model, tok, seeds, templates, seed)


def continuations(prefixes, words):
    return [p[len(w):] for p, w in zip(prefixes, words)]


def seed_word_problems(gen, model, tok) -> list[str]:
    """What is wrong with the generator ``gen`` (generate_prefixes' signature); empty if
    nothing."""
    problems = []
    out = gen(model, tok, SEEDS, TEMPLATES, 0)
    words = [w for _length, count in TEMPLATES for w in context.seed_word_order(SEEDS, count)]
    if len(out) != len(words):
        return [f"{len(out)} prefixes for {len(words)} samples"]
    problems += [f"prefix {i} {p!r} does not start with its seed word {w!r}"
                 for i, (p, w) in enumerate(zip(out, words)) if not p.startswith(w)]
    if gen(model, tok, SEEDS, TEMPLATES, 0) != out:
        problems.append("not reproducible with the same seed")
    if gen(model, tok, SEEDS, TEMPLATES, 1) == out:
        problems.append("the sampling seed changes nothing")
    # conditioning: equally long seed words, same sampling seed -> continuations must differ
    assert len({len(tok(w, add_special_tokens=False)["input_ids"]) for w in SEEDS_A + SEEDS_B}) == 1
    a = gen(model, tok, SEEDS_A, [[8, 5]], 0)
    b = gen(model, tok, SEEDS_B, [[8, 5]], 0)
    problems += [f"prefix {i} {p!r} does not start with its seed word {w!r}"
                 for ps, ws in ((a, SEEDS_A), (b, SEEDS_B)) for i, (p, w) in enumerate(zip(ps, ws))
                 if not p.startswith(w)]
    same = sum(x == y for x, y in zip(continuations(a, SEEDS_A), continuations(b, SEEDS_B)))
    if same > 1:  # chance agreement of one 5-token sample is possible, not of several
        problems.append(f"{same} of 5 continuations do not depend on the seed word: {a} / {b}")
    return problems


def test_every_prefix_starts_from_and_depends_on_its_seed_word():
    model, tok, _spec, _cfg = tiny_llama()
    assert seed_word_problems(production, model, tok) == []


def test_checks_catch_generators_that_ignore_the_seed():
    """A generator that drops the seed word, and one that pastes it in front of a sample drawn
    without it, both fail the checks."""
    model, tok, _spec, _cfg = tiny_llama()

    def dropped(model, tok, seeds, templates, seed=0):
        return production(model, tok, [""] * len(seeds), templates, seed)

    def pasted(model, tok, seeds, templates, seed=0):
        words = [w for _length, count in templates for w in context.seed_word_order(list(seeds), count)]
        return [w + " " + p for w, p in zip(words, dropped(model, tok, seeds, templates, seed))]

    assert any("does not start with" in p for p in seed_word_problems(dropped, model, tok))
    problems = seed_word_problems(pasted, model, tok)
    assert problems and all("do not depend on the seed word" in p for p in problems), problems


@pytest.mark.parametrize("code", ["en", "hi"])
def test_editor_prefixes_use_the_languages_seed_words(code):
    """The editors' prefixes start with the edit language's seed words (Hindi: Devanagari),
    in seed_word_order, each followed by the language's sentence joiner. (Lengths count the seed
    word's tokens: with the byte-level tokenizer a Hindi seed word is up to 21 tokens, so the
    lengths leave room for a continuation.)"""
    model, tok, spec, cfg = tiny_llama()
    lang = language(code)
    hp = dict(MemitConfig().__dict__, layers=[0], context_templates=[[28, 5], [32, 5]])
    editor = MemitEditor(hp, spec, seed=0)
    prefixes = editor.prefixes(model, tok, lang)
    seeds = list(lang["context_seeds"])
    words = context.seed_word_order(seeds, 5) * 2
    assert prefixes[0] == "" and len(prefixes) == 11
    for p, w in zip(prefixes[1:], words):
        assert p.startswith(w) and p.endswith(lang["context_join"]) and len(p) > len(w + lang["context_join"]), p


pytestmark = pytest.mark.usefixtures("one_thread")
