"""xling_edit: measure how factual edits to a language model travel across languages."""

__version__ = "0.1.0"
