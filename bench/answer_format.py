"""Which answer format suits question prompts? Pre-edit scoring only (no edit).

BMIKE-53 prompts are questions ("Where does Spike Hughes originate from?"). A base model tends to
answer a question with a blank line first, so a teacher-forced score of " <answer>" right after
the "?" partly measures that. This script scores the unedited model on the first N cases of a
BMIKE-53 dataset in every language, once per answer format (``data.answer_format``):

- ``none``: the bare question (the BMIKE-53 default before issue 11);
- ``cue``: each language's own cue (``answer_cue`` in ``conf/edit_lang/<code>.yaml``);
- ``prefix_en``: the English cue " Answer:" in every language (``answer_format=prefix``).

and reports per language and format, with the project's own evaluation code (``build_rows``,
``score_rows``, ``lang_metrics``, ``scorers``):

- ``true exact``: the true answer (target_true, "old") is the argmax at every token;
- ``true tok``: token accuracy of the true answer;
- ``ws first``: share of the distinct prompts of a case (edit prompt, rephrases, locality and
  portability questions) whose first predicted token, right after the prompt (+ cue), is
  whitespace only (e.g. Gemma's "\\n\\n");
- ``loc exact`` / ``port exact``: exact match of the locality / portability true answers
  (``locality.answer_exact`` / ``portability.exact`` pre-edit: other question prompts).

    .venv/bin/python bench/answer_format.py                      # Gemma-3-270M, 20 cases, 7 languages
    .venv/bin/python bench/answer_format.py --model tiny_llama --cases 2 --out /tmp/af.md
"""

from __future__ import annotations

import argparse
import sys
import time
from collections import Counter, defaultdict
from pathlib import Path
from statistics import mean

import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script from anywhere
    sys.path.insert(0, str(ROOT))

from xling_edit.evaluation import scorers  # noqa: E402
from xling_edit.evaluation.evaluate import (  # noqa: E402
    EvalOptions, answer_prefixes, build_rows, lang_metrics, score_rows,
)

FORMATS = {"none": {"answer_format": "none"},
           "cue": {"answer_format": "cue"},
           "prefix_en": {"answer_format": "prefix", "answer_prefix": " Answer:"}}
LANGS = ("en", "de", "fr", "it", "es", "hi", "ta")


def compose(model: str, dataset: str, cases: int, overrides: list[str]):
    from hydra import compose as h_compose, initialize_config_dir

    from xling_edit.configstore import register_configs
    from xling_edit.languages import DEFAULT_CONF_DIR

    register_configs()
    with initialize_config_dir(config_dir=str(DEFAULT_CONF_DIR), version_base="1.3"):
        return h_compose(config_name="config", overrides=[
            f"model={model}", f"data={dataset}", f"data.max_cases={cases}", *overrides])


def is_blank(tok, token_id: int) -> bool:
    """The token decodes to whitespace only (a special token such as <eos> does not)."""
    text = tok.decode([int(token_id)])
    return text != "" and text.strip() == ""


def measure(model, tok, spec, cases, langs, registry, data, opts) -> tuple[dict, Counter]:
    """{lang: {column: mean}} for one format, and the most frequent first predictions."""
    fmt_data = dict(data)
    _, prefixes = answer_prefixes(fmt_data, registry, langs)
    word_seps = {c: registry[c].word_sep for c in langs}
    acc: dict[str, dict[str, list]] = defaultdict(lambda: defaultdict(list))
    firsts: Counter = Counter()
    for case in cases:
        rows, errors = build_rows(case, langs, tok, word_seps, prefixes)
        scores = score_rows(model, tok, spec, rows, opts)
        pre = lang_metrics(rows, scores, None)
        seen = set()
        for r, s in zip(rows, scores):
            if r.kind == "rel" and r.role == "true":
                acc[r.lang]["true exact"].append(scorers.exact_match(s.argmax, s.target_ids))
                acc[r.lang]["true tok"].append(scorers.token_accuracy(s.argmax, s.target_ids))
            if (r.lang, r.kind, r.index) not in seen:  # one first prediction per prompt
                seen.add((r.lang, r.kind, r.index))
                first = int(s.argmax[0])
                acc[r.lang]["ws first"].append(float(is_blank(tok, first)))
                firsts[tok.decode([first])] += 1
        for lang, m in pre.items():
            for col, key in (("loc exact", "locality.answer_exact"), ("port exact", "portability.exact")):
                if m.get(key) is not None:
                    acc[lang][col].append(m[key])
        for lang in errors:
            acc[lang]["tokenisation errors"].append(1.0)
    out = {lang: {col: mean(v) for col, v in cols.items()} | {"n": len(cols.get("true tok", []))}
           for lang, cols in acc.items()}
    return out, firsts


