"""TIES on tiny Llama checkpoints whose vocabularies differ: the mergekit, peft and direct
backends agree exactly; the merge keeps every model's tokens; the pre-step caches and reuses."""

import importlib.util
import logging
import threading
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from safetensors.torch import load_file

from tests.conftest import ROOT, model_cfg
from xling_edit.configstore import register_configs
from xling_edit.merge.backends import MergeJob, merge_in_process, merge_mergekit
from xling_edit.models import load_model
from xling_edit.models.loading import random_model

register_configs()
HAS_MERGEKIT = importlib.util.find_spec("mergekit") is not None
HAS_PEFT = importlib.util.find_spec("peft") is not None
ADDED = {"a": ["नमस्ते", "भारत"], "b": ["வணக்கம்", "भारत"]}  # भारत: in both, not in the base
VOCAB_TENSORS = ("model.embed_tokens.weight", "lm_head.weight")


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    """A tiny random Llama base and two perturbed copies, each adding its own tokens."""
    root = tmp_path_factory.mktemp("merge_inputs")
    init = dict(model_cfg("tiny_llama").random_init)
    base, tok = random_model(dict(init), seed=0)
    base.save_pretrained(root / "base")
    tok.save_pretrained(root / "base")
    for i, (key, extra) in enumerate(ADDED.items()):
        m, t = random_model(dict(init), seed=0)
        g = torch.Generator().manual_seed(i + 1)
        with torch.no_grad():
            for p in m.parameters():
                p.add_(0.01 * torch.randn(p.shape, generator=g))
            t.add_tokens(extra)
            torch.manual_seed(10 + i)
            m.resize_token_embeddings(len(t), mean_resizing=False)
        m.save_pretrained(root / key)
        t.save_pretrained(root / key)
    return root


def job(root, **kw):
    return MergeJob(base=root / "base", models=[("a", root / "a", 1.0, 0.2), ("b", root / "b", 0.7, 0.3)],
                    scale=0.9, vocab_tensors=VOCAB_TENSORS, **kw)


def merged(path):
    from transformers import AutoTokenizer

    return load_file(str(next(Path(path).glob("*.safetensors")))), AutoTokenizer.from_pretrained(path)


def assert_same_merge(x, y):
    (tx, kx), (ty, ky) = x, y
    assert set(kx.get_vocab()) == set(ky.get_vocab())
    assert set(tx) == set(ty)
    for name in tx:
        if name in VOCAB_TENSORS:  # token ids may be ordered differently: compare by token
            vx, vy = kx.get_vocab(), ky.get_vocab()
            toks = sorted(vx)
            assert torch.equal(tx[name][[vx[t] for t in toks]], ty[name][[vy[t] for t in toks]]), name
        else:
            assert torch.equal(tx[name], ty[name]), name


@pytest.fixture(scope="module")
def direct(inputs):
    out = inputs / "out_direct"
    out.mkdir()
    merge_in_process(job(inputs), out, "direct")
    return out


@pytest.mark.skipif(not HAS_PEFT, reason="peft not installed (pip install -e '.[merge]')")
def test_peft_backend_equals_direct(inputs, direct):
    out = inputs / "out_peft"
    out.mkdir()
    merge_in_process(job(inputs), out, "peft")
    assert_same_merge(merged(out), merged(direct))


@pytest.mark.skipif(not HAS_MERGEKIT, reason="mergekit not installed (pip install -e '.[merge]')")
def test_mergekit_backend_equals_direct(inputs, direct):
    out = inputs / "out_mergekit"
    out.mkdir()
    merge_mergekit(job(inputs), out)
    assert_same_merge(merged(out), merged(direct))


def test_union_vocabulary_rows_and_tokenizer(inputs, direct):
    tensors, tok = merged(direct)
    vocab = tok.get_vocab()
    # base ids unchanged, then a's tokens, then b's new one
    assert [t for t, i in sorted(vocab.items(), key=lambda kv: kv[1])][259:] == ["नमस्ते", "भारत", "வணக்கம்"]
    emb = tensors["model.embed_tokens.weight"]
    assert emb.shape[0] == len(tok) == 262 and tensors["lm_head.weight"].shape[0] == 262
    a, b = load_file(str(inputs / "a" / "model.safetensors")), load_file(str(inputs / "b" / "model.safetensors"))
    a_vocab = merged(inputs / "a")[1].get_vocab()
    b_vocab = merged(inputs / "b")[1].get_vocab()
    # a token only one model has keeps that model's row exactly
    assert torch.equal(emb[vocab["नमस्ते"]], a["model.embed_tokens.weight"][a_vocab["नमस्ते"]])
    assert torch.equal(emb[vocab["வணக்கம்"]], b["model.embed_tokens.weight"][b_vocab["வணக்கம்"]])
    # the merge loads through the project's loader with a tokenizer that matches it
    model, tok2 = load_model({"name": "m", "source": "local", "path": str(direct)})
    assert model.get_input_embeddings().weight.shape[0] == len(tok2) == 262
    ids = tok2("வணக்கம் नमस्ते", add_special_tokens=False)["input_ids"]
    assert vocab["வணக்கம்"] in ids and vocab["नमस्ते"] in ids
    # base-vocabulary rows are merged, not copied from one model
    base = load_file(str(inputs / "base" / "model.safetensors"))["model.embed_tokens.weight"]
    assert not torch.equal(emb[:259], base) and not torch.equal(emb[:259], a["model.embed_tokens.weight"][:259])


def demo_cfg(cache, backend="direct"):
    overrides = ["merge=ties_demo", f"model.cache_dir={cache}", f"merge.backend={backend}"]
    for k in ("hi", "ta", "de"):
        overrides += [f"merge.models.{k}.finetune.steps=2", f"merge.models.{k}.finetune.batch_size=2"]
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        return compose(config_name="config", overrides=overrides)


def test_pre_step_merges_once_under_concurrency_then_reuses(tmp_path, caplog):
    from xling_edit.merge import merged_model_config

    cfg = demo_cfg(tmp_path / "cache")
    assert cfg.model.name == "tiny_llama" and cfg.merge.name == "ties"  # the demo picks its model
    caplog.set_level(logging.INFO, logger="xling_edit.merge")
    outs = []
    threads = [threading.Thread(target=lambda: outs.append(merged_model_config(cfg))) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    msgs = [r.getMessage() for r in caplog.records if r.getMessage().startswith("merged model")]
    assert sum("written" in m for m in msgs) == 1 and sum("loaded from cache" in m for m in msgs) == 1, msgs
    assert len(outs) == 2 and outs[0].path == outs[1].path and outs[0].source == "local"
    assert outs[0].templates == cfg.model.templates and outs[0].hparams == cfg.model.hparams
    path = Path(outs[0].path)
    assert path.parent == tmp_path / "cache" / "merged" and (path / "merge_info.json").exists()
    assert len([p for p in (tmp_path / "cache" / "merge_inputs").glob("tiny_llama-ft-*") if p.is_dir()]) == 3
    model, tok = load_model(outs[0])
    assert len(tok) > 259 and model.get_input_embeddings().weight.shape[0] == len(tok)
    # a different merge setting is a different cache entry
    from omegaconf import open_dict

    with open_dict(cfg):
        cfg.merge.density = 0.5
    assert merged_model_config(cfg).path != outs[0].path
