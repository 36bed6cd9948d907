"""Editing methods (ROME), subject localisation, hooks and exact weight restoration."""
