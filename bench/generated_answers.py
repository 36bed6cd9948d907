"""Generated answers before any edit: the token cap, the matcher's precision, the knowledge ceiling.

For BMIKE-53 CounterFact rows ``--rows`` (default 0-99) in ``--langs`` (default en de hi ta), the
unedited model (default Gemma-3-270M) answers every scored prompt (reliability, generalization,
locality, portability) greedily with a generous cap (``--cap``, default 48 tokens). From those
answers the script reports, per language:

- **the cap**: how many tokens the answers take before their natural stop (EOS, newline, the
  language's ``sentence_end``), and the share of answers a cap of 8/16/24/32 would cut;
- **precision of the match cascade**: the share of edit-prompt and paraphrase answers that match
  the *counterfactual* target (``target_new``), per rung, with the answers cut at ``--use-cap``
  (default: the configured ``eval.max_new_tokens``). No model says the counterfactual before the
  edit, so every match is a false positive; the issue asks for at most 2 % per rung;
- **the knowledge ceiling**: the share of edit-prompt answers that state the *true* target;
- script fidelity and language confusion (answers in another script), and empty answers.

    .venv/bin/python bench/generated_answers.py                  # prints, writes bench/results/
    .venv/bin/python bench/generated_answers.py --rows 0-19 --langs en hi

The JSON (every answer, its rung against target_new and target_true) goes to
``bench/results/generated-<model>-<date>.json``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="gemma3_270m")
    ap.add_argument("--rows", default="0-99")
    ap.add_argument("--langs", nargs="+", default=["en", "de", "hi", "ta"])
    ap.add_argument("--cap", type=int, default=48)
    ap.add_argument("--use-cap", type=int, default=None)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default=str(ROOT / "bench" / "results"))
    ap.add_argument("--rejudge", default=None, metavar="JSON",
                    help="no model: judge the answers of an earlier run's JSON again with the "
                         "current matcher and print/write its summary")
    a = ap.parse_args(argv)
    if a.rejudge:
        return rejudge(Path(a.rejudge), a)
    lo, hi = (int(x) for x in a.rows.split("-"))

    import torch

    from bench.edit_bench import compose
    from xling_edit.data import load_dataset
    from xling_edit.evaluation import answers as A
    from xling_edit.evaluation.evaluate import answer_prefixes
    from xling_edit.evaluation.generate import cut_answer
    from xling_edit.evaluation.matching import SUCCESS_RUNGS, answer_script, match_answer
    from xling_edit.languages import PROJECT_ROOT, load_languages
    from xling_edit.models import load_model

    torch.set_num_threads(a.threads)
    cfg = compose(a.model, ["data=bmike53_counterfact", f"data.max_cases={hi + 1}",
                            f"eval_langs=[{','.join(a.langs)}]", f"eval.max_new_tokens={a.cap}"])
    use_cap = a.use_cap or 24
    reg = load_languages()
    ds = load_dataset(cfg.data, list(a.langs), project_root=PROJECT_ROOT)
    cases = ds.cases[lo: hi + 1]
    _, prefixes = answer_prefixes(cfg.data, reg, list(a.langs))
    t0 = time.perf_counter()
    model, tok = load_model(cfg.model, seed=cfg.seed)
    print(f"loaded {a.model} in {time.perf_counter() - t0:.0f}s; {len(cases)} cases", flush=True)
    records, t_gen = [], 0.0
    for n, case in enumerate(cases):
        prompts = A.answer_prompts(case, list(a.langs), "en", prefixes)
        t = time.perf_counter()
        gens = A.generate_for(model, tok, prompts, reg, cfg.eval)
        t_gen += time.perf_counter() - t
        for p, g in zip(prompts, gens):
            stops = tuple(reg[p.lang].sentence_end)
            short = cut_answer(tok.decode(list(g.tokens[:use_cap]), skip_special_tokens=True), stops)[0] \
                if g.n_tokens > use_cap else g.text
            rec = case.langs[p.lang]
            records.append({"case_id": case.case_id, "lang": p.lang, "kind": p.kind, "prompt": p.prompt,
                            "also": list(p.also),
                            "answer": g.text, "answer_at_cap": short, "n_tokens": g.n_tokens, "stop": g.stop,
                            "target_new": rec.target_new, "target_true": rec.target_true,
                            "new_rung": match_answer(short, rec.target_new, p.lang, p.also)
                            if p.kind in ("rel", "gen") else None,
                            "true_rung": match_answer(short, rec.target_true, p.lang)
                            if p.kind == "rel" and rec.target_true else None,
                            "target_rung": match_answer(short, p.target, p.lang, p.also),
                            "script": answer_script(short)})
        if (n + 1) % 10 == 0:
            print(f"  {n + 1}/{len(cases)} cases, {t_gen / (n + 1):.2f}s generation per case", flush=True)
    summary = summarise(records, a.langs, reg)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"generated-{a.model}-{time.strftime('%Y%m%d-%H%M%S')}.json"
    path.write_text(json.dumps({"args": vars(a), "use_cap": use_cap, "seconds_generation": round(t_gen, 1),
                                "per_case_s": round(t_gen / max(1, len(cases)), 3),
                                "summary": summary, "answers": records}, ensure_ascii=False, indent=1))
    print("wrote", path)
    return 0


def rejudge(path: Path, a) -> int:
    """Judge the answers stored in ``path`` again (matcher changes need no model)."""
    from xling_edit.evaluation.matching import answer_script, match_answer
    from xling_edit.languages import load_languages

    data = json.loads(path.read_text(encoding="utf-8"))
    reg = load_languages()
    for r in data["answers"]:
        short = r["answer_at_cap"]
        also = tuple(r.get("also") or ())
        if r["new_rung"] is not None:
            r["new_rung"] = match_answer(short, r["target_new"], r["lang"], also)
        if r["true_rung"] is not None:
            r["true_rung"] = match_answer(short, r["target_true"], r["lang"])
        r["script"] = answer_script(short)
    langs = list(dict.fromkeys(r["lang"] for r in data["answers"]))
    data["summary"] = summarise(data["answers"], langs, reg)
    data["rejudged"] = time.strftime("%Y-%m-%d %H:%M:%S")
    out = path.with_name(path.stem + "-rejudged.json")
    out.write_text(json.dumps(data, ensure_ascii=False, indent=1))
    print("wrote", out)
    return 0


def summarise(records, langs, reg) -> dict:
    """Per language: stops, the cap's cuts, false matches of target_new by rung (precision),
    the true target's share (knowledge), script fidelity / other script / empty."""
    from xling_edit.evaluation.matching import SUCCESS_RUNGS

    summary = {}
    for lang in langs:
        rs = [r for r in records if r["lang"] == lang]
        natural = [r["n_tokens"] for r in rs if r["stop"] != "cap"]
        newr = [r for r in rs if r["new_rung"] is not None]
        rel = [r for r in rs if r["true_rung"] is not None]
        s = {"answers": len(rs),
             "stops": dict(Counter(r["stop"] for r in rs)),
             "cut_by_cap": {c: round(sum(r["n_tokens"] > c or r["stop"] == "cap" for r in rs) / len(rs), 4)
                            for c in (8, 16, 24, 32)},
             "median_tokens_natural": sorted(natural)[len(natural) // 2] if natural else None,
             "precision_false_match_new": {k: round(sum(r["new_rung"] == k for r in newr) / len(newr), 4)
                                           for k in SUCCESS_RUNGS},
             "false_match_new_any": round(sum(r["new_rung"] != "none" for r in newr) / len(newr), 4),
             "knows_true": round(sum(r["true_rung"] != "none" for r in rel) / max(1, len(rel)), 4),
             "knows_true_rungs": dict(Counter(r["true_rung"] for r in rel)),
             "script_fidelity": round(sum(r["script"] == reg[lang].script for r in rs) / len(rs), 4),
             "other_script": round(sum(r["script"] not in (None, reg[lang].script) for r in rs) / len(rs), 4),
             "empty": round(sum(r["script"] is None for r in rs) / len(rs), 4)}
        summary[lang] = s
        print(lang, json.dumps(s, ensure_ascii=False))
    return summary


if __name__ == "__main__":
    raise SystemExit(main())
