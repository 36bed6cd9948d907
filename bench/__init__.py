"""Benchmarks and measurement scripts (run as ``python bench/<name>.py``; see README.md here)."""
