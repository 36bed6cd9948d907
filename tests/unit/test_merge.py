"""TIES maths on hand-checked tensors, peft's primitives against them, vocabulary alignment,
and the build-once cache under concurrency."""

import threading
import time

import pytest
import torch

from xling_edit.merge import ties, vocab
from xling_edit.atomic import build_once

BASE = torch.tensor([1.0, 2.0, 3.0], dtype=torch.float64)
# task vectors (model - base)
TA = torch.tensor([0.5, -0.1, 0.3], dtype=torch.float64)
TB = torch.tensor([-0.2, -0.4, 0.1], dtype=torch.float64)
TC = torch.tensor([0.3, 0.2, -0.05], dtype=torch.float64)
MODELS = [BASE + TA, BASE + TB, BASE + TC]
D = 0.67  # keeps k = int(0.67 * 3) = 2 of 3 entries


def test_trim_keeps_top_k_magnitudes():
    # TA: |0.5| and |0.3| survive, -0.1 is dropped; TB: -0.4 and -0.2 survive
    assert torch.equal(ties.trim(TA, D), torch.tensor([0.5, 0.0, 0.3], dtype=torch.float64))
    assert torch.equal(ties.trim(TB, D), torch.tensor([-0.2, -0.4, 0.0], dtype=torch.float64))
    assert ties.keep_count(3, 0.2) == 1  # int(0.6) = 0, but at least one entry is kept
    assert ties.keep_count(10, 0.2) == 2 and ties.keep_count(5, 1.0) == 5


def test_ties_by_hand_two_models():
    # trimmed: A [0.5, 0, 0.3], B [-0.2, -0.4, 0]
    # elected sign (sum): [0.3, -0.4, 0.3] -> [+, -, +]
    # agreeing: e0 A only -> 0.5; e1 B only (A's 0 votes for nobody) -> -0.4; e2 A only -> 0.3
    # merged = base + [0.5, -0.4, 0.3] = [1.5, 1.6, 3.3]
    out = ties.ties_merge(BASE, MODELS[:2], [1, 1], [D, D])
    assert torch.allclose(out, torch.tensor([1.5, 1.6, 3.3], dtype=torch.float64), atol=1e-12)


def test_ties_by_hand_three_models_lambda():
    # trimmed C: [0.3, 0.2, 0]; sums [0.6, -0.2, 0.3] -> [+, -, +]
    # e0: A 0.5 and C 0.3 agree -> (0.5 + 0.3) / 2 = 0.4; e1: B -> -0.4; e2: A -> 0.3
    # lambda 0.5: [0.2, -0.2, 0.15] -> [1.2, 1.8, 3.15]
    out = ties.ties_merge(BASE, MODELS, [1, 1, 1], [D] * 3, scale=0.5)
    assert torch.allclose(out, torch.tensor([1.2, 1.8, 3.15], dtype=torch.float64), atol=1e-12)


def test_ties_by_hand_weighted_and_unnormalised():
    # weights 2, 1, 1: weighted A [1.0, 0, 0.6], B [-0.2, -0.4, 0], C [0.3, 0.2, 0]
    # sums [1.1, -0.2, 0.6] -> [+, -, +]
    # e0: (1.0 + 0.3) / (2 + 1) = 0.4333..; e1: -0.4 / 1; e2: 0.6 / 2 = 0.3
    out = ties.ties_merge(BASE, MODELS, [2, 1, 1], [D] * 3)
    assert torch.allclose(out, BASE + torch.tensor([1.3 / 3, -0.4, 0.3], dtype=torch.float64), atol=1e-12)
    # normalize=false keeps the sums: [1.3, -0.4, 0.6]
    out = ties.ties_merge(BASE, MODELS, [2, 1, 1], [D] * 3, normalize=False)
    assert torch.allclose(out, BASE + torch.tensor([1.3, -0.4, 0.6], dtype=torch.float64), atol=1e-12)


