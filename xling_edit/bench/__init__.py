"""Deprecated: the benchmarks live in ``bench/`` (one home); ``python -m xling_edit.bench`` still
runs ``bench/edit_bench.py`` for one release, with a deprecation line."""
