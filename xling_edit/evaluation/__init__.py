"""Prompt/target joining, pure scorers and batched per-case evaluation."""
