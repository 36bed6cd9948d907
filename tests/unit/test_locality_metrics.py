"""Locality metrics on hand-made scores (issue 11, item 6): agreement (stability) vs correctness,
``prob`` before and after the edit, and ``prob_drop``."""

from __future__ import annotations

import pytest
import torch

from xling_edit.evaluation.evaluate import (
    METRIC_KEYS, POST_ONLY_KEYS, RENAMED_KEYS, Row, lang_metrics,
)
from xling_edit.evaluation.forward import SeqScore
from xling_edit.evaluation.text import Encoded

ENC = Encoded((1, 2, 3), ((0, 1), (1, 2), (2, 3)), 1)  # the rows' encodings are not read here


def seq(target, argmax, probs) -> SeqScore:
    return SeqScore(torch.tensor(target), torch.log(torch.tensor(probs)), torch.tensor(argmax))


def rows_and_scores():
    """One language, two locality items (answer + target_new rows each), no other rows.

    item 0: true answer [7, 8]; target_new [9]
        pre : argmax [7, 8] (answer right), P(answer) .5 .5 (NLL .693) vs P(new) .25 (1.386)
              -> prob 1
        post: argmax [7, 5] (one token changed), P(answer) .5 .125 vs P(new) .5 -> prob 0
    item 1: true answer [4]; target_new [9]
        pre : argmax [6] (answer wrong), P(answer) .1 vs P(new) .2 -> prob 0
        post: argmax [6] (unchanged), P(answer) .3 vs P(new) .2 -> prob 1
    """
    rows = [Row("en", "loc", 0, "answer", ENC), Row("en", "loc", 0, "new", ENC),
            Row("en", "loc", 1, "answer", ENC), Row("en", "loc", 1, "new", ENC)]
    pre = [seq([7, 8], [7, 8], [0.5, 0.5]), seq([9], [3], [0.25]),
           seq([4], [6], [0.1]), seq([9], [3], [0.2])]
    post = [seq([7, 8], [7, 5], [0.5, 0.125]), seq([9], [9], [0.5]),
            seq([4], [6], [0.3]), seq([9], [3], [0.2])]
    return rows, pre, post


def test_pre_edit_locality_has_a_baseline_and_no_agreement():
    rows, pre, _ = rows_and_scores()
    m = lang_metrics(rows, pre, None)["en"]
    assert set(METRIC_KEYS) <= set(m)
    assert m["locality.prob"] == pytest.approx(0.5)              # item 0 yes, item 1 no
    assert m["locality.answer_token_acc"] == pytest.approx(0.5)  # (2/2 + 0/1) / 2
    assert m["locality.answer_exact"] == pytest.approx(0.5)      # (1 + 0) / 2
    for k in POST_ONLY_KEYS:
        assert m[k] is None, k


def test_post_edit_locality_agreement_correctness_and_drop():
    rows, pre, post = rows_and_scores()
    m = lang_metrics(rows, post, pre)["en"]
    assert m["locality.agree_token"] == pytest.approx((1 / 2 + 1) / 2)  # [7,5] vs [7,8]; [6] vs [6]
    assert m["locality.agree_exact"] == pytest.approx(0.5)
    assert m["locality.answer_token_acc"] == pytest.approx((1 / 2 + 0) / 2)
    assert m["locality.answer_exact"] == 0.0
    assert m["locality.prob"] == pytest.approx(0.5)       # item 0 now loses, item 1 now wins
    assert m["locality.prob_drop"] == pytest.approx(0.0)  # (1-0 + 0-1) / 2: same mean, other items
    # the old names are gone from new results
    assert not set(RENAMED_KEYS) & set(m)


def test_prob_drop_is_pre_minus_post_per_item():
    rows, pre, post = rows_and_scores()
    m = lang_metrics(rows[:2], post[:2], pre[:2])["en"]  # item 0 only: 1 -> 0
    assert m["locality.prob_drop"] == 1.0 and m["locality.prob"] == 0.0
    m = lang_metrics(rows[2:], post[2:], pre[2:])["en"]  # item 1 only: 0 -> 1
    assert m["locality.prob_drop"] == -1.0


def test_unchanged_model_agrees_fully_and_drops_nothing():
    rows, pre, _ = rows_and_scores()
    m = lang_metrics(rows, pre, pre)["en"]
    assert m["locality.agree_token"] == 1.0 and m["locality.agree_exact"] == 1.0
    assert m["locality.prob_drop"] == 0.0
    assert m["locality.prob"] == lang_metrics(rows, pre, None)["en"]["locality.prob"]
