"""Tests of the membership ledger: fingerprints, diffs and ledgers."""
