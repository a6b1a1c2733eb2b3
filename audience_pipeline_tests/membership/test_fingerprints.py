"""Fingerprints tell identities apart exactly; message ids are stable and specific."""

import hashlib

import polars as pl
import pytest

from audience_pipeline.membership import fingerprint, message_id, message_id_of

COLUMNS = ["email", "phone"]


def fingerprints(rows: list[dict], columns: list[str] = COLUMNS) -> list[str]:
    frame = pl.DataFrame(rows, schema={"email": pl.String, "phone": pl.String})
    return fingerprint(frame, columns).to_list()


def test_the_same_identities_always_give_the_same_fingerprint():
    rows = [{"email": "a@x.com", "phone": "+1"}, {"email": "a@x.com", "phone": "+1"}]
    first, second = fingerprints(rows)
    assert first == second == fingerprints(rows[:1])[0]


def test_the_fingerprint_is_sha256_of_length_prefixed_values():
    expected = hashlib.sha256(b"7:a@x.com2:+1").hexdigest()
    assert fingerprints([{"email": "a@x.com", "phone": "+1"}]) == [expected]


@pytest.mark.parametrize(
    "other",
    [
        {"email": "a@x.com", "phone": "+2"},
        {"email": "b@x.com", "phone": "+1"},
        {"email": "a@x.com", "phone": None},
        {"email": "a@x.com", "phone": ""},
        # Values that run together alike without a length prefix.
        {"email": "a@x.com+", "phone": "1"},
    ],
)
def test_any_change_gives_another_fingerprint(other):
    original, changed = fingerprints([{"email": "a@x.com", "phone": "+1"}, other])
    assert original != changed


def test_null_and_empty_string_differ():
    null, empty = fingerprints([{"email": None, "phone": None}, {"email": "", "phone": ""}])
    assert null != empty


def test_column_order_is_the_order_given():
    row = [{"email": "x", "phone": "y"}]
    assert fingerprints(row, ["email", "phone"]) != fingerprints(row, ["phone", "email"])
    assert fingerprints(row, ["email", "phone"]) == fingerprints(
        [{"email": "y", "phone": "x"}], ["phone", "email"]
    )


def test_missing_columns_are_named():
    with pytest.raises(ValueError, match="zip"):
        fingerprint(pl.DataFrame({"email": ["a"]}), ["email", "zip"])


def ids(
    change: str = "added",
    version: int = 3,
    fingerprint: str = "f1",
    destination: str = "firehose/s",
    epoch: str = "e1",
) -> list:
    frame = pl.DataFrame({"user_id": ["u1", "u2"], "fingerprint": [fingerprint, fingerprint]})
    expr = message_id(destination, 1001, pl.col("user_id"), change, epoch, version, pl.col("fingerprint"))
    return frame.select(expr).to_series().to_list()


def test_message_ids_are_stable_and_match_the_scalar_helper():
    assert ids() == ids()
    assert ids()[0] == message_id_of("firehose/s", "1001", "u1", "added", "e1", 3, "f1")
    assert len(set(ids())) == 2


@pytest.mark.parametrize(
    "other",
    [
        {"change": "removed"},
        {"version": 4},
        {"fingerprint": "f2"},
        {"destination": "firehose/t"},
        {"epoch": "e2"},
    ],
)
def test_message_ids_differ_for_any_other_message(other):
    assert set(ids()).isdisjoint(ids(**other))
