"""Writing a report folder: tables (CSV + Markdown), heatmaps, diagnostics and ``report.md``.

    paths ─► load_results ─► aggregate (per table) ─► tables/*.csv|md, cells.csv
                                                 ├─► figures/heatmap_*.png
                                                 └─► sweeps over methods: tables/methods_*,
                                                     figures/methods_*.png
                          ─► ELFO split by shared_surface ─► tables/elfo_shared_surface.*
                          ─► diagnostics (localisation, fertility) ─► diagnostics/*, figures/fertility_*.png
                          ─► report.md (what was run, statuses, tables, links)
"""

from __future__ import annotations

import datetime as _dt
import json
import logging
import os
import re
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

from xling_edit.report import maths as agg
from xling_edit.report import tables as tb
from xling_edit.report.load import Results, Run, language_names, load_results, name_of

log = logging.getLogger(__name__)

HEATMAP_PROTOCOLS = ("token_acc", "exact", "prob", "gen")
#: the locality key drawn in each protocol's heatmap (locality's protocols are its own; the
#: panel is titled with the key, so agreement is never shown as accuracy)
HEATMAP_LOCALITY = {"token_acc": "agree_token", "exact": "agree_exact", "prob": "prob",
                    "gen": "gen_agree"}
#: the locality key of a method heatmap's pre-edit panel (agreement has no pre-edit value)
PRE_HEATMAP_LOCALITY = {"token_acc": "answer_token_acc", "exact": "answer_exact", "prob": "prob",
                        "gen": "gen"}
GENERATED = "generated_vs_forced"  # tables/<this>.csv|md: generated answers beside teacher forcing
#: metrics whose method × eval-language tables report.md shows in full (the others are linked)
METHOD_TABLES_SHOWN = ("reliability",)
SHARED_SURFACE = "elfo_shared_surface"  # tables/<this>.csv|md
SHARED_SURFACE_PROTOCOLS = ("token_acc", "exact")
MANIFEST = ".report_files.json"  # what the last build wrote; stale files of it are removed
CELL_COLS = list(agg.ROW_KEYS) + ["eval_lang", "phase", "metric", "protocol", "key", "mean",
                                  "ci_lo", "ci_hi", "n_lines", "n_cases"]


@dataclass
class Report:
    """What ``build_report`` produced."""

    out: Path
    results: Results
    cells: list[agg.Cell]
    files: list[Path] = field(default_factory=list)
    skipped_tables: list[str] = field(default_factory=list)  # (phase key) without any value
    figure_error: str | None = None

    @property
    def report_md(self) -> Path:
        return self.out / "report.md"


def table_stem(phase: str, key: str) -> str:
    return f"{phase}_{key.replace('.', '_')}"


def slug(parts: Iterable) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", "_".join(str(p) for p in parts if p != "")).strip("-")


def default_out(paths: Sequence[str | os.PathLike]) -> Path:
    first = Path(paths[0])
    return (first.parent if first.is_file() else first) / "report"


