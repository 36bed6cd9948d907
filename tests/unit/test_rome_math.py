import pytest
import torch

from xling_edit.editing.rome import left_vector, rank_one_update
from xling_edit.editing.value import project_to_ball


def test_rank_one_update_maps_key_to_value():
    g = torch.Generator().manual_seed(0)
    w = torch.randn(4, 6, generator=g, dtype=torch.float64)
    k = torch.randn(6, generator=g, dtype=torch.float64)
    v = torch.randn(4, generator=g, dtype=torch.float64)
    u = torch.randn(6, generator=g, dtype=torch.float64)
    dw = rank_one_update(v - w @ k, u, k)
    assert torch.allclose((w + dw) @ k, v, atol=1e-12)
    assert torch.linalg.matrix_rank(dw) == 1
    # directions orthogonal to u are untouched
    x = torch.randn(6, generator=g, dtype=torch.float64)
    x = x - (x @ u) / (u @ u) * u
    assert torch.allclose(dw @ x, torch.zeros(4, dtype=torch.float64), atol=1e-12)


def test_rank_one_update_hand_example():
    # delta_v = [1, 2], u = k = [1, 0, 0] -> ΔW = [[1,0,0],[2,0,0]]
    dw = rank_one_update(torch.tensor([1.0, 2.0]), torch.tensor([1.0, 0, 0]), torch.tensor([1.0, 0, 0]))
    assert dw.tolist() == [[1.0, 0.0, 0.0], [2.0, 0.0, 0.0]]


def test_degenerate_denominator_raises():
    with pytest.raises(FloatingPointError):
        rank_one_update(torch.ones(2), torch.tensor([1.0, 0.0]), torch.tensor([0.0, 1.0]))


def test_left_vector_solves_covariance():
    c = torch.tensor([[2.0, 0.0], [0.0, 4.0]])
    assert left_vector(torch.tensor([2.0, 4.0]), c).tolist() == [1.0, 1.0]
    assert left_vector(torch.tensor([2.0, 4.0]), None).tolist() == [2.0, 4.0]


def test_project_to_ball():
    x = torch.tensor([3.0, 4.0])
    assert project_to_ball(x, 10.0) is x
    assert torch.allclose(project_to_ball(x, 1.0), torch.tensor([0.6, 0.8]))
