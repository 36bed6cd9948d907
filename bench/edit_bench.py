"""The benchmark: seconds per ROME / MEMIT edit, per 8-language evaluation, statistics
throughput and peak memory on one model, each fast path against the plain path it replaces.

    python bench/edit_bench.py                         # default model (Gemma-3-270M), 3 repeats
    python bench/edit_bench.py --quick                 # 1 repeat, MEMIT batch 4: a first look
    python bench/edit_bench.py --model tiny_llama      # seconds; the smoke test uses it
    python bench/edit_bench.py --override stats.per_lang=10 --out my.json
    python bench/edit_bench.py --only stats --stats-tokens 50000   # the statistics item alone
    python bench/edit_bench.py --only prefix --repeats 2           # prefix reuse on vs off alone
    python bench/edit_bench.py --only ike --repeats 3              # IKE evaluation, context cached vs not

Fast and plain paths run interleaved in the same process on the same cases (the value
optimisation takes the same steps on both), so each ratio compares like with like even when
other jobs share the CPU; every figure is a median over ``--repeats`` runs. "Plain" is what a
straightforward implementation does, each reached by a config flag (``eval.*`` and
``method.*``; see ``conf/config.yaml``):

- evaluation: one forward pass per row (``eval.batched``), full-vocabulary logits at every
  position (``eval.head_at_targets``), the post-edit pass at full depth
  (``eval.reuse_lower_layers``), no inference mode (``eval.inference_mode``);
- value optimisation: full depth at every step (``method.v_from_layer``), full logits
  (``method.v_head_at_targets``), every position of every prompt at every step
  (``v_prefix_cache``: no reuse of the positions before the subject);
- covariance: a fresh solve with C at every edit (``method.cache_factorization``);
- restoration: a copy of every parameter instead of the edited tensors only;
- statistics (``layer_second_moments`` arguments, benchmark only): each batch's KᵀK in float64
  after a hook on the projection ran, against float32 batch products added to the float64
  total with the forward ended by a pre-hook before the projection (the two run on the same
  documents in alternating rounds, and their covariances are compared); and the whole model per
  batch (on every third round, at most ~10k tokens).

Peak memory is read in a fresh subprocess that runs only the fast paths (``ru_maxrss`` is a
high-water mark, and the plain paths' full logits would set it).

The JSON goes to ``--out`` (default ``bench/results/<model>-<date>-<time>.json`` under the
current directory); the table goes to stdout.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # `python bench/edit_bench.py` from anywhere
    sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
from omegaconf import OmegaConf  # noqa: E402

EDIT_FLAGS = ("v_from_layer", "v_head_at_targets", "cache_factorization", "v_prefix_cache")
EVAL_FLAGS = ("batched", "head_at_targets", "reuse_lower_layers", "inference_mode")


# ------------------------------------------------------------------ set-up
def compose(model: str, overrides: list[str], model_conf: str | None = None):
    from hydra import compose as h_compose, initialize_config_dir

    from xling_edit.configstore import register_configs
    from xling_edit.languages import DEFAULT_CONF_DIR

    register_configs()
    with initialize_config_dir(config_dir=str(DEFAULT_CONF_DIR), version_base="1.3"):
        cfg = h_compose(config_name="config", overrides=[f"model={model_conf or model}", *overrides])
    OmegaConf.set_struct(cfg, False)
    cfg._bench_overrides, cfg._bench_model = list(overrides), model_conf or model  # per-method composes
    return cfg


class Setup:
    """Model, data, statistics and editors, built the way ``xling_edit.pipeline`` builds them."""

    def __init__(self, cfg, edit_lang: str = "en", quiet: bool = True, prefetch: bool = True):
        from xling_edit import pipeline as P
        from xling_edit.data import load_dataset
        from xling_edit.evaluation.evaluate import answer_prefixes
        from xling_edit.languages import PROJECT_ROOT, load_languages, resolve_eval_langs
        from xling_edit.models import ModelSpec, load_model

        self.cfg = cfg
        P.seed_everything(cfg.seed)
        if cfg.threads:
            torch.set_num_threads(int(cfg.threads))
        self.rss_before_load = _rss()
        self.anon_before_load = _status_kb("RssAnon") * 1024
        t0 = time.perf_counter()
        self.model, self.tok = load_model(cfg.model, seed=cfg.seed)
        self.load_s = time.perf_counter() - t0
        self.spec = ModelSpec.from_config(cfg.model.templates)
        self.registry = load_languages()
        self.langs = resolve_eval_langs(cfg.eval_langs, self.registry, edit_lang)
        self.edit_lang = edit_lang
        ds = load_dataset(cfg.data, self.langs, project_root=PROJECT_ROOT)
        self.cases = [c for c in ds.cases if edit_lang in c.langs]
        self.word_seps = {c: self.registry[c].word_sep for c in self.langs}
        # the pipeline's answer format (e.g. each language's cue on question datasets); the
        # evaluation languages include the edit language
        self.answer_format, self.answer_prefix = answer_prefixes(cfg.data, self.registry, self.langs)
        self.cov = P.covariance_provider(cfg, cfg.model, self.model, self.tok, self.spec,
                                         self.registry, self.langs)
        self.method_cfgs = {name: compose_method(cfg, name) for name in ("rome", "memit")}
        layers = sorted({int(self.method_cfgs["rome"].layer), *map(int, self.method_cfgs["memit"].layers)})
        t0 = time.perf_counter()
        if self.cov is not None and prefetch:  # (--only stats needs no cached C)
            self.cov.prefetch(layers)
        self.stats_prefetch_s = time.perf_counter() - t0
        self.param_bytes_fp32 = sum(p.numel() for p in self.model.parameters()) * 4

    def editor(self, method: str, **flags):
        """An editor for ``method``: a key of :attr:`method_cfgs` (a ``conf/method`` file name,
        composed on first use); ``flags``: its fast paths (:class:`EditPaths` fields, False for
        the plain path)."""
        from xling_edit.editing.base import build_editor  # editors registered by the pipeline import
        from xling_edit.fastpaths import EditPaths

        if method not in self.method_cfgs:
            self.method_cfgs[method] = compose_method(self.cfg, method)
        hp = self.method_cfgs[method]
        ed = build_editor(str(hp.name), hparams=hp, spec=self.spec, seed=self.cfg.seed,
                          covariance=self.cov, covariance_label=self.cov.label if self.cov else None)
        ed.paths = replace(EditPaths(), **flags)
        # one set of context prefixes for every flag variant of a method file (its templates)
        shared = self.__dict__.setdefault("_prefix_cache", {}).setdefault(method, {})
        if hasattr(ed, "prefixes"):  # editors with a value optimisation
            ed.__dict__["_prefixes"] = shared
            ed.prefixes(self.model, self.tok, self.registry[self.edit_lang])
        return ed

    def request(self, case):
        from xling_edit.editing.base import EditRequest

        return EditRequest(case.case_id, self.registry[self.edit_lang], case.langs[self.edit_lang],
                           self.answer_prefix[self.edit_lang])


def compose_method(cfg, name: str):
    """The method config as ``run.py method=<name>`` resolves it for this model (the run's own
    overrides included)."""
    from xling_edit import pipeline as P

    return P.method_config(compose(cfg._bench_model, [*cfg._bench_overrides, f"method={name}"]))


def _rss() -> int:
    try:
        import psutil

        return int(psutil.Process().memory_info().rss)
    except ImportError:  # pragma: no cover
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _peak_rss() -> int:
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024  # KiB on Linux


def _loadavg() -> list[float] | None:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:  # pragma: no cover
        return None


@contextmanager
def _clock(store: dict, key: str):
    t = time.perf_counter()
    yield
    store.setdefault(key, []).append(time.perf_counter() - t)


def med(xs: list[float] | None) -> float | None:
    return statistics.median(xs) if xs else None


# ------------------------------------------------------------------ measurements
def bench_rome_and_eval(s: Setup, repeats: int, log: Callable) -> dict:
    """Per case (same case for every variant): the whole case fast vs plain, then each fast
    path switched off alone."""
    from xling_edit.editing.base import applied
    from xling_edit.evaluation.evaluate import EvalOptions, build_rows, lang_metrics, score_rows

    bs = int(s.cfg.eval.batch_size)
    fast_opts = EvalOptions.from_config(s.cfg.eval)
    plain_opts = EvalOptions.plain(bs)
    fast_ed = s.editor("rome")
    plain_ed = s.editor("rome", **{f: False for f in EDIT_FLAGS})
    ablate_ed = {f: s.editor("rome", **{f: False}) for f in EDIT_FLAGS if f != "cache_factorization"}
    layer = int(s.method_cfgs["rome"].layer)
    ablation_repeats = min(repeats, 2)
    t: dict[str, list[float]] = {}
    same = []
    steps = []
    for r, case in enumerate(s.cases[:repeats]):
        req = s.request(case)
        with _clock(t, "tokenise_rows"):
            rows, _ = build_rows(case, s.langs, s.tok, s.word_seps, s.answer_prefix)
        # the whole case, fast
        with _clock(t, "case_fast"):
            with _clock(t, "pre_fast"):
                pre = score_rows(s.model, s.tok, s.spec, rows, fast_opts, keep_from=layer)
            with _clock(t, "edit_fast"):
                out = fast_ed.edit(s.model, s.tok, req)
            with _clock(t, "post_fast"):
                with applied(s.model, out.deltas):
                    post = score_rows(s.model, s.tok, s.spec, rows, fast_opts, reuse=pre, deltas=out.deltas)
        # the whole case, plain
        with _clock(t, "case_plain"):
            with _clock(t, "pre_plain"):
                pre_p = score_rows(s.model, s.tok, s.spec, rows, plain_opts)
            with _clock(t, "edit_plain"):
                out_p = plain_ed.edit(s.model, s.tok, req)
            with _clock(t, "post_plain"):
                with applied(s.model, out_p.deltas, full_copy=True):
                    post_p = score_rows(s.model, s.tok, s.spec, rows, plain_opts)
        # equivalence: the evaluation alone (all plain on the unedited weights; each evaluation
        # fast path off on the edited weights, below), the edit alone, and end to end
        eval_same = _same_metrics(lang_metrics(rows, pre, None), lang_metrics(rows, pre_p, None))
        m_fast, m_plain = lang_metrics(rows, post, pre), lang_metrics(rows, post_p, pre_p)
        d_f, d_p = out.deltas[0].delta.double(), out_p.deltas[0].delta.double()
        same.append({
            "eval_identical": eval_same,
            "edit_rel_diff": float((d_f - d_p).norm() / d_p.norm()),
            "same_trajectory": all(abs(a - b) <= 1e-3 for a, b in
                                   zip(out.info["nll_trajectory"], out_p.info["nll_trajectory"]))
            and out.info["steps"] == out_p.info["steps"],
            "end_to_end_argmax_and_prob_identical": _non_nll_same(m_fast, m_plain),
            "end_to_end_identical": _same_metrics(m_fast, m_plain),
            "end_to_end_max_nll_diff": _max_nll_diff(m_fast, m_plain),
            "end_to_end_diff": _diff_metrics(m_fast, m_plain),
        })
        steps.append(out.info["steps"])
        # one fast path off at a time (on the first two cases: the whole case already repeats)
        if r < ablation_repeats:
            _ablate(s, t, same[-1], ablate_ed, req, rows, fast_opts, pre, m_fast, out, layer)
        log(f"  rome case {r + 1}/{repeats}: fast {t['case_fast'][-1]:.1f}s, plain "
            f"{t['case_plain'][-1]:.1f}s, {out.info['steps']} steps, fast = plain: {_brief(same[-1])}")
    return {"times": t, "same_metrics": same, "steps": steps, "rows": len(rows)}


def _ablate(s: Setup, t: dict, same: dict, ablate_ed: dict, req, rows, fast_opts, pre, m_fast: dict,
            out, layer: int) -> None:
    """One case's component timings: each fast path off alone (edit, then evaluation; the
    evaluation's metrics are checked against the fast post-edit ones, ``m_fast``), restoration,
    and the covariance solve."""
    from xling_edit.editing.base import applied
    from xling_edit.evaluation.evaluate import lang_metrics, score_rows

    for f, ed in ablate_ed.items():
        with _clock(t, f"edit_no_{f}"):
            ed.edit(s.model, s.tok, req)
    # ... evaluation (the post-edit pass: the one every case repeats)
    with applied(s.model, out.deltas):
        for f in EVAL_FLAGS:
            opts = replace(fast_opts, **{f: False})
            with _clock(t, f"eval_no_{f}"):
                abl = score_rows(s.model, s.tok, s.spec, rows, opts, reuse=pre, deltas=out.deltas)
            same["eval_identical"] &= _same_metrics(m_fast, lang_metrics(rows, abl, pre))
        with _clock(t, "eval_pass_fast"):
            score_rows(s.model, s.tok, s.spec, rows, fast_opts, reuse=pre, deltas=out.deltas)
    # ... restoration alone, and the covariance solve alone
    for full in (False, True):
        with _clock(t, "restore_plain" if full else "restore_fast"):
            with applied(s.model, out.deltas, full_copy=full):
                pass
    if s.cov is not None:
        k = out.tensors["k_star"].double()
        with _clock(t, "solve_fast"):
            s.cov.solve(layer, k[:, None])
        with _clock(t, "solve_plain"):
            torch.linalg.solve(s.cov(layer), k)


def bench_memit(s: Setup, repeats: int, batch: int, log: Callable, plain_batch: bool = False) -> dict:
    from xling_edit.editing.memit import memit_update, memit_update_factored

    fast_ed = s.editor("memit")
    plain_ed = s.editor("memit", **{f: False for f in EDIT_FLAGS})
    t: dict[str, list[float]] = {}
    for r, case in enumerate(s.cases[:repeats]):
        req = s.request(case)
        with _clock(t, "b1_fast"):
            fast_ed.edit_batch(s.model, s.tok, [req])
        with _clock(t, "b1_plain"):
            plain_ed.edit_batch(s.model, s.tok, [req])
        log(f"  memit batch 1, case {r + 1}/{repeats}: fast {t['b1_fast'][-1]:.1f}s, plain {t['b1_plain'][-1]:.1f}s")
    reqs = [s.request(c) for c in s.cases[:batch]]
    out = None
    if batch > 1 and len(reqs) == batch:
        with _clock(t, f"b{batch}_fast"):
            out = fast_ed.edit_batch(s.model, s.tok, reqs)
        log(f"  memit batch {batch}: fast {t[f'b{batch}_fast'][-1]:.1f}s")
        if plain_batch:
            with _clock(t, f"b{batch}_plain"):
                plain_ed.edit_batch(s.model, s.tok, reqs)
            log(f"  memit batch {batch}: plain {t[f'b{batch}_plain'][-1]:.1f}s")
    # the update's solve alone at this batch size (keys from the batch edit when available)
    layer = int(s.method_cfgs["memit"].layers[-1])
    lam = float(s.method_cfgs["memit"].mom2_update_weight)
    if s.cov is not None:
        d_in = s.cov(layer).shape[0]
        g = torch.Generator().manual_seed(0)
        keys = torch.randn(d_in, max(batch, 1), generator=g, dtype=torch.float64)
        resid = torch.randn(8, max(batch, 1), generator=g, dtype=torch.float64)
        for _ in range(max(repeats, 1)):
            with _clock(t, "update_solve_fast"):
                memit_update_factored(resid, keys, lambda x: s.cov.solve(layer, x), lam)
            with _clock(t, "update_solve_plain"):
                memit_update(resid, keys, s.cov(layer), lam)
    return {"times": t, "batch": batch if out is not None else None,
            "batch_steps": out.info["steps"] if out is not None else None}


def bench_configs(s: Setup, repeats: int, batch: int, log: Callable) -> dict:
    """The published configuration against the labelled fast one (``conf/method/rome.yaml``
    vs ``rome_fast.yaml``: 21 vs 5 context prompts), each edit alone, interleaved on the first
    ``repeats`` cases; and MEMIT's per-fact cost at batch 1 (each of ``batch`` cases) against
    one batch of all of them."""
    pub, fast = s.editor("rome"), s.editor("rome_fast")
    memit = s.editor("memit")
    t: dict[str, list[float]] = {}
    steps: dict[str, list] = {"rome": [], "rome_fast": [], "memit_b1": []}
    cases = s.cases[:batch]
    for r, case in enumerate(cases):
        req = s.request(case)
        for name, ed in (("rome", pub), ("rome_fast", fast)) if r < repeats else ():
            with _clock(t, name):
                out = ed.edit(s.model, s.tok, req)
            steps[name].append(out.info["steps"])
        with _clock(t, "memit_b1"):
            out = memit.edit_batch(s.model, s.tok, [req])
        steps["memit_b1"].append(out.info["steps"][0])
        rome = (f"rome {t['rome'][-1]:.1f}s ({steps['rome'][-1]} steps), rome_fast "
                f"{t['rome_fast'][-1]:.1f}s ({steps['rome_fast'][-1]} steps), " if r < repeats else "")
        log(f"  case {r + 1}/{len(cases)}: {rome}memit batch 1 {t['memit_b1'][-1]:.1f}s")
    reqs = [s.request(c) for c in cases]
    with _clock(t, "memit_batch"):
        out = memit.edit_batch(s.model, s.tok, reqs)
    steps["memit_batch"] = out.info["steps"]
    log(f"  memit batch {len(reqs)}: {t['memit_batch'][-1]:.1f}s")
    lang = s.registry[s.edit_lang]
    n_context = {name: len(ed.prefixes(s.model, s.tok, lang)) for name, ed in (("rome", pub), ("rome_fast", fast))}
    return {"times": t, "steps": steps, "n_context": n_context, "batch": len(reqs)}


def _configs_rows(c: dict) -> list[dict]:
    t, st, n = c["times"], c["steps"], c["n_context"]
    b = c["batch"]
    per_fact_b1, per_fact_b = sum(t["memit_b1"]) / b, t["memit_batch"][0] / b
    return [
        _row("ROME edit, fast config vs published (s)", med(t["rome_fast"]), med(t["rome"]),
             f"method=rome_fast ({n['rome_fast']} prompts, median {med(st['rome_fast']):.0f} steps) vs "
             f"method=rome ({n['rome']} prompts, median {med(st['rome']):.0f} steps); gain = published / fast"),
        _row(f"MEMIT per fact, batch {b} vs batch 1 (s)", per_fact_b, per_fact_b1,
             f"the same {b} cases: one batch vs one at a time (mean per fact); steps batch 1 "
             f"median {med(st['memit_b1']):.0f}, batch {b} median {med(st['memit_batch']):.0f}"),
    ]


def bench_prefix(s: Setup, repeats: int, log: Callable) -> dict:
    """Prefix reuse in the value optimisation (``EditPaths.v_prefix_cache``) on vs off, every
    other fast path on: the published ROME edit (``method=rome``, 21 prompts) and a MEMIT edit
    at batch 1 (``method=memit``, 6 prompts), on and off interleaved per case (which goes first
    alternates), and each pair of edits compared (steps, delta, ΔW)."""
    from xling_edit.editing.value import (
        _stack, _suffix, optimise_values, prefix_cache_unsupported, prepare, value_options,
    )
    from xling_edit.evaluation.forward import model_device

    eds = {(m, on): s.editor(m, v_prefix_cache=on) for m in ("rome", "memit") for on in (True, False)}
    t: dict[str, list[float]] = {}
    same: dict[str, list[dict]] = {"rome": [], "memit": []}
    tokens: dict[str, list] = {"rome": [], "memit": []}
    for r, case in enumerate(s.cases[:repeats]):
        req = s.request(case)
        for m in ("rome", "memit"):
            outs = {}
            for on in ((True, False) if r % 2 == 0 else (False, True)):
                ed = eds[(m, on)]
                with _clock(t, f"{m}_{'on' if on else 'off'}"):
                    outs[on] = ed.edit(s.model, s.tok, req) if m == "rome" else ed.edit_batch(s.model, s.tok, [req])
            a, b = outs[True], outs[False]
            eq = {"steps_on": a.info["steps"], "steps_off": b.info["steps"],
                  "same_steps": a.info["steps"] == b.info["steps"],
                  "dW_cos": min(_cos(x.delta, y.delta) for x, y in zip(a.deltas, b.deltas)),
                  "dW_rel_diff": max(float((x.delta.double() - y.delta.double()).norm()
                                           / y.delta.double().norm()) for x, y in zip(a.deltas, b.deltas))}
            hp = s.method_cfgs[m]
            prep = prepare(s.tok, req, eds[(m, True)].prefixes(s.model, s.tok, req.lang),
                           hp.subject_match_threshold, model_device(s.model), hp.subject_fallback)
            if m == "rome":
                eq["delta_cos"] = _cos(a.tensors["delta"], b.tensors["delta"])
            else:  # z = h + (what delta does to the residual stream): compare the latter
                with torch.no_grad():
                    h = eds[(m, True)]._residual_at(s.model, [prep], int(hp.layers[-1]))
                eq["z_cos"] = _cos(a.tensors["z"] - h, b.tensors["z"] - h)
                # MEMIT's value optimisation alone (the rest of its edit does not change)
                space = str(hp.z_space)
                for on in ((True, False) if r % 2 == 0 else (False, True)):
                    with _clock(t, f"memit_value_{'on' if on else 'off'}"):
                        optimise_values(s.model, s.spec, int(hp.layers[-1]), [prep],
                                        **value_options(hp, space, eds[(m, on)].paths))
            same[m].append(eq)
            # tokens one step runs: the whole padded prompts vs the padded suffixes
            st = _stack([prep])
            suf = _suffix(st, torch.arange(st.ids.shape[0]), [None], None)
            tokens[m].append({"rows": int(st.ids.shape[0]), "whole": int(st.ids.numel()),
                              "whole_real": int(st.mask.sum()), "suffix": int(suf.st.ids.numel()),
                              "suffix_real": int(suf.st.mask.sum()), "prefix_slots": int(suf.mask.shape[1]
                                                                                         - suf.st.ids.shape[1])})
            log(f"  {m} case {r + 1}/{repeats}: prefix reuse on {t[f'{m}_on'][-1]:.1f}s, off "
                f"{t[f'{m}_off'][-1]:.1f}s; steps {eq['steps_on']} / {eq['steps_off']}, ΔW cos "
                f"{eq['dW_cos']:.6f}; tokens per step {tokens[m][-1]['suffix']} vs {tokens[m][-1]['whole']}")
    return {"times": t, "same": same, "tokens": tokens, "load_average": _loadavg(),
            "unsupported": prefix_cache_unsupported(s.model),
            "n_context": {m: len(eds[(m, True)].prefixes(s.model, s.tok, s.registry[s.edit_lang]))
                          for m in ("rome", "memit")}}


def _cos(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.double().flatten(), b.double().flatten()
    return float(torch.dot(a, b) / (a.norm() * b.norm()).clamp_min(1e-300))


def _prefix_rows(p: dict) -> list[dict]:
    t, rows = p["times"], []
    for m, name in (("rome", "ROME edit, published"), ("memit", "MEMIT edit, batch 1")):
        eq, tok = p["same"][m], p["tokens"][m]
        steps = [e["steps_on"] if m == "rome" else e["steps_on"][0] for e in eq]
        cos = min(e.get("delta_cos", e.get("z_cos")) for e in eq)
        rows.append(_row(
            f"{name}, prefix reuse on vs off (s)", med(t[f"{m}_on"]), med(t[f"{m}_off"]),
            f"v_prefix_cache; {p['n_context'][m]} prompts, median {med(steps):.0f} steps, same steps "
            f"{sum(e['same_steps'] for e in eq)}/{len(eq)}, {'delta' if m == 'rome' else 'z - h'} "
            f"1 - cos <= {max(1 - cos, 0):.0e}, ΔW 1 - cos <= {max(1 - min(e['dW_cos'] for e in eq), 0):.0e}; "
            f"tokens per step (padded) {med([x['suffix'] for x in tok]):.0f} vs {med([x['whole'] for x in tok]):.0f}"))
    if t.get("memit_value_on"):
        rows.append(_row("  - MEMIT value optimisation alone (s)", med(t["memit_value_on"]),
                         med(t["memit_value_off"]), "optimise_values of the same request, on vs off"))
    return rows


def bench_stats(s: Setup, repeats: int, tokens: int, log: Callable) -> dict:
    """Covariance statistics for the ROME layer on ~``tokens`` tokens of the built-in corpus
    (languages round-robin), split into rounds of consecutive documents: every round runs the
    fast path and the float64 path (the path before float32 batch products and the pre-hook
    stop) on the same documents, in alternating order, so load swings on a shared machine hit
    both; every third round also the whole model (until ~10k tokens). The covariances of the
    full corpus from the fast and the float64 path are compared (relative Frobenius norm)."""
    from xling_edit.editing.stats import builtin_corpus, layer_second_moments

    layer = int(s.method_cfgs["rome"].layer)
    texts = builtin_corpus(sorted(s.langs), 10_000)
    st = s.cfg.stats
    chosen, n = [], 0
    for i in range(len(texts)):  # round-robin over languages until ~tokens
        chosen.append(s.tok(texts[(i * 97) % len(texts)], truncation=True,
                            max_length=st.max_length)["input_ids"])
        n += len(chosen[-1])
        if n >= tokens:
            break
    n_rounds = max(1, min(len(chosen), max(repeats, round(n / 2000))))  # ~2k tokens a round
    bounds = [round(i * len(chosen) / n_rounds) for i in range(n_rounds + 1)]
    paths = {  # name -> layer_second_moments arguments
        "fast": {},
        "float64": {"stop_before_projection": False, "batch_float32": False},
        "whole_model": {"stop_early": False, "stop_before_projection": False, "batch_float32": False},
    }
    out: dict[str, Any] = {"tokens": {}, "times": {}, "cpu_times": {}, "tok_s": {}, "round_ratio": [],
                           "layer": layer, "rounds": n_rounds, "load_average": [_loadavg()]}
    sums: dict[str, torch.Tensor] = {}
    for key, kw in paths.items():  # warm-up, untimed (first-call costs would land on round 1)
        layer_second_moments(s.model, s.tok, s.spec, [layer], chosen[: st.batch_size],
                             batch_size=st.batch_size, desc="warm-up", texts_are_ids=True, **kw)
    for r in range(n_rounds):
        docs = chosen[bounds[r]: bounds[r + 1]]
        names = ["fast", "float64"] if r % 2 == 0 else ["float64", "fast"]
        if r % 3 == 0 and out["tokens"].get("whole_model", 0) < 10_000:
            names.append("whole_model")
        for key in names:
            t0, c0 = time.perf_counter(), time.process_time()
            m, ntok = layer_second_moments(s.model, s.tok, s.spec, [layer], docs,
                                           batch_size=st.batch_size, max_length=st.max_length,
                                           desc=f"stats ({key})", texts_are_ids=True, **paths[key])
            dt = time.perf_counter() - t0
            out["times"].setdefault(key, []).append(dt)
            out["cpu_times"].setdefault(key, []).append(time.process_time() - c0)  # all threads
            out["tok_s"].setdefault(key, []).append(ntok / dt)
            out["tokens"][key] = out["tokens"].get(key, 0) + ntok
            if key != "whole_model":
                sums[key] = m[layer] * ntok + sums[key] if key in sums else m[layer] * ntok
        out["round_ratio"].append(out["tok_s"]["fast"][-1] / out["tok_s"]["float64"][-1])
        out["load_average"].append(_loadavg())
        log(f"  statistics round {r + 1}/{n_rounds}: fast {out['tok_s']['fast'][-1]:,.0f} tokens/s, "
            f"float64 {out['tok_s']['float64'][-1]:,.0f} tokens/s (ratio {out['round_ratio'][-1]:.2f}), "
            f"load average {_loadavg()}")
    for key, ts in out["times"].items():
        out.setdefault("overall_tok_s", {})[key] = out["tokens"][key] / sum(ts)
        out.setdefault("tokens_per_cpu_s", {})[key] = out["tokens"][key] / sum(out["cpu_times"][key])
    log(f"  statistics: tokens per CPU-second (all threads) "
        + ", ".join(f"{k} {v:,.0f}" for k, v in out["tokens_per_cpu_s"].items()))
    c_fast, c_ref = sums["fast"] / out["tokens"]["fast"], sums["float64"] / out["tokens"]["float64"]
    out["max_rel_diff"] = float((c_fast - c_ref).norm() / c_ref.norm())
    log(f"  statistics: fast = float64 path to {out['max_rel_diff']:.1e} (relative Frobenius)")
    return out


def memory_probe(model: str, overrides: list[str]) -> dict:
    """Run in a fresh process: load, one fast ROME case (pre, edit, post, restore); report the
    resident-memory high-water mark."""
    from xling_edit.editing.base import applied
    from xling_edit.evaluation.evaluate import EvalOptions, build_rows, score_rows

    rss_imports = _rss()
    s = Setup(compose(model, overrides))
    anon_after_load = _status_kb("RssAnon") * 1024
    opts = EvalOptions.from_config(s.cfg.eval)
    case = s.cases[0]
    rows, _ = build_rows(case, s.langs, s.tok, s.word_seps, s.answer_prefix)
    layer = int(s.method_cfgs["rome"].layer)
    pre = score_rows(s.model, s.tok, s.spec, rows, opts, keep_from=layer)
    out = s.editor("rome").edit(s.model, s.tok, s.request(case))
    with applied(s.model, out.deltas):
        score_rows(s.model, s.tok, s.spec, rows, opts, reuse=pre, deltas=out.deltas)
    return {"rss_after_imports": rss_imports, "rss_before_load": s.rss_before_load,
            "anon_before_load": s.anon_before_load, "anon_after_load": anon_after_load,
            "file_rss_end": _status_kb("RssFile") * 1024,
            "peak_rss": _peak_rss(), "param_bytes_fp32": s.param_bytes_fp32}


def _status_kb(field: str) -> int:
    """A field of /proc/self/status in KiB (0 where there is none)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:  # pragma: no cover
        pass
    return 0


