"""How well ``method=route``'s router finds an English subject in translated prompts.

On BMIKE-53 CounterFact (every row of ``--rows``), for each language the router looks for the
case's **English** subject in the language's edit prompt (``src``), and in another case's prompt
(row + 517, a negative). Gold: the translated subject as it occurs verbatim in the translated
prompt (rows where it does not are counted apart, as unlabelled). Reported per language:

- recall: share of gold rows where the router found a span overlapping the gold span;
- precision: share of the router's matches (own and other prompts) that are right: on the own
  prompt a span overlapping the gold span, never on another case's prompt;
- matches on the unlabelled rows (the subject is inflected or respelled in the prompt);
- ``locality_routed``: share of the case's own locality prompts (``loc``: a neighbouring
  subject, often of the same brand or family: "Honda Silver Wing" for "Honda Insight") that the
  router routes; each one is an unrelated question that gets the fact (English: the ``en``
  side of the rows).

    .venv/bin/python bench/router_spans.py [--rows 0-1030] [--langs de hi ta] [--json OUT]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
DATA = ROOT.parent / "shared" / "data" / "bmike53" / "counterfact"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rows", default="0-1030")
    ap.add_argument("--langs", nargs="+", default=["en", "de", "hi", "ta"])
    ap.add_argument("--data", default=str(DATA))
    ap.add_argument("--threshold", type=float, default=None)
    ap.add_argument("--json", default=None)
    ap.add_argument("--no-partial", action="store_true", help="whole subjects only (partial=false)")
    a = ap.parse_args(argv)
    from xling_edit.editing.route import RouteConfig, Router

    hp = RouteConfig(partial=not a.no_partial)
    if a.threshold is not None:
        hp.threshold = a.threshold
    thr = hp.threshold

    def find_name(prompt, subject, lang):
        """The router's own decision (whole subject, then its distinctive words)."""
        r = Router(subject, "x", hp)
        r(lang, prompt)
        d = r.decisions[-1]
        if d["span"] is None:
            return None
        from xling_edit.evaluation.matching import NameSpan

        start = prompt.find(d["span"])
        return NameSpan(start, start + len(d["span"]), d["span"], d["score"])
    lo, hi = (int(x) for x in a.rows.split("-"))
    out = {"threshold": thr, "partial": hp.partial, "rows": a.rows, "langs": {}}
    t0 = time.perf_counter()
    for lang in a.langs:
        file = "de" if lang == "en" else lang  # every file holds the English side
        recs = json.loads((Path(a.data) / f"counterfact_test_{file}.json").read_text(encoding="utf-8"))
        n = len(recs)
        gold = tp_own = fp_own = miss = unl = unl_match = fp_other = loc = loc_routed = 0
        examples = {"missed": [], "wrong_span": [], "false_other": [], "locality_routed": []}
        for r in range(lo, min(hi, n - 1) + 1):
            rec = recs[r]
            if lang not in rec or "en" not in rec:
                continue
            subj = rec["en"]["subject"]
            loc += 1
            s_loc = find_name(rec[lang]["loc"], subj, lang)
            if s_loc is not None:
                loc_routed += 1
                if len(examples["locality_routed"]) < 15:
                    examples["locality_routed"].append((subj, s_loc.text))
            if lang == "en":
                continue
            prompt = rec[lang]["src"]
            span = find_name(prompt, subj, lang)
            g0 = prompt.find(rec[lang]["subject"])
            if g0 < 0:
                unl += 1
                unl_match += span is not None
            else:
                gold += 1
                g1 = g0 + len(rec[lang]["subject"])
                if span is None:
                    miss += 1
                    if len(examples["missed"]) < 15:
                        examples["missed"].append((subj, rec[lang]["subject"]))
                elif span.start < g1 and span.end > g0:
                    tp_own += 1
                else:
                    fp_own += 1
                    if len(examples["wrong_span"]) < 10:
                        examples["wrong_span"].append((subj, span.text, rec[lang]["subject"]))
            other = recs[(r + 517) % n]
            if lang in other and other["en"]["subject"].lower() != subj.lower():
                s2 = find_name(other[lang]["src"], subj, lang)
                if s2 is not None:
                    fp_other += 1
                    if len(examples["false_other"]) < 10:
                        examples["false_other"].append((subj, s2.text))
        matches = tp_own + fp_own + fp_other
        res = {"gold_rows": gold, "recall": tp_own / gold if gold else None,
               "precision": tp_own / matches if matches else None,
               "false_on_other_prompts": fp_other, "wrong_span_own": fp_own,
               "unlabelled_rows": unl, "unlabelled_matched": unl_match,
               "locality_routed": loc_routed / loc if loc else None, "examples": examples}
        out["langs"][lang] = res
        if lang == "en":
            print(f"en: locality prompts routed {res['locality_routed']:.3f} ({loc_routed}/{loc})", flush=True)
            continue
        print(f"{lang}: recall {res['recall']:.3f} ({tp_own}/{gold}), precision {res['precision']:.3f} "
              f"({fp_own} wrong spans, {fp_other} matches in other cases' prompts), unlabelled rows "
              f"{unl} of which matched {unl_match}; locality prompts routed "
              f"{res['locality_routed']:.3f} ({loc_routed}/{loc})", flush=True)
    out["seconds"] = round(time.perf_counter() - t0, 1)
    if a.json:
        Path(a.json).write_text(json.dumps(out, ensure_ascii=False, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
