"""``python -m xling_edit.report`` on a hand-made sweep folder (two job subfolders): every
promised file is written and holds the hand-computed numbers; the notebook runs on it; the CLI
never imports wandb."""

from __future__ import annotations

import csv
import os
import re
import subprocess
import sys

import pytest

from tests.conftest import ROOT
from tests.report_fixture import EXPECTED, write_multirun
from xling_edit.report.cli import main

TABLES = [f"post_{m}_{p}" for m in ("reliability", "generalization")
          for p in ("token_acc", "exact", "prob")]
TABLES += [f"post_locality_{p}" for p in ("agree_token", "agree_exact", "answer_token_acc",
                                          "answer_exact", "prob", "prob_drop")]
TABLES += ["post_portability_token_acc", "post_portability_exact",
           "pre_reliability_token_acc", "pre_reliability_exact", "pre_reliability_prob",
           "pre_locality_answer_token_acc", "pre_locality_answer_exact", "pre_locality_prob"]
HEATMAPS = [f"heatmap_tiny_llama_builtin_rome_none_{p}.png" for p in ("token_acc", "exact", "prob")]


def _env():
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    env["MPLBACKEND"] = "Agg"
    return env


@pytest.fixture(scope="module")
def sweep_report(tmp_path_factory):
    """The CLI run once as a subprocess (``python -m``), default output folder."""
    sweep = write_multirun(tmp_path_factory.mktemp("rep") / "multirun" / "12-00-00")
    r = subprocess.run([sys.executable, "-m", "xling_edit.report", str(sweep), "--n-boot", "300"],
                       cwd=ROOT, capture_output=True, text=True, timeout=120, env=_env())
    assert r.returncode == 0, r.stderr[-3000:]
    assert "2 run(s)" in r.stdout
    return sweep, sweep / "report"


def _read(path):
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def test_writes_every_promised_file(sweep_report):
    _, out = sweep_report
    for stem in TABLES:
        assert (out / "tables" / f"{stem}.csv").stat().st_size > 0, stem
        assert (out / "tables" / f"{stem}.md").read_text().count("|") > 10, stem
    assert not (out / "tables" / "post_portability_prob.csv").exists()  # no values at all
    assert not (out / "tables" / "pre_locality_agree_token.csv").exists()  # no pre-edit value
    assert not (out / "tables" / "post_locality_token_acc.csv").exists()  # the old name
    for name in HEATMAPS + ["fertility_vs_success.png"]:
        data = (out / "figures" / name).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000, name
    for name in ("localisation.csv", "fertility.csv", "non_ok.csv"):
        assert (out / "diagnostics" / name).is_file()
    assert (out / "cells.csv").is_file() and (out / "report.md").is_file()


def test_table_csv_holds_means_and_ci_columns(sweep_report):
    _, out = sweep_report
    rows = {r["edit_lang"]: r for r in _read(out / "tables" / "post_reliability_token_acc.csv")}
    assert list(rows) == ["en", "de"]
    header = list(rows["en"])
    assert header[:7] == ["model", "dataset", "method", "merge", "variant", "edit_lang", "n_cases"]
    assert header[7:] == [f"{c}{s}" for c in ("en", "de", "hi", "ELFI", "ELFO")
                          for s in ("", "_ci_lo", "_ci_hi")]
    for (edit, col), want in EXPECTED.items():
        r = rows[edit]
        assert float(r[col]) == pytest.approx(want, abs=1e-6), (edit, col)
        assert float(r[f"{col}_ci_lo"]) <= float(r[col]) <= float(r[f"{col}_ci_hi"])
    assert rows["de"]["de_ci_lo"] == rows["de"]["de_ci_hi"] == rows["de"]["de"]
    assert rows["en"]["n_cases"] == "3"  # skipped c4 not counted
    md = (out / "tables" / "post_reliability_token_acc.md").read_text()
    assert re.search(r"\| 0\.833 \[0\.\d{3}, 1\.000\] \|", md)  # en→en: mean [lo, hi]
    assert "| 1.000 [1.000, 1.000] |" in md  # de→de, degenerate
    cells = _read(out / "cells.csv")
    elfo = [c for c in cells if c["key"] == "reliability.token_acc" and c["phase"] == "post"
            and c["eval_lang"] == "ELFO" and c["edit_lang"] == "en"]
    assert len(elfo) == 1 and float(elfo[0]["mean"]) == pytest.approx(1.75 / 6, abs=1e-6)


