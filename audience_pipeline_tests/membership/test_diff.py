"""The diff of a snapshot against a ledger: exact added, removed and changed members."""

import polars as pl
import pytest

from audience_pipeline.membership import LEDGER_SCHEMA, diff


def members(*rows: tuple[str, str, str]) -> pl.DataFrame:
    return pl.DataFrame(rows, schema=["user_id", "fingerprint", "payload"], orient="row")


def ledger(*rows: tuple[str, str, str]) -> pl.DataFrame:
    return members(*rows).with_columns(version=pl.lit(1, pl.Int64))


def rows(frame: pl.DataFrame) -> list[tuple]:
    return sorted(frame.rows())


def test_added_removed_and_changed_members_are_found_exactly():
    snapshot = members(("u1", "f1", "p1"), ("u2", "f2-new", "p2-new"), ("u4", "f4", "p4"))
    delivered = ledger(("u1", "f1", "p1"), ("u2", "f2", "p2"), ("u3", "f3", "p3"))

    changes = diff(snapshot, delivered)

    assert rows(changes.added) == [("u4", "f4", "p4")]
    assert rows(changes.removed) == [("u3", "f3", "p3")]
    assert changes.changed.columns == ["user_id", "fingerprint", "payload", "old_fingerprint", "old_payload"]
    assert rows(changes.changed) == [("u2", "f2-new", "p2-new", "f2", "p2")]


def test_removed_members_carry_the_payload_that_was_delivered():
    changes = diff(members(("u1", "f1", "p1")), ledger(("u1", "f1", "p1"), ("u2", "f2", "delivered")))
    assert changes.removed.get_column("payload").to_list() == ["delivered"]


def test_a_payload_change_without_an_identity_change_is_no_change():
    changes = diff(members(("u1", "f1", "re-encrypted")), ledger(("u1", "f1", "p1")))
    assert (changes.added.height, changes.removed.height, changes.changed.height) == (0, 0, 0)


def test_against_an_empty_ledger_everyone_is_added():
    snapshot = members(("u1", "f1", "p1"), ("u2", "f2", "p2"))
    changes = diff(snapshot, LEDGER_SCHEMA.to_frame())
    assert rows(changes.added) == rows(snapshot)
    assert changes.removed.is_empty() and changes.changed.is_empty()


@pytest.mark.parametrize(
    ("snapshot", "message"),
    [
        (members(("u1", "f1", "p1"), ("u1", "f2", "p2")), "1 duplicate user_ids"),
        (members((None, "f1", "p1")), "without a user_id"),
        (members(("u1", None, "p1")), "without a fingerprint"),
    ],
)
def test_ambiguous_snapshots_are_refused(snapshot, message):
    with pytest.raises(ValueError, match=message):
        diff(snapshot, ledger(("u1", "f1", "p1")))
