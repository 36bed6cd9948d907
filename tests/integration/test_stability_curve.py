"""Sequential editing's stability curve on the tiny Llama: after every edit the edits so far and
the held-out (never edited) cases are scored in every evaluation language; the report draws the
curves. AlphaEdit keeps the sequence's earlier keys in its constraint and forgets them per group."""

import json

from hydra import compose, initialize_config_dir

from tests.conftest import ROOT
from xling_edit import pipeline
from xling_edit.configstore import register_configs

register_configs()


def test_sequential_curve_and_report(tmp_path):
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose(config_name="config", overrides=[
            "model=tiny_llama", "method=alphaedit", "method.layers=[0,1]", "method.v_steps=2",
            "method.nullspace_threshold=10.0", "method.l2=1e-3", "method.mode=sequential",
            "method.num_edits=3", "method.eval_every=1", "method.heldout=1", "data.max_cases=4",
            "eval_langs=[en,de]", "stats.per_lang=4", "print_tables=false",
            f"model.cache_dir={tmp_path / 'cache'}"])
    info = pipeline.run(cfg, out_dir=tmp_path / "job")
    assert len(info["heldout_cases"]) == 1 and info["case_status"] == {"ok": 3}
    curve = [json.loads(l) for l in (tmp_path / "job" / "curve.jsonl").read_text().splitlines()]
    points = {(c["set"], c["eval_lang"], c["n_edits"]) for c in curve}
    assert points == {(s, l, n) for s in ("edited", "heldout") for l in ("en", "de") for n in (1, 2, 3)}
    held = [c for c in curve if c["set"] == "heldout"]
    assert all(c["n_cases"] == 1 and "fact.true_token_acc" in c["post"] and "fact.true_token_acc" in c["pre"]
               for c in held)
    assert all(c["n_cases"] == c["n_edits"] for c in curve if c["set"] == "edited")
    lines = [json.loads(l) for l in (tmp_path / "job" / "results.jsonl").read_text().splitlines()]
    # AlphaEdit: the second and third edit see the earlier ones' keys in the constraint
    assert sorted({l["edit"]["prior_edits_in_constraint"] for l in lines}) == [0, 1, 2]

    from xling_edit.report.build import build_report

    rep = build_report([tmp_path / "job"], tmp_path / "report", n_boot=20)
    names = {p.name for p in rep.files}
    assert "curves.csv" in names and "curve_heldout_locality_agree_token.png" in names
