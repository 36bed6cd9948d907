"""Resume bookkeeping on hand-made files: torn lines, shards, incomplete groups, fingerprints."""

import json

from omegaconf import OmegaConf

from xling_edit import resume


def line(case, lang, group=None, edit="en"):
    l = {"case_id": case, "edit_lang": edit, "eval_lang": lang, "status": "ok"}
    if group is not None:
        l["group"] = group
    return l


def write(path, lines, tail=""):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(l) + "\n" for l in lines) + tail)


def test_repair_drops_torn_tail_and_incomplete_case(tmp_path):
    good = [line("a", "en"), line("a", "de"), line("b", "en")]  # b lacks its de line
    write(tmp_path / "results.jsonl", good, tail='{"case_id": "b", "edit_la')
    kept = resume.repair(tmp_path, per_case=2)
    assert kept == good[:2]
    assert resume.read_lines(tmp_path / "results.jsonl") == (good[:2], False)


def test_repair_merges_unforwarded_shard_lines_once(tmp_path):
    write(tmp_path / "results.jsonl", [line("a", "en"), line("a", "de"), line("c", "en"), line("c", "de")])
    # rank 1 finished c (already forwarded) and d (not yet); its file ends mid-line
    write(tmp_path / ".shards" / "rank1.jsonl", [line("c", "en"), line("c", "de"), line("d", "en"),
                                                 line("d", "de")], tail='{"case')
    kept = resume.repair(tmp_path, per_case=2)
    assert [(l["case_id"], l["eval_lang"]) for l in kept] == [
        ("a", "en"), ("a", "de"), ("c", "en"), ("c", "de"), ("d", "en"), ("d", "de")]
    assert not (tmp_path / ".shards").exists()


def test_an_incomplete_case_drops_its_whole_batch(tmp_path):
    lines = [line("a", "en", 0), line("a", "de", 0), line("b", "en", 0),  # b incomplete -> group 0 out
             line("c", "en", 1), line("c", "de", 1)]
    assert resume.complete_units(lines, per_case=2) == lines[3:]


def test_shard_tail_returns_only_complete_new_lines(tmp_path):
    p = tmp_path / "s.jsonl"
    t = resume.ShardTail(p)
    assert t.new_lines() == []
    write(p, [line("a", "en")], tail='{"case_id": "b"')
    assert t.new_lines() == [line("a", "en")]
    assert t.new_lines() == []
    with open(p, "a") as f:
        f.write(', "edit_lang": "en", "eval_lang": "de", "status": "ok"}\n')
    assert t.new_lines() == [line("b", "de")]


def test_fingerprint_ignores_how_a_job_runs_not_what_it_computes():
    base = OmegaConf.create({"seed": 0, "runner": {"devices": 1}, "logger": {"name": "none"},
                             "resume": False, "threads": None, "data": {"name": "x", "max_cases": 5}})
    fp = resume.fingerprint(base)
    same = OmegaConf.merge(base, {"runner": {"devices": 4}, "logger": {"name": "wandb"}, "resume": True,
                                  "threads": 2, "data": {"max_cases": 50}})
    assert resume.fingerprint(same) == fp
    assert resume.fingerprint(OmegaConf.merge(base, {"seed": 1})) != fp


def test_find_previous_takes_the_newest_matching_job(tmp_path):
    import os
    import time

    def job(path, fp, t):
        path.mkdir(parents=True)
        (path / "job.json").write_text(json.dumps({"fingerprint": fp}))
        os.utime(path / "job.json", (t, t))

    now = time.time()
    job(tmp_path / "d1" / "t1_x", "aaa", now - 100)
    job(tmp_path / "d1" / "t2_x", "aaa", now - 10)
    job(tmp_path / "d2" / "t3_x", "bbb", now)
    job(tmp_path / "d2" / "sweep" / "0_x", "aaa", now - 50)
    assert resume.find_previous([tmp_path], "aaa") == (tmp_path / "d1" / "t2_x").resolve()
    assert resume.find_previous([tmp_path], "aaa", exclude=tmp_path / "d1" / "t2_x") == \
        (tmp_path / "d2" / "sweep" / "0_x").resolve()
    assert resume.find_previous([tmp_path], "ccc") is None
