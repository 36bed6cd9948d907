"""Judge a finished run's generated answers again, without the model.

The answers a run generated are stored in its lines (``answers``: prompt, expected answer, the
pre- and post-edit texts). When the match cascade changes, the verdicts can be recomputed from
them: this rebuilds each case's prompts from the run's own config (``.hydra/config.yaml``), so
every answer gets back its ``also`` forms, judges the texts with the current
:func:`~xling_edit.evaluation.matching.match_answer`, and rewrites the generated-answer keys of
``pre`` / ``post`` and the rungs in ``answers``. Teacher-forced keys are left as they are.

    python -m xling_edit.evaluation.rejudge JOB_DIR [JOB_DIR ...]   # writes results.rejudged.jsonl

The report reads ``results.jsonl``; pass ``--in-place`` to replace it (the original is kept as
``results.jsonl.orig``).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

from xling_edit.evaluation.answers import answer_prompts, gen_metrics, judge
from xling_edit.evaluation.generate import Generated


def rejudge_lines(lines: list[dict], cases: dict, scripts: dict, prefixes: dict) -> int:
    """Rejudge ``lines`` in place (``cases``: case id -> EditCase; ``scripts``: lang -> script;
    ``prefixes``: lang -> answer cue). Returns how many answers changed rung."""
    changed = 0
    by_case: dict[str, list[dict]] = {}
    for line in lines:
        if line.get("answers"):
            by_case.setdefault(str(line["case_id"]), []).append(line)
    for cid, group in by_case.items():
        case = cases.get(cid)
        if case is None:
            continue
        langs = [l["eval_lang"] for l in group]
        edit = str(group[0]["edit_lang"])
        prompts = answer_prompts(case, langs, edit if edit in case.langs else "en", prefixes)
        records = [a for l in group for a in l["answers"]]
        if len(records) != len(prompts):
            raise ValueError(f"case {cid}: {len(records)} stored answers, {len(prompts)} prompts")
        judged = {}
        for phase in ("pre", "post"):
            if not all(phase in a for a in records):
                continue
            gens = [Generated(a[phase], a[phase], 0, "stored") for a in records]
            judged[phase] = judge(prompts, gens)
            for a, j in zip(records, judged[phase]):
                changed += a.get(f"{phase}_rung") != j["rung"]
                a[f"{phase}_rung"], a[f"{phase}_script"] = j["rung"], j["script"]
                if "true_rung" in j:
                    a[f"{phase}_true_rung"] = j["true_rung"]
        for phase, j in judged.items():
            metrics = gen_metrics(prompts, j, scripts, judged.get("pre") if phase == "post" else None)
            for line in group:
                if line.get(phase) is not None:
                    line[phase].update(metrics.get(line["eval_lang"], {}))
    return changed


def rejudge_dir(job: Path, in_place: bool = False) -> tuple[Path, int]:
    from omegaconf import OmegaConf

    from xling_edit.data import load_dataset
    from xling_edit.evaluation.evaluate import answer_prefixes
    from xling_edit.languages import PROJECT_ROOT, load_languages

    cfg = OmegaConf.load(job / ".hydra" / "config.yaml")
    lines = [json.loads(l) for l in (job / "results.jsonl").read_text(encoding="utf-8").splitlines() if l]
    langs = list(dict.fromkeys(l["eval_lang"] for l in lines))
    registry = load_languages()
    ds = load_dataset(cfg.data, langs, project_root=PROJECT_ROOT, report=False)
    _, prefixes = answer_prefixes(cfg.data, registry, langs)
    n = rejudge_lines(lines, {c.case_id: c for c in ds.cases},
                      {l: str(registry[l].script) for l in langs}, prefixes)
    text = "".join(json.dumps(l, ensure_ascii=False) + "\n" for l in lines)
    if in_place:
        shutil.copyfile(job / "results.jsonl", job / "results.jsonl.orig")
        out = job / "results.jsonl"
    else:
        out = job / "results.rejudged.jsonl"
    out.write_text(text, encoding="utf-8")
    return out, n


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m xling_edit.evaluation.rejudge", description=__doc__.split("\n")[0])
    ap.add_argument("jobs", nargs="+", type=Path)
    ap.add_argument("--in-place", action="store_true")
    a = ap.parse_args(argv)
    for job in a.jobs:
        out, n = rejudge_dir(job, a.in_place)
        print(f"{job}: {n} answer(s) changed rung -> {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
