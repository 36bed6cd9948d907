"""Old vs new subject localisation (``xling_edit/editing/localize.py``) on all of BMIKE-53.

Runs both matchers on every BMIKE-53 CounterFact record in all 7 languages (the ``en`` half from
the German file, and each language's own half of its file) and prints, per language, how many
subjects each method found (exact / normalized / fuzzy / translit / none) old vs new, then every
record whose span changed as (lang, row, case_id, old span, new span). The old matcher is
``git show <rev>:xling_edit/editing/localize.py``, imported from a temporary file; the new one
is the working tree's.

    .venv/bin/python bench/localize_diff.py                       # vs the commit before the rewrite
    .venv/bin/python bench/localize_diff.py --old HEAD~3 --negative-control
    .venv/bin/python bench/localize_diff.py --data /path/to/shared/data

``--fixture`` (on by default) also scores both, per language, on the hand-labelled fixtures
(tests/fixtures/localize_bmike53.json; tests/fixtures/localize_bn_mr.json, Bengali and Marathi
with their ``morphology`` registered from their language files; scoring from
tests/unit/test_localize.py; the new matcher is told each record's language);
``--negative-control`` counts matches of each subject in other cases' prompts (all wrong).

``--fallbacks`` instead measures the language-independent fallback (``find_subject(...,
fallback=)``, ``method.subject_fallback``) against the declared suffix rules, in the working
tree only, per language: precision and recall on both fixtures, matches in other cases'
prompts (BMIKE-53 shifts as above, and every mismatched bn/mr pair), English words derived
from a subject (tests/fixtures/localize_derived_en.json: demonyms), and the localisations of
the full BMIKE-53 files that change, for four settings: ``rules`` (each language's
``morphology``, no fallback: the default), ``none`` (morphology removed, no fallback),
``span`` (morphology removed, the fallback alone) and ``rules+span``. German declension stays
in code under every setting. Written to ``--json`` (bench/results/localize_fallback.json).

    .venv/bin/python bench/localize_diff.py --fallbacks
"""

from __future__ import annotations

import argparse
import collections
import importlib.util
import inspect
import json
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# The commit before the per-word matcher: the old matcher's last version.
OLD_REV = "8f5a23973645db221839682d3b9749c371b34aea"
LANGS = ("en", "de", "fr", "it", "es", "hi", "ta")
METHODS = ("exact", "normalized", "fuzzy", "translit", "none")
# Languages without a BMIKE-53 file, scored on a hand-written fixture with their language files
INLINE_FIXTURE = "tests/fixtures/localize_bn_mr.json"
# English words derived from a subject (demonyms): every match is wrong
DERIVED_FIXTURE = "tests/fixtures/localize_derived_en.json"
NEW_LANGS = {"bn": "conf/edit_lang/_template.yaml.example",
             "mr": "tests/fixtures/edit_lang/mr.yaml"}


def load_module(path: Path, name: str):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def old_matcher(rev: str, tmp: Path):
    source = subprocess.run(["git", "show", f"{rev}:xling_edit/editing/localize.py"], cwd=ROOT,
                            check=True, capture_output=True, text=True).stdout
    path = tmp / "localize_old.py"
    path.write_text(source, encoding="utf-8")
    return load_module(path, "localize_old")


def halves(data: Path):
    """(lang, row, record half) of every record: en from the German file, then each language."""
    for lang in LANGS:
        file_lang = "de" if lang == "en" else lang
        rows = json.loads((data / "bmike53" / "counterfact" / f"counterfact_test_{file_lang}.json")
                          .read_text(encoding="utf-8"))
        for i, row in enumerate(rows):
            if lang in row:
                yield lang, i, row[lang], rows


def show(m, prompt: str) -> str:
    return "None" if m is None else f"{m.method} {prompt[m.start:m.end]!r}"


