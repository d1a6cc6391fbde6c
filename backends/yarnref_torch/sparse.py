"""Placeholder: filled in once yarnref/sparse.py (the spec) lands."""
