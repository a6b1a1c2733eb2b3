"""Dagster component types: the YAML surface users configure the pipeline with."""
