"""Tests for the synthetic sample-data generator (audience_pipeline.sample_data)."""

from __future__ import annotations

import contextlib
import hashlib
from datetime import timedelta
from pathlib import Path

import duckdb
import phonenumbers
import polars as pl
import pytest

from audience_pipeline import sample_data
from audience_pipeline.sample_data import REFERENCE_TIME, write_sample_data

PROFILES = 6_000
COUNTRIES = {"US", "CA", "GB", "DE", "FR", "IT", "ES", "JP", "IN"}
IDENTITY_COLUMNS = [
    "customer_id", "email", "phone", "first_name", "last_name", "address", "city", "state", "zip",
    "country_code", "idfa", "gaid", "idfv", "android_id", "fire_adid", "microsoft_adid", "roku_adid",
    "roku_publisher_id", "mpid", "facebook_id", "google_id", "microsoft_id", "twitter_id", "yahoo_id",
    "other", *(f"other_{i}" for i in range(2, 11)), "live_ramp_id", "experian_id", "kantar_id", "merkle_id",
    "neustar_id", "real_id", "samba_tv_id",
]  # fmt: skip
CONSENT_COLUMNS = ["amzn_ad_storage", "amzn_user_data", "tcf_string", "gpp_string", "ip_address"]
# Every way the generator writes a country, upper-cased, to its ISO alpha-2 code.
COUNTRY_SPELLINGS = {code: code for code in COUNTRIES} | {
    "USA": "US", "UNITED STATES": "US", "UNITED STATES OF AMERICA": "US", "CAN": "CA", "CANADA": "CA",
    "UK": "GB", "GBR": "GB", "UNITED KINGDOM": "GB", "DEU": "DE", "GERMANY": "DE", "DEUTSCHLAND": "DE",
    "FRA": "FR", "FRANCE": "FR", "RÉPUBLIQUE FRANÇAISE": "FR", "ITA": "IT", "ITALY": "IT", "ITALIA": "IT",
    "ESP": "ES", "SPAIN": "ES", "ESPAÑA": "ES", "JPN": "JP", "JAPAN": "JP", "日本": "JP", "IND": "IN",
    "INDIA": "IN", "BHARAT": "IN",
}  # fmt: skip
SHA256 = r"^[0-9a-f]{64}$"
SHA256_UPPER = r"^[0-9A-F]{64}$"


def read(path: Path, query: str) -> pl.DataFrame:
    with duckdb.connect(str(path), read_only=True) as conn:
        return conn.sql(query).pl()


def tables(path: Path) -> dict[str, pl.DataFrame]:
    return {
        "profiles": read(path, "SELECT * FROM profiles ORDER BY user_id"),
        "events": read(path, "SELECT * FROM events ORDER BY event_id"),
        "purchases": read(path, "SELECT * FROM purchases ORDER BY purchase_id"),
    }


