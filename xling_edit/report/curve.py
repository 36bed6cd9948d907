"""The sequential-editing stability curve (``method.mode=sequential method.eval_every=k``):
``curve.jsonl`` (and ``curve.rank<r>.jsonl`` of other ranks) in each run directory hold, after
every k edits, the mean metrics of the edits so far (``set: edited``) and of the held-out,
never-edited cases (``set: heldout``) per evaluation language. Here: read them, write one CSV,
and draw metric versus number of edits, one panel per evaluation language, one line per method.
"""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path
from typing import Mapping, Sequence

from xling_edit.jobdir import JobDir

#: (set, metric) pairs drawn: edit success so far, and what the held-out cases keep
CURVE_METRICS = (("edited", "reliability.token_acc"), ("edited", "generalization.token_acc"),
                 ("heldout", "locality.agree_token"), ("heldout", "locality.answer_token_acc"),
                 ("heldout", "fact.true_token_acc"))
CSV_COLS = ("run_dir", "method", "variant", "model", "edit_lang", "group", "set", "eval_lang",
            "n_edits", "n_cases", "metric", "pre", "post")


def load_curves(run_dirs: Sequence[Path]) -> list[dict]:
    """Long-format rows (one per run, group, set, language, checkpoint and metric); a checkpoint
    written twice (a resumed group) keeps its last version."""
    latest: dict[tuple, dict] = {}
    for d in run_dirs:
        for f in JobDir(d).curve_files():
            for raw in f.read_text(encoding="utf-8").splitlines():
                try:
                    line = json.loads(raw)
                except json.JSONDecodeError:  # a torn last line of an interrupted run
                    continue
                key = (str(d), line.get("group", 0), line["set"], line["eval_lang"], line["n_edits"])
                latest[key] = {**line, "run_dir": str(d)}
    rows = []
    for line in latest.values():
        for metric, value in line.get("post", {}).items():
            rows.append({**{k: line.get(k) for k in CSV_COLS if k not in ("metric", "pre", "post")},
                         "group": line.get("group", 0), "metric": metric, "post": value,
                         "pre": line.get("pre", {}).get(metric)})
    return sorted(rows, key=lambda r: (r["run_dir"], r["group"], r["set"], r["eval_lang"],
                                       r["metric"], r["n_edits"]))


def curve_figure(rows: Sequence[Mapping], set_name: str, metric: str,
                 names: Mapping[str, str] | None = None):
    """metric vs edits for one set: a panel per eval language, a line per (method, variant,
    model, edit language), averaged over the run's groups; the pre-edit mean dashed."""
    from xling_edit.report.plots import _figure, _name

    sel = [r for r in rows if r["set"] == set_name and r["metric"] == metric]
    langs = list(dict.fromkeys(r["eval_lang"] for r in sel))
    if not langs:
        return None
    fig = _figure(3.2 * len(langs), 2.8)
    axes = fig.subplots(1, len(langs), squeeze=False)[0]
    for ax, lang in zip(axes, langs):
        series: dict[tuple, dict[int, list]] = defaultdict(lambda: defaultdict(list))
        pre: dict[tuple, list] = defaultdict(list)
        for r in sel:
            if r["eval_lang"] != lang:
                continue
            label = (r["method"], r.get("variant") or "published", r["model"], r["edit_lang"])
            series[label][int(r["n_edits"])].append(r["post"])
            if r.get("pre") is not None:
                pre[label].append(r["pre"])
        for label, pts in sorted(series.items()):
            xs = sorted(pts)
            line, = ax.plot(xs, [sum(pts[x]) / len(pts[x]) for x in xs], marker="o", ms=3,
                            label=" ".join(str(x) for x in label if x and x != "published"))
            if pre.get(label):
                ax.axhline(sum(pre[label]) / len(pre[label]), ls="--", lw=0.8, color=line.get_color())
        ax.set_title(_name(lang, names or {}))
        ax.set_xlabel("edits so far")
        ax.set_ylim(-0.02, 1.02)
    axes[0].set_ylabel(f"{metric} ({set_name})")
    axes[-1].legend(fontsize=7, loc="lower left")
    return fig