def run_memory_probe(model: str, overrides: list[str], log: Callable) -> dict | None:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--memory-probe", "--model", model]
    for o in overrides:
        cmd += ["--override", o]
    env = {**os.environ, "TQDM_DISABLE": "1"}
    r = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=900)
    line = next((l for l in reversed(r.stdout.splitlines()) if l.startswith("{")), None)
    if r.returncode != 0 or line is None:
        log(f"  memory probe failed: {r.stderr[-2000:]}")
        return None
    return json.loads(line)


# ------------------------------------------------------------------ report
def bench_generation(s: Setup, repeats: int, log: Callable) -> dict:
    """Per case: the published ROME edit, then the edited model's generated answers to every
    scored prompt of the case in every evaluation language (``eval.generate``: greedy, KV
    cache, the case's prompts batched), interleaved case by case."""
    from xling_edit.editing.base import applied
    from xling_edit.evaluation import answers as A

    ed = s.editor("rome")
    t: dict[str, list[float]] = {}
    prompts_n, tokens = [], []
    for r, case in enumerate(s.cases[:repeats]):
        with _clock(t, "edit"):
            out = ed.edit(s.model, s.tok, s.request(case))
        prompts = A.answer_prompts(case, s.langs, s.edit_lang, s.answer_prefix)
        with applied(s.model, out.deltas):
            with _clock(t, "generate"):
                gens = A.generate_for(s.model, s.tok, prompts, s.registry, s.cfg.eval)
        prompts_n.append(len(prompts))
        tokens.append(max(g.n_tokens for g in gens))
        log(f"  case {r + 1}/{repeats}: ROME edit {t['edit'][-1]:.1f}s, {len(prompts)} answers "
            f"generated in {t['generate'][-1]:.1f}s ({tokens[-1]} decoding steps)")
    return {"times": t, "prompts": prompts_n, "steps": tokens,
            "max_new_tokens": int(s.cfg.eval.max_new_tokens)}


