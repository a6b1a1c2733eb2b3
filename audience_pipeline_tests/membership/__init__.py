"""Tests of the membership ledger: fingerprints, diffs, ledgers and the Parquet state store."""
