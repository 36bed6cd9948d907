"""Figures (matplotlib, Agg canvas; no pyplot global state, so importing this never changes the
caller's backend). Every function returns a ``matplotlib.figure.Figure``; ``save`` writes PNG."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from xling_edit.report.maths import GROUP_KEYS, Cell, matrix


def _figure(w: float, h: float):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(w, h), layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def save(fig, path: Path, dpi: int = 120) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=dpi)
    return path


def _name(code: str, names: Mapping[str, str]) -> str:
    return names.get(code) or code


def heatmap_figure(cells_by_key: Mapping[str, Sequence[Cell]], names: Mapping[str, str] | None = None,
                   title: str = "", edit_langs: Sequence[str] | None = None,
                   eval_langs: Sequence[str] | None = None, vmin: float = 0.0, vmax: float = 1.0,
                   cmap: str = "viridis"):
    """One panel per metric key (edit language × eval language, values written in the cells),
    all on the same fixed colour scale ``vmin..vmax`` with one colour bar, so figures of
    different models / methods compare side by side. Axis labels are language names; cells
    where eval language = edit language (ELFI) are framed in red."""
    from matplotlib.colors import Normalize
    from matplotlib.patches import Rectangle

    names = names or {}
    keys = list(cells_by_key)
    all_cells = [c for k in keys for c in cells_by_key[k]]
    edits, evals, _ = matrix(all_cells, edit_langs, eval_langs)
    n = max(len(keys), 1)
    ncols = 1 if len(edits) <= 2 else min(2, n)
    nrows = math.ceil(n / ncols)
    pw, ph = 1.0 + 0.75 * max(len(evals), 1), 1.2 + 0.5 * max(len(edits), 1)
    fig = _figure(ncols * pw + 1.2, nrows * ph + 0.6)
    axes = fig.subplots(nrows, ncols, squeeze=False)
    norm = Normalize(vmin=vmin, vmax=vmax)
    cm = None
    import matplotlib

    cmap_obj = matplotlib.colormaps[cmap].copy()
    cmap_obj.set_bad("#dddddd")
    for i, ax in enumerate(axes.flat):
        if i >= len(keys):
            ax.set_visible(False)
            continue
        key = keys[i]
        _, _, M = matrix(cells_by_key[key], edits, evals)
        cm = ax.imshow(np.ma.masked_invalid(M), cmap=cmap_obj, norm=norm, aspect="auto")
        for r in range(M.shape[0]):
            for c in range(M.shape[1]):
                v = M[r, c]
                txt = "–" if np.isnan(v) else f"{v:.2f}"
                dark = not np.isnan(v) and norm(v) < 0.55
                ax.text(c, r, txt, ha="center", va="center", fontsize=8,
                        color="white" if dark else "black")
                if edits[r] == evals[c]:  # ELFI cell: framed
                    ax.add_patch(Rectangle((c - 0.5, r - 0.5), 1, 1, fill=False, lw=1.5, clip_on=False,
                                           edgecolor="red"))
        ax.set_xticks(range(len(evals)), [_name(c, names) for c in evals], rotation=45, ha="right",
                      fontsize=8)
        ax.set_yticks(range(len(edits)), [_name(c, names) for c in edits], fontsize=8)
        ax.set_xlabel("evaluation language", fontsize=8)
        ax.set_ylabel("edit language", fontsize=8)
        ax.set_title(key if np.isfinite(M).any() else f"{key} (no values)", fontsize=9)
    return _finish(fig, axes, cm, vmin, vmax, title)


def group_title(group: Sequence, extra: str = "") -> str:
    """'model / dataset / method / merge=...' on one line, variant and ``extra`` on the next."""
    g = dict(zip(GROUP_KEYS, group))
    first = f"{g.get('model')} / {g.get('dataset')} / {g.get('method')} / merge={g.get('merge')}"
    second = ", ".join(x for x in (str(g.get("variant") or ""), extra) if x)
    return f"{first}\n{second}" if second else first


def fertility_figure(rows: Sequence[Mapping], names: Mapping[str, str] | None = None):
    """Per (group, eval language) points: mean target tokens (left) and subject tokens per word
    (right) against mean post-edit success; labelled with the language code (names would
    overlap), coloured by group."""
    import matplotlib

    names = names or {}
    fig = _figure(10, 4.2)
    axes = fig.subplots(1, 2, squeeze=False)[0]
    groups = list(dict.fromkeys(tuple(r.get(k) for k in GROUP_KEYS) for r in rows))
    colours = matplotlib.colormaps["tab10"]
    for ax, x, label in ((axes[0], "target_tokens", "target tokens (mean)"),
                         (axes[1], "subject_tokens_per_word", "subject tokens per word (mean)")):
        for gi, g in enumerate(groups):
            pts = [r for r in rows if tuple(r.get(k) for k in GROUP_KEYS) == g
                   and r.get(x) is not None and r.get("success") is not None]
            if not pts:
                continue
            xs, ys = [p[x] for p in pts], [p["success"] for p in pts]
            ax.scatter(xs, ys, color=colours(gi % 10), s=30,
                       label="/".join(str(x) for x in g if x != ""))
            for p in pts:
                ax.annotate(p["eval_lang"], (p[x], p["success"]), fontsize=7,
                            xytext=(3, 3), textcoords="offset points")
        ax.set_xlabel(label)
        ax.set_ylabel("post-edit success (reliability.token_acc)")
        ax.set_ylim(-0.05, 1.05)
        ax.grid(alpha=0.3)
    if groups:
        axes[0].legend(fontsize=7, loc="best")
    fig.suptitle("tokenizer fertility vs edit success, per evaluation language", fontsize=10)
    return fig


def bar_compare_figure(series: Mapping[str, Sequence[tuple[str, float, float, float]]],
                       title: str = "", ylabel: str = "", names: Mapping[str, str] | None = None):
    """Grouped bars with error bars: ``series`` {label: [(category, mean, lo, hi), ...]}."""
    names = names or {}
    cats = list(dict.fromkeys(c for pts in series.values() for c, *_ in pts))
    fig = _figure(max(5.0, 1.5 + 0.45 * max(len(cats), 1) * max(len(series), 1)), 4)
    ax = fig.subplots()
    width = 0.8 / max(len(series), 1)
    for si, (label, pts) in enumerate(series.items()):
        d = {c: (m, lo, hi) for c, m, lo, hi in pts}
        xs, ms, errs = [], [], [[], []]
        for ci, c in enumerate(cats):
            if c in d and d[c][0] is not None and not np.isnan(d[c][0]):
                m, lo, hi = d[c]
                xs.append(ci + si * width - 0.4 + width / 2)
                ms.append(m)
                errs[0].append(max(m - lo, 0) if lo is not None and not np.isnan(lo) else 0)
                errs[1].append(max(hi - m, 0) if hi is not None and not np.isnan(hi) else 0)
        ax.bar(xs, ms, width=width, yerr=errs, capsize=3, label=label)
    ax.set_xticks(range(len(cats)), [_name(c, names) for c in cats], rotation=30, ha="right")
    ax.set_ylim(0, 1.05)
    ax.set_ylabel(ylabel)
    ax.legend(fontsize=8)
    if title:
        ax.set_title(title, fontsize=10)
    return fig


def method_heatmap_figure(panels: Mapping[str, np.ndarray], row_labels: Sequence[str],
                          cols: Sequence[str], names: Mapping[str, str] | None = None,
                          title: str = "", framed: str | None = None, vmin: float = 0.0,
                          vmax: float = 1.0, cmap: str = "viridis"):
    """Methods (rows) × evaluation languages and ELFI / ELFO (columns), one panel per entry of
    ``panels`` ({panel title: means[n_rows, n_cols]}, e.g. from ``maths.method_matrix``), on one
    fixed colour scale with one colour bar. A white rule separates the languages from the pooled
    columns; the column of the edit language ``framed`` is framed in red."""
    import matplotlib
    from matplotlib.colors import Normalize
    from matplotlib.patches import Rectangle

    names = names or {}
    keys = list(panels)
    n = max(len(keys), 1)
    ncols = min(2, n)
    nrows = math.ceil(n / ncols)
    pw, ph = 1.6 + 0.7 * max(len(cols), 1), 1.2 + 0.42 * max(len(row_labels), 1)
    fig = _figure(ncols * pw + 1.2, nrows * ph + 0.6)
    axes = fig.subplots(nrows, ncols, squeeze=False)
    norm = Normalize(vmin=vmin, vmax=vmax)
    cmap_obj = matplotlib.colormaps[cmap].with_extremes(bad="#dddddd")
    n_lang = sum(1 for c in cols if c not in ("ELFI", "ELFO"))
    cm = None
    for i, ax in enumerate(axes.flat):
        if i >= len(keys):
            ax.set_visible(False)
            continue
        M = np.asarray(panels[keys[i]], dtype=float)
        cm = ax.imshow(np.ma.masked_invalid(M), cmap=cmap_obj, norm=norm, aspect="auto")
        for r in range(M.shape[0]):
            for c in range(M.shape[1]):
                v = M[r, c]
                dark = not np.isnan(v) and norm(v) < 0.55
                ax.text(c, r, "–" if np.isnan(v) else f"{v:.2f}", ha="center", va="center",
                        fontsize=8, color="white" if dark else "black")
        if 0 < n_lang < len(cols):
            ax.axvline(n_lang - 0.5, color="white", lw=3)
        if framed in cols:
            j = list(cols).index(framed)
            ax.add_patch(Rectangle((j - 0.5, -0.5), 1, M.shape[0], fill=False, lw=1.5,
                                   clip_on=False, edgecolor="red"))
        ax.set_xticks(range(len(cols)), [_name(c, names) for c in cols], rotation=45, ha="right",
                      fontsize=8)
        ax.set_yticks(range(len(row_labels)), list(row_labels), fontsize=8)
        ax.set_xlabel("evaluation language", fontsize=8)
        ax.set_title(keys[i] if np.isfinite(M).any() else f"{keys[i]} (no values)", fontsize=9)
    return _finish(fig, axes, cm, vmin, vmax, title)


def _finish(fig, axes, cm, vmin: float, vmax: float, title: str | None):
    """One colour bar for every panel (the fixed scale named) and the figure's title."""
    if cm is not None:
        fig.colorbar(cm, ax=axes.ravel().tolist(), shrink=0.8,
                     label=f"fixed scale {vmin:g}–{vmax:g}")
    if title:
        fig.suptitle(title, fontsize=10)
    return fig