def compare(old, new, data: Path, out) -> None:
    counts = {lang: (collections.Counter(), collections.Counter()) for lang in LANGS}
    changed = []
    for lang, i, half, _ in halves(data):
        prompt, subject = half["src"], half["subject"]
        a, b = old.find_subject(prompt, subject), new.find_subject(prompt, subject)
        counts[lang][0][getattr(a, "method", "none")] += 1
        counts[lang][1][getattr(b, "method", "none")] += 1
        if (a and (a.start, a.end)) != (b and (b.start, b.end)):
            changed.append((lang, i, half["case_id"], show(a, prompt), show(b, prompt)))
    print("Subjects found per method, old -> new:", file=out)
    header = "  ".join(f"{m:>15}" for m in METHODS)
    print(f"{'lang':<5} {'records':>7}  {header}  {'changed':>7}", file=out)
    by_lang = collections.Counter(c[0] for c in changed)
    for lang in LANGS:
        o, n = counts[lang]
        cells = "  ".join(f"{f'{o[m]} -> {n[m]}':>15}" for m in METHODS)
        print(f"{lang:<5} {sum(o.values()):>7}  {cells}  {by_lang[lang]:>7}", file=out)
    print(f"\n{len(changed)} localisations changed (lang, row, case_id, old span, new span):",
          file=out)
    for lang, i, case_id, a, b in changed:
        print(f"{lang}\t{i}\t{case_id}\t{a}\t{b}", file=out)


def register_new_languages() -> None:
    """Bengali (the language template's values) and Marathi (tests/fixtures/edit_lang/mr.yaml)
    registered as the pipeline registers a composed language: their ``morphology`` only."""
    from omegaconf import OmegaConf

    from xling_edit.evaluation.matching import set_morphology

    for code, path in NEW_LANGS.items():
        set_morphology(code, OmegaConf.to_container(OmegaConf.load(ROOT / path)).get("morphology"))


def matcher(module):
    """``(prompt, subject, lang) -> match``: the language named where the module takes it."""
    if "lang" in inspect.signature(module.find_subject).parameters:
        return lambda prompt, subject, lang: module.find_subject(prompt, subject, lang=lang)
    return lambda prompt, subject, lang: module.find_subject(prompt, subject)


def fixture(old, new, data: Path, out) -> None:
    from test_localize import fixture_cases, scores  # the test's own scoring
    from test_localize_yaml import cases as bn_mr_cases

    register_new_languages()
    sets = [("tests/fixtures/localize_bmike53.json", fixture_cases(data)),
            (f"{INLINE_FIXTURE} (bn, mr: rules from their YAML)", bn_mr_cases())]
    print("\nHand-labelled fixtures, precision and recall per language:", file=out)
    for name, cases in sets:
        got = {label: scores(cases, m) for label, m in (("old", matcher(old)),
                                                       ("new", matcher(new)))}
        print(f"{name}:", file=out)
        for lang in [*got["old"]["by_lang"], "all"]:
            cells = []
            for label in ("old", "new"):
                s = got[label] if lang == "all" else got[label]["by_lang"][lang]
                cells.append(f"{label}: precision {s['precision']:.3f} ({s['correct']}/"
                             f"{s['returned']}), recall {s['recall']:.3f} ({s['correct']}/"
                             f"{s['present']})")
            n = got["old"]["n"] if lang == "all" else got["old"]["by_lang"][lang]["n"]
            print(f"  {lang:<4} {n:>3} records   " + "   ".join(cells), file=out)


def negative_control(old, new, data: Path, out, shifts=(1, 7, 31, 101)) -> None:
    """Each subject against other cases' prompts that do not name the same entity."""
    print(f"\nNegative control: subjects matched in other cases' prompts (shifts {shifts}):",
          file=out)
    for lang, ps in negative_pairs(data, shifts).items():
        found = collections.Counter()
        for prompt, subject in ps:
            for name, module in (("old", old), ("new", new)):
                found[name] += module.find_subject(prompt, subject) is not None
        print(f"{lang}: old {found['old']}, new {found['new']} of {len(ps)} pairs", file=out)


