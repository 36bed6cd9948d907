"""AlphaEdit's projector and solve on hand-built tensors."""

import torch

from xling_edit.editing.alphaedit import alphaedit_update, null_space_projector
from xling_edit.editing.memit import memit_update

torch.manual_seed(0)
D, R_PRESERVED = 8, 5


def preserved_keys(n=200):
    basis = torch.linalg.qr(torch.randn(D, D, dtype=torch.float64))[0]
    used = basis[:, :R_PRESERVED]  # preserved knowledge lives in a 5-dim subspace
    return used @ torch.randn(R_PRESERVED, n, dtype=torch.float64), basis


def test_projector_is_an_orthogonal_projection_onto_the_unused_directions():
    k0, basis = preserved_keys()
    c = k0 @ k0.T / k0.shape[1]
    p = null_space_projector(c, 1e-8)
    assert torch.allclose(p @ p, p, atol=1e-10) and torch.allclose(p, p.T, atol=1e-12)
    assert abs(float(p.trace()) - (D - R_PRESERVED)) < 1e-9  # rank = unused directions
    assert torch.allclose(p @ k0, torch.zeros_like(k0), atol=1e-8)  # P K0 = 0
    free = basis[:, R_PRESERVED:]
    assert torch.allclose(p @ free, free, atol=1e-8)  # the unused directions pass unchanged


def test_threshold_selects_by_eigenvalue():
    c = torch.diag(torch.tensor([5.0, 1.0, 0.01, 0.001], dtype=torch.float64))
    assert torch.equal(null_space_projector(c, 0.02).diagonal(), torch.tensor([0.0, 0.0, 1.0, 1.0], dtype=torch.float64))
    assert float(null_space_projector(c, 10.0).trace()) == 4.0


def test_equals_memit_when_every_direction_is_kept():
    """P = I, no earlier edits, C = I and α = λ: AlphaEdit's solve is MEMIT's."""
    keys, resid = torch.randn(D, 3, dtype=torch.float64), torch.randn(6, 3, dtype=torch.float64)
    lam = 2.5
    a = alphaedit_update(resid, keys, torch.eye(D, dtype=torch.float64), None, lam)
    m = memit_update(resid, keys, None, lam)
    assert torch.allclose(a, m, atol=1e-12)


def test_plain_formula_and_preserved_keys_untouched():
    """ΔW = R Kᵀ P ((K Kᵀ + K_p K_pᵀ) P + α I)⁻¹ written with an explicit inverse; ΔW K0 = 0."""
    k0, basis = preserved_keys()
    p = null_space_projector(k0 @ k0.T / k0.shape[1], 1e-8)
    keys, resid = torch.randn(D, 2, dtype=torch.float64), torch.randn(6, 2, dtype=torch.float64)
    prev = torch.randn(D, 3, dtype=torch.float64)
    prev_kk = prev @ prev.T
    alpha = 0.3
    dw = alphaedit_update(resid, keys, p, prev_kk, alpha)
    plain = resid @ keys.T @ p @ torch.inverse((keys @ keys.T + prev_kk) @ p + alpha * torch.eye(D, dtype=torch.float64))
    assert torch.allclose(dw, plain, atol=1e-10)
    assert torch.allclose(dw @ k0, torch.zeros(6, k0.shape[1], dtype=torch.float64), atol=1e-8)


def test_earlier_edit_keys_join_the_constraint():
    """With a small α a sequence's earlier keys are (nearly) left alone by the next update, and
    a key inside the null space reaches its residual."""
    p = torch.eye(D, dtype=torch.float64)
    k_a = torch.randn(D, 1, dtype=torch.float64)
    k_b, r_b = torch.randn(D, 1, dtype=torch.float64), torch.randn(6, 1, dtype=torch.float64)
    with_prior = alphaedit_update(r_b, k_b, p, k_a @ k_a.T, 1e-6)
    without = alphaedit_update(r_b, k_b, p, None, 1e-6)
    assert (with_prior @ k_a).norm() < 1e-4 * (without @ k_a).norm() + 1e-9
    assert torch.allclose(with_prior @ k_b, r_b, atol=1e-4)
