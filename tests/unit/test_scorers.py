import math

import pytest
import torch

from xling_edit.evaluation import scorers


def test_token_accuracy_and_exact():
    target = torch.tensor([5, 6, 7, 8])
    argmax = torch.tensor([5, 0, 7, 8])
    assert scorers.token_accuracy(argmax, target) == 0.75
    assert scorers.exact_match(argmax, target) == 0.0
    assert scorers.exact_match(target, target) == 1.0


def test_nll_and_prob_success():
    lp = torch.log(torch.tensor([0.5, 0.25]))
    assert scorers.mean_nll(lp) == pytest.approx((math.log(2) + math.log(4)) / 2, rel=1e-6)
    assert scorers.prob_success(1.0, 2.0) == 1.0
    assert scorers.prob_success(2.0, 1.0) == 0.0
    assert math.isclose(scorers.prob_magnitude(0.0, math.log(2)), 0.5)


def test_agreement():
    assert scorers.agreement(torch.tensor([1, 2, 3]), torch.tensor([1, 0, 3])) == pytest.approx(2 / 3)
