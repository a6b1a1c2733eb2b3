"""AMC identity deletion payloads: hashing per normalization.md, dedupe, chunking, the sandbox round trip."""

import hashlib
import json

import boto3
import polars as pl
import pytest

from audience_pipeline.amc.deletion import IDENTITY_COLUMNS, MAX_IDENTITIES_PER_REQUEST, deletion_identities
from audience_pipeline.clients.amc import AmcClient, csv_format, first_amc_account

from ..conftest import journal
from ..sandbox.conftest import BUCKET, INSTANCE, dimension_dataset, stored_rows, wait


def sha(normalized: str) -> str:
    return hashlib.sha256(normalized.encode()).hexdigest()


@pytest.fixture
def amc(ads_client) -> AmcClient:
    """An AMC client for the sandbox instance, on the first account the credentials reach."""
    account = first_amc_account(ads_client)
    return AmcClient(ads_client, INSTANCE, account["accountId"], account["marketplaceId"])


def people(n: int) -> pl.DataFrame:
    return pl.DataFrame(
        {
            "email": [f" Person.{i}@Example.COM " for i in range(n)],
            "phone": [f"(206) 555-{i % 10000:04d}" for i in range(n)],
            "country_code": ["US"] * n,
        }
    )


def test_identities_hash_the_values_normalization_md_gives():
    frame = pl.DataFrame(
        {
            "email": ["  John.Doe@Example.COM ", None],
            "phone": ["(206) 555-0100", "020 7946 0958"],
            "first_name": ["Jürgen", None],
            "last_name": ["O'Brien", None],
            "address": ["123 Main Street, Apt #5", None],
            "city": ["München", None],
            "state": ["Texas", None],
            "zip": ["2134", None],
            "country_code": ["US", "UK"],
        }
    )
    result = deletion_identities(frame)
    assert [identity["hashedIdentity"] for identity in result.identities] == [
        {
            "FIRST_NAME": sha("juergen"),
            "LAST_NAME": sha("obrien"),
            "EMAIL": sha("john.doe@example.com"),
            "PHONE": sha("12065550100"),
            "ADDRESS": sha("123mainstaptnumber5"),
            "CITY": sha("mnchen"),
            "STATE": sha("tx"),
            "ZIP": sha("02134"),
            "COUNTRY_CODE": sha("us"),
        },
        # Only the row's non-null hashes; its country makes the national number a UK one.
        {"PHONE": sha("442079460958"), "COUNTRY_CODE": sha("gb")},
    ]
    assert result.columns == IDENTITY_COLUMNS and result.rejects == {}


def test_the_default_country_reads_national_numbers_but_is_not_sent_as_an_identity():
    result = deletion_identities(pl.DataFrame({"phone": ["020 7946 0958"]}), country_code="GB")
    assert result.identities == [{"hashedIdentity": {"PHONE": sha("442079460958")}}]
    with pytest.raises(ValueError, match="country_code: unknown country"):
        deletion_identities(pl.DataFrame({"phone": ["1"]}), country_code="Atlantis")


def test_already_hashed_values_pass_through_lowercased():
    digest = sha("abc@example.com")
    result = deletion_identities(pl.DataFrame({"email": [digest.upper()]}))
    assert result.identities == [{"hashedIdentity": {"EMAIL": digest}}]


def test_columns_match_ignoring_case_and_others_are_ignored_and_listed():
    frame = pl.DataFrame({"EMAIL": ["a@example.com"], "Last_Name": ["Doe"], "customer_id": [7]})
    result = deletion_identities(frame)
    assert result.identities == [{"hashedIdentity": {"LAST_NAME": sha("doe"), "EMAIL": sha("a@example.com")}}]
    assert result.metadata()["case_insensitive_matches"] == {"Last_Name": "last_name", "EMAIL": "email"}
    assert result.metadata()["ignored_columns"] == ["customer_id"]


@pytest.mark.parametrize(
    ("columns", "message"),
    [
        (
            ["customer_id", "name"],
            "first_name, last_name, email, phone, address, city, state, zip, country_code",
        ),
        (["zip", "Country_Code"], "only zip, country_code, which name places"),
        (["Email", "EMAIL"], "Email, EMAIL all match the identity column email"),
    ],
)
def test_unusable_columns_are_an_error_naming_the_expected_ones(columns, message):
    with pytest.raises(ValueError, match=message):
        deletion_identities(pl.DataFrame({column: ["x"] for column in columns}))


