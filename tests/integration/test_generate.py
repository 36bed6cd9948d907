"""Batched greedy generation with a KV cache: a padded row decodes what it decodes alone, and
what a plain full-recompute greedy loop decodes; the stop rules."""

from __future__ import annotations

import pytest
import torch

from hydra import compose, initialize_config_dir

from tests.conftest import ROOT, SEARCHPATH
from xling_edit.configstore import register_configs
from xling_edit.evaluation.generate import cut_answer, generate_answers
from xling_edit.models import load_model

PROMPTS = ["The capital of France is", "Q: Who wrote Hamlet? Answer:", "x",
           "A much longer prompt that needs padding on the left of the shorter ones, surely"]


def tiny_model(name: str):
    register_configs()
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose(config_name="config", overrides=[SEARCHPATH, f"model={name}"])
    return load_model(cfg.model, seed=0)


def plain_greedy(model, tok, prompt: str, n: int) -> list[int]:
    """The obvious loop: the whole sequence through the model at every step, no cache, no batch."""
    ids = tok(prompt, add_special_tokens=True)["input_ids"]
    out = []
    with torch.no_grad():
        for _ in range(n):
            logits = model(input_ids=torch.tensor([ids + out]), use_cache=False).logits
            out.append(int(logits[0, -1].argmax()))
    return out


@pytest.mark.parametrize("name", ["tiny_llama", "tiny_gpt2", "tiny_gemma3", "tiny_gpt_neox"])
def test_batched_cached_equals_plain(name):
    model, tok = tiny_model(name)
    n = 6
    batched = generate_answers(model, tok, PROMPTS, max_new_tokens=n, batch_size=8)
    alone = [generate_answers(model, tok, [p], max_new_tokens=n)[0] for p in PROMPTS]
    eos = tok.eos_token_id
    for p, b, a in zip(PROMPTS, batched, alone):
        assert b == a, (name, p)
        ref = plain_greedy(model, tok, p, n)
        if eos in ref:
            ref = ref[: ref.index(eos)]
        # the answer text is the decoded plain tokens, cut by the same stop rules
        assert b.raw == tok.decode(ref[: b.n_tokens], skip_special_tokens=True), (name, p)
        if b.stop == "cap":
            assert b.n_tokens == n and len(ref) >= n


def test_cap_must_be_positive():
    model, tok = tiny_model("tiny_llama")
    with pytest.raises(ValueError, match="max_new_tokens must be >= 1"):
        generate_answers(model, tok, ["x"], max_new_tokens=0)


def test_cut_answer_rules():
    assert cut_answer("\n\n Paris, France.\nQ: next", [". "]) == ("Paris, France.", "newline")
    assert cut_answer(" Paris. It is big", [". "]) == ("Paris", "sentence_end")
    assert cut_answer(" U.S.A", [". "]) == ("U.S.A", None)  # a bare mark does not end it
    assert cut_answer(" दिल्ली। यह", ["।"]) == ("दिल्ली", "sentence_end")
    assert cut_answer("   ", [". "]) == ("", None)


@pytest.mark.parametrize("name", ["tiny_llama", "tiny_gemma3"])
def test_rows_that_stop_early_leave_the_batch_without_changing_the_others(name):
    """Stops on common letters end rows at different steps, so finished rows are dropped from
    the batch and its cache mid-way; every row must still decode what it decodes alone."""
    model, tok = tiny_model(name)
    prompts = PROMPTS * 2 + ["Another one", "and more text here"]
    free = generate_answers(model, tok, prompts, max_new_tokens=12, batch_size=32)
    # each row stops at a character of its own free answer, at a different place per row
    stops = []
    for i, g in enumerate(free):
        body = g.raw.lstrip()
        stops.append((body[min(len(body) - 1, 1 + i % 5)],) if len(body) > 2 else ())
    batched = generate_answers(model, tok, prompts, stops, max_new_tokens=12, batch_size=32)
    lengths = {g.n_tokens for g in batched}
    assert len(lengths) > 1, "no row stopped early: the test does not exercise pruning"
    for p, st, b in zip(prompts, stops, batched):
        assert b == generate_answers(model, tok, [p], [st], max_new_tokens=12)[0], (name, p)
