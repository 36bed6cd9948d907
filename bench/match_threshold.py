"""The match cascade on the committed cross-script fixture: recall, precision, and the
romanised rung's threshold.

``tests/fixtures/cross_script_pairs.json`` (built by ``bench/cross_script_pairs.py`` from
BMIKE-53's parallel targets) pairs each case's English target with its own Hindi / Tamil /
German target (positives) and with another case's target (negatives). Here the English string
plays the model's answer and the native target the expected answer, as when a model answers a
Hindi question in Latin script: ``match_answer(answer=en, target=other, lang)``.

For thresholds of the ``romanized`` rung (rapidfuzz ratio, 0-100), per language: precision on
the negatives (1 - share matched at any rung), recall on all positives, and recall on the
hand-labelled transliterations (``tests/fixtures/cross_script_labels.json``, kind ``translit``),
plus the rung each positive matched at for the configured threshold.

    .venv/bin/python bench/match_threshold.py            # table + chosen threshold
    .venv/bin/python bench/match_threshold.py --json out.json
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
FIXTURE = ROOT / "tests" / "fixtures" / "cross_script_pairs.json"
LABELS = ROOT / "tests" / "fixtures" / "cross_script_labels.json"


def evaluate(threshold: float, items, labels) -> dict:
    from xling_edit.evaluation import matching as M

    old = M.ROMANIZED_THRESHOLD
    M.ROMANIZED_THRESHOLD = threshold
    try:
        out = {}
        for lang in sorted({i["lang"] for i in items}):
            pos = [i for i in items if i["lang"] == lang and i["label"] == 1]
            neg = [i for i in items if i["lang"] == lang and i["label"] == 0]
            rung = lambda i: M.match_answer(i["en"], i["other"], lang)  # noqa: E731
            pos_r = [rung(i) for i in pos]
            neg_r = [rung(i) for i in neg]
            tl = [l for l in labels if l["lang"] == lang and l["kind"] == "translit"]
            tl_r = [M.match_answer(l["en"], l["other"], lang) for l in tl]
            out[lang] = {
                "positives": len(pos), "negatives": len(neg),
                "precision_negatives": 1 - sum(r != "none" for r in neg_r) / len(neg),
                "false_rungs": dict(Counter(r for r in neg_r if r != "none")),
                "recall_all": sum(r != "none" for r in pos_r) / len(pos),
                "recall_translit": (sum(r != "none" for r in tl_r) / len(tl)) if tl else None,
                "translit_labelled": len(tl),
                "rungs_positives": dict(Counter(pos_r)),
                "missed_translit": [(l["en"], l["other"]) for l, r in zip(tl, tl_r) if r == "none"],
            }
        return out
    finally:
        M.ROMANIZED_THRESHOLD = old


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--thresholds", default="70,75,80,85,90,95")
    ap.add_argument("--json", default=None)
    a = ap.parse_args(argv)
    items = json.loads(FIXTURE.read_text(encoding="utf-8"))["items"]
    labels = json.loads(LABELS.read_text(encoding="utf-8"))["labels"]
    res = {}
    print(f"{'thr':>4} {'lang':>4} {'prec_neg':>8} {'rec_all':>8} {'rec_translit':>12}  false rungs")
    for t in [float(x) for x in a.thresholds.split(",")]:
        res[t] = evaluate(t, items, labels)
        for lang, r in res[t].items():
            rt = "-" if r["recall_translit"] is None else f"{r['recall_translit']:.3f}"
            print(f"{t:>4.0f} {lang:>4} {r['precision_negatives']:>8.3f} {r['recall_all']:>8.3f} "
                  f"{rt:>12}  {r['false_rungs']}")
    from xling_edit.evaluation.matching import ROMANIZED_THRESHOLD

    cur = evaluate(ROMANIZED_THRESHOLD, items, labels)
    print(f"\nconfigured threshold {ROMANIZED_THRESHOLD:.0f}: rungs of the positives and missed transliterations")
    for lang, r in cur.items():
        print(f"  {lang}: {r['rungs_positives']}")
        if r["missed_translit"]:
            print(f"     missed ({len(r['missed_translit'])}): {r['missed_translit'][:25]}")
    if a.json:
        Path(a.json).write_text(json.dumps({"thresholds": res, "configured": cur}, ensure_ascii=False, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
