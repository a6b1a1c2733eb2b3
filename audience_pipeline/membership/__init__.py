"""Membership: what each destination holds per audience (the ledger), its diffs and its messages."""
