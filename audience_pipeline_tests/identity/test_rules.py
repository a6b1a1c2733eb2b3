"""One test per rule of the normalization spec, and one per `fix` over Amazon's reference tooling."""

import polars as pl
import pytest

from audience_pipeline.identity import HASHED_FIELDS, normalize_identities

from .conftest import sha

EMPTY_HASH = sha("")


# --- general rules -------------------------------------------------------------------------------


def test_non_text_values_are_cast_to_text(one):
    assert one("zip", 2134, "US") == (sha("02134"), [])


def test_whole_floats_lose_their_decimal_part():
    frame = pl.DataFrame({"zip": [75236.0, None]})
    result = normalize_identities(frame, default_country="US")
    assert result.frame["zip"].to_list() == [sha("75236"), None]


@pytest.mark.parametrize("blank", [None, "", "   ", "\t"])
def test_blank_values_are_absent_not_rejected(one, blank):
    assert one("email", blank, "US") == (None, [])


def test_hashed_values_pass_through_lowercased_including_uppercase_hex(one):
    # fix: the reference only recognised lowercase hex and hashed uppercase digests again.
    digest = sha("john.doe@example.com")
    assert one("email", f"  {digest.upper()} ", "US") == (digest, [])
    assert one("phone", digest, None) == (digest, [])


@pytest.mark.parametrize("field", [f for f in HASHED_FIELDS if f != "country_code"])
def test_hashed_values_of_every_field_pass_through_without_a_reject(one, field):
    # A US state is looked up by name: the hashed one must not be.
    digest = sha("x")
    assert one(field, digest.upper(), "US", country_code="US") == (digest, [])


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("first_name", "!!!"),
        ("city", "---"),
        ("address", " , . "),
        ("email", "@"),
        ("last_name", "中文"),
    ],
)
def test_values_that_normalize_to_nothing_are_rejected_never_hashed_empty(one, field, value):
    # fix: the reference sent sha256("") for these.
    output, reasons = one(field, value, "US")
    assert output is None
    assert len(reasons) == 1
    assert output != EMPTY_HASH


def test_row_country_wins_over_default_country(one):
    assert one("phone", "020 7946 0958", "US", country_code="GB") == (sha("442079460958"), [])


@pytest.mark.parametrize("given", ["GB", "gb", "UK", "GBR", "United Kingdom", " united kingdom "])
def test_country_codes_alpha3_and_english_names(one, given):
    frame = pl.DataFrame({"country_code": [given], "zip": ["sw1a 1aa"]})
    result = normalize_identities(frame, fields=["zip", "country_code"])
    assert result.frame.row(0) == (sha("gb"), sha("SW1A1AA"))


def test_unknown_row_country_is_a_reject_and_not_replaced_by_the_default():
    frame = pl.DataFrame({"country_code": ["Atlantis"], "phone": ["2065550100"]})
    result = normalize_identities(frame, default_country="US")
    assert result.frame["phone"][0] is None
    assert sorted(result.rejects.select("field", "reason").rows()) == [
        ("country_code", "unknown_country"),
        ("phone", "phone_needs_country"),
    ]


# --- fields --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "normalized"),
    [
        ("john.doe+promo@x.com", "john.doepromo@x.com"),
        ("Ünal.Öz@Beispiel.DE", "ünal.öz@beispiel.de"),
        ("a b@c d.e", "ab@cd.e"),
    ],
)
def test_email_keeps_word_characters_dot_at_dash(one, raw, normalized):
    assert one("email", raw, "US") == (sha(normalized), [])


@pytest.mark.parametrize("raw", ["a@b@c.com", "@example.com", "john@", "no-at-sign"])
def test_email_needs_exactly_one_at_with_text_on_both_sides(one, raw):
    assert one("email", raw, "US") == (None, ["invalid_email"])


def test_phone_national_number_gets_its_country_code_not_a_blind_plus(one):
    # fix: the reference prefixed `+` blindly, so 2065550100 became an Egyptian number.
    assert one("phone", "2065550100", "US") == (sha("12065550100"), [])


