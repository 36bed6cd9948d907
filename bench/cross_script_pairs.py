"""Cross-script answer pairs from BMIKE-53 CounterFact: the fixture behind a transliteration matcher.

An edit's target is written in English (``Philadelphia``) but the answer a model gives in Hindi
or Tamil is written in another script (``फिलाडेल्फिया``, ``பிலடெல்பியா``); a matcher that decides
whether two such strings name the same entity needs pairs that do (positives) and pairs that do
not (negatives), taken from real, human-independent data rather than invented by its author.
BMIKE-53's files are row-aligned across languages, so row ``r``'s English ``alt`` (new target)
and its Hindi ``alt`` name the same entity, and likewise ``old`` (true target).

For each language (``hi``, ``ta``, and ``de`` as a Latin-script control) this builds:

- positives: for each row ``r`` with both halves, ``(en alt, <lang> alt)`` and ``(en old,
  <lang> old)``; identical ``(lang, en, other)`` pairs are kept once (the first by row, ``alt``
  before ``old``).
- negatives, one per positive: the positive's English target with the ``<lang>`` target (same
  field) of another row, the first of rows ``(r + 517) % n``, ``(r + 518) % n``, ... that has the
  language's half and names a genuinely different entity: its English target differs from the
  positive's (case-insensitively), its ``<lang>`` target differs from the positive's, the pair
  is not a positive anywhere in the file (all 1,031 rows: ``English`` is ``अंग्रेजी`` in one row
  and ``अंग्रेज़ी`` in another), and the pair has not been emitted already.

Each item: ``{"lang", "row", "field", "en", "other", "other_row", "label"}`` where ``row`` is
the English target's row and ``other_row`` the row the ``other`` string comes from (equal for
positives), ``label`` 1 for a positive and 0 for a negative. Items are sorted by ``(lang, row,
field, -label)`` and written one per line so diffs stay readable. All rows are used unless the
output would exceed ~600 KB, in which case rows ``0..399`` are used (``n`` is then 400, so the
negatives come from the same rows). ``--rows`` forces a row count.

    python bench/cross_script_pairs.py                  # writes tests/fixtures/cross_script_pairs.json
    python bench/cross_script_pairs.py --data DIR --out PATH

The hand-labelled sample ``tests/fixtures/cross_script_labels.json`` (transliteration /
translation / mixed / same, by reading the scripts) refers to positives of this fixture;
``tests/unit/test_cross_script_fixture.py`` checks that the committed fixture is what this
script builds. Standard library only.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA = ROOT.parent / "shared" / "data" / "bmike53" / "counterfact"
DEFAULT_OUT = ROOT / "tests" / "fixtures" / "cross_script_pairs.json"
LANGS = ("hi", "ta", "de")
FIELDS = ("alt", "old")
OFFSET = 517
MAX_BYTES = 600_000
FALLBACK_ROWS = 400
SOURCE = ("BMIKE-53 CounterFact (ercong21/MultiKnow data/BMIKE53/CounterFact, commit "
          "6e3e245bf0a17edaecfb4d71664efc1b5fb67906), counterfact_test_{lang}.json")


def load(data: Path, lang: str) -> list[dict]:
    return json.loads((data / f"counterfact_test_{lang}.json").read_text(encoding="utf-8"))


def sort_key(item: dict) -> tuple:
    """The fixture's order: language, row, field (alt before old), positive before negative."""
    return item["lang"], item["row"], item["field"], -item["label"]


def pairs(records: list[dict], lang: str, rows: int | None = None) -> list[dict]:
    """Positives and negatives of one language from its row-aligned records, rows ``0..rows-1``
    (all when ``rows`` is None), sorted."""
    n = len(records) if rows is None else min(rows, len(records))
    has = [lang in rec and "en" in rec for rec in records]
    # Every positive pair of the whole file: a negative must never be one of them.
    known = {(rec["en"][f].casefold(), rec[lang][f]) for rec, ok in zip(records, has) if ok for f in FIELDS}

    positives, seen = [], set()
    for r in range(n):
        if not has[r]:
            continue
        for f in FIELDS:
            key = (records[r]["en"][f], records[r][lang][f])
            if key not in seen:
                seen.add(key)
                positives.append({"lang": lang, "row": r, "field": f, "en": key[0], "other": key[1],
                                  "other_row": r, "label": 1})

    negatives, emitted = [], set()
    for p in positives:
        r, f = p["row"], p["field"]
        for k in range(n):
            c = (r + OFFSET + k) % n
            if c == r or not has[c]:
                continue
            en_c, other_c = records[c]["en"][f], records[c][lang][f]
            if (en_c.casefold() == p["en"].casefold() or other_c.casefold() == p["other"].casefold()
                    or (p["en"].casefold(), other_c) in known or (p["en"], other_c) in emitted):
                continue
            emitted.add((p["en"], other_c))
            negatives.append({**p, "other": other_c, "other_row": c, "label": 0})
            break
        else:
            raise ValueError(f"{lang} row {r} {f}: no different entity to pair with")
    return sorted(positives + negatives, key=sort_key)


def render(items: list[dict], rows: int) -> str:
    """The fixture's text: a header, then one item per line."""
    head = {"source": SOURCE, "built_by": "bench/cross_script_pairs.py", "rows": rows,
            "langs": list(LANGS), "offset": OFFSET}
    lines = [json.dumps(it, ensure_ascii=False, sort_keys=True) for it in items]
    meta = json.dumps(head, ensure_ascii=False, sort_keys=True)[1:-1]
    return "{" + meta + ',\n "items": [\n' + ",\n".join(lines) + "\n]}\n"


def build(data: Path = DEFAULT_DATA, rows: int | None = None) -> str:
    """The fixture's text from the data folder: all rows unless that exceeds ``MAX_BYTES``
    (then the first ``FALLBACK_ROWS``), or exactly ``rows`` when given."""
    records = {lang: load(data, lang) for lang in LANGS}
    total = len(records[LANGS[0]])
    if any(len(recs) != total for recs in records.values()):
        raise ValueError("the language files are not row-aligned (different lengths)")
    for lang, recs in records.items():
        for r, rec in enumerate(recs):
            if lang in rec and rec[lang]["case_id"] != rec["en"]["case_id"]:
                raise ValueError(f"{lang} row {r}: case_id {rec[lang]['case_id']} != {rec['en']['case_id']}")
    candidates = [rows] if rows is not None else [total, FALLBACK_ROWS]
    for n in candidates:
        items = sorted((it for lang in LANGS for it in pairs(records[lang], lang, n)), key=sort_key)
        text = render(items, min(n, total))
        if rows is not None or len(text.encode("utf-8")) <= MAX_BYTES:
            return text
    return text


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA, help="folder of counterfact_test_{lang}.json")
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT)
    ap.add_argument("--rows", type=int, default=None, help="use rows 0..ROWS-1 (default: all, or 400 if too big)")
    args = ap.parse_args(argv)
    text = build(args.data, args.rows)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text, encoding="utf-8")
    doc = json.loads(text)
    counts = {}
    for it in doc["items"]:
        key = (it["lang"], "pos" if it["label"] else "neg")
        counts[key] = counts.get(key, 0) + 1
    print(f"{args.out}: rows 0..{doc['rows'] - 1}, {len(text.encode('utf-8'))} bytes", file=sys.stderr)
    for lang in LANGS:
        print(f"  {lang}: {counts.get((lang, 'pos'), 0)} positives, {counts.get((lang, 'neg'), 0)} negatives",
              file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
