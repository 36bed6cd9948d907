"""The W&B logger, offline: a run per job with streamed case metrics, the summary table, the
report's tables and heatmaps, config/name/group/tags; closed on failure so the next job gets a
new run. Everything is read back from the offline ``.wandb`` file (tests/wandb_offline.py)."""

from __future__ import annotations

import json
import sys

import pytest
from hydra import compose, initialize_config_dir

from tests.conftest import ROOT
from tests.report_fixture import EXPECTED, REL, fixture_lines, write_run
from tests.wandb_offline import offline_runs, read_run
from xling_edit.configstore import register_configs
from xling_edit.loggers import RunLogger, build_logger

register_configs()
wandb = pytest.importorskip("wandb")

from xling_edit.loggers import wandb_logger as wl  # noqa: E402


@pytest.fixture(autouse=True)
def wandb_offline_env(monkeypatch, tmp_path_factory):
    """No network, no git, no writes outside tmp: what every W&B test runs under."""
    base = tmp_path_factory.getbasetemp() / "wandb_env"
    for var, sub in (("WANDB_DIR", "dir"), ("WANDB_CACHE_DIR", "cache"), ("WANDB_DATA_DIR", "data"),
                     ("WANDB_CONFIG_DIR", "config"), ("WANDB_ARTIFACT_DIR", "artifacts")):
        (base / sub).mkdir(parents=True, exist_ok=True)
        monkeypatch.setenv(var, str(base / sub))
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("WANDB_DISABLE_GIT", "true")
    monkeypatch.setenv("WANDB_DISABLE_CODE", "true")
    monkeypatch.setenv("WANDB_CONSOLE", "off")
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    yield


def job_cfg(*overrides):
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        return compose(config_name="config", overrides=["model=tiny_llama", "logger=wandb", *overrides])


def en_job(tmp_path):
    """A finished job directory (edit en; c1-c3 ok, c4 skipped) plus its info and summary rows."""
    from xling_edit.results import summarize

    lines = [l for l in fixture_lines() if l["edit_lang"] == "en"]
    job = write_run(tmp_path / "job", lines, "en")
    info = json.loads((job / "run_info.json").read_text())
    info.update(mode="single", case_status={"ok": 3, "skipped": 1}, n_cases=4)
    return job, lines, info, summarize(lines)


def cases(lines):
    order = list(dict.fromkeys(l["case_id"] for l in lines))
    return [[l for l in lines if l["case_id"] == c] for c in order]


def drive(logger, cfg, job, lines, info, rows):
    groups = cases(lines)
    logger.start(cfg, job)
    for i, g in enumerate(groups, 1):
        logger.log_lines(g, {"done": i, "total": len(groups), "failed": 0})
    logger.finish(job, info, rows)


# ---------------------------------------------------------------------------------- config


def test_yaml_matches_schema_and_defaults():
    c = job_cfg()
    assert c.logger.name == "wandb" and c.logger.mode == "auto" and c.logger.group is None
    assert c.logger.dir is None and c.logger.log_every == 1 and list(c.logger.stream_protocols) == ["token_acc", "agree_token"]
    assert job_cfg("logger=none").logger.name == "none"


