"""``python -m xling_edit.report PATH [PATH ...] [--out DIR]`` (also ``xling-edit-report``)."""

from __future__ import annotations

import argparse
import logging
import sys
from typing import Sequence

from xling_edit.report.build import HEATMAP_PROTOCOLS, build_report, default_out


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m xling_edit.report",
        description="Tables (CSV + Markdown, bootstrap CIs), heatmaps, diagnostics and report.md "
                    "from xling_edit run directories (folders with results.jsonl) and sweeps "
                    "(searched recursively).")
    p.add_argument("paths", nargs="+", metavar="PATH",
                   help="run directory, multirun/outputs folder, or results.jsonl file")
    p.add_argument("--out", default=None,
                   help="output folder (default: report/ inside the first PATH)")
    p.add_argument("--n-boot", type=int, default=1000, help="bootstrap resamples (default 1000)")
    p.add_argument("--seed", type=int, default=0, help="bootstrap seed (default 0)")
    p.add_argument("--ci", type=float, default=0.95, help="confidence level (default 0.95)")
    p.add_argument("--pre-metrics", default="reliability,locality",
                   help="comma-separated metrics that also get pre-edit tables (default "
                        "reliability,locality; locality's agreement keys have none)")
    p.add_argument("--no-figures", action="store_true", help="tables and report.md only")
    p.add_argument("--elfo", choices=("macro", "pooled"), default="macro",
                   help="ELFI/ELFO: mean of the languages' means (macro, default) or of all "
                        "case-language lines (pooled)")
    p.add_argument("-q", "--quiet", action="store_true")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    logging.basicConfig(level=logging.ERROR if args.quiet else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    if args.n_boot < 1 or not 0 < args.ci < 1:
        print("error: --n-boot must be >= 1 and 0 < --ci < 1", file=sys.stderr)
        return 2
    try:
        rep = build_report(args.paths, args.out, n_boot=args.n_boot, seed=args.seed, ci=args.ci,
                           figures=not args.no_figures,
                           pre_metrics=[m.strip() for m in args.pre_metrics.split(",") if m.strip()],
                           heatmap_protocols=HEATMAP_PROTOCOLS, elfo=args.elfo)
    except (FileNotFoundError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if not args.quiet:
        n_ok = len(rep.results.ok_lines)
        print(f"{len(rep.results.runs)} run(s), {len(rep.results.lines)} lines ({n_ok} ok); "
              f"{len(rep.files)} files written")
        print(f"report: {rep.report_md}")
    return 0


__all__ = ["main", "parser", "default_out"]