def test_an_exact_name_wins_over_a_case_insensitive_one():
    result = deletion_identities(pl.DataFrame({"email": ["a@example.com"], "EMAIL": ["b@example.com"]}))
    assert result.identities == [{"hashedIdentity": {"EMAIL": sha("a@example.com")}}]
    assert result.ignored_columns == ("EMAIL",)


def test_rejects_empty_rows_place_only_rows_and_duplicates_are_counted_never_shown():
    frame = pl.DataFrame(
        {
            "email": ["not-an-email", None, "a@example.com", " A@example.com", None, "b@example.com"],
            "zip": [None, None, None, None, "75236", "75236"],
            "country_code": [None, None, None, None, "US", "US"],
        }
    )
    result = deletion_identities(frame)
    assert result.identities == [
        {"hashedIdentity": {"EMAIL": sha("a@example.com")}},
        {"hashedIdentity": {"EMAIL": sha("b@example.com"), "ZIP": sha("75236"), "COUNTRY_CODE": sha("us")}},
    ]
    metadata = result.metadata()
    assert metadata == {
        "rows_in": 6,
        "identities": 2,
        "duplicates": 1,
        "rows_without_identity": 2,
        "rows_place_only": 1,
        "requests": 1,
        "rejects": {"email": {"invalid_email": 1}},
        "identity_columns": ["email", "zip", "country_code"],
        "ignored_columns": [],
        "case_insensitive_matches": {},
    }
    shown = json.dumps(metadata)
    assert "example.com" not in shown and "not-an-email" not in shown and sha("a@example.com") not in shown


def test_requests_hold_at_most_1000_identities():
    result = deletion_identities(people(2500))
    assert [len(chunk) for chunk in result.requests()] == [1000, 1000, 500]
    assert [len(chunk) for chunk in result.requests(size=700)] == [700, 700, 700, 400]
    assert result.metadata()["requests"] == 3
    assert sum(result.requests(), []) == result.identities
    for size in (0, MAX_IDENTITIES_PER_REQUEST + 1):
        with pytest.raises(ValueError, match="size"):
            result.requests(size)
    assert deletion_identities(people(0)).requests() == []


def test_the_sandbox_accepts_every_request_and_never_sees_a_raw_value(sandbox, amc):
    frame = people(2500)
    result = deletion_identities(frame)
    request_ids = [amc.request_user_deletion(chunk) for chunk in result.requests()]
    deletions = [
        wait(lambda request_id=request_id: amc.get_user_deletion(request_id)) for request_id in request_ids
    ]
    assert [deletion["status"] for deletion in deletions] == ["SUCCEEDED"] * 3
    assert [deletion["identityCount"] for deletion in deletions] == [1000, 1000, 500]
    received = json.dumps(
        [entry for entry in journal(sandbox.ads_url) if "userDeletionRequest" in entry["path"]]
    )
    # Each raw phone and its normalized digits: a bare "555-" would also match a request id's UUID.
    phones = {*frame["phone"], *(f"1206555{i % 10000:04d}" for i in range(frame.height))}
    assert "example.com" not in received.lower()
    assert not [phone for phone in phones if phone in received]
    assert sha("person.0@example.com") in received


def test_deleting_raw_identities_removes_the_rows_amc_holds_for_them(sandbox, amc):
    s3 = boto3.client(
        "s3",
        endpoint_url=sandbox.aws_url,
        aws_access_key_id="sandbox",
        aws_secret_access_key="sandbox",
        region_name="us-east-1",
    )
    s3.create_bucket(Bucket=BUCKET)
    stored = pl.DataFrame({"email": [sha(f"user{i}@example.com") for i in range(4)], "tier": ["a"] * 4})
    s3.put_object(
        Bucket=BUCKET,
        Key="customers.csv",
        Body=stored.write_csv().encode(),
        Tagging=f"instanceId={INSTANCE}",
        ServerSideEncryption="AES256",
    )
    amc.create_dataset(dimension_dataset())
    upload_id = amc.start_upload(
        "customers", bucket=BUCKET, file_key="customers.csv", file_format=csv_format()
    )
    assert wait(lambda: amc.get_upload("customers", upload_id))["status"] == "SUCCESS"

    forget = deletion_identities(pl.DataFrame({"Email": [" USER1@example.com", "user3@Example.com "]}))
    (chunk,) = forget.requests()
    request_id = amc.request_user_deletion(chunk)
    assert wait(lambda: amc.get_user_deletion(request_id))["status"] == "SUCCEEDED"
    assert set(stored_rows(sandbox, "customers")["email"]) == {
        sha("user0@example.com"),
        sha("user2@example.com"),
    }
