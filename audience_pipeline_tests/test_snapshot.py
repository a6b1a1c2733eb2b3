import hashlib
import tempfile

import polars as pl
import pytest

from audience_pipeline.snapshot import MissingUserIdError, Snapshot, build_snapshot
from audience_pipeline.state import buckets
from audience_pipeline.state.buckets import BITS_KEY, bucket_of


def sha256(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


@pytest.fixture
def snapshot_of(tmp_path):
    """Build the snapshot of a query result arriving in batches of two rows; its counts and file."""

    def build(result: pl.DataFrame, **options) -> tuple[Snapshot, pl.DataFrame]:
        path = str(tmp_path / "snapshot.parquet")
        snapshot = build_snapshot(result.iter_slices(2), result.schema, path, **options)
        return snapshot, pl.read_parquet(path)

    return build


def test_members_are_unique_non_null_user_ids_and_the_rest_are_rejects(snapshot_of):
    result = pl.DataFrame(
        {
            "user_id": ["b", "a", "a", None, "  ", " c "],
            "email": ["b@x.com", "first@x.com", "second@x.com", "n@x.com", "blank@x.com", "c@x.com"],
        }
    )

    snapshot, frame = snapshot_of(result)

    assert snapshot.rows == 6
    assert frame["user_id"].to_list() == ["a", "b", "c"]
    assert snapshot.members == 3
    # The first row the query returned for a repeated user wins.
    assert frame.filter(pl.col("user_id") == "a")["email"].item() == sha256("first@x.com")
    assert snapshot.rejects == {"user_id": {"missing_user_id": 2, "duplicate_user_id": 1}}


def test_identities_are_normalized_and_hashed_with_the_default_country(snapshot_of):
    result = pl.DataFrame(
        {
            "user_id": [1, 2, 3],
            "email": ["  ABC@Example.com ", "not-an-email", None],
            "phone": ["(206) 555-0100", None, "020 7946 0958"],
            "country_code": [None, None, "GB"],
        }
    )

    snapshot, frame = snapshot_of(result, default_country="US")

    assert frame["user_id"].to_list() == ["1", "2", "3"]
    assert frame["email"].to_list() == [
        "9eceb13483d7f187ec014fd6d4854d1420cfc634328af85f51d0323ba8622e21",
        None,
        None,
    ]
    assert frame["phone"].to_list() == [sha256("12065550100"), None, sha256("442079460958")]
    assert snapshot.rejects == {"email": {"invalid_email": 1}}
    assert snapshot.values_out == {"email": 1, "phone": 2}
    assert snapshot.values_hashed == 3


def test_columns_that_are_not_identities_or_consent_are_dropped(snapshot_of):
    result = pl.DataFrame(
        {
            "user_id": ["a"],
            "email": ["a@x.com"],
            "amzn_ad_storage": ["GRANTED"],
            "ip_address": ["192.0.2.1"],
            "favourite_colour": ["green"],
        }
    )

    snapshot, frame = snapshot_of(result)

    assert frame.columns == ["user_id", "email", "amzn_ad_storage"]
    assert snapshot.dropped_columns == ("ip_address", "favourite_colour")


def test_a_result_without_user_id_is_an_error_naming_the_columns(snapshot_of, tmp_path):
    with pytest.raises(MissingUserIdError, match=r"no `user_id` column \(it returned: email\)"):
        snapshot_of(pl.DataFrame({"email": ["a@x.com"]}))
    assert list(tmp_path.iterdir()) == []


def test_an_empty_result_is_an_empty_snapshot(snapshot_of):
    snapshot, frame = snapshot_of(
        pl.DataFrame({"user_id": [], "email": []}, schema={"user_id": pl.Int64, "email": pl.String})
    )

    assert snapshot.members == 0
    assert snapshot.rejects == {}
    assert frame.schema == {"user_id": pl.String, "email": pl.String}


def test_a_large_result_is_built_a_bucket_at_a_time_from_disk(snapshot_of, tmp_path, monkeypatch):
    # Buckets of about ten rows, and every batch set aside on disk, here.
    monkeypatch.setattr(buckets, "BUCKET_ROWS", 10)
    monkeypatch.setattr(buckets, "SPILL_MEMORY_BYTES", 0)
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    users = [f"u{i}" for i in range(100)]
    result = pl.DataFrame(
        {
            "user_id": [*users, None, *users[:5]],
            "email": [*(f"{u}@x.com" for u in users), "x@x.com", *(["later@x.com"] * 5)],
        }
    )

    snapshot, frame = snapshot_of(result)

    assert (snapshot.rows, snapshot.members) == (106, 100)
    assert snapshot.rejects == {"user_id": {"missing_user_id": 1, "duplicate_user_id": 5}}
    assert sorted(frame["user_id"]) == sorted(users)
    assert frame.filter(pl.col("user_id") == "u3")["email"].item() == sha256("u3@x.com")
    # 64 buckets (of about two or three: wide rows make small buckets) in bucket order, each sorted by
    # user id; nothing set aside is left.
    assert pl.read_parquet_metadata(tmp_path / "snapshot.parquet")[BITS_KEY] == "6"
    numbered = frame.with_columns(bucket_of("user_id", 6).alias("bucket"))
    assert numbered["bucket"].is_sorted()
    assert numbered.equals(numbered.sort("bucket", "user_id"))
    assert list(scratch.iterdir()) == []
