"""A hand-made results set for the report tests (no model involved).

2 edit languages (en, de) × 3 evaluation languages (en, de, hi) × 3 ok cases, with hand-chosen
post-edit ``reliability.token_acc`` values (REL below), plus two cases that must NOT count:
``c4`` (edit en) skipped because its subject was not found, and ``c5`` (edit de) failed, whose
lines deliberately carry post-edit values of 0.

Hand-computed aggregates of post reliability.token_acc (ok lines only):

    edit en: en 2.5/3 = 0.8333   de 1.5/3 = 0.5   hi 0.25/3 = 0.0833
             ELFI 0.8333   ELFO (0+1+.5+0+0+.25)/6 = 0.291667
    edit de: en 0.5 (all equal)   de 1.0 (all equal)   hi 1.5/3 = 0.5
             ELFI 1.0   ELFO (.5*3 + 0+.5+1)/6 = 0.5
"""

from __future__ import annotations

import json
from pathlib import Path

EDIT_LANGS = ("en", "de")
EVAL_LANGS = ("en", "de", "hi")
CASES = ("c1", "c2", "c3")

# REL[edit][eval] = post reliability.token_acc of c1, c2, c3
REL = {
    "en": {"en": (1.0, 1.0, 0.5), "de": (0.0, 1.0, 0.5), "hi": (0.0, 0.0, 0.25)},
    "de": {"en": (0.5, 0.5, 0.5), "de": (1.0, 1.0, 1.0), "hi": (0.0, 0.5, 1.0)},
}
EXPECTED = {  # post reliability.token_acc
    ("en", "en"): 2.5 / 3, ("en", "de"): 0.5, ("en", "hi"): 0.25 / 3,
    ("en", "ELFI"): 2.5 / 3, ("en", "ELFO"): 1.75 / 6,
    ("de", "en"): 0.5, ("de", "de"): 1.0, ("de", "hi"): 0.5,
    ("de", "ELFI"): 1.0, ("de", "ELFO"): 0.5,
}
PRE_REL = 0.25  # every ok line's pre-edit reliability.token_acc
TARGET_TOKENS = {"en": 1, "de": 2, "hi": 4}
SUBJECT = {"en": (2, 1), "de": (3, 1), "hi": (6, 2)}  # (tokens, words)
LOCALISATION = {"en": {"c1": "exact", "c2": "fuzzy", "c3": "translit"},
                "de": {"c1": "exact", "c2": "exact", "c3": "exact"}}
MODEL, METHOD, DATASET, MERGE = "tiny_llama", "rome", "builtin", "none"
# surface form shared with the edit language (Latin-script en/de share "Berlin"; hi does not)
SHARED = {"en": True, "de": True, "hi": False}


# locality per line: pre-edit the true answer beats target_new (prob 1.0) and is half right;
# post-edit agreement with the pre-edit argmax is LOC_AGREE, prob LOC_PROB_POST (drop 1 - it)
LOC_AGREE, LOC_PROB_POST = 0.75, 0.5


def metrics(rel: float, phase: str, legacy: bool = False) -> dict:
    """A line's metrics. ``legacy``: as written before locality's agreement metrics were renamed
    (``locality.token_acc`` / ``exact``, no pre-edit locality)."""
    d = {"reliability.token_acc": rel, "reliability.exact": float(rel == 1.0),
         "reliability.prob": float(rel >= 0.5),
         "generalization.token_acc": rel, "generalization.exact": float(rel == 1.0),
         "generalization.prob": float(rel >= 0.5),
         "locality.agree_token": None, "locality.agree_exact": None,
         "locality.answer_token_acc": 0.5, "locality.answer_exact": 0.0, "locality.prob": 1.0,
         "locality.prob_drop": None,
         "portability.token_acc": 0.5, "portability.exact": 0.0, "portability.prob": None,
         "reliability.nll_new": 3.0, "reliability.nll_true": 2.0}
    if phase == "post":
        d.update({"locality.agree_token": LOC_AGREE, "locality.agree_exact": 0.0,
                  "locality.prob": LOC_PROB_POST, "locality.prob_drop": 1.0 - LOC_PROB_POST})
    if legacy:
        for k in ("locality.answer_token_acc", "locality.answer_exact", "locality.prob_drop"):
            del d[k]
        d["locality.token_acc"] = d.pop("locality.agree_token")
        d["locality.exact"] = d.pop("locality.agree_exact")
        if phase == "pre":
            d["locality.prob"] = None
    return d


