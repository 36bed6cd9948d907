"""``python -m xling_edit.bench``: how long an edit, an evaluation and the statistics take, and
what each fast path gains over the plain path it replaces (both timed in the same process).

See ``bench/README.md`` for the figures measured on this project's reference machine."""
