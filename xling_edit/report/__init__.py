"""Reporting: tables with bootstrap confidence intervals, heatmaps and diagnostics from
``results.jsonl`` files. ``python -m xling_edit.report PATH ... [--out DIR]``.

The API, shared by the CLI, ``notebooks/analysis.ipynb`` and the tests:

- ``load_results(paths)`` → ``Results`` (runs, deduplicated lines, ``ok_lines``);
- ``aggregate(lines, phase, key)`` → ``Cell`` s (mean and CI per row × eval language, ELFI, ELFO);
  ``wide_rows`` makes a paper-style table of them, ``matrix`` the edit × eval matrix;
- ``method_sweeps``, ``method_rows``, ``method_matrix``: the same cells regrouped as methods ×
  eval languages for runs that differ only in method/variant; ``shared_surface_table``: ELFO
  reliability split by whether the target is spelled as in the edit language;
- ``localisation_table``, ``fertility_table``: per-language diagnostics;
- ``build_report(paths, out)``: everything written to a folder;
- ``log_report_to_wandb(run, report_dir)``: imported on first use only (wandb is optional).

Figures live in ``xling_edit.report.plots`` (matplotlib is imported on use).
"""

from xling_edit.report.maths import (  # noqa: F401
    GROUP_KEYS, LANG_ORDER, METRICS, PROTOCOLS, ROW_KEYS, Cell, aggregate, aggregate_many,
    bootstrap_ci, case_matrix, case_outcomes, elfi_elfo, fertility_correlations, fertility_table,
    lang_order, localisation_table, matrix, method_matrix, method_rows, method_sweeps,
    non_ok_reasons, ok_lines, pooled_means, selectors, shared_surface_table, split_by,
    status_counts, table_specs, wide_rows)
from xling_edit.report.build import Report, build_report  # noqa: F401
from xling_edit.report.load import Results, Run, language_names, load_results, load_run  # noqa: F401


def __getattr__(name):  # lazy: keeps the wandb hook (and wandb) out of plain imports
    if name == "log_report_to_wandb":
        from xling_edit.report.wandb_hook import log_report_to_wandb

        return log_report_to_wandb
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