def test_ties_by_hand_sign_by_count():
    # signs of trimmed A, B, C: e0 (+, -, +) -> +; e1 (0, -, +) -> sum 0 -> + (ties go to +)
    # e2 (+, 0, 0) -> +
    # e0: (0.5 + 0.3) / 2 = 0.4; e1: C alone 0.2; e2: A 0.3
    out = ties.ties_merge(BASE, MODELS, [1, 1, 1], [D] * 3, sign_method="count")
    assert torch.allclose(out, BASE + torch.tensor([0.4, 0.2, 0.3], dtype=torch.float64), atol=1e-12)
    with pytest.raises(ValueError, match="sign_method"):
        ties.ties_merge(BASE, MODELS, [1, 1, 1], [D] * 3, sign_method="vote")


@pytest.mark.parametrize("sign_method", ["sum", "count"])
def test_peft_primitives_equal_direct_bit_for_bit(sign_method):
    pytest.importorskip("peft", reason="peft not installed (pip install -e '.[merge]')")
    from xling_edit.merge.backends import _peft_elect, _peft_trim

    g = torch.Generator().manual_seed(0)
    base = torch.randn(37, 11, generator=g)
    models = [base + 0.1 * torch.randn(37, 11, generator=g) for _ in range(3)]
    weights, densities = [1.0, 0.5, 2.0], [0.2, 0.35, 0.01]
    direct = ties.ties_merge(base, models, weights, densities, scale=0.7, sign_method=sign_method)
    trimmed = torch.stack([_peft_trim(m - base, d) for m, d in zip(models, densities)])
    via_peft = ties.combine(base, trimmed, weights, 0.7, True, sign_method, _peft_elect)
    assert torch.equal(direct, via_peft)
    assert not torch.equal(direct, base)


def test_align_rows_fills_missing_tokens():
    # base knows a, b; model x adds c; models x and y both add d (not in base)
    vocabs = {"base": {"a": 0, "b": 1}, "x": {"a": 0, "b": 1, "c": 2, "d": 3}, "y": {"b": 0, "a": 1, "d": 2}}
    out_vocab = {"a": 0, "b": 1, "c": 2, "d": 3}
    assert vocab.new_tokens(vocabs["base"], [vocabs["x"], vocabs["y"]]) == ["c", "d"]
    rows = {"base": torch.tensor([[1.0], [2.0]]), "x": torch.tensor([[10.0], [20.0], [30.0], [40.0]]),
            "y": torch.tensor([[200.0], [100.0], [60.0]])}
    aligned = vocab.align_rows(rows, vocab.permutations(out_vocab, vocabs), "base")
    # own rows re-indexed by token: y's "a" is its row 1, "b" its row 0
    assert aligned["y"][:2].flatten().tolist() == [100.0, 200.0]
    # c: only x has it -> everyone takes x's row (task vectors 0, merge keeps it)
    assert [aligned[k][2].item() for k in rows] == [30.0, 30.0, 30.0]
    # d: x and y have it, base does not -> base takes their mean (40 + 60) / 2 = 50
    assert aligned["base"][3].item() == 50.0 and aligned["x"][3].item() == 40.0
    assert aligned["y"][3].item() == 60.0


def test_build_once_is_safe_under_concurrency(tmp_path):
    builds = []

    def build(tmp):
        builds.append(1)
        time.sleep(0.3)  # the other thread arrives while this one builds
        (tmp / "config.json").write_text("{}")

    results = []
    threads = [threading.Thread(target=lambda: results.append(build_once(tmp_path / "m", build)))
               for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(builds) == 1 and sorted(results) == [False, False, True]
    assert (tmp_path / "m" / "config.json").exists()
    assert not [p for p in tmp_path.iterdir() if ".tmp-" in p.name]  # nothing half-written left
    # reuse=False rebuilds in place
    assert build_once(tmp_path / "m", build, reuse=False) and len(builds) == 2


def test_failed_build_leaves_nothing(tmp_path):
    def boom(tmp):
        (tmp / "partial").write_text("x")
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError):
        build_once(tmp_path / "m", boom)
    assert list(p.name for p in tmp_path.iterdir()) == ["m.lock"]
