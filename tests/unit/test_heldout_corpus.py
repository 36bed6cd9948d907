"""bench/heldout_corpus.py: evaluated prompts never enter the held-out covariance text, and
documents stay under the token cap (hand-made records; no model, no ../shared)."""

import importlib.util

from tests.conftest import ROOT

spec = importlib.util.spec_from_file_location("heldout_corpus", ROOT / "bench" / "heldout_corpus.py")
hc = importlib.util.module_from_spec(spec)
spec.loader.exec_module(hc)

HALF = {"src": "Where was Ada born?", "old": "London", "rephrase": "Ada's birthplace is",
        "loc": "What is the capital of Peru?", "loc_ans": "Lima", "port": "", "port_ans": ""}


def test_sentences_are_questions_with_true_answers():
    assert hc.sentences(HALF, set()) == ["Where was Ada born? London", "Ada's birthplace is",
                                        "What is the capital of Peru? Lima"]


def test_an_evaluated_question_is_left_out_with_or_without_its_answer():
    banned = {"What is the capital of Peru?", "Ada's birthplace is"}
    assert hc.sentences(HALF, banned) == ["Where was Ada born? London"]


def test_documents_respect_the_token_cap():
    words = lambda s: len(s.split())
    sents = ["a b c", "d e", "f g h i", "j"]  # 3, 2, 4, 1 words (+1 each for the joint)
    assert hc.group(sents, words, 7) == ["a b c d e", "f g h i j"]
    assert hc.group(sents, words, 3) == ["a b c", "d e", "f g h i", "j"]  # a long one stands alone
    assert hc.group([], words, 7) == []