@pytest.mark.parametrize(
    ("raw", "country", "e164"),
    [
        ("0044 20 7946 0958", "US", "442079460958"),
        ("+1 (206) 555-0100", "DE", "12065550100"),
        ("030 12345678", "DE", "493012345678"),
        ("06 1234 5678", "IT", "390612345678"),
        ("098765 43210", "IN", "919876543210"),
        ("03-1234-5678", "JP", "81312345678"),
        ("01 23 45 67 89", "FR", "33123456789"),
        ("1-800-FLOWERS", "US", "18003569377"),
        ("(206) 555-0100 ext. 12", "US", "12065550100"),
    ],
)
def test_phone_formats(one, raw, country, e164):
    assert one("phone", raw, country) == (sha(e164), [])


def test_phone_without_country_or_international_prefix_needs_a_country(one):
    assert one("phone", "(206) 555-0100", None) == (None, ["phone_needs_country"])
    assert one("phone", "+1 206 555 0100", None) == (sha("12065550100"), [])


@pytest.mark.parametrize("raw", ["12", "555", "+999 1234", "not a phone", "+1 206 555 0100 1234 5678 9"])
def test_impossible_phone_numbers_are_rejected(one, raw):
    assert one("phone", raw, "US") == (None, ["invalid_phone"])


@pytest.mark.parametrize(
    ("raw", "normalized"),
    [
        ("Jürgen", "juergen"),
        ("Straße", "strasse"),
        ("Bjørn", "bjorn"),
        ("Ærø", "aero"),
        ("José", "jos"),
        ("O'Brien-Smith", "obriensmith"),
    ],
)
def test_names_transliterate_then_keep_ascii_letters_and_digits(one, raw, normalized):
    assert one("first_name", raw, "DE") == (sha(normalized), [])
    assert one("last_name", raw, "DE") == (sha(normalized), [])


def test_city_deletes_without_transliteration(one):
    assert one("city", "München", "DE") == (sha("mnchen"), [])
    assert one("city", "St. John's", "CA") == (sha("stjohns"), [])


@pytest.mark.parametrize(
    ("raw", "country", "code"),
    [
        ("District of Columbia", "US", "dc"),  # fix: the reference cut this to `di`
        ("Puerto Rico", "US", "pr"),
        ("GU", "US", "gu"),
        ("Nordrhein-Westfalen", "DE", "nw"),
        ("Thüringen", "DE", "th"),
        ("Bayern", "DE", "by"),
        ("Île-de-France", "FR", "if"),
        ("Bretagne", "FR", "bt"),
        ("Milano", "IT", "mi"),
        ("Québec", "CA", "qc"),
        ("texas", "US", "tx"),
        ("Madrid", "ES", "m"),
    ],
)
def test_state_maps_with_extensions(one, raw, country, code):
    assert one("state", raw, country) == (sha(code), [])


def test_unknown_state_in_a_mapped_country_is_rejected(one):
    assert one("state", "Narnia", "US") == (None, ["unknown_state"])
    assert one("state", "ZZ", "US") == (None, ["unknown_state"])


def test_state_without_a_map_keeps_two_letters(one):
    assert one("state", "Greater London", "GB") == (sha("gr"), [])
    assert one("state", "Tōkyō", "JP") == (sha("to"), [])


@pytest.mark.parametrize(
    ("raw", "country", "normalized"),
    [
        ("02134", "US", "02134"),
        ("213", "US", "00213"),
        ("12307", "DE", "12307"),
        ("77304 CEDEX", "FR", "77304"),
        ("k1a 0b1", "CA", "K1A0B1"),
        ("sw1a 1aa", "GB", "SW1A1AA"),  # fix: the reference kept the input's case
        ("100-0001", "JP", "1000001"),
        ("110 001", "IN", "110001"),
        ("1010 ab", "NL", "1010AB"),
    ],
)
def test_zip_per_country(one, raw, country, normalized):
    assert one("zip", raw, country) == (sha(normalized), [])


@pytest.mark.parametrize(
    ("raw", "country"),
    [("12", "US"), ("1234", "DE"), ("J9T", "CA"), ("SW1A", "GB"), ("12345", "JP"), ("-", "NL")],
)
def test_invalid_zip_is_rejected(one, raw, country):
    assert one("zip", raw, country) == (None, ["invalid_zip"])


