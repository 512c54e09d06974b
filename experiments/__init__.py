"""Experiment drivers: long runs that produce the results in docs/ (not installed)."""
