"""Covariance text from BMIKE-53 records that are not evaluated (``stats.corpus=files``).

The measurement behind docs/methods.md's "Covariance: size or domain": per language, each held-out
record's edit question with its true answer, its paraphrase, its locality question with its
answer and its portability question with its answer, grouped into documents of at most
``--doc-tokens`` tokens (so ``stats.max_length`` truncates nothing). Records before ``--skip``
are left out, and so is any sentence whose question equals a field of one of them (in any
language): the evaluated cases' prompts never enter C. English comes from the German file's
``en`` halves. Writes ``OUT/full/<lang>.txt`` and ``OUT/tenth/<lang>.txt`` (each language's
first tenth), one document per line, and prints the token counts.

    .venv/bin/python bench/heldout_corpus.py /tmp/heldout            # Gemma-3-270M's tokenizer
    python run.py method=rome data=bmike53_counterfact edit_lang=en data.max_cases=20 \\
        eval_langs=[en,de,hi,ta] stats.corpus=files \\
        "stats.files=[/tmp/heldout/full/en.txt,/tmp/heldout/full/de.txt,...]"

Evaluate only cases below ``--skip`` (``data.max_cases`` ≤ skip) with such statistics.
"""

from __future__ import annotations

import argparse
import functools
import json
from pathlib import Path

LANGS = ("de", "fr", "it", "es", "hi", "ta")
FIELDS = ("src", "rephrase", "loc", "port", "subject")


def sentences(half: dict, banned: set[str]) -> list[str]:
    """A record half's held-out sentences: questions with their answers, none of them (nor its
    question) among ``banned``."""
    out = [f"{half['src']} {half['old']}", half.get("rephrase") or "",
           f"{half['loc']} {half['loc_ans']}", f"{half['port']} {half['port_ans']}" if half.get("port") else ""]
    keep = []
    for s in (x.strip() for x in out):
        if s and s not in banned and s.split("?")[0].strip() + "?" not in banned:
            keep.append(s)
    return keep


def group(sents: list[str], n_tokens, cap: int) -> list[str]:
    """Consecutive sentences joined into documents of at most ``cap`` tokens."""
    docs, cur, n = [], [], 0
    for s in sents:
        k = n_tokens(s) + 1
        if cur and n + k > cap:
            docs.append(" ".join(cur))
            cur, n = [], 0
        cur.append(s)
        n += k
    return docs + ([" ".join(cur)] if cur else [])


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("out", type=Path)
    ap.add_argument("--data", default=None,
                    help="the data root (default: data.root, i.e. $XLING_EDIT_DATA or ../shared/data)")
    ap.add_argument("--skip", type=int, default=100, help="records 0..skip-1 are left out")
    ap.add_argument("--doc-tokens", type=int, default=120)
    ap.add_argument("--model", default="gemma3_270m", help="whose tokenizer counts the tokens")
    args = ap.parse_args(argv)

    from bench.edit_bench import compose
    from xling_edit.data.loaders import resolve_path
    from xling_edit.languages import PROJECT_ROOT
    from xling_edit.models import load_model

    cfg = compose(args.model, ["data=bmike53_counterfact"])
    src = resolve_path(args.data or cfg.data.root, cfg.data.dir, project_root=PROJECT_ROOT)
    data = {l: json.loads((src / cfg.data.pattern.format(lang=l)).read_text(encoding="utf-8"))
            for l in LANGS}
    banned = {half[k].strip() for l in LANGS for rec in data[l][:args.skip]
              for half in rec.values() for k in FIELDS if half.get(k)}
    per = {l: [s for rec in data[l][args.skip:] if l in rec for s in sentences(rec[l], banned)] for l in LANGS}
    per["en"] = [s for rec in data["de"][args.skip:] for s in sentences(rec["en"], banned)]
    _, tok = load_model(cfg.model)

    @functools.cache  # the tenth re-groups the same sentences
    def n_tokens(s: str) -> int:
        return len(tok(s, add_special_tokens=False).input_ids)

    for sub, frac in (("full", 1.0), ("tenth", 0.1)):
        (args.out / sub).mkdir(parents=True, exist_ok=True)
        total = 0
        for lang, sents in per.items():
            docs = group(sents[: int(len(sents) * frac)], n_tokens, args.doc_tokens)
            (args.out / sub / f"{lang}.txt").write_text("\n".join(docs) + "\n", encoding="utf-8")
            n = sum(len(tok(d).input_ids) for d in docs)
            total += n
            print(f"{sub} {lang}: {len(docs)} documents, {n} tokens")
        print(f"{sub}: {total} tokens in all")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