def test_report_md_describes_the_runs_and_links_existing_files(sweep_report):
    _, out = sweep_report
    md = (out / "report.md").read_text()
    for s in ("tiny_llama", "rome", "builtin", "English (en)", "German (de)", "Hindi (hi)",
              "0_tiny_llama_rome_en", "1_tiny_llama_rome_de", "ELFI", "ELFO"):
        assert s in md, s
    assert "by status: ok 18, failed 3, skipped 3" in md  # lines
    assert "ok 6, failed 1, skipped 1" in md               # cases
    assert "subject 'Xyz' not found" in md and "RuntimeError: boom" in md
    links = re.findall(r"\]\(([^)]+)\)", md)
    local = [l for l in links if not l.startswith("http")]
    assert sum(l.endswith(".png") for l in local) == 4 and sum(l.endswith(".csv") for l in local) >= 14
    for l in local:
        assert (out / l).exists(), l
    loc = {r["edit_lang"]: r for r in _read(out / "diagnostics" / "localisation.csv")}
    assert float(loc["en"]["share_translit"]) == 0.25 and float(loc["en"]["share_skipped"]) == 0.25
    fert = {r["eval_lang"]: r for r in _read(out / "diagnostics" / "fertility.csv")}
    assert float(fert["hi"]["target_tokens"]) == 4 and float(fert["de"]["success"]) == pytest.approx(0.75)


def test_out_option_mixed_paths_and_errors(sweep_report, tmp_path, capsys):
    sweep, _ = sweep_report
    out = tmp_path / "rep"
    # a run directory and a results.jsonl file of the same sweep: read once each
    assert main([str(sweep / "0_tiny_llama_rome_en"), str(sweep / "1_tiny_llama_rome_de" / "results.jsonl"),
                 "--out", str(out), "--n-boot", "20", "--no-figures", "-q"]) == 0
    rows = _read(out / "tables" / "post_reliability_token_acc.csv")
    assert [r["edit_lang"] for r in rows] == ["en", "de"]
    assert not (out / "figures").exists()
    assert main([str(tmp_path / "missing")]) == 2
    assert "no such file" in capsys.readouterr().err


def test_cli_import_does_not_import_wandb():
    code = ("import sys, xling_edit.report.cli, xling_edit.report; "
            "bad = [m for m in ('wandb', 'xling_edit.report.wandb_hook') if m in sys.modules]; "
            "assert not bad, bad; "
            "from xling_edit.report import log_report_to_wandb; "
            "assert 'wandb' not in sys.modules and callable(log_report_to_wandb)")
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                       timeout=60, env=_env())
    assert r.returncode == 0, r.stderr


def test_notebook_runs_on_the_fixture(sweep_report, monkeypatch):
    try:
        import nbformat
        from nbclient import NotebookClient
        import ipykernel  # noqa: F401
    except ImportError as exc:
        pytest.skip(f"notebook execution needs nbformat, nbclient and ipykernel ({exc})")
    sweep, _ = sweep_report
    path = ROOT / "notebooks" / "analysis.ipynb"
    nb = nbformat.read(path, as_version=4)
    code_cells = [c for c in nb.cells if c.cell_type == "code"]
    assert all(not c.outputs and c.execution_count is None for c in code_cells), \
        "commit the notebook without outputs"
    for k, v in _env().items():
        monkeypatch.setenv(k, v)
    monkeypatch.setenv("XLING_EDIT_RESULTS", str(sweep))
    NotebookClient(nb, timeout=120, kernel_name="python3",
                   resources={"metadata": {"path": str(path.parent)}}).execute()
    text = "\n".join(o.get("text", "") + str(o.get("data", {}).get("text/plain", ""))
                     + str(o.get("data", {}).get("text/markdown", ""))
                     for c in code_cells for o in c.outputs)
    assert "2 run(s)" in text
    assert "0.833 [" in text                      # the en→en cell with its interval
    assert "shared spelling" in text and "different spelling" in text
    n_png = sum("image/png" in o.get("data", {}) for c in code_cells for o in c.outputs)
    assert n_png >= 4  # heatmaps (token_acc, prob), fertility scatter, spelling bars
