"""What changed between an audience snapshot and what a destination last received (its ledger)."""

from dataclasses import dataclass

import polars as pl

MEMBER_COLUMNS = ["user_id", "fingerprint", "payload"]


@dataclass(frozen=True)
class MembershipDiff:
    """The changes a destination has not received yet.

    - `added`: members only in the snapshot (`user_id, fingerprint, payload`).
    - `removed`: members only in the ledger, with what was delivered (`user_id, fingerprint, payload`
      from the ledger), so a removal can name the identities the destination holds.
    - `changed`: members in both whose identities differ (`user_id, fingerprint, payload` from the
      snapshot, `old_fingerprint, old_payload` from the ledger).
    """

    added: pl.DataFrame
    removed: pl.DataFrame
    changed: pl.DataFrame


def diff(snapshot: pl.DataFrame, ledger: pl.DataFrame) -> MembershipDiff:
    """Compare `snapshot` (`user_id, fingerprint, payload`, one row per member) with a ledger frame.

    Payloads are carried along, never read. Raises ValueError when the snapshot has null or
    duplicate user ids, which would make the ledger ambiguous.
    """
    for column in ("user_id", "fingerprint"):
        if nulls := snapshot.get_column(column).null_count():
            raise ValueError(f"Snapshot has {nulls} members without a {column}")
    if duplicates := snapshot.height - snapshot.get_column("user_id").n_unique():
        raise ValueError(f"Snapshot has {duplicates} duplicate user_ids")

    new, old = snapshot.lazy().select(MEMBER_COLUMNS), ledger.lazy().select(MEMBER_COLUMNS)
    # One join of ids and fingerprints finds every difference; only those few members are then
    # joined again for their payloads, rather than carrying millions of payloads through a join.
    differing = (
        new.select("user_id", "fingerprint")
        .join(old.select("user_id", old_fingerprint="fingerprint"), on="user_id", how="full", coalesce=True)
        .filter(pl.col("fingerprint").ne_missing(pl.col("old_fingerprint")))
        .collect()
    )
    only_new = differing.filter(pl.col("old_fingerprint").is_null()).lazy()
    only_old = differing.filter(pl.col("fingerprint").is_null()).lazy()
    in_both = differing.filter(pl.col("fingerprint").is_not_null() & pl.col("old_fingerprint").is_not_null())
    old_values = old.rename({"fingerprint": "old_fingerprint", "payload": "old_payload"})
    added, removed, changed = pl.collect_all(
        [
            new.join(only_new.select("user_id"), on="user_id", how="semi"),
            old.join(only_old.select("user_id"), on="user_id", how="semi"),
            new.join(in_both.lazy().select("user_id"), on="user_id", how="semi").join(
                old_values, on="user_id", how="inner"
            ),
        ]
    )
    return MembershipDiff(added, removed, changed)
