"""How many steps the value optimisation takes from each start (``method.v_init``).

Runs only the value optimisation (ROME's ``compute_v`` / MEMIT's ``compute_z``, the method's
own settings from the composed config, per-model values included) on the first N cases of a
dataset, edited in one language, once per ``v_init`` variant, the variants interleaved per case
(their order rotated from case to case) so that a busy CPU slows them alike. Prints, per
variant:

- ``steps``: forwards of the loop on every prompt (``edit.steps``; the last only measures);
- ``init fwd``: forwards outside it (``edit.init_forwards``: ``bare``'s warm-up on the bare
  prompt and the KL prompt, 2 rows, with gradient);
- ``fwd total``: their sum (a warm-up forward costs far less than a full one: see ``s/case``);
- ``s/case``: wall time of the optimisation (tokenisation and context prefixes excluded);
- ``NLL``, ``loss``: mean target NLL and total loss at the last forward; ``stop``: cases whose
  total loss ended below ``v_loss_stop``;
- ``cos``, ``rel``: cosine and relative distance |δ - δ_zero| / |δ_zero| between the variant's
  delta and the published start's (the rank-one update is proportional to delta).

    .venv/bin/python bench/value_init.py                              # Gemma-3-270M, ROME, 10 cases
    .venv/bin/python bench/value_init.py --cases 3 --variants zero,bare
    .venv/bin/python bench/value_init.py --model tiny_llama --dataset builtin --cases 2
    .venv/bin/python bench/value_init.py --method memit --json /tmp/v.json --override threads=2
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from statistics import mean, median

import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script from anywhere
    sys.path.insert(0, str(ROOT))


def compose(args):
    """The run's config for this model, dataset, method and edit language (plus overrides)."""
    from bench.edit_bench import compose as bench_compose

    return bench_compose(args.model, [
        f"data={args.dataset}", f"method={args.method}", f"edit_lang={args.lang}",
        f"data.max_cases={args.start + args.cases}", *args.override])


def run_case(model, spec, layer: int, prep, opts: dict, variants: list[str], turn: int) -> dict:
    from xling_edit.editing.value import optimise_value

    out = {}
    order = variants[turn % len(variants):] + variants[:turn % len(variants)]
    for v in order:
        t0 = time.perf_counter()
        res = optimise_value(model, spec, layer, prep, **{**opts, "init": v})
        out[v] = {"seconds": time.perf_counter() - t0, "steps": res.steps,
                  "init_forwards": res.init_forwards,
                  "nll": res.trajectory[-1], "loss": res.loss_trajectory[-1],
                  "loss_trajectory": [round(x, 4) for x in res.loss_trajectory],
                  "init_losses": [round(x, 4) for x in res.init_losses],
                  "delta": res.delta, "delta_rel": float(res.delta.norm() / res.v0.norm())}
    ref = out.get("zero", {}).get("delta")
    for v, r in out.items():
        d = r.pop("delta")
        if ref is not None:
            r["cos"] = float(torch.nn.functional.cosine_similarity(d, ref, dim=0))
            r["rel"] = float((d - ref).norm() / ref.norm().clamp_min(1e-12))
    return {v: out[v] for v in variants}


