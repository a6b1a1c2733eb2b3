"""Tests of the Parquet state store."""
