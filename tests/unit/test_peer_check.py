"""bench/peer_check.py: a job's lines paired with a peer's per-case CSV, hand-checked means."""

import json

import pytest

from bench import peer_check

CSV = """row,case_id,eval_lang,phase,reliability,generalization,locality,portability,edit_s
0,1,en,pre,0.0,0.0,,0.5,
0,1,en,post,1.0,1.0,0.0,0.5,3.0
1,2,en,pre,0.0,0.0,,0.0,
1,2,en,post,1.0,0.5,0.5,0.0,3.0
2,3,en,post,1.0,1.0,1.0,1.0,3.0
"""


def line(case, phase_scores, status="ok"):
    out = {"case_id": case, "eval_lang": "en", "status": status}
    for phase, (rel, gen, loc, port) in phase_scores.items():
        out[phase] = {"reliability.token_acc": rel, "generalization.token_acc": gen,
                      "portability.token_acc": port,
                      # an older line: locality's agreement under its former name
                      ("locality.token_acc" if case == "2" else "locality.agree_token"): loc}
    return json.dumps(out)


def test_cases_are_paired_and_means_compared(tmp_path):
    (tmp_path / "ref.csv").write_text(CSV)
    job = tmp_path / "job"
    job.mkdir()
    (job / "results.jsonl").write_text("\n".join([
        line("1", {"pre": (0.0, 0.0, None, 0.5), "post": (1.0, 0.5, 0.0, 0.5)}),
        line("2", {"pre": (0.0, 0.0, None, 0.0), "post": (0.0, 0.5, 0.25, 0.0)}),
        line("4", {"post": (1.0, 1.0, 1.0, 1.0)}),  # not in the reference: left out
        line("3", {"post": (0.0, 0.0, 0.0, 0.0)}, status="failed"),  # not ok: left out
    ]) + "\n")
    out = tmp_path / "cmp.json"
    assert peer_check.main([str(job), "--reference", str(tmp_path / "ref.csv"), "--out", str(out),
                            "--tolerance", "0.3"]) == 0
    got = json.loads(out.read_text())
    assert got["cases"] == ["1", "2"]
    cells = {(c["phase"], c["metric"]): c for c in got["cells"]}
    rel = cells[("post", "reliability")]  # ours (1 + 0) / 2 vs peer 1.0
    assert (rel["n"], rel["ours"], rel["peer"], rel["diff"], rel["within_tolerance"]) == (2, 0.5, 1.0, -0.5, False)
    assert (rel["max_case_diff"], rel["cases_agree"]) == (1.0, 0.5)
    gen = cells[("post", "generalization")]  # 0.5 vs 0.75
    assert gen["diff"] == -0.25 and gen["within_tolerance"]
    loc = cells[("post", "locality")]  # the renamed key is read: (0 + 0.25) / 2 vs 0.25
    assert loc["ours"] == 0.125 and loc["peer"] == 0.25
    assert ("pre", "locality") not in cells  # no pre-edit locality
    assert cells[("pre", "portability")]["cases_agree"] == 1.0


def test_a_folder_without_results_is_one_error(tmp_path, capsys):
    with pytest.raises(SystemExit):
        peer_check.main([str(tmp_path)])
    assert "no results.jsonl" in capsys.readouterr().err
