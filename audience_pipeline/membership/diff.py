"""What changed between an audience snapshot and what a destination last received (its ledger).

In two steps, so that the payloads of a ledger's members are read only for the few that changed:
`find_changes` compares user ids and fingerprints alone, `with_old_payloads` then adds what the
destination was given to the members that left or changed; `diff` is both.
"""

from collections.abc import Callable
from dataclasses import dataclass

import polars as pl
import polars_hash  # noqa: F401  (registers the `nchash` namespace)

MEMBER_COLUMNS = ["user_id", "fingerprint", "payload"]
FINGERPRINT_HASH = "fingerprint_hash"


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
    """Compare `snapshot` (`user_id, fingerprint, payload`, one row per member) with a ledger frame
    (the same columns).

    Payloads are carried along, never read. Raises ValueError when the snapshot has null or
    duplicate user ids, which would make the ledger ambiguous.
    """
    changes = find_changes(snapshot, ledger)
    return with_old_payloads(
        changes, lambda user_ids: ledger.join(user_ids.to_frame(), on="user_id", how="semi")
    )


def fingerprint_hash(fingerprint: pl.Expr) -> pl.Expr:
    """A 64-bit hash of each fingerprint (text), what `find_changes` compares."""
    return fingerprint.nchash.xxh3_64()


def find_changes(snapshot: pl.DataFrame, ledger: pl.DataFrame) -> MembershipDiff:
    """`diff` of `snapshot` against a ledger's user ids and fingerprints alone (`user_id` and
    `fingerprint`, or its `FINGERPRINT_HASH`): what the ledger holds of the members removed or changed
    (`fingerprint, payload`, `old_fingerprint, old_payload`) is null until `with_old_payloads`."""
    for column in ("user_id", "fingerprint"):
        if nulls := snapshot.get_column(column).null_count():
            raise ValueError(f"Snapshot has {nulls} members without a {column}")
    if duplicates := snapshot.height - snapshot.get_column("user_id").n_unique():
        raise ValueError(f"Snapshot has {duplicates} duplicate user_ids")

    new_at, old_at = _differing(snapshot, ledger)
    new = snapshot.select(MEMBER_COLUMNS)
    unknown = pl.lit(None, pl.String)
    in_both = new_at.is_not_null() & old_at.is_not_null()
    removed = ledger.select("user_id")[old_at.filter(new_at.is_null())]
    return MembershipDiff(
        added=new[new_at.filter(old_at.is_null())],
        removed=removed.with_columns(unknown.alias("fingerprint"), unknown.alias("payload")),
        changed=new[new_at.filter(in_both)].with_columns(
            unknown.alias("old_fingerprint"), unknown.alias("old_payload")
        ),
    )


def with_old_payloads(
    changes: MembershipDiff, old_rows: Callable[[pl.Series], pl.DataFrame]
) -> MembershipDiff:
    """`changes` with what the destination was given for the members removed or changed: `old_rows(user_ids)`
    gives the ledger's rows of those user ids (`user_id, fingerprint, payload` at least)."""
    user_ids = pl.concat([changes.removed.get_column("user_id"), changes.changed.get_column("user_id")])
    if user_ids.is_empty():
        return changes
    old = old_rows(user_ids).select(MEMBER_COLUMNS)
    removed = changes.removed.select("user_id").join(old, on="user_id", how="left", maintain_order="left")
    changed = changes.changed.drop("old_fingerprint", "old_payload").join(
        old.rename({"fingerprint": "old_fingerprint", "payload": "old_payload"}),
        on="user_id",
        how="left",
        maintain_order="left",
    )
    return MembershipDiff(changes.added, removed, changed)


def _differing(new: pl.DataFrame, old: pl.DataFrame) -> tuple[pl.Series, pl.Series]:
    """The row positions in `new` and in `old` of every member whose fingerprints differ (null where
    the member is on one side only), found in one full join.

    The join is on 64-bit hashes of the user ids and fingerprints, several times faster than on the
    text. Fingerprints are SHA-256 digests: two that differ hash alike with odds of 2^-64, so a
    changed member is never taken for an unchanged one in practice. User ids are arbitrary text, so
    the pairs the join matched are checked to hold the same user id; a hash shared by two ids (odds
    of about 1 in 200,000 for an audience of 10M) falls back to a join on the text.
    """

    def hashed(frame: pl.DataFrame, side: str) -> pl.LazyFrame:
        given = FINGERPRINT_HASH in frame.columns
        return frame.lazy().select(
            pl.col("user_id").nchash.xxh3_64().alias("h"),
            (pl.col(FINGERPRINT_HASH) if given else fingerprint_hash(pl.col("fingerprint"))).alias(
                f"f_{side}"
            ),
            pl.int_range(pl.len(), dtype=pl.UInt32).alias(side),
        )

    sides = ((new, "new"), (old, "old"))
    joined = hashed(new, "new").join(hashed(old, "old"), on="h", how="full", coalesce=True).collect()
    matched = joined.filter(pl.col("new").is_not_null() & pl.col("old").is_not_null())
    same = new.get_column("user_id").gather(matched.get_column("new")) == old.get_column("user_id").gather(
        matched.get_column("old")
    )
    if not same.all():
        by_text = [hashed(frame, side).with_columns(frame.get_column("user_id")) for frame, side in sides]
        joined = by_text[0].join(by_text[1], on="user_id", how="full", coalesce=True).collect()
    differing = joined.filter(pl.col("f_new").ne_missing(pl.col("f_old")))
    return differing.get_column("new"), differing.get_column("old")