def bench_ike(s: Setup, repeats: int, log: Callable) -> dict:
    """Per case: the published IKE context (``method=ike``: k = 16 nearest demonstrations from
    the dataset's other cases), then the case's evaluation after it — every row scored in every
    language and every answer generated — with the shared prefix encoded once
    (``EvalOptions.shared_prefix``) and with every row in full, interleaved (which goes first
    alternates), and the two compared (log-probabilities, argmax tokens, answers)."""
    from dataclasses import replace as dc_replace

    from xling_edit.evaluation import answers as A
    from xling_edit.evaluation.evaluate import build_rows
    from xling_edit.evaluation.forward import EvalOptions, score_continuations

    ed = s.editor("ike")
    opts = EvalOptions.from_config(s.cfg.eval)
    t: dict[str, list[float]] = {}
    same, sizes = [], []
    for r, case in enumerate(s.cases[:repeats]):
        ed.use_dataset([case], heldout=[c for c in s.cases if c.case_id != case.case_id])
        out = ed.edit(s.model, s.tok, s.request(case))
        rows, _ = build_rows(case, s.langs, s.tok, s.word_seps, s.answer_prefix, context=out.context)
        prompts = A.answer_prompts(case, s.langs, s.edit_lang, s.answer_prefix, context=out.context)
        got = {}
        for on in ((True, False) if r % 2 == 0 else (False, True)):
            o = dc_replace(opts, shared_prefix=on)
            key = "cached" if on else "uncached"
            with _clock(t, key):
                sc = score_continuations(s.model, s.tok, s.spec, [x.enc for x in rows], o)
                gens = A.generate_for(s.model, s.tok, prompts, s.registry, o)
            got[on] = (sc, gens)
        (a, ga), (b, gb) = got[True], got[False]
        same.append({"max_abs_logprob_diff": max(float((x.logprobs - y.logprobs).abs().max()) for x, y in zip(a, b)),
                     "argmax_equal": all(torch.equal(x.argmax, y.argmax) for x, y in zip(a, b)),
                     "answers_equal": sum(x.tokens == y.tokens for x, y in zip(ga, gb)), "answers": len(ga)})
        n_ctx = len(s.tok(out.context, add_special_tokens=False)["input_ids"])
        sizes.append({"context_tokens": n_ctx, "rows": len(rows), "prompts": len(prompts),
                      "demonstrations": len(out.info["demonstrations"])})
        log(f"  case {r + 1}/{repeats}: {len(out.info['demonstrations'])} demonstrations, {n_ctx} context "
            f"tokens, {len(rows)} rows + {len(prompts)} answers: cached {t['cached'][-1]:.1f}s, uncached "
            f"{t['uncached'][-1]:.1f}s; answers equal {same[-1]['answers_equal']}/{len(ga)}, max |Δ log p| "
            f"{same[-1]['max_abs_logprob_diff']:.1e}")
    return {"times": t, "same": same, "sizes": sizes, "k": int(ed.hp.k), "load_average": _loadavg()}