def build_report(paths: str | os.PathLike | Sequence[str | os.PathLike], out: str | os.PathLike | None = None,
                 n_boot: int = 1000, seed: int = 0, ci: float = 0.95, figures: bool = True,
                 pre_metrics: Sequence[str] = ("reliability", "locality"),
                 heatmap_protocols: Sequence[str] = HEATMAP_PROTOCOLS, elfo: str = agg.DEFAULT_ELFO) -> Report:
    """Load every run under ``paths`` and write the report folder ``out`` (default: ``report/``
    inside the first path). ``elfo``: ELFI/ELFO as the macro mean over languages or the mean
    over lines (``xling_edit.aggregate``)."""
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    paths = list(paths)
    results = load_results(paths)
    out = Path(out) if out is not None else default_out(paths)
    out.mkdir(parents=True, exist_ok=True)
    names = language_names(results.runs)
    ok = results.ok_lines
    rep = Report(out=out, results=results, cells=[])
    eval_langs = agg.lang_order(l["eval_lang"] for l in ok)

    # ---- tables
    sections: list[str] = []
    specs = agg.table_specs(pre_metrics)
    all_cells = agg.aggregate_many(ok, specs, n_boot=n_boot, ci=ci, seed=seed, elfo=elfo)
    for phase, key in specs:
        cells = [c for c in all_cells if c.phase == phase and c.key == key]
        if not cells:
            rep.skipped_tables.append(f"{key} ({phase}-edit)")
            continue
        rep.cells += cells
        cols, rows = agg.wide_rows(cells, eval_langs)
        stem = table_stem(phase, key)
        title = f"{key} ({phase}-edit)"
        csv_path = tb.write_csv(out / "tables" / f"{stem}.csv", rows, tb.wide_csv_columns(cols))
        md = tb.wide_markdown(cols, rows)
        md_path = out / "tables" / f"{stem}.md"
        md_path.write_text(f"## {title}\n\nmean [{ci:.0%} bootstrap CI over cases, {n_boot} "
                           f"resamples]\n\n{md}\n", encoding="utf-8")
        rep.files += [csv_path, md_path]
        sections.append(f"### {title}\n\n[CSV](tables/{stem}.csv) · [Markdown](tables/{stem}.md)"
                        f"\n\n{md}\n")
    rep.files.append(tb.write_csv(out / "cells.csv", [c.to_dict() for c in rep.cells], CELL_COLS))

    # ---- sweeps over methods: method × eval-language tables (the cells above, regrouped)
    sweeps = agg.method_sweeps({c.row for c in rep.cells})
    kinds = agg.edit_kinds(ok)
    method_shown: list[str] = []
    method_links: list[str] = []
    for phase, key in specs if sweeps else ():
        cols, rows = agg.method_rows([c for c in rep.cells if c.phase == phase and c.key == key],
                                     eval_langs, kinds)
        if not rows:
            continue
        stem = "methods_" + table_stem(phase, key)
        title = f"{key} ({phase}-edit), methods × evaluation languages"
        md = tb.method_markdown(cols, rows)
        csv_path = tb.write_csv(out / "tables" / f"{stem}.csv", rows, tb.method_csv_columns(cols))
        md_path = out / "tables" / f"{stem}.md"
        md_path.write_text(f"## {title}\n\nmean [{ci:.0%} bootstrap CI over cases, {n_boot} "
                           f"resamples]\n\n{md}\n", encoding="utf-8")
        rep.files += [csv_path, md_path]
        links = f"[CSV](tables/{stem}.csv) · [Markdown](tables/{stem}.md)"
        if key.split(".")[0] in METHOD_TABLES_SHOWN:
            method_shown.append(f"### {title}\n\n{links}\n\n{md}\n")
        else:
            method_links.append(f"- {key} ({phase}-edit): {links}")

    # ---- ELFO reliability split by shared surface form (target spelled as in the edit language)
    surf_cols, surf_rows = agg.shared_surface_table(ok, protocols=SHARED_SURFACE_PROTOCOLS,
                                                    n_boot=n_boot, ci=ci, seed=seed)
    surf_md = None
    if surf_rows:
        surf_md = tb.shared_surface_markdown(surf_rows, SHARED_SURFACE_PROTOCOLS)
        rep.files.append(tb.write_csv(out / "tables" / f"{SHARED_SURFACE}.csv", surf_rows,
                                      tb.shared_surface_csv_columns(surf_cols)))
        md_path = out / "tables" / f"{SHARED_SURFACE}.md"
        md_path.write_text(f"## ELFO reliability by shared surface form (post-edit)\n\nmean "
                           f"[{ci:.0%} bootstrap CI over cases, {n_boot} resamples]\n\n"
                           f"{surf_md}\n", encoding="utf-8")
        rep.files.append(md_path)

    # ---- generated answers beside teacher-forced exact match, by rung, with script fidelity
    gen_rows = agg.generated_rows(ok, eval_langs=eval_langs, elfo=elfo)
    if gen_rows:
        gen_cols = list(agg.ROW_KEYS) + ["eval_lang", "metric"] + list(agg.GENERATED_COLS)
        rep.files.append(tb.write_csv(out / "tables" / f"{GENERATED}.csv", gen_rows, gen_cols))
        gmd = tb.generated_markdown(gen_rows, agg.GENERATED_COLS)
        (out / "tables" / f"{GENERATED}.md").write_text(
            f"## Reliability: generated answers vs teacher-forced exact match (post-edit)\n\n{gmd}\n",
            encoding="utf-8")
        rep.files.append(out / "tables" / f"{GENERATED}.md")
        sections.insert(0, "### Reliability: generated answers vs teacher forcing (post-edit)\n\n"
                           "`forced_exact`: every target token is the argmax under teacher forcing; "
                           "`gen`: the greedy answer states the target at some rung of the match "
                           "cascade (`gen_<rung>`); `gap` = gen − forced_exact; `pre_gen_true`: "
                           "before the edit, share of answers stating the true target (the "
                           "model's knowledge of the fact in that language); `script_fidelity` / "
                           "`other_script`: answers written in the question's script / another "
                           "script (language confusion).\n\n"
                           f"[CSV](tables/{GENERATED}.csv) · [Markdown](tables/{GENERATED}.md)\n\n{gmd}\n")

    # ---- diagnostics
    diag = out / "diagnostics"
    loc_cats, loc_rows = agg.localisation_table(results.lines)
    loc_cols = list(agg.ROW_KEYS) + ["n_cases"] + [x for c in loc_cats for x in (c, f"share_{c}")]
    rep.files.append(tb.write_csv(diag / "localisation.csv", loc_rows, loc_cols))
    fert_rows = agg.fertility_table(results.lines)
    fert_cols = list(agg.GROUP_KEYS) + ["eval_lang", "n_lines", "target_tokens", "subject_tokens",
                                        "subject_tokens_per_word", "success", "success_cross",
                                        "success_exact"]
    rep.files.append(tb.write_csv(diag / "fertility.csv", fert_rows, fert_cols))
    corr_rows = agg.fertility_correlations(results.lines)
    non_ok = agg.non_ok_reasons(results.lines)
    rep.files.append(tb.write_csv(diag / "non_ok.csv", non_ok,
                                  list(agg.ROW_KEYS) + ["status", "reason", "lines"]))

    # ---- sequential stability curves (curve.jsonl), when runs have them
    from xling_edit.report import curve as curves

    curve_rows = curves.load_curves([r.path for r in results.runs])
    if curve_rows:
        rep.files.append(tb.write_csv(out / "curves.csv", curve_rows, curves.CSV_COLS))

    # ---- figures
    heatmaps: list[tuple[str, Path]] = []
    method_maps: list[tuple[str, Path]] = []
    fert_png = None
    if figures:
        try:
            from xling_edit.report import plots

            by_group: dict[tuple, list[agg.Cell]] = defaultdict(list)
            for c in rep.cells:
                if c.phase == "post":
                    by_group[agg.group_of(c.row)].append(c)
            for g, gcells in by_group.items():
                edits = agg.lang_order(c.edit_lang for c in gcells)
                evals = agg.lang_order(c.eval_lang for c in gcells if c.eval_lang not in agg.SUMMARY_COLS)
                for proto in heatmap_protocols:
                    keys = [f"{m}.{HEATMAP_LOCALITY.get(proto, proto) if m == 'locality' else proto}"
                            for m in agg.METRICS]
                    per_key = {k: [c for c in gcells if c.key == k] for k in keys}
                    if not any(per_key.values()):
                        continue
                    fig = plots.heatmap_figure(per_key, names, plots.group_title(g, f"post-edit, {proto}"),
                                               edits, evals)
                    p = plots.save(fig, out / "figures" / f"heatmap_{slug(g)}_{proto}.png")
                    heatmaps.append((f"{' / '.join(str(x) for x in g if x != '')}, {proto}", p))
                    rep.files.append(p)
            for sweep, methods in sweeps.items():
                p = _method_heatmaps(plots, rep, sweep, methods, heatmap_protocols, names, out)
                method_maps += p
                rep.files += [x for _, x in p]
            for set_name, metric in curves.CURVE_METRICS if curve_rows else ():
                fig = curves.curve_figure(curve_rows, set_name, metric, names)
                if fig is not None:
                    p = plots.save(fig, out / "figures" / f"curve_{set_name}_{metric.replace('.', '_')}.png")
                    heatmaps.append((f"stability curve: {metric} of the {set_name} cases vs edits", p))
                    rep.files.append(p)
            if fert_rows:
                fert_png = plots.save(plots.fertility_figure(fert_rows, names),
                                      out / "figures" / "fertility_vs_success.png")
                rep.files.append(fert_png)
        except ImportError as exc:  # matplotlib missing: tables still useful
            rep.figure_error = f"figures skipped: {exc}"
            log.warning(rep.figure_error)

    # ---- report.md
    md = _report_md(rep, names, sections, heatmaps, fert_png, loc_cats, loc_rows, fert_rows,
                    corr_rows, non_ok, n_boot=n_boot, seed=seed, ci=ci,
                    methods=(sweeps, method_shown, method_links, method_maps), surface_md=surf_md,
                    elfo=elfo)
    (out / "report.md").write_text(md, encoding="utf-8")
    rep.files.append(out / "report.md")
    _remove_stale(out, rep.files)
    return rep