@pytest.mark.parametrize(
    ("raw", "country", "normalized"),
    [
        ("12-A Main St", "US", "12amainst"),
        ("12-34 Main St", "US", "12-34mainst"),
        ("APT#5", "US", "aptnumber5"),
        ("c/o John, 5 North Road", "GB", "john5nrd"),
        ("Via Roma 12", "IT", "viaroma12"),
        ("[5] Elm Ave.", "DE", "5elmave"),
    ],
)
def test_address_tokens(one, raw, country, normalized):
    assert one("address", raw, country) == (sha(normalized), [])


def test_country_code_field_is_hashed_lowercase_alpha2():
    frame = pl.DataFrame({"country_code": ["USA", "Germany", "Atlantis", None]})
    result = normalize_identities(frame, fields=["country_code"])
    assert result.frame["country_code"].to_list() == [sha("us"), sha("de"), None, None]
    assert result.rejects.rows() == [(2, "country_code", "unknown_country")]


# --- identifiers that are never hashed -------------------------------------------------------------


def test_mobile_ad_ids_are_canonical_uuids(one):
    assert one("idfa", " 6D92078A-8246-4BA4-AE5B-76104861E7DC ", None) == (
        "6d92078a-8246-4ba4-ae5b-76104861e7dc",
        [],
    )
    assert one("gaid", "6d92078a82464ba4ae5b76104861e7dc", None) == (
        "6d92078a-8246-4ba4-ae5b-76104861e7dc",
        [],
    )


def test_zeroed_and_malformed_mobile_ad_ids_are_rejected(one):
    assert one("idfa", "00000000-0000-0000-0000-000000000000", None) == (None, ["zeroed_maid"])
    assert one("gaid", "not-a-uuid", None) == (None, ["invalid_maid"])


def test_partner_ids_are_trimmed_and_otherwise_kept(one):
    assert one("live_ramp_id", "  XY1234Abc ", None) == ("XY1234Abc", [])
    assert one("customer_id", 42, None) == ("42", [])


# --- the frame as a whole ----------------------------------------------------------------------------


def test_every_row_and_column_is_kept_in_order_and_rejects_hold_no_values():
    frame = pl.DataFrame(
        {
            "user_id": ["a", "b", "c"],
            "email": ["x@y.com", "bad", None],
            "phone": ["2065550100", "12", None],
            "note": ["keep", "me", "too"],
        }
    )
    result = normalize_identities(frame, default_country="US", row_offset=100)
    assert result.frame.columns == frame.columns
    assert result.frame["user_id"].to_list() == ["a", "b", "c"]
    assert result.frame["note"].to_list() == ["keep", "me", "too"]
    assert result.rejects.columns == ["row", "field", "reason"]
    assert sorted(result.rejects.rows()) == [(101, "email", "invalid_email"), (101, "phone", "invalid_phone")]
    assert result.reject_counts() == {"email": {"invalid_email": 1}, "phone": {"invalid_phone": 1}}
    assert result.values_out() == {"email": 1, "phone": 1}


def test_default_fields_are_the_identity_columns_present_except_country_code():
    frame = pl.DataFrame({"email": ["x@y.com"], "country_code": ["US"], "other_column": ["z"]})
    result = normalize_identities(frame)
    assert result.fields == ("email",)
    assert result.frame["country_code"][0] == "US"


def test_unknown_fields_and_countries_are_configuration_errors_naming_the_setting():
    frame = pl.DataFrame({"email": ["x@y.com"]})
    with pytest.raises(ValueError, match="fields: shoe_size"):
        normalize_identities(frame, fields=["shoe_size"])
    with pytest.raises(ValueError, match="fields: phone not among the input columns"):
        normalize_identities(frame, fields=["phone"])
    with pytest.raises(ValueError, match="default country: unknown country 'XX'"):
        normalize_identities(frame, default_country="XX")


def test_empty_frame():
    frame = pl.DataFrame(schema={"email": pl.String, "phone": pl.String, "country_code": pl.String})
    result = normalize_identities(frame, default_country="US")
    assert result.frame.height == 0
    assert result.rejects.height == 0