def _ike_rows(g: dict) -> list[dict]:
    sz, eq = g["sizes"], g["same"]
    return [_row("IKE case evaluation, shared prefix cached vs not (s)", med(g["times"]["cached"]),
                 med(g["times"]["uncached"]),
                 f"k = {g['k']}, median {med([x['context_tokens'] for x in sz]):.0f} context tokens; "
                 f"{med([x['rows'] for x in sz]):.0f} rows scored + {med([x['prompts'] for x in sz]):.0f} "
                 f"answers generated; answers equal {sum(x['answers_equal'] for x in eq)}/"
                 f"{sum(x['answers'] for x in eq)}, argmax equal {sum(x['argmax_equal'] for x in eq)}/"
                 f"{len(eq)} cases, max |Δ log p| {max(x['max_abs_logprob_diff'] for x in eq):.0e} "
                 f"(target >= 3x)")]


def _generation_rows(g: dict) -> list[dict]:
    gen, edit = med(g["times"]["generate"]), med(g["times"]["edit"])
    r = _row(f"generated answers, one case, all languages (s)", gen, edit,
             f"{med(g['prompts']):.0f} prompts, cap {g['max_new_tokens']} tokens; 'plain' = the ROME "
             f"edit of the same case; ratio = generation / edit (target <= 0.5)")
    r["ratio"] = gen / edit if edit else None
    return [r]