def _method_heatmaps(plots, rep: Report, sweep: tuple, methods: Sequence[tuple[str, str]],
                     protocols: Sequence[str], names, out: Path) -> list[tuple[str, Path]]:
    """One figure per protocol for one sweep over methods: methods × (eval languages, ELFI,
    ELFO), a panel per metric post-edit, then per metric with a pre-edit value pre-edit."""
    cells = [c for c in rep.cells if agg.sweep_of(c.row) == sweep]
    cols = agg.lang_order(c.eval_lang for c in cells if c.eval_lang not in agg.SUMMARY_COLS)
    cols += list(agg.SUMMARY_COLS)
    labels = [agg.method_label(m, v, methods) for m, v in methods]
    s = dict(zip(agg.SWEEP_KEYS, sweep))
    done = []
    for proto in protocols:
        panels = {}
        for phase, loc in (("post", HEATMAP_LOCALITY), ("pre", PRE_HEATMAP_LOCALITY)):
            for m in agg.METRICS:
                key = f"{m}.{loc.get(proto, proto) if m == 'locality' else proto}"
                kc = [c for c in cells if c.phase == phase and c.key == key]
                if kc:
                    panels[f"{key} ({phase}-edit)"] = agg.method_matrix(kc, methods, cols)
        if not panels:
            continue
        where = (f"{s['model']} / {s['dataset']} / merge={s['merge']}, edit language "
                 f"{name_of(s['edit_lang'], names)} ({s['edit_lang']})")
        fig = plots.method_heatmap_figure(panels, labels, cols, names,
                                          f"{where}\nmethods × evaluation languages, {proto}",
                                          framed=s["edit_lang"])
        p = plots.save(fig, out / "figures" / f"methods_{slug(sweep)}_{proto}.png")
        done.append((f"{where}, {proto}", p))
    return done


