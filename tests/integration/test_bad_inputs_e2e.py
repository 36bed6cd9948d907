"""A new user's runs on imperfect data and broken code paths, end to end on the tiny Llama:
a BMIKE-53-format file with invalid records runs (skipped cases counted, reasons in
run_info.json), zsRE's missing true answer prints "n/a", English alone works on BMIKE-53, a job
whose first cases all fail the same way stops, a crashed job says so in job.json, and an output
directory that cannot be written stops the run in one line before Hydra writes anything."""

import json
import subprocess
import sys

import pytest
from hydra import compose, initialize_config_dir

from tests.conftest import ROOT
from xling_edit import pipeline
from xling_edit.configstore import register_configs
from xling_edit.editing.rome import RomeEditor
from xling_edit.errors import AbortRun

register_configs()
FAST = ["model=tiny_llama", "method.v_steps=3", "stats.per_lang=4", "print_tables=false"]


def run_py(tmp_path, *args):
    r = subprocess.run([sys.executable, "run.py", *FAST, f"model.cache_dir={tmp_path / 'cache'}",
                        f"hydra.run.dir={tmp_path / 'job'}", *args], cwd=ROOT, capture_output=True,
                       text=True, timeout=600)
    return r, tmp_path / "job"


def cfg(tmp_path, *overrides):
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        return compose(config_name="config", overrides=[*FAST, f"model.cache_dir={tmp_path / 'cache'}",
                                                        *overrides])


@pytest.mark.shared
def test_wfd_format_file_with_invalid_records_runs(tmp_path, shared_data):
    rows = json.loads((shared_data / "bmike53/counterfact/counterfact_test_de.json").read_text(encoding="utf-8"))[:8]
    rows[1]["de"]["loc_ans"] = ""  # the WikiFactDiff defect
    rows[4]["de"]["loc_ans"] = "  "
    del rows[6]["en"]["alt"]
    bad = {str(rows[i]["en"]["case_id"]) for i in (1, 4, 6)}
    d = tmp_path / "data" / "bmike53" / "WikiFactDiff"  # the release's folder and file names
    d.mkdir(parents=True)
    (d / "wfd_test_de.json").write_text(json.dumps(rows, ensure_ascii=False), encoding="utf-8")
    r, job = run_py(tmp_path, "data=bmike53_wfd", f"data.root={tmp_path / 'data'}", "edit_lang=de",
                    "eval_langs=[en,de]", "print_tables=true")
    assert r.returncode in (0, 3), r.stderr[-3000:]
    info = json.loads((job / "run_info.json").read_text())
    assert info["n_cases"] == 5 and sum(info["case_status"].values()) == 5
    inv = info["invalid_records"]
    assert inv["policy"] == "skip" and inv["count"] == 3 and {x["case"] for x in inv["records"]} == bad
    assert {(x["field"], x["problem"]) for x in inv["records"]} == {("de.loc_ans", "empty"), ("en.alt", "missing")}
    lines = [json.loads(l) for l in (job / "results.jsonl").read_text().splitlines()]
    assert not bad & {l["case_id"] for l in lines}
    assert "invalid records left out (data.on_invalid=skip): 3" in r.stdout
    assert "3 invalid record(s) left out, 5 cases kept" in r.stdout + r.stderr  # the log line


@pytest.mark.shared
def test_english_only_on_bmike53(tmp_path, shared_data):
    r, job = run_py(tmp_path, "data=bmike53_counterfact", f"data.root={shared_data}", "eval_langs=[en]",
                    "data.max_cases=2")
    assert r.returncode in (0, 3), r.stderr[-3000:]
    info = json.loads((job / "run_info.json").read_text())
    assert info["eval_langs"] == ["en"] and info["n_cases"] == 2 and info["case_status"].get("ok")


def test_zsre_without_true_answer_prints_na(tmp_path):
    half = {"case_id": 0, "subject": "Eiffel Tower", "src": "Where is the Eiffel Tower?", "alt": "Rome",
            "rephrase": "In which city is the Eiffel Tower?", "loc": "Who wrote Hamlet?",
            "loc_ans": "Shakespeare"}  # zsRE: no `old`
    rows = [{"en": {**half, "case_id": i}, "de": {**half, "case_id": i}} for i in range(2)]
    d = tmp_path / "data" / "bmike53" / "zsre"
    d.mkdir(parents=True)
    (d / "zsre_test_de.json").write_text(json.dumps(rows), encoding="utf-8")
    r, job = run_py(tmp_path, "data=bmike53_zsre", f"data.root={tmp_path / 'data'}", "eval_langs=[en,de]",
                    "print_tables=true")
    assert r.returncode in (0, 3), r.stderr[-3000:]
    assert "reliability.prob (post-edit): n/a: dataset has no true answer" in r.stdout
    assert "reliability.token_acc (post-edit)\nedit\\eval" in r.stdout  # the other tables as usual
    assert json.loads((job / "run_info.json").read_text())["dataset_has_true_answer"] is False