def test_auto_mode_leaves_mode_and_credentials_to_wandb(tmp_path, monkeypatch):
    """``auto``: W&B's own mode (None), offline instead of online when W&B finds no credentials
    (WANDB_API_KEY, the netrc entry of the W&B host); explicit modes pass through."""
    netrc = tmp_path / "netrc"
    netrc.write_text("machine api.wandb.ai\n  login user\n  password " + "a" * 40 + "\n")
    netrc.chmod(0o600)

    def mode(mode="auto", **env):
        for var in ("WANDB_MODE", "WANDB_API_KEY", "WANDB_BASE_URL"):
            monkeypatch.delenv(var, raising=False)
        monkeypatch.setenv("NETRC", str(tmp_path / "absent"))
        for var, value in env.items():
            monkeypatch.setenv(var, value)
        wandb.teardown()  # W&B caches its settings and the session's credentials per process
        try:
            return wl.init_mode(wandb, mode)
        finally:
            wandb.teardown()

    assert mode() == "offline"  # nothing found: written offline, never a prompt
    assert mode(WANDB_API_KEY="k" * 40) is None  # W&B goes online itself
    assert mode(NETRC=str(netrc)) is None
    assert mode(NETRC=str(netrc), WANDB_BASE_URL="https://wandb.example.org") == "offline"  # another host
    assert mode(WANDB_MODE="disabled") is None and mode(WANDB_MODE="dryrun") is None  # W&B's own
    assert mode("offline", WANDB_API_KEY="k" * 40) == "offline"
    assert mode("online") == "online" and mode("DISABLED") == "disabled"
    with pytest.raises(ValueError, match="logger.mode"):
        wl.check_mode("sometimes")


def test_auto_mode_follows_wandb_mode_disabled(tmp_path, monkeypatch):
    """WANDB_MODE=disabled with logger.mode=auto: W&B's choice stands, nothing is written."""
    job, lines, info, rows = en_job(tmp_path)
    monkeypatch.setenv("WANDB_MODE", "disabled")
    wandb.teardown()
    try:
        cfg = job_cfg("logger.report=false")
        with build_logger(cfg) as logger:
            drive(logger, cfg, job, lines, info, rows)
    finally:
        wandb.teardown()
    assert offline_runs(job) == [] and not (job / "wandb").exists()


def test_build_logger_none_unknown_and_missing_wandb(monkeypatch):
    none = build_logger(job_cfg("logger=none"))
    assert type(none) is RunLogger
    with none as lg:  # the no-op logger accepts the whole protocol
        lg.start(None, None)
        lg.log_lines([], {"done": 0, "total": 0, "failed": 0})
        lg.finish(None, {}, [])
    c = job_cfg()
    c.logger.name = "mlflow"
    with pytest.raises(ValueError, match="mlflow"):
        build_logger(c)
    with pytest.raises(ValueError, match="stream_protocols"):
        build_logger(job_cfg("logger.stream_protocols=[token_accuracy]"))
    monkeypatch.setitem(sys.modules, "wandb", None)  # as if not installed
    with pytest.raises(ImportError, match=r"xling_edit\[wandb\]"):
        build_logger(job_cfg())


def test_names_and_tags():
    assert wl.default_run_name(job_cfg()) == "tiny_llama_rome_en"
    c = job_cfg("method=memit", "method.mode=all_languages", "edit_lang=de")
    assert wl.default_run_name(c) == "tiny_llama_memit_all_all_languages"
    assert {"tiny_llama", "memit", "edit:all", "builtin", "mode:all_languages"} <= set(wl.default_tags(c))
    assert wl.hydra_sweep_group() is None  # outside a Hydra multirun


def test_group_from_sweep_dir_without_hydra_context(tmp_path, monkeypatch):
    """Ranks spawned by torch.multiprocessing have no HydraConfig: the sweep is recognised by the
    multirun.yaml Hydra writes into the sweep directory. The group is relative to the output
    root, whatever the working directory."""
    job = tmp_path / "multirun" / "2026-01-31" / "12-00-00" / "0_tiny_llama_rome_en"
    job.mkdir(parents=True)
    assert wl.hydra_sweep_group(job, tmp_path) is None  # a single run's directory
    (job.parent / "multirun.yaml").write_text("hydra: {}\n")
    for cwd in (tmp_path, job):
        monkeypatch.chdir(cwd)
        assert wl.hydra_sweep_group(job, tmp_path) == "multirun/2026-01-31/12-00-00"
    assert wl.hydra_sweep_group(job, tmp_path / "elsewhere") == str(job.parent.resolve())


