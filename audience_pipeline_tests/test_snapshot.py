import hashlib

import polars as pl
import pytest

from audience_pipeline.snapshot import MissingUserIdError, build_snapshot


def sha256(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def test_members_are_unique_non_null_user_ids_and_the_rest_are_rejects():
    result = pl.DataFrame(
        {
            "user_id": ["b", "a", "a", None, "  ", " c "],
            "email": ["b@x.com", "first@x.com", "second@x.com", "n@x.com", "blank@x.com", "c@x.com"],
        }
    )

    snapshot = build_snapshot(result)

    assert snapshot.rows == 6
    assert snapshot.frame["user_id"].to_list() == ["a", "b", "c"]
    assert snapshot.members == 3
    # The first row the query returned for a repeated user wins.
    assert snapshot.frame.filter(pl.col("user_id") == "a")["email"].item() == sha256("first@x.com")
    assert snapshot.rejects == {"user_id": {"missing_user_id": 2, "duplicate_user_id": 1}}


def test_identities_are_normalized_and_hashed_with_the_default_country():
    result = pl.DataFrame(
        {
            "user_id": [1, 2, 3],
            "email": ["  ABC@Example.com ", "not-an-email", None],
            "phone": ["(206) 555-0100", None, "020 7946 0958"],
            "country_code": [None, None, "GB"],
        }
    )

    snapshot = build_snapshot(result, default_country="US")

    frame = snapshot.frame
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


def test_columns_that_are_not_identities_or_consent_are_dropped():
    result = pl.DataFrame(
        {
            "user_id": ["a"],
            "email": ["a@x.com"],
            "amzn_ad_storage": ["GRANTED"],
            "ip_address": ["192.0.2.1"],
            "favourite_colour": ["green"],
        }
    )

    snapshot = build_snapshot(result)

    assert snapshot.frame.columns == ["user_id", "email", "amzn_ad_storage"]
    assert snapshot.dropped_columns == ("ip_address", "favourite_colour")


def test_a_result_without_user_id_is_an_error_naming_the_columns():
    with pytest.raises(MissingUserIdError, match=r"no `user_id` column \(it returned: email\)"):
        build_snapshot(pl.DataFrame({"email": ["a@x.com"]}))


def test_an_empty_result_is_an_empty_snapshot():
    snapshot = build_snapshot(
        pl.DataFrame({"user_id": [], "email": []}, schema={"user_id": pl.Int64, "email": pl.String})
    )

    assert snapshot.members == 0
    assert snapshot.rejects == {}