def _remove_stale(out: Path, written: Sequence[Path]) -> None:
    """Delete files a previous build of ``out`` wrote and this one did not (e.g. heatmaps of a
    run no longer included); only files listed in the previous manifest are touched."""
    manifest = out / MANIFEST
    now = sorted({_rel(p, out) for p in written})
    try:
        before = json.loads(manifest.read_text(encoding="utf-8")) if manifest.is_file() else []
    except (json.JSONDecodeError, OSError):
        before = []
    for rel in set(before) - set(now):
        p = out / rel
        if ".." not in Path(rel).parts and p.is_file():
            p.unlink()
    manifest.write_text(json.dumps(now, indent=1), encoding="utf-8")


# ------------------------------------------------------------------------------- report.md


def _rel(p: Path, base: Path) -> str:
    try:
        return os.path.relpath(p, base).replace(os.sep, "/")
    except ValueError:  # other drive
        return str(p)


def _counter(c: Counter | dict | None) -> str:
    if not c:
        return "–"
    return ", ".join(f"{k} {v}" for k, v in sorted(c.items(), key=lambda kv: (-kv[1], str(kv[0]))))


def _deviations(lines) -> str:
    """Every ``edit.deviations`` item of a run's lines with the values seen (``none``: the
    published method as declared in xling_edit/editing/reference.py)."""
    seen: dict[str, set] = {}
    for l in lines:
        for k, v in ((l.get("edit") or {}).get("deviations") or {}).items():
            seen.setdefault(k, set()).add(json.dumps(v, ensure_ascii=False, sort_keys=True))
    if not seen:
        return "none"
    return "; ".join(f"`{k}`: {', '.join(sorted(v)[:3])}{' …' if len(v) > 3 else ''}"
                     for k, v in sorted(seen.items()))