def negative_pairs(data: Path, shifts=(1, 7, 31, 101)) -> dict[str, list[tuple[str, str]]]:
    """{lang: [(another case's prompt, subject), ...]}: each case's subject against the prompts
    of the cases ``shifts`` rows on, skipping those that name the same entity (same English
    subject, the English subject in the English prompt, or the subject in the prompt)."""
    by_lang = collections.defaultdict(list)
    for lang, i, half, rows in halves(data):
        by_lang[lang].append((i, rows))
    pairs = collections.defaultdict(list)
    for lang in LANGS:
        idx = by_lang[lang]
        rows = idx[0][1]
        for a, (i, _) in enumerate(idx):
            subject, en = rows[i][lang]["subject"], rows[i]["en"]["subject"]
            for k in shifts:
                j = idx[(a + k) % len(idx)][0]
                if en == rows[j]["en"]["subject"] or en.lower() in rows[j]["en"]["src"].lower() \
                        or subject in rows[j][lang]["src"]:
                    continue
                pairs[lang].append((rows[j][lang]["src"], subject))
    return pairs


# setting -> (use the language's morphology?, fallback)
FALLBACK_SETTINGS = {"rules": (True, "none"), "none": (False, "none"), "span": (False, "span"),
                     "rules+span": (True, "span")}


def setting_matcher(name: str):
    """``(prompt, subject, lang) -> match`` of a :data:`FALLBACK_SETTINGS` setting."""
    from xling_edit.editing.localize import find_subject
    from xling_edit.evaluation.matching import Morphology

    rules, fallback = FALLBACK_SETTINGS[name]
    return lambda prompt, subject, lang: find_subject(
        prompt, subject, lang=lang if rules else Morphology(), fallback=fallback)


def _cell(s: dict) -> dict:
    keys = ("n", "returned", "correct", "present", "precision", "recall")
    out = {k: s[k] for k in keys}
    out["wrong"] = [list(w) for w in s["wrong"]]
    return out


def fallback_fixtures(data: Path) -> dict:
    """{fixture: {setting: {lang | "all": scores}}} on both hand-labelled fixtures."""
    from test_localize import fixture_cases, scores
    from test_localize_yaml import cases as bn_mr_cases

    sets = {"tests/fixtures/localize_bmike53.json": fixture_cases(data), INLINE_FIXTURE: bn_mr_cases()}
    out = {}
    for name, cases in sets.items():
        out[name] = {}
        for setting in FALLBACK_SETTINGS:
            s = scores(cases, setting_matcher(setting))
            out[name][setting] = {**{lang: _cell(t) for lang, t in s["by_lang"].items()},
                                  "all": _cell(s)}
    return out


def fallback_negatives(data: Path, shifts=(1, 7, 31, 101)) -> dict:
    """{setting: {lang: [matched, pairs]}}: BMIKE-53 subjects in other cases' prompts (as
    :func:`negative_control`, each language's rules named) and every bn/mr subject in the
    other bn/mr records' prompts that do not name it (as tests/unit/test_localize_yaml.py)."""
    matchers = {setting: setting_matcher(setting) for setting in FALLBACK_SETTINGS}
    out = {setting: {} for setting in FALLBACK_SETTINGS}
    from test_localize_yaml import negative_pairs as bn_mr_pairs

    pairs = negative_pairs(data, shifts)  # lang -> [(prompt, subject)]
    for prompt, subject, lang in bn_mr_pairs():
        pairs[lang].append((prompt, subject))
    for setting, m in matchers.items():
        for lang, ps in pairs.items():
            out[setting][lang] = [sum(m(p, s, lang) is not None for p, s in ps), len(ps)]
    return out


def fallback_derived() -> dict:
    """{setting: [matched, records]} on the English derived words (:data:`DERIVED_FIXTURE`)."""
    records = json.loads((ROOT / DERIVED_FIXTURE).read_text(encoding="utf-8"))["records"]
    out = {}
    for setting in FALLBACK_SETTINGS:
        m = setting_matcher(setting)
        out[setting] = [sum(m(r["prompt"], r["subject"], r["lang"]) is not None for r in records),
                        len(records)]
    return out


