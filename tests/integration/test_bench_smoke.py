"""`python bench/edit_bench.py` runs end to end on a tiny model (the benchmark is not a test)."""

from tests.conftest import run_bench


def test_bench_runs_on_a_tiny_model(tmp_path):
    r, res = run_bench(tmp_path, "--quick", "--memit-batch", "2", "--stats-tokens", "1000",
                       "--override", "data.max_cases=2")
    figures = {row["figure"]: row for row in res["summary"]}
    for name in ("edit + 8-language evaluation, one case (s) [ROME]", "ROME edit (s)",
                 "MEMIT edit, batch 1 (s/edit)", "MEMIT edit, batch 2 (s/edit)",
                 "evaluate one case, 8 languages (s)", "statistics throughput (tokens/s)",
                 "peak resident memory (GB)"):
        assert figures[name]["fast"] > 0, name
    assert figures["ROME edit (s)"]["ratio"] is not None
    assert all(x["eval_identical"] and x["same_trajectory"] for x in res["rome"]["same_metrics"])
    assert "gain" in r.stdout and "peak resident memory" in r.stdout


def test_bench_requests_use_the_pipelines_answer_format(tmp_path):
    """The benchmark edits with the prompts the pipeline would use: each language's answer cue
    when the dataset asks for it (a question dataset edited without its cue measures another
    prompt than the study's)."""
    from bench.edit_bench import Setup, compose

    cfg = compose("tiny_llama", ["data.answer_format=cue", "data.max_cases=1", "stats.per_lang=2",
                                 f"model.cache_dir={tmp_path}", "threads=1", "eval_langs=[en,de]"])
    s = Setup(cfg, edit_lang="de", prefetch=False)
    cue = s.registry["de"].answer_cue
    assert cue and s.answer_format == "cue"
    assert s.request(s.cases[0]).answer_prefix == cue
    assert s.answer_prefix == {"en": s.registry["en"].answer_cue, "de": cue}
