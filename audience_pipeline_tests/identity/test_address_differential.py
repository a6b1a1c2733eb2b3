"""The address path's shortcuts (one pass for delimiters and `#`, rare steps only where they can
apply, any number of spaces between tokens, house numbers split off so that each street goes through
the maps once) must give what the spec's plain chain of regexes gives."""

import random

import polars as pl
from hypothesis import given, settings
from hypothesis import strategies as st

from audience_pipeline.identity import normalize_identities
from audience_pipeline.identity.address import _MAP_SETS, _WHITESPACE, _replacements

from .conftest import sha


def plain(raw: str | None, country: str | None) -> str | None:
    """The spec's steps one after the other, for one value."""
    if raw is None or not raw.strip():
        return None
    tokens = (
        pl.select(pl.lit(raw.strip()).str.to_uppercase())
        .to_series()
        .str.replace_all(r"\bC/O\b", " ")
        .str.replace_all(r"[,!\[\]{}()\s.]+", "  ")
        .str.strip_chars(" ")
    )
    spaced = (
        (" " + tokens + " ")
        .str.replace_all(r" (\p{N}+)-([^ -]*[^ \p{N}-][^ -]*) ", " ${1}  ${2} ")
        .str.replace_all("#", "  #  ", literal=True)
    )
    map_set = country if country in _MAP_SETS else "DEFAULT"
    normalized = spaced.str.replace_many(_replacements(map_set)).str.replace_all(" ", "", literal=True)
    text = normalized.str.to_lowercase()[0]
    return sha(text) if text else None


PIECE_LIST = [
    "12", "12-A", "3-9-27", "12-", "-A", "#", "#5", "APT#5", "C/O", "c/o", "X/C/O", "C/OX", "Main", "ST",
    "street", "N", "Avenue", "Apt", "NO", "Número", "Allée", "Straße", "١٢-B", "½-x", "a/b",
]  # fmt: skip
SEPARATOR_LIST = [" ", "  ", ", ", ".", "\t", "\u00a0", "\u3000", "(", ")", "!", "", "-", "/", "#"]
PIECES = st.sampled_from(PIECE_LIST)
SEPARATORS = st.sampled_from(SEPARATOR_LIST)


def assert_engine_matches_plain_chain(values: list[str], countries: list[str | None]) -> None:
    frame = pl.DataFrame(
        {"address": values, "country_code": countries},
        schema=dict.fromkeys(["address", "country_code"], pl.String),
    )
    got = normalize_identities(frame, fields=["address"]).frame["address"].to_list()
    assert got == [plain(v, c) for v, c in zip(values, countries, strict=True)]


@settings(max_examples=300, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.lists(st.tuples(PIECES, SEPARATORS), max_size=8),
            st.sampled_from([None, "US", "GB", "FR", "ES", "IT", "DE", "JP"]),
        ),
        min_size=1,
        max_size=20,
    )
)
def test_addresses_match_the_plain_chain_of_steps(rows):
    values = ["".join(piece + separator for piece, separator in parts) for parts, _ in rows]
    countries = [country for _, country in rows]
    assert_engine_matches_plain_chain(values, countries)


def test_house_numbers_split_off_streets_that_repeat_match_the_plain_chain_of_steps():
    # Few streets under many house numbers, at either end: the engine splits the numbers off and
    # sends each distinct (street, country) through the maps once.
    rng = random.Random(3)
    streets = [
        "".join(rng.choice(PIECE_LIST) + rng.choice(SEPARATOR_LIST) for _ in range(rng.randint(0, 4)))
        for _ in range(30)
    ]
    delimiters = [" ", ", ", ".", "\t", "\u3000", "(", "!"]
    values, countries = [], []
    for _ in range(600):
        number, street, delimiter = str(rng.randint(0, 9999)), rng.choice(streets), rng.choice(delimiters)
        values.append(rng.choice([number + delimiter + street, street + delimiter + number, street]).strip())
        countries.append(rng.choice([None, "US", "GB", "FR"]))
    assert_engine_matches_plain_chain(values, countries)


def test_the_whitespace_delimiters_are_what_the_spec_regex_calls_whitespace():
    characters = pl.Series([chr(c) for c in range(0x110000) if not 0xD800 <= c <= 0xDFFF])
    assert set(characters.filter(characters.str.contains(r"^\s$")).to_list()) == set(_WHITESPACE)
