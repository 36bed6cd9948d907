"""The short GPU check (issue 25): per-edit and per-case seconds for Gemma-3-270M, MEMIT at batch
16 against batch 1 per fact, and the study's full grid projected from them.

    python bench/gpu_check.py                          # CUDA, gemma3_270m, 10 BMIKE-53 cases
    python bench/gpu_check.py --device cpu --model tiny_llama --cases 2 --data builtin   # smoke

One process, one model load, the published configurations (``method=rome``, ``method=memit``),
the pipeline's own editors and evaluation: per case, the ROME edit, then the case's evaluation
in 8 languages (pre-edit scores, post-edit scores, generated answers); then MEMIT at batch 1 and
at batch 16 on the same cases. Times are medians (CUDA synchronised around each). The JSON goes
to ``bench/results/<model>-gpu-<time>.json``. The projection multiplies the measured seconds per
case run by the grid's 88,000 case runs (5 models x 2 methods x 2 datasets x 8 edit languages
x ~550 cases) and by the 7B models' FLOP factor over Gemma-3-270M given (``--scale``, 130 from
``bench/README.md``'s FLOP count) — an estimate, as the README's is.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from edit_bench import Setup, compose  # noqa: E402

GRID_CASE_RUNS = 88_000


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def timed(device: str, fn):
    _sync(device)
    t = time.perf_counter()
    out = fn()
    _sync(device)
    return out, time.perf_counter() - t


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python bench/gpu_check.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cuda")
    p.add_argument("--model", default="gemma3_270m")
    p.add_argument("--data", default="bmike53_counterfact", help="a conf/data config")
    p.add_argument("--cases", type=int, default=10)
    p.add_argument("--batch", type=int, default=16, help="the larger MEMIT batch")
    p.add_argument("--scale", type=float, default=130.0, help="FLOP factor of a 7B model over this one")
    p.add_argument("--out", default=None)
    a = p.parse_args(argv)
    if a.device.startswith("cuda") and not torch.cuda.is_available():
        print("error: --device cuda but torch sees no CUDA device", file=sys.stderr)
        return 2
    from xling_edit.editing.base import applied
    from xling_edit.evaluation import answers as A
    from xling_edit.evaluation.evaluate import build_rows, score_rows
    from xling_edit.evaluation.forward import EvalOptions

    s = Setup(compose(a.model, [f"model.device={a.device}", f"data={a.data}"]))
    opts = EvalOptions.from_config(s.cfg.eval)
    cases = s.cases[: max(a.cases, a.batch)]
    rome = s.editor("rome")
    memit = s.editor("memit")
    t: dict[str, list[float]] = {"rome_edit": [], "case": [], "eval_pre": [], "eval_post": [], "generate": []}
    for case in cases[: a.cases]:
        rows, _ = build_rows(case, s.langs, s.tok, s.word_seps, s.answer_prefix)
        prompts = A.answer_prompts(case, s.langs, s.edit_lang, s.answer_prefix)
        t0 = time.perf_counter()
        pre, dt = timed(a.device, lambda: score_rows(s.model, s.tok, s.spec, rows, opts, keep_from=rome.edit_layers[0]))
        t["eval_pre"].append(dt)
        out, dt = timed(a.device, lambda: rome.edit(s.model, s.tok, s.request(case)))
        t["rome_edit"].append(dt)
        with applied(s.model, out.deltas):
            _, dt = timed(a.device, lambda: score_rows(s.model, s.tok, s.spec, rows, opts, reuse=pre, deltas=out.deltas))
            t["eval_post"].append(dt)
            _, dt = timed(a.device, lambda: A.generate_for(s.model, s.tok, prompts, s.registry, opts))
            t["generate"].append(dt)
        _sync(a.device)
        t["case"].append(time.perf_counter() - t0)
        print(f"case {case.case_id}: ROME edit {t['rome_edit'][-1]:.2f}s, case {t['case'][-1]:.2f}s", flush=True)
    reqs = [s.request(c) for c in cases[: a.batch]]
    b1 = [timed(a.device, lambda r=r: memit.edit_batch(s.model, s.tok, [r]))[1] for r in reqs[: a.cases]]
    _, bn = timed(a.device, lambda: memit.edit_batch(s.model, s.tok, reqs))
    med = {k: statistics.median(v) for k, v in t.items() if v}
    per_fact = {"batch_1": statistics.median(b1), f"batch_{len(reqs)}": bn / len(reqs)}
    grid_h = med["case"] * GRID_CASE_RUNS * a.scale / 3600
    res = {"model": a.model, "device": a.device, "device_name": torch.cuda.get_device_name(0)
           if a.device.startswith("cuda") else "cpu", "cases": a.cases, "median_s": med, "times": t,
           "memit_per_fact_s": per_fact, "memit_batch": len(reqs),
           "projection": {"case_runs": GRID_CASE_RUNS, "scale_7b": a.scale,
                          "hours_one_device": grid_h, "hours_8_devices": grid_h / 8},
           "torch": torch.__version__}
    out = Path(a.out) if a.out else Path("bench/results") / f"{a.model}-gpu-{time.strftime('%Y%m%d-%H%M%S')}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(res, indent=1))
    print(json.dumps({k: res[k] for k in ("device_name", "median_s", "memit_per_fact_s", "projection")}, indent=1))
    print(f"JSON: {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