def _row(name, fast, plain=None, note=""):
    ratio = (plain / fast) if (fast and plain) else None
    return {"figure": name, "fast": fast, "plain": plain, "ratio": ratio, "note": note}


def _rome_memit_rows(res: dict) -> list[dict]:
    ro, me = res["rome"]["times"], res["memit"]["times"]
    rows = [
        _row("edit + 8-language evaluation, one case (s) [ROME]", med(ro["case_fast"]), med(ro["case_plain"]),
             "pre-edit pass + edit + post-edit pass + restore; all fast paths vs all plain"),
        _row("ROME edit (s)", med(ro["edit_fast"]), med(ro["edit_plain"]),
             "value optimisation fast paths on vs off"),
        _row("  - value optimisation at full depth", med(ro["edit_fast"]), med(ro.get("edit_no_v_from_layer")),
             "method.v_from_layer=false"),
        _row("  - value optimisation with full logits", med(ro["edit_fast"]), med(ro.get("edit_no_v_head_at_targets")),
             "method.v_head_at_targets=false"),
        _row("  - value optimisation on whole prompts", med(ro["edit_fast"]), med(ro.get("edit_no_v_prefix_cache")),
             "v_prefix_cache=false (no reuse of the positions before the subject)"),
        _row("  - u = C^-1 k per edit (s)", med(ro.get("solve_fast")), med(ro.get("solve_plain")),
             "method.cache_factorization=false (component)"),
        _row("MEMIT edit, batch 1 (s/edit)", med(me["b1_fast"]), med(me["b1_plain"]), "all fast vs all plain"),
    ]
    b = res["memit"].get("batch")
    if b and me.get(f"b{b}_plain"):
        rows.append(_row(f"MEMIT edit, batch {b} (s/edit)", med(me[f"b{b}_fast"]) / b,
                         med(me[f"b{b}_plain"]) / b, f"one batch of {b} facts, time / {b}"))
    elif b:
        r = _row(f"MEMIT edit, batch {b} (s/edit)", med(me[f"b{b}_fast"]) / b, None,
                 f"one batch of {b} facts, time / {b}; gain = vs batch 1 fast (--full: vs plain)")
        r["ratio"] = med(me["b1_fast"]) / r["fast"]
        rows.append(r)
    if me.get("update_solve_fast"):
        rows.append(_row(f"  - MEMIT update solve, batch {b or 1} (s)", med(me["update_solve_fast"]),
                         med(me["update_solve_plain"]), "push-through with cached factor vs (λC+KKᵀ) solve"))
    rows += [
        _row("evaluate one case, 8 languages (s)", med(ro["eval_pass_fast"]),
             med(_sum(ro["pre_plain"], ro["post_plain"], half=True)),
             f"{res['rome']['rows']} rows, all metrics, both protocols; post-edit pass"),
        _row("  - one forward per row", med(ro["eval_pass_fast"]), med(ro["eval_no_batched"]), "eval.batched=false"),
        _row("  - full logits at every position", med(ro["eval_pass_fast"]), med(ro["eval_no_head_at_targets"]),
             "eval.head_at_targets=false"),
        _row("  - post-edit pass at full depth", med(ro["eval_pass_fast"]), med(ro["eval_no_reuse_lower_layers"]),
             "eval.reuse_lower_layers=false"),
        _row("  - no inference mode", med(ro["eval_pass_fast"]), med(ro["eval_no_inference_mode"]),
             "eval.inference_mode=false"),
        _row("restore after an edit (s)", med(ro["restore_fast"]), med(ro["restore_plain"]),
             "edited tensors only vs a copy of every parameter"),
        _row("tokenise a case's rows, once (s)", med(ro["tokenise_rows"]), None, "reused by pre and post passes"),
    ]
    return rows


