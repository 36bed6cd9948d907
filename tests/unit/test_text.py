import pytest

from xling_edit.evaluation.text import encode, join, last_token_in_span
from xling_edit.models.tokenizers import byte_level_tokenizer

tok = byte_level_tokenizer()


def test_join_adds_separator_only_when_needed():
    assert join("The capital of France is", "Paris") == ("The capital of France is Paris", 24)
    assert join("Question?\n", "Paris") == ("Question?\nParis", 10)
    assert join("X is", " Paris") == ("X is Paris", 4)
    assert join("東京は", "日本", word_sep="") == ("東京は日本", 3)


def test_join_rejects_empty_target():
    with pytest.raises(ValueError):
        join("prompt", "")


def test_encode_splits_prompt_and_target_by_offsets():
    e = encode(tok, "ab", "cd")  # "<bos> a b ' ' c d" byte-level
    assert e.n_prompt == 3  # <bos>, a, b
    assert len(e.target_ids) == 3  # the space goes with the continuation, then c, d
    assert list(e.target_positions) == [3, 4, 5]


def test_encode_multibyte_script():
    e = encode(tok, "राजधानी", "पेरिस")
    # Devanagari letters are 3 bytes each in UTF-8; every byte is a token here
    assert len(e.target_ids) == 1 + 3 * len("पेरिस")
    assert e.n_prompt == 1 + 3 * len("राजधानी")


def test_last_token_in_span():
    e = encode(tok, "The cat sat")
    # characters 4..7 = "cat": last byte token of "t" is index 1 (bos) + 6
    assert last_token_in_span(e, 4, 7) == 7
    with pytest.raises(ValueError):
        last_token_in_span(e, 50, 60)
