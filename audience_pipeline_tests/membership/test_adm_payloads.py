"""ADM member payloads are, byte for byte, the member object `json.dumps` writes compactly.

For digests as the identity engine writes them, other text in hashed columns (quotes, backslashes,
control characters, blanks), partner IDs and consent strings holding anything, non-ASCII included,
snapshots missing some columns, and payloads longer than the writer's first guess of their room.
"""

import json
import re
import string

import polars as pl
from hypothesis import given, settings
from hypothesis import strategies as st

from audience_pipeline.identity import normalize_identities
from audience_pipeline.identity.countries import country_lookup
from audience_pipeline.membership.adm_delivery import (
    CONSENT_VALUES,
    EXTERNAL_IDENTITIES,
    HASHED_PII,
    TARGET_IDENTITIES,
    MemberRules,
    member_payloads,
)

HASHED_COLUMNS = sorted({name for _, names in HASHED_PII.values() for name in names})
EXTERNAL_COLUMNS = sorted({name for _, names in EXTERNAL_IDENTITIES.values() for name in names})
COLUMNS = [
    "user_id",
    *HASHED_COLUMNS,
    *EXTERNAL_COLUMNS,
    "country_code",
    "amzn_ad_storage",
    "amzn_user_data",
    "tcf_string",
    "gpp_string",
]
RULES = MemberRules(TARGET_IDENTITIES, "GRANTED", "FR")


def _present(value: str | None) -> str | None:
    # Python's `strip` also takes \x1c-\x1f, which the texts below never hold.
    return value if value is not None and value.strip() else None


def _signal(value: str | None, default: str) -> str:
    given = (value or "").strip().upper()
    return default if not given else given if given in CONSENT_VALUES else "UNKNOWN"


def reference(row: dict, rules: MemberRules) -> str | None:
    """The member object of one snapshot row, written with `json.dumps`."""

    def identities(mapping: dict[str, tuple[str, tuple[str, ...]]]) -> dict[str, str]:
        chosen = {}
        for name, (key, names) in mapping.items():
            first = next((row[n] for n in names if row.get(n) is not None), None)
            if name in rules.identities and _present(first) is not None:
                chosen[key] = first
        return chosen

    hashed, external = identities(HASHED_PII), identities(EXTERNAL_IDENTITIES)
    if not hashed and not external:
        return None
    identity = {"hashedPiis": [hashed]} if hashed else {}
    if external:
        identity["externalIdentities"] = [external]
    country = row.get("country_code")
    code = country_lookup().get(re.sub(r"[^A-Z0-9]", "", country.upper())) if country else None
    consent = {
        "amzn": {
            "amznAdStorage": _signal(row.get("amzn_ad_storage"), rules.consent),
            "amznUserData": _signal(row.get("amzn_user_data"), rules.consent),
        }
    }
    for key, column in (("tcf", "tcf_string"), ("gpp", "gpp_string")):
        if _present(row.get(column)) is not None:
            consent[key] = row[column]
    member = {
        "userIdentity": identity,
        "userConsent": {"geo": {"countryCode": code or rules.country_code}, "consent": consent},
    }
    return json.dumps(member, ensure_ascii=False, separators=(",", ":"))


def payloads(
    rows: list[dict], rules: MemberRules = RULES, missing: frozenset[str] = frozenset()
) -> list[str | None]:
    frame = pl.DataFrame(rows, schema=dict.fromkeys(COLUMNS, pl.String)).drop(missing)
    return member_payloads(frame, rules)["payload"].to_list()


TEXT = st.text(st.characters(exclude_characters="\x1c\x1d\x1e\x1f", exclude_categories=("Cs",)), max_size=12)
DIGEST = st.text(string.hexdigits.lower(), min_size=64, max_size=64)
# 64 characters that are not all digest-like: some need escaping, some are blank.
ODD_DIGEST = st.text(string.hexdigits.lower() + '"\\ ', min_size=64, max_size=64)