def _stats_rows(st: dict) -> list[dict]:
    fast, f64 = st["overall_tok_s"]["fast"], st["overall_tok_s"]["float64"]
    ratio = med(st["round_ratio"])
    rows = [
        _row("statistics throughput (tokens/s)", fast, f64,
             f"layer {st['layer']}, {st['tokens']['fast']} tokens, {st['rounds']} alternating rounds; "
             f"float32 batch products + stop before the projection vs float64 after it; gain = median "
             f"of per-round ratios; C equal to {st['max_rel_diff']:.0e} (relative Frobenius)"),
        _row("statistics, 1M tokens, one layer (min, implied)", 1e6 / fast / 60, 1e6 / f64 / 60,
             "extrapolated from the throughput above"),
    ]
    rows[0]["ratio"] = ratio  # higher is better here
    rows[1]["ratio"] = ratio
    whole = st["overall_tok_s"].get("whole_model")
    if whole:
        rows.append(_row("  - whole model per batch (tokens/s)", fast, whole,
                         f"{st['tokens']['whole_model']} tokens, every third round; gain = fast / whole"))
        rows[-1]["ratio"] = fast / whole
    return rows


def summarise(res: dict) -> list[dict]:
    rows: list[dict] = []
    if "rome" in res:
        rows += _rome_memit_rows(res)
    if "configs" in res:
        rows += _configs_rows(res["configs"])
    if "prefix" in res:
        rows += _prefix_rows(res["prefix"])
    if "stats" in res:
        rows += _stats_rows(res["stats"])
    if "generation" in res:
        rows += _generation_rows(res["generation"])
    if "ike" in res:
        rows += _ike_rows(res["ike"])
    mem = res.get("memory")
    if mem:
        w = mem["param_bytes_fp32"]
        rows += [
            _row("peak resident memory (GB)", mem["peak_rss"] / 1e9, None,
                 f"{mem['peak_rss'] / w:.2f}x fp32 weights ({w / 1e9:.2f} GB); whole process"),
            _row("  - above the process before loading (GB)", (mem["peak_rss"] - mem["rss_before_load"]) / 1e9,
                 None, f"{(mem['peak_rss'] - mem['rss_before_load']) / w:.2f}x fp32 weights; "
                       f"python + torch + transformers alone: {mem['rss_before_load'] / 1e9:.2f} GB"),
        ]
        tok = max(0, mem.get("anon_after_load", 0) - mem.get("anon_before_load", 0))
        if tok:
            model_mem = mem["peak_rss"] - mem["rss_before_load"] - tok
            rows.append(_row("  - weights + working memory (GB)", model_mem / 1e9, None,
                             f"{model_mem / w:.2f}x fp32 weights: the above less the tokenizer and "
                             f"other heap from loading ({tok / 1e9:.2f} GB)"))
    rows.append(_row("model load (s)", res["load_s"], None, "cached safetensors"))
    return rows