def table(rows: list[dict], variants: list[str], loss_stop: float) -> str:
    head = ("| v_init | cases | steps mean | steps median | init fwd mean | fwd total mean | "
            "s/case mean | s/case median | NLL mean | loss mean | stop | cos mean (min) | rel mean |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for v in variants:
        rs = [r[v] for r in rows]
        steps = [r["steps"] for r in rs]
        secs = [r["seconds"] for r in rs]
        cos = [r["cos"] for r in rs if "cos" in r]
        rel = [r["rel"] for r in rs if "rel" in r]
        lines.append(
            f"| {v} | {len(rs)} | {mean(steps):.1f} | {median(steps):g} | "
            f"{mean(r['init_forwards'] for r in rs):.1f} | "
            f"{mean(r['steps'] + r['init_forwards'] for r in rs):.1f} | {mean(secs):.1f} | "
            f"{median(secs):.1f} | {mean(r['nll'] for r in rs):.4f} | {mean(r['loss'] for r in rs):.4f} | "
            f"{sum(r['loss'] < loss_stop for r in rs)}/{len(rs)} | "
            + (f"{mean(cos):.3f} ({min(cos):.3f}) | {mean(rel):.3f} |" if cos else "– | – |"))
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="gemma3_270m")
    ap.add_argument("--dataset", default="bmike53_counterfact")
    ap.add_argument("--method", default="rome", help="rome, memit, alphaedit, rome_fast")
    ap.add_argument("--lang", default="en", help="edit language")
    ap.add_argument("--cases", type=int, default=10)
    ap.add_argument("--start", type=int, default=0, help="skip the first N cases")
    ap.add_argument("--variants", default="zero,bare")
    ap.add_argument("--json", default=None, help="write every case's figures here")
    ap.add_argument("--override", action="append", default=[], help="any Hydra override")
    args = ap.parse_args(argv)

    from xling_edit.data import load_dataset
    from xling_edit.editing.base import EditRequest, SkipCase, build_editor
    from xling_edit.editing.value import V_INITS, prepare, value_options
    from xling_edit.evaluation.evaluate import answer_prefixes
    from xling_edit.evaluation.forward import model_device
    from xling_edit.languages import DEFAULT_CONF_DIR, PROJECT_ROOT, load_languages
    from xling_edit.models import ModelSpec, load_model
    from xling_edit.pipeline import method_config

    variants = [v for v in args.variants.split(",") if v]
    unknown = [v for v in variants if v not in V_INITS]
    if unknown:
        ap.error(f"unknown variants {unknown}; one of {list(V_INITS)}")
    cfg = compose(args)
    if cfg.threads:
        torch.set_num_threads(int(cfg.threads))
    hp = method_config(cfg)
    registry = load_languages(DEFAULT_CONF_DIR)
    lang = registry[args.lang]
    model, tok = load_model(cfg.model, seed=cfg.seed)
    spec = ModelSpec.from_config(cfg.model.templates)
    ds = load_dataset(cfg.data, [args.lang], project_root=PROJECT_ROOT)
    _, prefixes = answer_prefixes(cfg.data, registry, [args.lang])
    editor = build_editor(hp.name, hparams=hp, spec=spec, seed=cfg.seed, covariance=None)
    ehp = editor.hp
    if hasattr(ehp, "layers"):
        layer, space = max(int(l) for l in ehp.layers), ehp.z_space
    else:
        layer, space = int(ehp.layer), "mlp_out"
    opts = value_options(ehp, space)
    ctx = editor.prefixes(model, tok, lang)
    print(f"{args.model} | {hp.name} (variant {ehp.variant}) layer {layer}, space {space}, "
          f"{len(ctx)} prompts + KL | steps {opts['steps']}, lr {opts['lr']}, stop "
          f"{opts['loss_stop']}, clamp {opts['clamp_norm_factor']} | threads "
          f"{torch.get_num_threads()} | load {os.getloadavg()[0]:.2f}", flush=True)
    rows = []
    t_all = time.perf_counter()
    for case in ds.cases[args.start:args.start + args.cases]:
        rec = case.langs.get(args.lang)
        if rec is None:
            continue
        req = EditRequest(case.case_id, lang, rec, prefixes[args.lang])
        try:
            prep = prepare(tok, req, ctx, ehp.subject_match_threshold, model_device(model),
                           ehp.subject_fallback)
        except SkipCase as e:
            print(f"case {case.case_id}: skipped ({e})", flush=True)
            continue
        res = run_case(model, spec, layer, prep, opts, variants, len(rows))
        rows.append({"case_id": case.case_id, **res})
        print(f"case {case.case_id}: " + "; ".join(
            f"{v} {r['steps']}+{r['init_forwards']} fwd {r['seconds']:.1f}s loss {r['loss']:.3f}"
            + (f" cos {r['cos']:.3f}" if "cos" in r else "") for v, r in res.items()), flush=True)
    if not rows:
        print("no case ran")
        return 1
    print(f"\n{len(rows)} cases in {time.perf_counter() - t_all:.0f} s, load average now "
          f"{os.getloadavg()[0]:.2f}\n")
    print(table(rows, variants, opts["loss_stop"]))
    if args.json:
        Path(args.json).write_text(json.dumps({
            "model": args.model, "method": hp.name, "dataset": args.dataset, "lang": args.lang,
            "options": {k: v for k, v in opts.items()}, "cases": rows}, indent=1), encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
