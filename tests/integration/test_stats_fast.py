"""The statistics' fast path (float32 batch products, the forward ended before the top
projection) against the float64 path it replaces, on tiny random models."""

import torch

from tests.conftest import run_bench
from xling_edit.editing.stats import SecondMoment, builtin_corpus, layer_second_moments


def rel_frobenius(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


def test_float32_batch_product_matches_float64():
    g = torch.Generator().manual_seed(0)
    for d in (64, 67, 3):  # even and odd widths, and fewer columns than strips
        # keys with a large common component and uneven scales, as MLP activations have
        batches = [torch.randn(300, d, generator=g) * torch.logspace(-2, 1, d) + 3.0 for _ in range(4)]
        exact = sum(b.double().T @ b.double() for b in batches)
        fast, plain = SecondMoment(), SecondMoment(batch_float32=False)
        for b in batches:
            fast.add(b)
            plain.add(b)
        c = fast.total()
        assert c.dtype == torch.float64 and torch.equal(c, c.T)
        assert rel_frobenius(c, exact) < 1e-6, d
        assert rel_frobenius(plain.total(), exact) < 1e-12, d


def test_fast_statistics_equal_float64_path(tiny):
    name, model, tok, spec, cfg = tiny
    texts = builtin_corpus(["en", "de", "hi"], 12)
    fast, n_fast = layer_second_moments(model, tok, spec, [0, 1], texts, batch_size=6)
    prev, n_prev = layer_second_moments(model, tok, spec, [0, 1], texts, batch_size=6,
                                        stop_before_projection=False, batch_float32=False)
    whole, n_whole = layer_second_moments(model, tok, spec, [0, 1], texts, batch_size=6,
                                          stop_early=False, stop_before_projection=False,
                                          batch_float32=False)
    assert n_fast == n_prev == n_whole > 500
    for l in (0, 1):
        assert fast[l].dtype == torch.float64
        assert rel_frobenius(fast[l], prev[l]) < 1e-5, (name, l)
        assert rel_frobenius(fast[l], whole[l]) < 1e-5, (name, l)
        assert not torch.equal(fast[l], torch.zeros_like(fast[l]))


def test_forward_ends_before_the_top_projection(tiny):
    name, model, tok, spec, cfg = tiny
    ran: list[str] = []
    watched = {"down_proj 0": spec.module(model, "down_proj", 0),
               "down_proj 1": spec.module(model, "down_proj", 1),
               "final_norm": spec.module(model, "final_norm")}
    hooks = [m.register_forward_hook(lambda *_, k=k: ran.append(k)) for k, m in watched.items()]
    try:
        layer_second_moments(model, tok, spec, [0, 1], ["A short text.", "Another one here."], batch_size=2)
        fast_ran = sorted(set(ran))
        ran.clear()
        layer_second_moments(model, tok, spec, [0, 1], ["A short text.", "Another one here."], batch_size=2,
                             stop_before_projection=False)
        after_ran = sorted(set(ran))
    finally:
        for h in hooks:
            h.remove()
    # the lower statistics layer's projection still runs (the block above needs its output)
    assert fast_ran == ["down_proj 0"]
    assert after_ran == ["down_proj 0", "down_proj 1"]


def test_bench_statistics_only(tmp_path):
    r, res = run_bench(tmp_path, "--only", "stats", "--repeats", "1", "--stats-tokens", "1500")
    assert "rome" not in res and "memit" not in res and "memory" not in res
    st = res["stats"]
    assert st["tokens"]["fast"] == st["tokens"]["float64"] >= 1500
    assert st["max_rel_diff"] < 1e-5
    figures = {row["figure"]: row for row in res["summary"]}
    thr = figures["statistics throughput (tokens/s)"]
    assert thr["fast"] > 0 and thr["plain"] > 0 and thr["ratio"] > 0
    assert figures["statistics, 1M tokens, one layer (min, implied)"]["fast"] > 0
    assert "statistics throughput" in r.stdout


def test_bench_configs_only(tmp_path):
    """`--only configs`: ROME published vs rome_fast (each its own context prompts) and MEMIT per
    fact at batch N vs 1, on the same cases."""
    r, res = run_bench(tmp_path, "--only", "configs", "--memit-batch", "3", "--repeats", "2")
    c = res["configs"]
    assert c["batch"] == 3 and len(c["times"]["rome"]) == len(c["times"]["rome_fast"]) == 2
    assert len(c["times"]["memit_b1"]) == 3
    assert len(c["steps"]["memit_batch"]) == 3  # one value trajectory per fact in the batch
    assert c["n_context"]["rome_fast"] == 5  # the bare prompt + rome_fast's 4 prefixes
    figures = {row["figure"]: row for row in res["summary"]}
    rome = figures["ROME edit, fast config vs published (s)"]
    assert rome["fast"] > 0 and rome["plain"] > 0
    assert figures["MEMIT per fact, batch 3 vs batch 1 (s)"]["fast"] > 0
    assert "stats" not in res and "ROME edit, fast config" in r.stdout
