"""Pre-edit scores computed once per sweep: a second job (another method) reads every case's
pre-edit scores from the cache and records identical pre metrics; a changed evaluation option
or answer format misses the cache."""

import json

from hydra import compose, initialize_config_dir

from tests.conftest import ROOT
from xling_edit import pipeline
from xling_edit.configstore import register_configs

register_configs()


def run(tmp_path, name, *overrides):
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose(config_name="config", overrides=[
            "model=tiny_llama", "method.v_steps=2", "data.max_cases=3", "eval_langs=[en,de]",
            "stats.per_lang=4", "print_tables=false", f"model.cache_dir={tmp_path / 'cache'}", *overrides])
    info = pipeline.run(cfg, out_dir=tmp_path / name)
    lines = [json.loads(l) for l in (tmp_path / name / "results.jsonl").read_text().splitlines()]
    return info, {(l["case_id"], l["eval_lang"]): l["pre"] for l in lines}


def test_second_job_reads_pre_scores_from_the_cache(tmp_path):
    first, pre1 = run(tmp_path, "rome", "method=rome")
    assert first["pre_cache"]["hits"] == 0 and first["pre_cache"]["misses"] == 3
    second, pre2 = run(tmp_path, "memit", "method=memit", "edit_lang=de")
    assert second["pre_cache"]["hits"] == 3 and second["pre_cache"]["misses"] == 0
    assert pre1 == pre2  # identical pre metrics, every case and language
    uncached, pre3 = run(tmp_path, "nocache", "method=memit", "eval.pre_cache=false")
    assert uncached["pre_cache"] is None and pre3 == pre1
    chunk, _ = run(tmp_path, "chunk", "method=rome", "eval.head_chunk=7")  # another option
    assert chunk["pre_cache"]["hits"] == 0
    cue, _ = run(tmp_path, "cue", "method=rome", "data.answer_format=prefix", "data.answer_prefix= Answer:")
    assert cue["pre_cache"]["hits"] == 0  # other rows: other keys
