"""Dagster resources: the typed doors to the source data and the state store."""