def test_summary_table_and_headline_numbers(tmp_path):
    _, _, info, rows = en_job(tmp_path)
    table = wl.summary_table_rows(info, rows)
    cols = wl.TABLE_COLUMNS
    assert all(len(r) == len(cols) for r in table)
    rec = [dict(zip(cols, r)) for r in table]
    cell = {(r["eval_lang"], r["phase"], r["key"]): r for r in rec}
    for ev in ("en", "de", "hi", "ELFI", "ELFO"):
        assert cell[(ev, "post", "reliability.token_acc")]["value"] == pytest.approx(EXPECTED[("en", ev)], abs=1e-4)
    assert cell[("ELFI", "post", "reliability.token_acc")]["elfi"] is True
    assert cell[("de", "post", "reliability.token_acc")]["elfi"] is False
    assert cell[("en", "post", "reliability.token_acc")]["n"] == 3  # c4 skipped
    assert ("en", "pre", "locality.agree_token") not in cell  # undefined before the edit: no row
    assert cell[("en", "pre", "locality.prob")]["value"] == 1.0  # locality's pre-edit baseline
    assert cell[("en", "post", "locality.prob_drop")]["value"] == pytest.approx(0.5)
    head = wl.headline_summary(info, rows)
    assert head["ELFI/reliability_token_acc"] == pytest.approx(2.5 / 3, abs=1e-4)
    assert head["ELFO/reliability_token_acc"] == pytest.approx(1.75 / 6, abs=1e-4)
    assert head["pre_ELFI/reliability_token_acc"] == pytest.approx(0.25)
    assert head["cases/skipped"] == 1 and head["n_ELFO"] == 6


# ------------------------------------------------------------------------------ offline runs


def test_offline_run_streams_tables_heatmaps(tmp_path):
    job, lines, info, rows = en_job(tmp_path)
    cfg = job_cfg("logger.tags=[paper]", "logger.n_boot=50")
    with build_logger(cfg) as logger:
        drive(logger, cfg, job, lines, info, rows)
    assert wandb.run is None  # finished
    runs = offline_runs(job)  # logger.dir=null: beside results.jsonl
    assert len(runs) == 1
    run = read_run(runs[0])
    assert run.complete and run.exit_code == 0
    assert run.name == "tiny_llama_rome_en" and run.group == "" and run.project == "xling_edit"
    assert {"tiny_llama", "rome", "edit:en", "builtin", "mode:single", "paper"} <= set(run.tags)
    assert run.config["model"]["name"] == "tiny_llama" and run.config["logger"]["mode"] == "auto"
    assert run.config["job_info"]["out_dir"] == str(job.resolve())

    # streamed: one point per case, x axis progress/cases_done
    streamed = [h for h in run.history if "progress/cases_done" in h]
    assert [h["progress/cases_done"] for h in streamed] == [1, 2, 3, 4]
    for i, h in enumerate(streamed[:3]):
        for ev in ("en", "de", "hi"):
            assert h[f"case/reliability_token_acc/{ev}"] == pytest.approx(REL["en"][ev][i])
    assert not any(k.startswith("case/") for k in streamed[3])  # c4 skipped: no case values
    assert not any(k.startswith("case/") and "_exact/" in k for k in run.history_keys)  # token_acc only
    assert streamed[-1]["ELFI/reliability_token_acc"] == pytest.approx(2.5 / 3)
    assert streamed[-1]["ELFO/reliability_token_acc"] == pytest.approx(1.75 / 6)
    assert streamed[-1]["progress/fraction"] == 1.0 and "time/pre_eval_s" in streamed[0]
    n_keys = len({k for h in streamed for k in h})
    assert n_keys < 60, n_keys  # 3 eval langs × 4 metrics + 24 running means + progress/time

    # the end: long table, report tables and heatmap images
    final = {k: v for h in run.history for k, v in h.items()}
    table = final["tables/summary"]
    assert table["_type"] == "table-file" and table["nrows"] == len(wl.summary_table_rows(info, rows))
    tjson = json.loads((runs[0] / "files" / table["path"]).read_text())
    assert tjson["columns"] == wl.TABLE_COLUMNS
    heatmaps = [k for k in final if k.startswith("report/figures/heatmap_")]
    assert heatmaps and all(final[k]["_type"] == "image-file" for k in heatmaps)
    assert any(k.endswith("_token_acc") for k in heatmaps)
    assert all((runs[0] / "files" / final[k]["path"]).is_file() for k in heatmaps)
    assert final["report/tables/post_reliability_token_acc"]["_type"] == "table-file"
    assert (job / "report" / "report.md").is_file()

    s = run.summary
    assert s["status"] == "finished" and s["cases/ok"] == 3
    assert s["ELFI/reliability_token_acc"] == pytest.approx(2.5 / 3, abs=1e-4)
    assert s["ELFO/reliability_token_acc"] == pytest.approx(1.75 / 6, abs=1e-4)


