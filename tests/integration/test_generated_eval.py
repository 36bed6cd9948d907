"""Generated answers through the whole pipeline: every scored prompt gets a pre- and a post-edit
answer in every language, the line's keys agree with its `answers`, a context edit generates
after its context, and eval.generate=false switches it all off."""

import json

import pytest
from hydra import compose, initialize_config_dir

from tests.conftest import ROOT
from xling_edit import pipeline
from xling_edit.configstore import register_configs
from xling_edit.evaluation import answers as gen_eval
from xling_edit.evaluation.generate import Generated
from xling_edit.evaluation.matching import RUNGS

register_configs()


def run(tmp_path, *overrides, name="job"):
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose(config_name="config", overrides=[
            "model=tiny_llama", "data.max_cases=2", "eval_langs=[en,de,hi]",
            "stats.per_lang=4", "print_tables=false", "eval.max_new_tokens=4",
            f"model.cache_dir={tmp_path / 'cache'}", *overrides])
    info = pipeline.run(cfg, out_dir=tmp_path / name)
    lines = [json.loads(l) for l in (tmp_path / name / "results.jsonl").read_text().splitlines()]
    return info, lines


def test_answers_and_keys_in_every_line(tmp_path):
    info, lines = run(tmp_path, "method=rome", "method.v_steps=2")
    assert info["case_status"] == {"ok": 2}
    for l in lines:
        kinds = [a["metric"] for a in l["answers"]]
        assert kinds[0] == "reliability" and {"generalization", "locality"} <= set(kinds)
        for a in l["answers"]:
            assert a["pre_rung"] in RUNGS and a["post_rung"] in RUNGS
            assert isinstance(a["pre"], str) and isinstance(a["post"], str) and a["prompt"]
        rel = [a for a in l["answers"] if a["metric"] == "reliability"]
        for phase in ("pre", "post"):
            want = sum(a[f"{phase}_rung"] != "none" for a in rel) / len(rel)
            assert l[phase]["reliability.gen"] == pytest.approx(want)
            by_rung = sum(l[phase][f"reliability.gen_{r}"] for r in RUNGS[:-1])
            assert by_rung == pytest.approx(l[phase]["reliability.gen"])
            assert 0.0 <= l[phase]["gen.script_fidelity"] + l[phase]["gen.other_script"] <= 1.0
        assert l["pre"]["locality.gen_agree"] is None and 0.0 <= l["post"]["locality.gen_agree"] <= 1.0
        assert l["timings"]["pre_gen_s"] >= 0 and l["timings"]["post_gen_s"] >= 0


def test_keys_follow_the_answers(tmp_path, monkeypatch):
    """With the model's answers replaced (pre: a wrong word; post: the expected answer, in
    another script for Hindi), the keys say exactly that."""
    calls = []

    def fake(model, tok, prompts, languages, opts):
        post = len(calls) % 2 == 1  # per case: pre first, then post (no pre-edit cache)
        calls.append([p.text for p in prompts])
        out = []
        for p in prompts:
            if not post:
                text = "nothing"
            elif p.lang == "hi" and p.kind == "rel":
                text = p.also[0] if p.also else p.target  # the English spelling
            else:
                text = p.target
            out.append(Generated(text, text, 1, "eos"))
        return out

    monkeypatch.setattr(gen_eval, "generate_for", fake)
    _, lines = run(tmp_path, "method=rome", "method.v_steps=2", "eval.pre_cache=false")
    assert len(calls) == 4
    for l in lines:
        assert l["pre"]["reliability.gen"] == 0.0 and l["pre"]["gen.script_fidelity"] == (l["eval_lang"] != "hi")
        assert l["post"]["reliability.gen"] == 1.0 and l["post"]["locality.gen"] == 1.0
        assert l["post"]["locality.gen_agree"] == 0.0  # "nothing" before, the answer after
        if l["eval_lang"] == "hi":
            rung = next(a["post_rung"] for a in l["answers"] if a["metric"] == "reliability")
            assert rung in ("other_form", "romanized", "exact")  # a Latin answer, apart from native
            assert l["post"]["reliability.gen_exact"] in (0.0, 1.0)


def test_context_edit_generates_after_its_context(tmp_path, monkeypatch):
    seen = []
    real = gen_eval.generate_for

    def spy(model, tok, prompts, languages, opts):
        seen.append([p.text for p in prompts])
        return real(model, tok, prompts, languages, opts)

    monkeypatch.setattr(gen_eval, "generate_for", spy)
    _, lines = run(tmp_path, "method=ike", "method.k=2", "eval.pre_cache=false")
    pre, post = seen[0], seen[1]
    assert len(pre) == len(post)
    assert all(a.endswith(b) and a != b for a, b in zip(post, pre))  # same prompt, context first
    assert all("New fact:" not in t for t in pre)


def test_generate_off(tmp_path):
    _, lines = run(tmp_path, "method=rome", "method.v_steps=2", "eval.generate=false")
    for l in lines:
        assert "answers" not in l and "reliability.gen" not in l["post"]


def test_bad_cap_fails_before_loading(tmp_path):
    from xling_edit.errors import UserError

    with pytest.raises(UserError, match="max_new_tokens must be an integer >= 1"):
        run(tmp_path, "eval.max_new_tokens=0")


def test_rejudge_reproduces_the_run_and_follows_the_texts(tmp_path):
    """Judging the stored answers again (no model) gives the run's own keys; a stored text
    replaced by the expected answer then counts as matched."""
    from xling_edit.evaluation.rejudge import rejudge_dir

    run(tmp_path, "method=rome", "method.v_steps=2")
    job = tmp_path / "job"
    (job / ".hydra").mkdir(exist_ok=True)
    from omegaconf import OmegaConf

    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose(config_name="config", overrides=[
            "model=tiny_llama", "data.max_cases=2", "eval_langs=[en,de,hi]"])
    OmegaConf.save(cfg, job / ".hydra" / "config.yaml")
    out, n = rejudge_dir(job)
    before = [json.loads(l) for l in (job / "results.jsonl").read_text().splitlines()]
    after = [json.loads(l) for l in out.read_text().splitlines()]
    assert n == 0 and [l["post"] for l in after] == [l["post"] for l in before]
    line = before[0]
    rel = next(a for a in line["answers"] if a["metric"] == "reliability")
    rel["post"] = rel["target"]
    (job / "results.jsonl").write_text("".join(json.dumps(l, ensure_ascii=False) + "\n" for l in before))
    out, n = rejudge_dir(job)
    again = [json.loads(l) for l in out.read_text().splitlines()]
    assert n >= 1 and again[0]["post"]["reliability.gen"] == 1.0