@st.composite
def snapshots(draw, odd: bool) -> list[dict]:
    digest = st.one_of(st.none(), DIGEST, *([ODD_DIGEST, TEXT] if odd else []))
    row = st.fixed_dictionaries(
        {
            "user_id": st.text(string.ascii_lowercase, min_size=1, max_size=4),
            **dict.fromkeys(HASHED_COLUMNS, digest),
            **dict.fromkeys(EXTERNAL_COLUMNS, st.one_of(st.none(), TEXT)),
            "country_code": st.sampled_from([None, "US", " de ", "Germany", "uk", "Atlantis", ""]),
            "amzn_ad_storage": st.sampled_from([None, "", "granted", " DENIED ", "maybe"]),
            "amzn_user_data": st.sampled_from([None, "GRANTED", "not_applicable", "x"]),
            "tcf_string": st.one_of(st.none(), TEXT),
            "gpp_string": st.one_of(st.none(), TEXT),
        }
    )
    return draw(st.lists(row, min_size=1, max_size=30))


@settings(max_examples=150, deadline=None)
@given(snapshots(odd=False), st.sets(st.sampled_from(TARGET_IDENTITIES), min_size=1))
def test_payloads_of_digests_are_what_json_dumps_writes(rows, identities):
    rules = MemberRules(tuple(identities), "DENIED", "US")
    assert payloads(rows, rules) == [reference(row, rules) for row in rows]


@settings(max_examples=150, deadline=None)
@given(snapshots(odd=True))
def test_payloads_of_any_text_are_what_json_dumps_writes(rows):
    assert payloads(rows) == [reference(row, RULES) for row in rows]


@settings(max_examples=100, deadline=None)
@given(snapshots(odd=True), st.frozensets(st.sampled_from(COLUMNS[1:])))
def test_payloads_of_snapshots_missing_columns_are_what_json_dumps_writes(rows, missing):
    kept = [{column: value for column, value in row.items() if column not in missing} for row in rows]
    assert payloads(rows, missing=missing) == [reference(row, RULES) for row in kept]


def test_payloads_of_identity_engine_output_are_what_json_dumps_writes():
    raw = pl.DataFrame(
        {
            "user_id": ["a", "b", "c", "d"],
            "email": ["Ann@Example.com", None, "  ", "dan@example.org"],
            "phone": ["+1 206 555 0100", "020 7946 0958", None, None],
            "first_name": ["Ann", "Bo", None, "Dan"],
            "zip": ["98101", "SW1A 1AA", None, None],
            "idfa": [None, "6D92078A-8246-4BA4-AE5B-76104861E7DC", None, None],
            "live_ramp_id": [None, 'XY1000a"b', None, None],
            "country_code": ["US", "GB", None, "Germany"],
        }
    )
    snapshot = normalize_identities(raw).frame
    rows = snapshot.to_dicts()
    assert payloads(rows) == [reference(row, RULES) for row in rows]
    assert payloads(rows)[2] is None


def test_hashed_columns_that_are_not_digests_are_what_json_dumps_writes():
    digest = "0" * 64
    rows = [
        {"user_id": "a", "email": digest, "phone": '"' + "1" * 63},
        {"user_id": "b", "email": digest, "phone": "\\" + "2" * 63},
        {"user_id": "c", "email": digest, "phone": " " * 64},
        {"user_id": "d", "email": "a@example.com"},
        # 64 bytes, like a digest, yet a control character to escape, or all white space.
        {"user_id": "e", "email": digest, "phone": "3" * 63 + "\x01"},
        {"user_id": "f", "email": digest, "phone": "\t" * 64},
        {"user_id": "g", "phone": "\u3000" * 21 + "\n"},
    ]
    for rows_in_frame in ([row] for row in rows):
        assert payloads(rows_in_frame) == [reference(row, RULES) for row in rows_in_frame]
    assert payloads(rows) == [reference(row, RULES) for row in rows]


def test_payloads_longer_than_the_room_first_guessed_are_what_json_dumps_writes():
    # One long consent string shared by every member: its bytes are held once, written 400 times.
    shared = pl.repeat("A" * 5_000, 400, eager=True)
    frame = pl.DataFrame({"user_id": [str(n) for n in range(400)], "email": ["0" * 64] * 400})
    frame = frame.with_columns(tcf_string=shared)
    built = member_payloads(frame, RULES)["payload"].to_list()
    assert built == [reference(row, RULES) for row in frame.to_dicts()]