@pytest.fixture(scope="module")
def sample(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_sample_data(tmp_path_factory.mktemp("sample"), PROFILES, seed=7)


@pytest.fixture(scope="module")
def profiles(sample: Path) -> pl.DataFrame:
    people = read(sample, "SELECT * FROM profiles")
    country = pl.col("country_code").str.strip_chars().str.to_uppercase().replace_strict(COUNTRY_SPELLINGS)
    return people.with_columns(true_country=country)


def column_types(path: Path, table: str) -> dict[str, str]:
    return dict(read(path, f"DESCRIBE {table}").select("column_name", "column_type").iter_rows())


def count(frame: pl.DataFrame, condition: pl.Expr) -> int:
    return frame.filter(condition).height


def test_returns_the_database_path_and_leaves_no_temporary_files(sample: Path) -> None:
    assert sample.name == "sample.duckdb"
    assert [p.name for p in sample.parent.iterdir()] == ["sample.duckdb"]


def test_tables_have_the_expected_columns_and_types(sample: Path) -> None:
    profile_types = column_types(sample, "profiles")
    assert list(profile_types) == ["user_id", "created_at", *IDENTITY_COLUMNS, *CONSENT_COLUMNS]
    assert profile_types["created_at"] == "TIMESTAMP"
    assert {t for c, t in profile_types.items() if c != "created_at"} == {"VARCHAR"}
    assert column_types(sample, "events") == {
        "event_id": "BIGINT",
        "user_id": "VARCHAR",
        "event_type": "VARCHAR",
        "event_time": "TIMESTAMP",
        "product_category": "VARCHAR",
        "value": "DOUBLE",
    }
    assert column_types(sample, "purchases") == {
        "purchase_id": "BIGINT",
        "user_id": "VARCHAR",
        "purchase_time": "TIMESTAMP",
        "product_sku": "VARCHAR",
        "product_category": "VARCHAR",
        "quantity": "INTEGER",
        "unit_price": "DECIMAL(10,2)",
        "currency": "VARCHAR",
        "store_country": "VARCHAR",
    }


def test_row_counts(sample: Path) -> None:
    per_user = read(
        sample,
        "SELECT p.user_id, count(e.user_id) AS n FROM profiles p LEFT JOIN events e USING (user_id) "
        "GROUP BY p.user_id",
    )["n"]
    assert per_user.len() == PROFILES
    assert 4.5 < per_user.mean() < 5.5
    assert (per_user == 0).sum() > PROFILES * 0.05  # some users have no events ...
    assert per_user.max() >= 40  # ... and some a great many
    purchases = read(sample, "SELECT count(*) AS n FROM purchases")["n"][0]
    assert 0.85 * PROFILES < purchases < 1.15 * PROFILES


def test_user_ids_are_unique_and_referenced_ids_exist(sample: Path, profiles: pl.DataFrame) -> None:
    assert profiles["user_id"].n_unique() == PROFILES
    assert profiles["user_id"].str.contains(r"^u\d{8}$").all()
    assert sorted(profiles["user_id"])[:2] == ["u00000001", "u00000002"]
    for table, key in (("events", "event_id"), ("purchases", "purchase_id")):
        orphans = read(sample, f"SELECT count(*) AS n FROM {table} ANTI JOIN profiles USING (user_id)")
        assert orphans["n"][0] == 0
        ids = read(sample, f"SELECT {key} FROM {table}")[key]
        assert ids.sort().to_list() == list(range(1, ids.len() + 1))


def test_all_countries_present_with_us_largest(profiles: pl.DataFrame) -> None:
    assert set(profiles["true_country"].drop_nulls()) == COUNTRIES
    sizes = profiles["true_country"].value_counts(sort=True)
    assert sizes["true_country"][0] == "US"


def test_country_codes_are_messy(profiles: pl.DataFrame) -> None:
    values = set(profiles["country_code"].drop_nulls())
    assert {"US", "us", "USA", "DEU", "UK", "United States", "Germany"} <= values
    assert 0 < profiles["country_code"].null_count() < PROFILES * 0.1
    assert count(profiles, pl.col("country_code") == "US") > PROFILES * 0.25


def test_emails_are_messy(profiles: pl.DataFrame) -> None:
    email = pl.col("email")
    assert count(profiles, email.str.contains(SHA256)) > 50
    assert count(profiles, email.str.contains(SHA256_UPPER)) > 10
    assert count(profiles, email == "not-an-email") > 0
    assert count(profiles, ~email.str.contains("@") & ~email.str.contains(r"^[0-9a-fA-F]{64}$")) > 20
    assert count(profiles, email.str.count_matches("@") == 2) > 10
    assert count(profiles, email.str.contains(r"\+[^@]+@")) > 100
    assert count(profiles, email != email.str.strip_chars()) > 100
    assert count(profiles, (email != email.str.to_lowercase()) & ~email.str.contains(SHA256_UPPER)) > 100
    assert count(profiles, email == "") > 10
    assert 0.03 < profiles["email"].null_count() / PROFILES < 0.15
    plain = profiles.filter(email.str.contains(r"^[a-z0-9._+]+@[a-z0-9.]+\.[a-z]+$"))
    assert plain.height > PROFILES * 0.6
    assert (
        plain["email"].str.contains(r"@([a-z0-9]+\.)*(example|esempio|ejemplo|exemple|beispiel)(\.|$)").all()
    )


def test_names_and_addresses_are_messy(profiles: pl.DataFrame) -> None:
    names = pl.concat([profiles["first_name"], profiles["last_name"]]).drop_nulls()
    assert names.str.contains("[äöüéèñøçó]").sum() > 100
    assert names.str.contains("'").sum() > 10
    assert names.str.contains(r"\w-\w").sum() > 50
    assert (names.str.contains(r"[A-Z]{3}") & (names == names.str.to_uppercase())).sum() > 50
    assert (names != names.str.strip_chars()).sum() > 50
    addresses = profiles["address"].drop_nulls()
    address_patterns = [
        r"\bSt\.?$", r"\bStreet\b", r"\bAve\b", r"Apt #\d", r"Apt \d+[A-C]\b", r"^\d+-[A-H] ", r"\bVia \w",
        r"\bCalle \w", r"\d+,? rue de", r"straße \d", r"^\d+ [NSEW]\.? ",
    ]  # fmt: skip
    for pattern in address_patterns:
        assert addresses.str.contains(pattern).any(), pattern
    cities = set(profiles["city"].drop_nulls())
    assert {"München", "Düsseldorf", "Montréal", "Munich"} <= cities


def test_states_are_messy(profiles: pl.DataFrame) -> None:
    states = set(profiles["state"].drop_nulls())
    assert {"TX", "Texas", "tx", "Bayern", "Nordrhein-Westfalen", "Île-de-France", "Québec"} <= states
    assert "District of Columbia" in states or "DC" in states
    assert states & {"Unknown", "N/A", "XX", "--", "Other", "0"}
    no_states = profiles.filter(pl.col("true_country").is_in(["GB", "JP"]))
    assert no_states["state"].null_count() == no_states.height


def test_zips_are_messy(profiles: pl.DataFrame) -> None:
    us = profiles.filter(pl.col("true_country") == "US")["zip"].drop_nulls()
    assert us.str.contains(r"^\d{5}-\d{4}$").sum() > 50  # ZIP+4
    assert us.str.contains(r"^\d{5}$").mean() > 0.7
    assert us.str.contains(r"^\d{4}$").sum() > 5  # lost its leading zero
    zips = profiles["zip"].drop_nulls()
    zip_patterns = [
        r"^[A-Z]\d[A-Z] \d[A-Z]\d$", r"^[a-z]\d[a-z]\d[a-z]\d$", r"^[A-Z]{1,2}\d[A-Z\d]? \d[A-Z]{2}$",
        r"^[a-z]{1,2}\d[a-z\d]? ?\d[a-z]{2}$", r"^\d{3}-\d{4}$", r"^\d{6}$",
    ]  # fmt: skip
    for pattern in zip_patterns:
        assert zips.str.contains(pattern).any(), pattern
    assert zips.is_in(["00000", "N/A", "ABCDE"]).any()


def test_idfa_only_for_ios_and_gaid_only_for_android(profiles: pl.DataFrame) -> None:
    ios = pl.col("idfa").is_not_null() | pl.col("idfv").is_not_null()
    android = pl.col("gaid").is_not_null() | pl.col("android_id").is_not_null()
    assert count(profiles, pl.col("idfa").is_not_null()) > PROFILES * 0.1
    assert count(profiles, pl.col("gaid").is_not_null()) > PROFILES * 0.1
    assert count(profiles, ios & android) == 0


def test_maids_are_mostly_lowercase_uuids_with_zeroed_and_malformed_ones(profiles: pl.DataFrame) -> None:
    idfa = profiles["idfa"].drop_nulls()
    zeroed = (idfa == "00000000-0000-0000-0000-000000000000").sum()
    assert idfa.len() * 0.1 < zeroed < idfa.len() * 0.5
    maids = pl.concat([profiles[c] for c in ("idfa", "gaid", "idfv", "fire_adid", "roku_adid")]).drop_nulls()
    lower = maids.str.contains(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")
    upper = maids.str.contains(r"^[0-9A-F]{8}-[0-9A-F]{4}-[0-9A-F]{4}-[0-9A-F]{4}-[0-9A-F]{12}$")
    assert lower.mean() > 0.7
    assert (upper & ~lower).sum() > 50
    assert (~lower & ~upper).sum() > 0  # malformed


def test_phones_mix_national_and_international_formats(profiles: pl.DataFrame) -> None:
    phones = profiles["phone"].drop_nulls()
    phone_patterns = [
        r"^\(\d{3}\) \d{3}-\d{4}$", r"^\d{3}\.\d{3}\.\d{4}$", r"^1-\d{3}-\d{3}-\d{4}$",
        r"^\+1 \(\d{3}\) \d{3}-\d{4}$", r"^0\d{4} \d{6}$", r"^\+44 \d{2} \d{4} \d{4}$", r"^0044 ",
        r"^0\d{2} \d{8}$", r"^0\d \d{2} \d{2} \d{2} \d{2}$", r"^0\d-\d{4}-\d{4}$", r"^0\d{5} \d{5}$",
        r"^\d{3} \d{3} \d{3}$", r"^\+\d{11,12}$",
    ]  # fmt: skip
    for pattern in phone_patterns:
        assert phones.str.contains(pattern).any(), pattern
    assert phones.str.contains(SHA256).sum() > 50
    assert phones.is_in(["n/a", "123"]).sum() > 10


def test_most_phones_are_possible_numbers_for_their_country(profiles: pl.DataFrame) -> None:
    sample = (
        profiles.filter(
            pl.col("true_country").is_not_null(), pl.col("phone").str.len_chars().is_between(1, 40)
        )
        .select("phone", "true_country")
        .head(3_000)
    )
    possible = 0
    for phone, country in sample.iter_rows():
        with contextlib.suppress(phonenumbers.NumberParseException):
            possible += phonenumbers.is_possible_number(phonenumbers.parse(phone, country))
    assert possible / sample.height > 0.9


def test_consent_columns(profiles: pl.DataFrame) -> None:
    for column in ("amzn_ad_storage", "amzn_user_data"):
        assert set(profiles[column].drop_nulls()) == {"GRANTED", "DENIED"}
        assert profiles[column].null_count() > 0
    with_tcf = profiles.filter(pl.col("tcf_string").is_not_null())
    assert with_tcf.height > 0
    assert set(with_tcf["true_country"].drop_nulls()) <= {"GB", "DE", "FR", "IT", "ES"}
    assert with_tcf["tcf_string"].str.contains(r"^C[PQ][A-Za-z0-9_-]+").all()
    assert profiles["gpp_string"].drop_nulls().str.starts_with("DBAB").all()
    ips = profiles["ip_address"].drop_nulls()
    assert ips.str.contains(r"^\d+\.\d+\.\d+\.\d+$").mean() > 0.8
    assert ips.str.starts_with("2001:db8:").any()


def test_sparse_ids_are_mostly_null(profiles: pl.DataFrame) -> None:
    assert profiles["customer_id"].null_count() < PROFILES * 0.3
    for column in IDENTITY_COLUMNS[IDENTITY_COLUMNS.index("mpid") :]:
        assert 0 < profiles[column].drop_nulls().len() < PROFILES * 0.3, column


def test_events(sample: Path) -> None:
    events = read(sample, "SELECT * FROM events")
    assert set(events["event_type"]) == {
        "page_view", "product_view", "add_to_cart", "purchase", "app_open", "newsletter_signup",
    }  # fmt: skip
    assert events["event_time"].max() <= REFERENCE_TIME
    assert events["event_time"].min() >= REFERENCE_TIME - timedelta(days=90)
    commerce = pl.col("event_type").is_in(["add_to_cart", "purchase"])
    assert count(events, commerce & pl.col("value").is_null()) == 0
    assert count(events, ~commerce & pl.col("value").is_not_null()) == 0
    assert count(events, commerce & pl.col("product_category").is_null()) == 0


def test_purchases_use_the_store_country_currency(sample: Path) -> None:
    purchases = read(sample, "SELECT * FROM purchases")
    currency = {"US": "USD", "CA": "CAD", "GB": "GBP", "JP": "JPY", "IN": "INR"}
    currency |= dict.fromkeys(["DE", "FR", "IT", "ES"], "EUR")
    assert dict(purchases.select("store_country", "currency").unique().iter_rows()) == currency
    assert purchases["quantity"].min() >= 1
    assert (purchases["unit_price"].cast(pl.Float64) > 0).all()
    yen = purchases.filter(pl.col("currency") == "JPY")["unit_price"].cast(pl.Float64)
    assert (yen == yen.round(0)).all()
    assert purchases["product_sku"].str.contains(r"^[A-Z]{4}-\d{5}$").all()
    assert purchases["purchase_time"].max() <= REFERENCE_TIME


def test_same_seed_gives_same_tables_and_other_seeds_differ(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Small chunks, so that the chunk boundaries are covered too.
    monkeypatch.setattr(sample_data, "_CHUNK", 700)
    first = tables(write_sample_data(tmp_path / "a", 2_000, seed=3))
    again = tables(write_sample_data(tmp_path / "b", 2_000, seed=3))
    other = tables(write_sample_data(tmp_path / "c", 2_000, seed=4))
    for name, frame in first.items():
        assert frame.equals(again[name], null_equal=True), name
        assert not frame.equals(other[name], null_equal=True), name
    assert first["profiles"]["user_id"].to_list() == [f"u{i:08d}" for i in range(1, 2_001)]


def test_contents_are_pinned(tmp_path: Path) -> None:
    # Demos, benchmarks and saved ledgers rely on a seed meaning the same data: an edit of the vocabulary
    # file or of the generation logic that changes any value has to be deliberate, and update these.
    expected = {
        "profiles": "d6e1ab245d2b38ae4aa78a0979ecf100585ab5fbb2eb1560f67b4510b6be9c26",
        "events": "f2e92a13b70e793feb54f91db7709dbc50a43b11e258a48777926fb99bec92a9",
        "purchases": "23cd5091d89152b8a7f57dcb1e61f6ef2cb9e18cd10e493e138e79999323c2ea",
    }
    path = write_sample_data(tmp_path, 2_000, seed=0)
    with duckdb.connect(str(path), read_only=True) as conn:
        rows = {table: conn.sql(f"SELECT * FROM {table} ORDER BY ALL").fetchall() for table in expected}
    assert {table: hashlib.sha256(repr(r).encode()).hexdigest() for table, r in rows.items()} == expected


def test_pre_hashed_values_are_sha256_digests(profiles: pl.DataFrame) -> None:
    email = "jose.garcia12@example.com"
    values = [f"{sample_data._SHA_LOWER}{email}", f"{sample_data._SHA_UPPER}{email}", email]
    with duckdb.connect() as conn:
        conn.register("t", pl.DataFrame({"email": values}))
        hashed = conn.sql(f"SELECT {sample_data._unhash('email')} FROM t").pl()["email"].to_list()
    digest = hashlib.sha256(email.encode()).hexdigest()
    assert hashed == [digest, digest.upper(), email]
    for column in ("email", "phone"):
        assert not profiles[column].drop_nulls().str.contains("<<", literal=True).any()


def test_replaces_an_existing_file(tmp_path: Path) -> None:
    (tmp_path / "sample.duckdb").write_text("not a database")
    path = write_sample_data(tmp_path, 300, seed=1)
    assert read(path, "SELECT count(*) AS n FROM profiles")["n"][0] == 300
    write_sample_data(tmp_path, 200, seed=2)
    assert read(path, "SELECT count(*) AS n FROM profiles")["n"][0] == 200
    assert sorted(p.name for p in tmp_path.iterdir()) == ["sample.duckdb"]


def test_tiny_and_empty_samples(tmp_path: Path) -> None:
    assert read(write_sample_data(tmp_path / "one", 1), "SELECT count(*) AS n FROM profiles")["n"][0] == 1
    empty = tables(write_sample_data(tmp_path / "none", 0))
    assert all(frame.height == 0 for frame in empty.values())
    with pytest.raises(ValueError, match="negative"):
        write_sample_data(tmp_path, -1)
