"""A shared prefix encoded once (``EvalOptions.shared_prefix``, ``generate_answers(shared_prefix=)``):
rows that all start with a context edit's text score and decode as the full rows do, on tiny
models of every layout the project supports, and a wrongly recorded prefix is caught."""

import pytest
import torch

from tests.integration.test_value_prefix import LAYOUTS, tiny_model
from xling_edit.evaluation import prefix as PX
from xling_edit.evaluation.forward import EvalOptions, score_continuations
from xling_edit.evaluation.generate import generate_answers
from xling_edit.evaluation.text import encode

# byte-level tiny tokenizers: ~170 tokens of context (longer than MIN_SHARED_TOKENS and than
# the 8- and 16-token sliding windows), then prompts of different lengths
CONTEXT = ("New Fact: The Eiffel Tower is located in Rome\nQ: Where is the Eiffel Tower? A: Rome\n\n"
           "New Fact: Angela Merkel was born in Paris\nPrompt: Angela Merkel was born in Paris\n\n")
ROWS = [("The Eiffel Tower is located in", "Rome"), ("Where is the famous tower?", "Rome"),
        ("Danielle Darrieux's mother tongue is", "English"), ("Paris is the capital of", "France"),
        ("Q", "x")]


def _encs(tok, context=CONTEXT):
    return [encode(tok, context + p, t) for p, t in ROWS]


def test_common_prefix_len():
    assert PX.common_prefix_len([[1, 2, 3], [1, 2, 4, 5], [1, 2]]) == 2
    assert PX.common_prefix_len([[1, 2, 3]]) == 3
    assert PX.common_prefix_len([[7], [8]]) == 0
    assert PX.common_prefix_len([]) == 0


def test_shifted_rows_by_hand():
    t = torch.arange(1, 5, dtype=torch.float32).reshape(1, 1, 4, 1)  # one head, 4 slots, d = 1
    out = PX._shifted(t, torch.tensor([0, 1, 3]))
    assert out[:, 0, :, 0].tolist() == [[1, 2, 3, 4], [0, 1, 2, 3], [0, 0, 0, 1]]


def _scores(model, tok, spec, encs, shared):
    opts = EvalOptions(batch_size=3, shared_prefix=shared)
    return score_continuations(model, tok, spec, encs, opts)


@pytest.mark.parametrize("layout", sorted(LAYOUTS))
def test_scoring_with_a_shared_prefix_equals_the_full_rows(layout, one_thread, monkeypatch):
    model, tok, spec, _ = tiny_model(layout)
    encs = _encs(tok)
    assert PX.common_prefix_len([e.input_ids for e in encs]) >= PX.MIN_SHARED_TOKENS
    lengths = []
    first = spec.module(model, "layer", 0)
    handle = first.register_forward_pre_hook(lambda m, a, kw: lengths.append(
        (a[0] if a else kw["hidden_states"]).shape[1]), with_kwargs=True)
    try:
        on = _scores(model, tok, spec, encs, True)
    finally:
        handle.remove()
    off = _scores(model, tok, spec, encs, False)
    longest = max(len(e.input_ids) for e in encs)
    assert lengths[0] < longest - 100 or lengths[1] < longest - 100  # the batches ran the suffixes
    for a, b in zip(on, off):
        assert torch.equal(a.target_ids, b.target_ids)
        assert torch.allclose(a.logprobs, b.logprobs, atol=1e-4), (a.logprobs, b.logprobs)
        assert torch.equal(a.argmax, b.argmax)


@pytest.mark.parametrize("layout", sorted(LAYOUTS))
def test_generation_with_a_shared_prefix_equals_the_full_prompts(layout, one_thread):
    model, tok, spec, _ = tiny_model(layout)
    prompts = [CONTEXT + p for p, _ in ROWS]
    calls = []
    real = PX.SharedPrefix.record
    PX.SharedPrefix.record = classmethod(lambda cls, *a, **k: calls.append(a[1]) or real.__func__(cls, *a, **k))
    lengths = []
    handle = spec.module(model, "layer", 0).register_forward_pre_hook(lambda m, a, kw: lengths.append(
        (a[0] if a else kw["hidden_states"]).shape[1]), with_kwargs=True)
    try:
        on = generate_answers(model, tok, prompts, max_new_tokens=6, batch_size=3)
    finally:
        PX.SharedPrefix.record = real
        handle.remove()
    assert max(lengths[1:]) < max(len(tok(p)["input_ids"]) for p in prompts) - 100  # suffixes only
    off = generate_answers(model, tok, prompts, max_new_tokens=6, batch_size=3, shared_prefix=False)
    assert len(calls) == 1 and len(calls[0]) >= PX.MIN_SHARED_TOKENS
    assert [g.tokens for g in on] == [g.tokens for g in off]
    assert [g.stop for g in on] == [g.stop for g in off]


def test_eager_attention_and_a_planted_error(one_thread, monkeypatch):
    model, tok, spec, _ = tiny_model("gemma3_mixed", attn="eager")
    encs = _encs(tok)
    on, off = _scores(model, tok, spec, encs, True), _scores(model, tok, spec, encs, False)
    assert all(torch.allclose(a.logprobs, b.logprobs, atol=1e-4) for a, b in zip(on, off))
    real = PX.SharedPrefix.record

    def wrong(cls, model_, ids, what):  # the prefix recorded one token short of what it claims
        got = real.__func__(cls, model_, ids[:-1], what)
        got.n += 1
        got.kv = [(torch.cat([k[:, :, :1], k], 2), torch.cat([v[:, :, :1], v], 2)) for k, v in got.kv]
        return got

    monkeypatch.setattr(PX.SharedPrefix, "record", classmethod(wrong))
    bad = _scores(model, tok, spec, encs, True)
    assert max(float((a.logprobs - b.logprobs).abs().max()) for a, b in zip(bad, off)) > 1e-3


def test_short_or_unshared_prefixes_run_in_full(one_thread, monkeypatch):
    model, tok, spec, _ = tiny_model("llama")
    monkeypatch.setattr(PX.SharedPrefix, "record", classmethod(lambda *a, **k: pytest.fail("recorded")))
    _scores(model, tok, spec, _encs(tok, context="Short context. "), True)
    _scores(model, tok, spec, [encode(tok, p, t) for p, t in ROWS], True)
    generate_answers(model, tok, ["Short context. " + p for p, _ in ROWS], max_new_tokens=2)


def test_unverified_layouts_fall_back_once(one_thread, caplog, monkeypatch):
    model, tok, spec, _ = tiny_model("llama")
    monkeypatch.setattr(PX, "_LOGGED", set())
    monkeypatch.setattr(PX, "PREFIX_MODEL_TYPES", ("gpt2",))
    encs = _encs(tok)
    with caplog.at_level("WARNING"):
        on = _scores(model, tok, spec, encs, True)
        _scores(model, tok, spec, encs, True)
    assert sum("no shared-prefix cache" in r.message for r in caplog.records) == 1
    off = _scores(model, tok, spec, encs, False)
    assert all(torch.equal(a.logprobs, b.logprobs) for a, b in zip(on, off))