def _sum(a, b, half=False):
    return [(x + y) / (2 if half else 1) for x, y in zip(a, b)]


def format_table(rows: list[dict]) -> str:
    def f(x):
        if x is None:
            return "-"
        return f"{x:,.0f}" if abs(x) >= 1000 else (f"{x:.3f}" if abs(x) < 1 else f"{x:.2f}")

    head = f"{'figure':<52} {'fast':>10} {'plain':>10} {'gain':>7}  note"
    lines = [head, "-" * len(head)]
    for r in rows:
        ratio = f"{r['ratio']:.1f}x" if r["ratio"] else "-"
        lines.append(f"{r['figure']:<52} {f(r['fast']):>10} {f(r['plain']):>10} {ratio:>7}  {r['note']}")
    return "\n".join(lines)


# ------------------------------------------------------------------ CLI
ONLY_NOTE = {"stats": "statistics in alternating rounds",
             "prefix": "prefix reuse on and off interleaved per case",
             "configs": "each configuration interleaved per case",
             "gen": "ROME edit and generated answers interleaved per case",
             "ike": "IKE evaluation with and without the shared prefix interleaved per case"}


def parse_args(argv):
    p = argparse.ArgumentParser(prog="python bench/edit_bench.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="gemma3_270m", help="a conf/model/ config (default gemma3_270m)")
    p.add_argument("--repeats", type=int, default=3, help="runs per figure; medians are reported")
    p.add_argument("--quick", action="store_true", help="1 repeat, MEMIT batch 4, 10k statistics tokens")
    p.add_argument("--memit-batch", type=int, default=16, help="the larger MEMIT batch size")
    p.add_argument("--stats-tokens", type=int, default=10000,
                   help="tokens of the statistics item (fast and float64 paths each run all of them)")
    p.add_argument("--only", choices=["stats", "configs", "gen", "prefix", "ike"], default=None,
                   help="run one item alone: stats = the statistics throughput (no memory probe, "
                        "no cached C needed); configs = ROME published vs rome_fast and MEMIT "
                        "per fact at batch --memit-batch vs 1 (ROME on --repeats cases); gen = "
                        "the generated answers of a case against its ROME edit; prefix = the "
                        "value optimisation's prefix reuse on vs off (ROME published and MEMIT "
                        "batch 1, on --repeats cases); ike = a published IKE case's evaluation "
                        "(scores and generated answers) with its shared context encoded once vs "
                        "every row in full")
    p.add_argument("--full", action="store_true",
                   help="also time the plain path at the large MEMIT batch (minutes more)")
    p.add_argument("--edit-lang", default="en")
    p.add_argument("--out", default=None, help="JSON path (default bench/results/<model>-<time>.json)")
    p.add_argument("--no-memory", action="store_true", help="skip the peak-memory subprocess")
    p.add_argument("--override", action="append", default=[], metavar="KEY=VALUE",
                   help="Hydra override, repeatable (e.g. model.cache_dir=/tmp/c)")
    p.add_argument("--memory-probe", action="store_true", help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.quick:
        a.repeats, a.memit_batch, a.stats_tokens = 1, min(a.memit_batch, 4), min(a.stats_tokens, 10000)
    return a


def main(argv=None) -> int:
    a = parse_args(sys.argv[1:] if argv is None else argv)
    if a.memory_probe:
        print(json.dumps(memory_probe(a.model, a.override)))
        return 0
    import logging

    logging.basicConfig(level=logging.WARNING)
    t_start = time.perf_counter()

    def log(msg):
        print(f"[{time.perf_counter() - t_start:6.1f}s] {msg}", flush=True)

    load_start = _loadavg()
    log(f"bench {a.model}: repeats {a.repeats}, MEMIT batch {a.memit_batch}, load average {load_start}")
    res: dict[str, Any] = {"model": a.model, "argv": sys.argv[1:] if argv is None else list(argv)}
    if not a.no_memory and a.only is None:
        log("peak memory (fresh process, fast paths only) ...")
        res["memory"] = run_memory_probe(a.model, a.override, log)
    s = Setup(compose(a.model, a.override), edit_lang=a.edit_lang, prefetch=a.only != "stats")
    res["load_s"] = s.load_s
    res["stats_prefetch_s"] = s.stats_prefetch_s
    need = max(a.repeats, a.memit_batch)
    if len(s.cases) < need:
        log(f"only {len(s.cases)} cases with {a.edit_lang}; using fewer")
    log(f"loaded in {s.load_s:.1f}s; {len(s.cases)} cases, {len(s.langs)} languages")
    if a.only is None:
        log("ROME and evaluation ...")
        res["rome"] = bench_rome_and_eval(s, a.repeats, log)
        log("MEMIT ...")
        res["memit"] = bench_memit(s, a.repeats, a.memit_batch, log, plain_batch=a.full)
    if a.only in (None, "gen"):
        log("generated answers vs the ROME edit ...")
        res["generation"] = bench_generation(s, a.repeats, log)
    if a.only == "configs":
        log(f"published vs fast configuration, MEMIT batch {a.memit_batch} vs 1 ...")
        res["configs"] = bench_configs(s, a.repeats, a.memit_batch, log)
    elif a.only == "prefix":
        log("value optimisation: prefix reuse on vs off (ROME published, MEMIT batch 1) ...")
        res["prefix"] = bench_prefix(s, a.repeats, log)
    elif a.only == "ike":
        log("IKE evaluation: shared prefix cached vs every row in full ...")
        res["ike"] = bench_ike(s, a.repeats, log)
    elif a.only == "gen":
        pass
    else:
        log("covariance statistics ...")
        res["stats"] = bench_stats(s, a.repeats, a.stats_tokens, log)
    res["summary"] = summarise(res)
    res["environment"] = {
        "python": platform.python_version(), "torch": torch.__version__,
        "threads": torch.get_num_threads(), "cpus": os.cpu_count(), "machine": platform.machine(),
        "processor": platform.processor(), "load_average_start": load_start,
        "load_average_end": _loadavg(), "total_s": time.perf_counter() - t_start,
    }
    out = Path(a.out) if a.out else Path("bench/results") / f"{a.model}-{time.strftime('%Y%m%d-%H%M%S')}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(res, indent=1, default=str))
    print()
    rows_note = f"{res['rome']['rows']} rows/case over " if "rome" in res else ""
    print(f"== {a.model} | {rows_note}{len(s.langs)} languages | "
          f"{torch.get_num_threads()} threads | "
          f"{ONLY_NOTE.get(a.only, f'medians of {a.repeats}')} | load average "
          f"{load_start} -> {_loadavg()}")
    print(format_table(res["summary"]))
    same = res["rome"]["same_metrics"] if "rome" in res else []
    n = len(same)
    if same:
        print(f"\nequivalence, fast vs plain: evaluation on the same weights, every metric identical "
              f"(NLLs to 1e-4): {sum(x['eval_identical'] for x in same)}/{n} cases; value optimisation, "
              f"same NLL trajectory: {sum(x['same_trajectory'] for x in same)}/{n}, |dW_fast - dW_plain| / "
              f"|dW_plain| <= {max(x['edit_rel_diff'] for x in same):.1e}; end to end (each path's own "
              f"edit), token_acc/exact/prob metrics identical: "
              f"{sum(x['end_to_end_argmax_and_prob_identical'] for x in same)}/{n}, mean NLLs within "
              f"{max(x['end_to_end_max_nll_diff'] for x in same):.1e}")
    if "stats" in res:
        print(f"statistics: the fast path's C equals the float64 path's to "
              f"{res['stats']['max_rel_diff']:.1e} (relative Frobenius, {res['stats']['tokens']['fast']} tokens)")
    print(f"total {time.perf_counter() - t_start:.0f}s; JSON: {out}")
    return 0


def _max_nll_diff(a: dict, b: dict) -> float:
    return max([abs(v - b[lang][k]) for lang in a for k, v in a[lang].items()
                if ".nll_" in k and v is not None and b.get(lang, {}).get(k) is not None] or [0.0])


def _non_nll_same(a: dict, b: dict) -> bool:
    return all(v == b.get(lang, {}).get(k) for lang in a for k, v in a[lang].items() if ".nll_" not in k)


def _diff_metrics(a: dict, b: dict) -> dict:
    """{lang.metric: (a, b)} where two metric dicts differ (NLLs beyond 1e-4)."""
    out = {}
    for lang in a:
        for k, v in a[lang].items():
            w = b.get(lang, {}).get(k)
            if ".nll_" in k and v is not None and w is not None:
                if abs(v - w) > 1e-4:
                    out[f"{lang}.{k}"] = (v, w)
            elif v != w:
                out[f"{lang}.{k}"] = (v, w)
    return out


def _same_metrics(a: dict, b: dict) -> bool:
    """Same languages and every metric equal (NLLs to 1e-4)."""
    return a.keys() == b.keys() and not _diff_metrics(a, b)


def _brief(eq: dict) -> str:
    return (f"evaluation {eq['eval_identical']}, trajectory {eq['same_trajectory']}, "
            f"metrics {eq['end_to_end_argmax_and_prob_identical']} "
            f"(NLLs within {eq['end_to_end_max_nll_diff']:.0e})")


if __name__ == "__main__":
    raise SystemExit(main())
