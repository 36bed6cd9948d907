"""A run against a peer's per-case results: the same cases, case by case, per (language, metric).

Reads a job directory's ``results.jsonl`` (this project) and a reference CSV with the columns
``case_id, eval_lang, phase, reliability, generalization, locality, portability`` (the files in
``../shared/data/reference/``: EasyEdit's ROME and LoRA on Gemma-3-270M), pairs the lines by
(case, language, phase) and compares the means over the cases both hold. The project's metric
read for each reference column is EasyEdit's protocol: teacher-forced token accuracy with
partial credit (``<metric>.token_acc``) and, for locality, the share of the answer's argmax
tokens the edit left unchanged (``locality.agree_token``). Prints a table (our mean, the peer's,
the difference, whether it is within ``--tolerance``, the largest per-case difference, the share
of cases that agree exactly) and writes it as JSON.

    .venv/bin/python bench/peer_check.py /work/runs/lora_peer \\
        --reference ../shared/data/reference/easyedit_lora_gemma3_270m_bmike53_cf_en_rows0-19.csv
    .venv/bin/python bench/peer_check.py JOB --out bench/results/peer_lora.json --tolerance 0.15

Pre-edit cells compare the unedited model's scores: with the same weights they should agree
exactly (a check of the metric protocol), so a gap there is a tokenisation or metric difference,
not an editing one.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from xling_edit.aggregate import ok_lines, value_of  # noqa: E402
from xling_edit.report.load import load_run  # noqa: E402
from xling_edit.report.maths import PHASES  # noqa: E402

#: reference column -> this project's metric key (EasyEdit's protocol)
METRICS = {"reliability": "reliability.token_acc", "generalization": "generalization.token_acc",
           "locality": "locality.agree_token", "portability": "portability.token_acc"}
#: two scores "agree" case by case when they differ by at most this
SAME = 1e-6


def read_reference(path: Path) -> dict[tuple[str, str, str], dict[str, float | None]]:
    """{(case_id, eval_lang, phase): {metric: score or None}} from a reference CSV."""
    out = {}
    with open(path, newline="", encoding="utf-8") as fh:
        for row in csv.DictReader(fh):
            key = (str(row["case_id"]), row["eval_lang"], row["phase"])
            out[key] = {m: value_of(row.get(m)) for m in METRICS}
    return out


def job_scores(lines) -> dict[tuple[str, str, str], dict[str, float | None]]:
    """The same structure from a job's results lines (:func:`xling_edit.report.load.load_run`;
    lines with status ok)."""
    out = {}
    for line in ok_lines(lines):
        for phase in PHASES:
            scores = line.get(phase)
            if isinstance(scores, dict):
                out[(str(line["case_id"]), line["eval_lang"], phase)] = {
                    m: value_of(scores.get(key)) for m, key in METRICS.items()}
    return out


def compare(ours: dict, ref: dict, tolerance: float) -> list[dict]:
    """One cell per (eval language, metric, phase) over the cases both hold a score for: the
    two means, their difference (ours − peer), whether it is within ``tolerance``, the largest
    per-case absolute difference and the share of cases that agree (within 1e-6)."""
    cells: dict[tuple[str, str, str], list[tuple[float, float]]] = {}
    for key in sorted(set(ours) & set(ref)):
        case, lang, phase = key
        for m in METRICS:
            a, b = ours[key][m], ref[key][m]
            if a is not None and b is not None:
                cells.setdefault((lang, m, phase), []).append((a, b))
    out = []
    for (lang, m, phase), pairs in cells.items():
        n = len(pairs)
        mo, mr = sum(a for a, _ in pairs) / n, sum(b for _, b in pairs) / n
        diffs = [abs(a - b) for a, b in pairs]
        out.append({"eval_lang": lang, "metric": m, "phase": phase, "n": n,
                    "ours": round(mo, 4), "peer": round(mr, 4), "diff": round(mo - mr, 4),
                    "within_tolerance": abs(mo - mr) <= tolerance + 1e-12,
                    "max_case_diff": round(max(diffs), 4),
                    "cases_agree": round(sum(d <= SAME for d in diffs) / n, 4)})
    order = {m: i for i, m in enumerate(METRICS)}
    langs = sorted({c["eval_lang"] for c in out}, key=lambda l: (l != "en", l))
    out.sort(key=lambda c: (PHASES.index(c["phase"]), langs.index(c["eval_lang"]), order[c["metric"]]))
    return out


def table(cells: list[dict]) -> str:
    """The cells as a fixed-width text table."""
    head = f"{'phase':5} {'lang':4} {'metric':15} {'n':>3} {'ours':>6} {'peer':>6} {'diff':>6} " \
           f"{'ok':>3} {'max|d|':>6} {'agree':>6}"
    rows = [head]
    for c in cells:
        rows.append(f"{c['phase']:5} {c['eval_lang']:4} {c['metric']:15} {c['n']:>3} {c['ours']:>6.2f} "
                    f"{c['peer']:>6.2f} {c['diff']:>+6.2f} {'yes' if c['within_tolerance'] else 'NO':>3} "
                    f"{c['max_case_diff']:>6.2f} {c['cases_agree']:>6.2f}")
    return "\n".join(rows)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("job", type=Path, help="a job directory (holds results.jsonl)")
    ap.add_argument("--reference", type=Path, default=ROOT.parent / "shared" / "data" / "reference" /
                    "easyedit_lora_gemma3_270m_bmike53_cf_en_rows0-19.csv",
                    help="the peer's per-case CSV (default: EasyEdit's LoRA on Gemma-3-270M)")
    ap.add_argument("--tolerance", type=float, default=0.15,
                    help="largest difference of means counted as agreement (default 0.15)")
    ap.add_argument("--out", type=Path, default=None,
                    help="JSON file (default bench/results/peer_<job folder name>.json)")
    args = ap.parse_args(argv)
    if not (args.job / "results.jsonl").is_file():
        ap.error(f"{args.job}: no results.jsonl (not a job directory?)")
    if not args.reference.is_file():
        ap.error(f"--reference {args.reference}: no such file")
    run = load_run(args.job)
    ours, ref = job_scores(run.lines), read_reference(args.reference)
    cases = sorted({k[0] for k in ours} & {k[0] for k in ref})
    if not cases:
        ap.error(f"{args.job} and {args.reference} share no case")
    cells = compare(ours, ref, args.tolerance)
    print(f"{args.job} vs {args.reference.name}: {len(cases)} shared cases, tolerance {args.tolerance}")
    print(table(cells))
    post = [c for c in cells if c["phase"] == "post"]
    print(f"post-edit means within {args.tolerance}: {sum(c['within_tolerance'] for c in post)} of {len(post)}")
    info = {}
    if run.info:
        run_info = run.info
        cfg = run_info.get("config") or {}
        info = {"method": cfg.get("method"), "model": (cfg.get("model") or {}).get("name"),
                "setup_deviations": run_info.get("setup_deviations"),
                "published_reference": run_info.get("published_reference")}
    out = args.out or ROOT / "bench" / "results" / f"peer_{args.job.resolve().name}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"job": str(args.job), "reference": args.reference.name,
                               "cases": cases, "tolerance": args.tolerance,
                               "metrics": METRICS, "run": info, "cells": cells},
                              indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