def fallback_changes(data: Path) -> dict:
    """{lang: [[row, case_id, subject, span found by rules, span by rules+span]]}: the full
    BMIKE-53 files' localisations that the fallback changes."""
    rules, both = setting_matcher("rules"), setting_matcher("rules+span")
    out = {lang: [] for lang in LANGS}
    for lang, i, half, _ in halves(data):
        prompt, subject = half["src"], half["subject"]
        a, b = rules(prompt, subject, lang), both(prompt, subject, lang)
        if (a and (a.start, a.end)) != (b and (b.start, b.end)):
            out[lang].append([i, half["case_id"], subject, show(a, prompt), show(b, prompt)])
    return out


def _pr(c: dict) -> str:
    return f"{c['precision']:.2f} {c['recall']:.2f} ({c['correct']}/{c['returned']}/{c['present']})"


def fallback_report(data: Path, json_path: Path, out) -> None:
    register_new_languages()
    res = {"settings": {k: {"morphology": r, "fallback": f}
                        for k, (r, f) in FALLBACK_SETTINGS.items()},
           "fixtures": fallback_fixtures(data), "negative_control": fallback_negatives(data),
           "derived_words_en": fallback_derived(),
           "bmike53_changed_by_fallback": fallback_changes(data)}
    print("Precision / recall per language (correct/returned, correct/present):", file=out)
    for fixture_name, by_setting in res["fixtures"].items():
        print(f"{fixture_name}:", file=out)
        print(f"  {'lang':<5}" + "".join(f"{k:>26}" for k in FALLBACK_SETTINGS), file=out)
        for lang in by_setting["rules"]:
            cells = "".join(f"{_pr(c[lang]):>26}" for c in by_setting.values())
            print(f"  {lang:<5}{cells}", file=out)
    print("\nNegative control: matched / mismatched pairs:", file=out)
    neg = res["negative_control"]
    for lang in neg["rules"]:
        print(f"  {lang:<5}" + "".join(f"{f'{k} {v[lang][0]}/{v[lang][1]}':>22}" for k, v in neg.items()),
              file=out)
    print(f"\n{DERIVED_FIXTURE} (all wrong), matched / records:  " + "  ".join(
        f"{k} {v[0]}/{v[1]}" for k, v in res["derived_words_en"].items()), file=out)
    print("\nBMIKE-53 localisations changed by the fallback (rules -> rules+span):", file=out)
    for lang, rows in res["bmike53_changed_by_fallback"].items():
        for row in rows:
            print(f"  {lang}\t" + "\t".join(map(str, row)), file=out)
    json_path.write_text(json.dumps(res, ensure_ascii=False, indent=1) + "\n", encoding="utf-8")
    print(f"\nwritten: {json_path}", file=out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--old", default=OLD_REV, help="git revision of the old matcher")
    ap.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data")
    ap.add_argument("--no-fixture", dest="fixture", action="store_false")
    ap.add_argument("--negative-control", action="store_true")
    ap.add_argument("--fallbacks", action="store_true",
                    help="measure the fallback against the suffix rules (module docstring)")
    ap.add_argument("--json", type=Path, default=ROOT / "bench" / "results" / "localize_fallback.json",
                    help="where --fallbacks writes its measurements")
    args = ap.parse_args()
    sys.path.insert(0, str(ROOT))
    sys.path.insert(0, str(ROOT / "tests" / "unit"))  # the tests' own fixtures and scoring
    if args.fallbacks:
        fallback_report(args.data, args.json, sys.stdout)
        return
    from xling_edit.editing import localize as new

    with tempfile.TemporaryDirectory() as tmp:
        old = old_matcher(args.old, Path(tmp))
        print(f"old: {args.old}:xling_edit/editing/localize.py   new: working tree\n")
        compare(old, new, args.data, sys.stdout)
        if args.fixture:
            fixture(old, new, args.data, sys.stdout)
        if args.negative_control:
            negative_control(old, new, args.data, sys.stdout)


if __name__ == "__main__":
    main()