def _line(edit: str, case: str, ev: str, status: str = "ok", reason=None, rel=None, subject=None,
          legacy: bool = False):
    return {
        "model": MODEL, "method": METHOD, "dataset": DATASET, "merge": MERGE, "edit_lang": edit,
        "case_id": case, "eval_lang": ev, "elfi": ev == edit, "status": status, "reason": reason,
        "pre": metrics(PRE_REL, "pre", legacy),
        "post": metrics(rel, "post", legacy) if rel is not None else None,
        "target_new": "Berlin" if SHARED[ev] else "बर्लिन",
        "shared_surface": SHARED[ev] and SHARED[edit],
        "target_new_tokens": TARGET_TOKENS[ev],
        "subject_tokens": SUBJECT[ev][0], "subject_words": SUBJECT[ev][1],
        "subject": subject, "edit": {"method": METHOD}, "timings": {"pre_eval_s": 0.1},
    }


def fixture_lines(legacy: bool = False) -> list[dict]:
    """The fixture's lines; ``legacy``: with the metric names of older results files."""
    lines = []
    for edit in EDIT_LANGS:
        for i, case in enumerate(CASES):
            subj = {"start": 0, "end": 5, "method": LOCALISATION[edit][case], "score": 1.0,
                    "matched": "Paris"}
            for ev in EVAL_LANGS:
                lines.append(_line(edit, case, ev, rel=REL[edit][ev][i], subject=subj, legacy=legacy))
    for ev in EVAL_LANGS:  # must not count
        lines.append(_line("en", "c4", ev, status="skipped",
                           reason="subject 'Xyz' not found in prompt 'The capital is'", legacy=legacy))
        failed = _line("de", "c5", ev, status="failed", reason="RuntimeError: boom", rel=0.0,
                       legacy=legacy)
        lines.append(failed)
    return lines


def write_run(directory: Path, lines: list[dict], edit_lang: str, info: bool = True) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    with open(directory / "results.jsonl", "w", encoding="utf-8") as f:
        for l in lines:
            f.write(json.dumps(l, ensure_ascii=False) + "\n")
    if info:
        names = {"en": "English", "de": "German", "hi": "Hindi"}
        run_info = {
            "model": MODEL, "method": METHOD, "dataset": DATASET, "merge": MERGE,
            "edit_lang": edit_lang, "eval_langs": list(EVAL_LANGS),
            "n_cases": len({l["case_id"] for l in lines}), "case_status": {},
            "subject_localisation": {}, "missing_languages": {}, "dataset_notes": [],
            "covariance": "identity", "seconds": {"load": 0.1, "total": 1.0},
            "config": {"model": {"name": MODEL, "cache_dir": f"/tmp/{edit_lang}"},
                       "method": {"name": METHOD, "layer": 0},
                       "edit_lang": {"code": edit_lang, "name": names[edit_lang]},
                       "data": {"name": DATASET, "max_cases": 3}, "merge": {"name": MERGE},
                       "seed": 0, "threads": 2},
        }
        (directory / "run_info.json").write_text(json.dumps(run_info, indent=2))
    return directory


def write_multirun(root: Path) -> Path:
    """A Hydra-like sweep folder: ``root/0_tiny_llama_rome_en`` and ``root/1_tiny_llama_rome_de``."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "multirun.yaml").write_text("hydra: {}\n")
    lines = fixture_lines()
    for i, edit in enumerate(EDIT_LANGS):
        write_run(root / f"{i}_{MODEL}_{METHOD}_{edit}", [l for l in lines if l["edit_lang"] == edit],
                  edit)
    return root