COLS = ("true exact", "true tok", "ws first", "loc exact", "port exact")


def table(results: dict, langs, prefixes_shown: dict) -> str:
    lines = ["| lang | format | appended | n | " + " | ".join(COLS) + " |",
             "|---|---|---|---|" + "---|" * len(COLS)]
    for lang in list(langs) + ["mean"]:
        for fmt, res in results.items():
            if lang == "mean":
                vals = {c: mean(res[l][c] for l in langs if c in res.get(l, {})) for c in COLS}
                n, shown = sum(res[l]["n"] for l in langs if l in res), ""
            else:
                if lang not in res:
                    continue
                vals, n, shown = res[lang], res[lang]["n"], repr(prefixes_shown[fmt][lang])
            lines.append(f"| {lang} | {fmt} | {shown} | {n} | "
                         + " | ".join(f"{vals[c]:.3f}" if c in vals else "–" for c in COLS) + " |")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="gemma3_270m")
    ap.add_argument("--dataset", default="bmike53_counterfact")
    ap.add_argument("--cases", type=int, default=20)
    ap.add_argument("--langs", default=",".join(LANGS))
    ap.add_argument("--formats", default=",".join(FORMATS))
    ap.add_argument("--out", default=None, help="also write the Markdown table here")
    ap.add_argument("--override", action="append", default=[], help="any Hydra override")
    args = ap.parse_args(argv)

    from omegaconf import OmegaConf

    from xling_edit.data import load_dataset
    from xling_edit.languages import DEFAULT_CONF_DIR, PROJECT_ROOT, load_languages
    from xling_edit.models import ModelSpec, load_model

    cfg = compose(args.model, args.dataset, args.cases, args.override)
    if cfg.threads:
        torch.set_num_threads(int(cfg.threads))
    langs = [c for c in args.langs.split(",") if c]
    registry = load_languages(DEFAULT_CONF_DIR)
    t0 = time.perf_counter()
    model, tok = load_model(cfg.model, seed=cfg.seed)
    spec = ModelSpec.from_config(cfg.model.templates)
    t_load = time.perf_counter() - t0
    ds = load_dataset(cfg.data, langs, project_root=PROJECT_ROOT)
    data = {k: v for k, v in OmegaConf.to_container(cfg.data, resolve=True).items()
            if k not in ("answer_format", "answer_prefix")}
    opts = EvalOptions.from_config(cfg.eval)
    results, shown, firsts = {}, {}, {}
    t1 = time.perf_counter()
    for fmt in [f for f in args.formats.split(",") if f]:
        d = {**data, **FORMATS[fmt]}
        shown[fmt] = answer_prefixes(d, registry, langs)[1]
        results[fmt], firsts[fmt] = measure(model, tok, spec, ds.cases, langs, registry, d, opts)
    t_score = time.perf_counter() - t1
    head = (f"# Answer format for question prompts (pre-edit only)\n\n"
            f"`bench/answer_format.py --model {args.model} --dataset {args.dataset} --cases "
            f"{args.cases} --langs {args.langs}`: {len(ds.cases)} cases, model loaded in "
            f"{t_load:.0f} s, scored in {t_score:.0f} s.\n\n"
            "true exact / true tok: exact match / token accuracy of the true answer (target_true) "
            "after the edit prompt; ws first: share of a case's distinct prompts whose first "
            "predicted token is whitespace only; loc exact / port exact: exact match of the "
            "locality / portability true answers.\n")
    body = table(results, langs, shown)
    tops = "\n".join(f"- {fmt}: " + ", ".join(f"{t!r} {n}" for t, n in c.most_common(6))
                     for fmt, c in firsts.items())
    text = f"{head}\n{body}\n\nMost frequent first predictions (all languages):\n\n{tops}\n"
    print(text)
    if args.out:
        Path(args.out).write_text(text, encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
