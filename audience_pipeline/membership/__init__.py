"""Membership ledgers: what each destination holds per audience, and what changed since (no Dagster)."""

from audience_pipeline.membership.diff import MembershipDiff, diff
from audience_pipeline.membership.fingerprints import fingerprint, message_id, message_id_of
from audience_pipeline.membership.ledger import (
    LEDGER_SCHEMA,
    Ledger,
    LedgerConflict,
    LedgerState,
    ledger_key,
)

__all__ = [
    "LEDGER_SCHEMA",
    "Ledger",
    "LedgerConflict",
    "LedgerState",
    "MembershipDiff",
    "diff",
    "fingerprint",
    "ledger_key",
    "message_id",
    "message_id_of",
]
