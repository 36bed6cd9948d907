import torch

from xling_edit.editing.memit import invert_output_map, memit_update


def test_memit_update_equals_closed_form():
    g = torch.Generator().manual_seed(0)
    r = torch.randn(5, 3, generator=g, dtype=torch.float64)
    k = torch.randn(7, 3, generator=g, dtype=torch.float64)
    a = torch.randn(7, 7, generator=g, dtype=torch.float64)
    c = a @ a.T + 7 * torch.eye(7, dtype=torch.float64)
    lam = 2.5
    expected = r @ k.T @ torch.linalg.inv(lam * c + k @ k.T)
    assert torch.allclose(memit_update(r, k, c, lam), expected, atol=1e-10)


def test_memit_update_without_regularisation_hits_targets():
    g = torch.Generator().manual_seed(1)
    r = torch.randn(4, 2, generator=g, dtype=torch.float64)
    k = torch.randn(6, 2, generator=g, dtype=torch.float64)
    dw = memit_update(r, k, None, 1e-9)
    assert torch.allclose(dw @ k, r, atol=1e-6)


def test_memit_hand_example():
    # one key e1, identity C, λ = 1: ΔW = r e1ᵀ / (1 + 1)
    dw = memit_update(torch.tensor([[2.0], [4.0]]), torch.tensor([[1.0], [0.0]]), None, 1.0)
    assert dw.tolist() == [[1.0, 0.0], [2.0, 0.0]]


def test_invert_identity_and_rmsnorm():
    m = torch.tensor([1.0, 2.0, -1.0, 0.5], dtype=torch.float64)
    r = torch.tensor([0.1, -0.2, 0.3, 0.05], dtype=torch.float64)
    assert invert_output_map(None, m, r) is r
    gain = torch.tensor([3.0, 0.5, 2.0, 1.0], dtype=torch.float64)

    def rms_norm(x):
        return gain * x / x.pow(2).mean().sqrt()

    # RMSNorm outputs satisfy sum((y / gain)^2) = n: only changes along that surface are
    # reachable. A small change tangent to it is reached almost exactly...
    y = rms_norm(m)
    normal = y / gain**2
    t = r - (r @ normal) / (normal @ normal) * normal
    t = 0.05 * t / t.norm()
    d = invert_output_map(rms_norm, m, t)
    assert torch.allclose(rms_norm(m + d) - y, t, atol=2e-3)
    # ...and any change is approached in the least-squares sense
    d = invert_output_map(rms_norm, m, r)
    assert (rms_norm(m + d) - y - r).norm() < r.norm()