def _runs_table(runs: Sequence[Run], out: Path) -> str:
    header = ["run", "model", "dataset", "method", "merge", "variant", "edit", "eval langs", "cases",
              "case status (lines)", "line status", "covariance", "deviations from the published method",
              "seconds"]
    rows = []
    for r in runs:
        st = agg.status_counts(r.lines)
        evals = agg.lang_order(l.get("eval_lang") for l in r.lines if l.get("eval_lang"))
        info = r.info or {}
        rows.append([f"[{r.name}]({_rel(r.path, out)})", r.field("model"), r.field("dataset"),
                     r.field("method"), r.field("merge"), r.variant or "–", r.field("edit_lang"),
                     " ".join(evals),
                     len({l.get("case_id") for l in r.lines}), _counter(st["cases"]),
                     _counter(st["lines"]),
                     info.get("covariance", "–" if r.info else "no run_info.json (running or crashed?)"),
                     _deviations(r.lines), (info.get("seconds") or {}).get("total", "–")])
    return tb.markdown(header, [[tb.fmt(x) for x in row] for row in rows])


def _report_md(rep: Report, names, sections, heatmaps, fert_png, loc_cats, loc_rows, fert_rows,
               corr_rows, non_ok, n_boot, seed, ci, methods=({}, [], [], []),
               surface_md: str | None = None, elfo: str = agg.DEFAULT_ELFO) -> str:
    res, out = rep.results, rep.out
    lines_all = res.lines
    st = agg.status_counts(lines_all)
    uniq = lambda k: sorted({str(l.get(k)) for l in lines_all})  # noqa: E731
    edit_langs = agg.lang_order(str(l.get("edit_lang")) for l in lines_all)
    eval_langs = agg.lang_order(str(l.get("eval_lang")) for l in lines_all)
    n_cases = len({(agg.row_of(l), l.get("case_id")) for l in lines_all})
    L = ["# xling_edit report", "",
         f"Generated {_dt.datetime.now().isoformat(timespec='seconds')} from "
         + ", ".join(f"`{p}`" for p in res.paths) + f": {len(res.runs)} run(s).", "",
         "## What was run", "",
         f"- models: {', '.join(uniq('model'))}",
         f"- methods: {', '.join(uniq('method'))}; merge: {', '.join(uniq('merge'))}",
         f"- datasets: {', '.join(uniq('dataset'))}",
         f"- edit languages: {', '.join(f'{name_of(c, names)} ({c})' for c in edit_langs)}",
         f"- evaluation languages: {', '.join(f'{name_of(c, names)} ({c})' for c in eval_langs)}",
         f"- cases (counted per condition and edit language): {n_cases}; "
         f"by status: {_counter(st['cases'])}",
         f"- result lines: {len(lines_all)}; by status: {_counter(st['lines'])}. "
         f"Only the {st['lines'].get('ok', 0)} `ok` lines enter the metric tables; "
         f"{len(lines_all) - st['lines'].get('ok', 0)} other line(s) are counted below.",
         ]
    if res.superseded:
        L.append(f"- {res.superseded} line(s) superseded: the same model/dataset/method/merge/"
                 "edit language/case/eval language appeared in several runs; the run written last "
                 "was kept.")
    if res.bad_lines:
        L.append(f"- {res.bad_lines} undecodable line(s) in results.jsonl files were ignored.")
    L += ["", _runs_table(res.runs, out), ""]
    variants = [r for r in res.runs if r.variant]
    if variants:
        L += ["### Variants", "",
              "Runs of the same model/dataset/method/merge whose configs differ (beyond edit "
              "language, case selection, paths and batch sizes) are kept apart as *variants*:", "",
              tb.markdown(["run", "variant", "settings"],
                          [[r.name, r.variant, ", ".join(f"`{k}={v}`" for k, v in
                                                         r.variant_settings.items())]
                           for r in variants]), ""]
    if non_ok:
        keys = tb.key_columns(non_ok)
        L += ["### Lines not counted (status ≠ ok)", "",
              tb.markdown([tb.HEADER_NAMES.get(k, k) for k in keys] + ["status", "reason", "lines"],
                          [[tb.fmt(r[k]) for k in keys] + [r["status"], r["reason"], r["lines"]]
                           for r in non_ok]),
              "", "[CSV](diagnostics/non_ok.csv)", ""]
    L += ["## Results", "",
          f"Cells are means over cases; brackets hold the {ci:.0%} percentile bootstrap interval "
          f"over cases ({n_boot} resamples of case ids, seed {seed}; every cell of a row, ELFI "
          "and ELFO from the same resamples). **ELFI**: evaluation language = edit language (every language for edit `all`); "
          + ("**ELFO**: all other evaluation languages, the mean of their per-language means "
             "(macro: every language weighs the same). " if elfo == "macro" else
             "**ELFO**: all other evaluation languages, pooled over case-language lines. ") +
          "`gen`: the model's greedy answer states the expected answer at some rung of the match "
          "cascade (exact, normalized, romanized, inflected, other_form); `gen_agree`: the "
          "post-edit answer equals the pre-edit one after normalisation. "
          "`token_acc`: share of target tokens predicted (EasyEdit); `exact`: all of them; "
          "`prob`: P(new) > P(true) (ROME/MEMIT). Locality (an unrelated prompt and its true "
          "answer): `agree_token` / `agree_exact` = the post-edit argmax agrees with the "
          "pre-edit argmax (stability, EasyEdit's locality; not correctness; older results "
          "called these `token_acc` / `exact`), `answer_token_acc` / `answer_exact` = the true "
          "answer is predicted (pre- and post-edit), `prob` = the true answer stays more likely "
          "than target_new (pre- and post-edit), `prob_drop` = pre-edit `prob` − post-edit "
          "`prob` per case. All cells in one long table: [cells.csv](cells.csv).", ""]
    L += sections
    if rep.skipped_tables:
        L += ["Tables without any value (not written): " + ", ".join(rep.skipped_tables) + ".", ""]

    sweeps, method_shown, method_links, method_maps = methods
    if sweeps:
        L += ["## Methods compared", "",
              "Sweeps over methods: runs with the same model, dataset, merge and edit language "
              "whose method (or variant) differs. Rows are methods, columns evaluation languages, "
              "ELFI and ELFO; the cells are those of the tables above (same bootstrap). "
              "`edit_kind`: `weights` (the edit changes parameters) or `context` (the new fact "
              "is stated in the prompt, e.g. IKE).", "",
              tb.markdown(["model", "dataset", "merge", "edit", "methods"],
                          [[tb.fmt(x) for x in sweep]
                           + [", ".join(agg.method_label(m, v, mv) for m, v in mv)]
                           for sweep, mv in sweeps.items()]), ""]
        L += method_shown
        if method_links:
            L += ["Other metrics:", ""] + method_links + [""]
        if rep.figure_error:
            L += [f"_{rep.figure_error}_", ""]
        if method_maps:
            L += ["Heatmaps: methods (rows) × evaluation languages, ELFI and ELFO (columns), "
                  "one figure per sweep and protocol, a panel per metric post-edit and, where "
                  "the metric has one, pre-edit; the edit language's column is framed; colour "
                  "scale fixed to 0..1.", ""]
        for title, p in method_maps:
            L += [f"### {title}", "", f"![{title}]({_rel(p, out)})", ""]

    if surface_md:
        L += ["## ELFO reliability by shared surface form", "",
              "Post-edit reliability of the lines whose evaluation language was not edited, "
              "split by `shared_surface`: *shared* = the target in that language is the same "
              "string as in the edit language (\"Berlin\" in English and German), *different* = "
              "it is spelled otherwise. Transfer that appears only in the *shared* half may be "
              "the edited target's tokens, not the fact. `lines (cases)`: ok lines and cases of each "
              "half; `ELFO` pools the languages. Each half is its own mean over its cases with its own "
              "bootstrap interval.", "",
              f"[CSV](tables/{SHARED_SURFACE}.csv) · [Markdown](tables/{SHARED_SURFACE}.md)", "",
              surface_md, ""]

    L += ["## Heatmaps", "",
          "Post-edit, edit language (rows) × evaluation language (columns), one figure per "
          "model/dataset/method/merge(/variant) and protocol, colour scale fixed to 0..1.", ""]
    if rep.figure_error:
        L += [f"_{rep.figure_error}_", ""]
    for title, p in heatmaps:
        L += [f"### {title}", "", f"![{title}]({_rel(p, out)})", ""]

    L += ["## Diagnostics", "", "### Subject localisation (per edit language)", "",
          "Share of cases whose subject was found in the edit-language prompt by each method, "
          "or that were skipped (reasons in the table above).", ""]
    show = [c for c in loc_cats if any(r.get(c) for r in loc_rows)] or loc_cats[:1]
    keys = tb.key_columns(loc_rows)
    L += [tb.markdown([tb.HEADER_NAMES.get(k, k) for k in keys] + ["cases"] + show,
                      [[tb.fmt(r[k]) for k in keys] + [r["n_cases"]]
                       + [f"{r[c]} ({r[f'share_{c}']:.0%})" if r[f"share_{c}"] is not None else "–"
                          for c in show] for r in loc_rows]),
          "", "[CSV](diagnostics/localisation.csv)", ""]
    L += ["### Tokenizer fertility vs edit success (per evaluation language)", "",
          "Over `ok` lines of every edit language: mean number of tokens of the new target and "
          "of the subject (and per subject word), against mean post-edit reliability "
          "(`token_acc`; `cross`: lines with eval language ≠ edit language; `exact`).", ""]
    keys = tb.key_columns(fert_rows, agg.GROUP_KEYS)
    L += [tb.markdown(keys + ["eval", "lines", "target tokens", "subject tokens", "tokens/word",
                              "success", "success cross", "success exact"],
                      [[tb.fmt(r[k]) for k in keys]
                       + [f"{name_of(r['eval_lang'], names)} ({r['eval_lang']})", r["n_lines"]]
                       + [tb.fmt(r[k], 2 if "tokens" in k else 3) for k in
                          ("target_tokens", "subject_tokens", "subject_tokens_per_word", "success",
                           "success_cross", "success_exact")] for r in fert_rows]),
          "", "[CSV](diagnostics/fertility.csv)", ""]
    if corr_rows:
        keys = tb.key_columns(corr_rows, agg.GROUP_KEYS)
        L += ["Line-level Pearson correlation of success with fertility:", "",
              tb.markdown(keys + ["lines", "r (target tokens)", "r (subject tokens/word)"],
                          [[tb.fmt(r[k]) for k in keys]
                           + [r["n_lines"], tb.fmt(r["r_target_tokens"]),
                              tb.fmt(r["r_subject_tokens_per_word"])] for r in corr_rows]), ""]
    if fert_png:
        L += [f"![fertility vs success]({_rel(fert_png, out)})", ""]
    return "\n".join(L) + "\n"