def test_failure_closes_run_and_next_job_gets_a_new_one(tmp_path):
    job, lines, info, rows = en_job(tmp_path)
    cfg = job_cfg("logger.report=false", "logger.log_every=2", "logger.run_name=first",
                  "logger.group=my_sweep", "logger.auto_tags=false")
    groups = cases(lines)
    with pytest.raises(RuntimeError, match="boom"):
        with build_logger(cfg) as logger:
            logger.start(cfg, job)
            for i, g in enumerate(groups[:3], 1):
                logger.log_lines(g, {"done": i, "total": 4, "failed": 0})
            raise RuntimeError("boom")
    assert wandb.run is None
    logger.close(None)  # idempotent
    logger.finish(job, info, rows)  # after close: ignored
    second = build_logger(job_cfg("logger.report=false", "logger.dir=" + str(tmp_path / "elsewhere")))
    drive(second, job_cfg(), job, lines, info, rows)

    first = read_run(offline_runs(job)[0])
    assert first.exit_code == 1 and first.name == "first" and first.group == "my_sweep" and first.tags == []
    assert first.summary["status"] == "failed" and "RuntimeError: boom" in first.summary["error"]
    # log_every=2: points at 2 cases, then the pending third one flushed by close()
    assert [h["progress/cases_done"] for h in first.history if "progress/cases_done" in h] == [2, 3]
    assert len(offline_runs(job)) == 1  # the second went to logger.dir
    [other] = offline_runs(tmp_path / "elsewhere")
    again = read_run(other)
    # the same job directory: the W&B run continues (same id, resume="allow"), now finished
    assert again.run_id == first.run_id and again.exit_code == 0 and again.summary["status"] == "finished"
    assert not any(k.startswith("report/") for h in again.history for k in h)  # report=false


def test_disabled_mode_writes_nothing(tmp_path):
    job, lines, info, rows = en_job(tmp_path)
    cfg = job_cfg("logger.mode=disabled", "logger.report=false")
    with build_logger(cfg) as logger:
        drive(logger, cfg, job, lines, info, rows)
    assert offline_runs(job) == []


def test_answers_table_rows_list_every_prompt_of_every_line():
    wl = pytest.importorskip("xling_edit.loggers.wandb_logger")
    lines = [{"case_id": "c1", "edit_lang": "en", "eval_lang": "hi",
              "answers": [{"metric": "reliability", "index": 0, "prompt": "p?", "target": "t",
                           "pre": "x", "pre_rung": "none", "post": "t", "post_rung": "exact",
                           "post_script": "Devanagari"},
                          {"metric": "locality", "index": 0, "prompt": "q?", "target": "u",
                           "pre": "u", "pre_rung": "exact", "post": "u", "post_rung": "exact",
                           "post_script": "Latin"}]},
             {"case_id": "c2", "edit_lang": "en", "eval_lang": "hi", "status": "skipped"}]
    rows = wl.answers_table_rows(lines)
    assert len(rows) == 2 and len(rows[0]) == len(wl.ANSWER_COLUMNS)
    assert rows[0][:4] == ["c1", "en", "hi", "reliability"] and rows[0][-3:] == ["t", "exact", "Devanagari"]
