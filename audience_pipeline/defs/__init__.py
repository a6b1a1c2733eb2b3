"""Dagster definitions only: component instances (`*/defs.yaml`) and the resources wiring."""