def test_first_cases_failing_alike_abort_the_job(tmp_path, monkeypatch):
    def broken(self, model, tok, request):
        raise RuntimeError("shape mismatch in a helper")

    monkeypatch.setattr(RomeEditor, "edit", broken)
    out = tmp_path / "job"
    with pytest.raises(AbortRun, match=r"the first 3 cases all failed with RuntimeError \(first: case "
                                       r"'capital_france': RuntimeError: shape mismatch"):
        pipeline.run(cfg(tmp_path, "abort_after_failures=3", "data.max_cases=6", "eval_langs=[en]"), out)
    job = json.loads((out / "job.json").read_text())
    assert job["status"] == "failed" and job["error"].startswith("AbortRun: aborting: the first 3 cases")
    assert len((out / "results.jsonl").read_text().splitlines()) == 3  # recorded before stopping
    # 0 disables the guard: every case is recorded as failed and the job finishes
    info = pipeline.run(cfg(tmp_path, "abort_after_failures=0", "data.max_cases=6", "eval_langs=[en]"),
                        tmp_path / "job0")
    assert info["case_status"] == {"failed": 6}
    assert json.loads((tmp_path / "job0" / "job.json").read_text())["status"] == "finished"


def test_a_working_case_disarms_the_guard(tmp_path, monkeypatch):
    real = RomeEditor.edit

    def flaky(self, model, tok, request):
        if request.case_id != "capital_france":
            raise RuntimeError("this case only")
        return real(self, model, tok, request)

    monkeypatch.setattr(RomeEditor, "edit", flaky)
    info = pipeline.run(cfg(tmp_path, "abort_after_failures=2", "data.max_cases=4", "eval_langs=[en]"),
                        tmp_path / "job")
    assert info["case_status"] == {"ok": 1, "failed": 3}


def test_a_crashed_job_is_marked_failed(tmp_path, monkeypatch):
    def crash(*a, **k):
        raise KeyError("a programming error outside the cases")

    monkeypatch.setattr(pipeline, "summarize", crash)
    out = tmp_path / "job"
    with pytest.raises(KeyError):
        pipeline.run(cfg(tmp_path, "data.max_cases=1", "eval_langs=[en]"), out)
    job = json.loads((out / "job.json").read_text())
    assert job["status"] == "failed" and "KeyError" in job["error"]


def test_a_run_that_edits_nothing_exits_3_and_says_why(tmp_path):
    """Every subject missing from its prompt: every case skipped; exit 3, one line with the
    reason on the console, the same line in run_info.json's outcome (strict=false too)."""
    rows = [{"case_id": i, "subject": f"Nobody{i}", "prompt": "The capital of France is",
             "target_new": "Rome", "ground_truth": "Paris", "rephrase_prompt": "France's capital is",
             "locality_prompt": "The capital of Spain is", "locality_ground_truth": "Madrid"}
            for i in range(2)]
    path = tmp_path / "nosubject.json"
    path.write_text(json.dumps(rows))
    r, job = run_py(tmp_path, "data=easyedit_counterfact", f"data.file={path}", "data.root=/",
                    "eval_langs=[en]", "strict=false")
    assert r.returncode == 3, r.stderr[-2000:]
    assert "exit 3: no case was edited: 2 case(s): 0 edited, 2 skipped: subject '…' not found" in r.stderr
    info = json.loads((job / "run_info.json").read_text())
    assert info["outcome"].startswith("2 case(s): 0 edited, 2 skipped")


def test_outcome_line_and_exit_codes():
    from xling_edit.results import outcome_line

    line = outcome_line({"ok": 3, "skipped": 2, "failed": 1},
                        [{"status": "skipped", "reason": "subject 'A' not found in prompt 'x'"},
                         {"status": "skipped", "reason": "subject 'B' not found in prompt 'y'"},
                         {"status": "failed", "reason": "ValueError: boom"}])
    assert line == ("6 case(s): 3 edited, 2 skipped: subject '…' not found in prompt '…' (×2), "
                    "1 failed: ValueError: boom (×1)")
    assert pipeline.exit_code({"case_status": {"ok": 1, "skipped": 1}}, strict=False) == 0
    assert pipeline.exit_code({"case_status": {"ok": 1, "skipped": 1}}, strict=True) == 3
    assert pipeline.exit_code({"case_status": {"skipped": 2}}, strict=False) == 3


@pytest.mark.parametrize("where", ["output_root", "hydra.run.dir", "sweep"])
def test_an_output_directory_that_cannot_be_written_is_one_line(tmp_path, where):
    """Under a regular file (this machine's root may write anywhere, so a read-only directory is
    covered in tests/unit/test_paths.py): exit 2, one line, before Hydra creates the directory
    or its log, and before any model loads."""
    blocker = tmp_path / "afile"
    blocker.write_text("x")
    args = {"output_root": [f"output_root={blocker}"],
            "hydra.run.dir": [f"hydra.run.dir={blocker / 'job'}"],
            "sweep": ["-m", "edit_lang=en,de", f"hydra.sweep.dir={blocker / 'sweep'}"]}[where]
    r = subprocess.run([sys.executable, "run.py", *args, *FAST, f"model.cache_dir={tmp_path / 'cache'}"],
                       cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert r.returncode == 2, r.stderr[-3000:]
    lines = [l for l in r.stderr.splitlines() if l.strip()]
    key = {"sweep": "hydra.sweep.dir"}.get(where, "hydra.run.dir")
    assert len(lines) == 1 and lines[0].startswith(f"error: {key}={blocker}/"), r.stderr
    assert f"cannot write there ({blocker} is a file, not a directory); choose another: output_root=<dir>" in lines[0]
    assert "Traceback" not in r.stderr + r.stdout and not (tmp_path / "cache").exists()  # nothing loaded
