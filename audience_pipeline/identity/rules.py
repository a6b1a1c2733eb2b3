"""Field rules of the normalization spec as polars expressions.

Each rule takes the trimmed, non-empty, not-already-hashed value and the row's country (upper-case
alpha-2 or null) and returns a `Rule`: the normalized text to hash (null when rejected) and the
reject reason (null when accepted). Nothing here runs Python per row.
"""

import functools
import json
from dataclasses import dataclass
from importlib import resources

import polars as pl


@dataclass(frozen=True)
class Rule:
    value: pl.Expr
    reason: pl.Expr


def _reject_when_empty(value: pl.Expr, reason: str) -> Rule:
    return Rule(
        value=pl.when(value != "").then(value),
        reason=pl.when(value == "").then(pl.lit(reason)),
    )


def email(value: pl.Expr, country: pl.Expr) -> Rule:
    """Lowercase; keep word characters, `.`, `@`, `-`; exactly one `@` with text on both sides."""
    cleaned = value.str.to_lowercase().str.replace_all(r"[^\w.@-]", "")
    valid = cleaned.str.contains(r"^[^@]+@[^@]+$")
    return Rule(pl.when(valid).then(cleaned), pl.when(~valid).then(pl.lit("invalid_email")))


_NAME_TRANSLITERATION = {"ß": "ss", "ä": "ae", "ö": "oe", "ü": "ue", "ø": "o", "æ": "ae"}


def person_name(value: pl.Expr, country: pl.Expr) -> Rule:
    """first_name / last_name: lowercase, German/Nordic transliteration, then only `[a-z0-9]`."""
    cleaned = (
        value.str.to_lowercase().str.replace_many(_NAME_TRANSLITERATION).str.replace_all(r"[^a-z0-9]", "")
    )
    return _reject_when_empty(cleaned, "empty_after_normalization")


def city(value: pl.Expr, country: pl.Expr) -> Rule:
    """Lowercase, then only `[a-z0-9]` (no transliteration: `München` -> `mnchen`)."""
    return _reject_when_empty(
        value.str.to_lowercase().str.replace_all(r"[^a-z0-9]", ""), "empty_after_normalization"
    )


# --- state -----------------------------------------------------------------------------------------


@functools.cache
def state_maps() -> dict[str, dict[str, str]]:
    """Amazon's state maps extended as the spec asks: lookup key -> code, codes map to themselves."""
    data = resources.files(__package__) / "data"
    maps = json.loads((data / "state_maps.json").read_text(encoding="utf-8"))
    extensions = json.loads((data / "state_map_extensions.json").read_text(encoding="utf-8"))
    merged: dict[str, dict[str, str]] = {}
    for country in maps.keys() | (extensions.keys() - {"_comment"}):
        names = {**maps.get(country, {}), **extensions.get(country, {})}
        merged[country] = {**{code: code for code in names.values()}, **names}
    return merged


def state_lookup_key(value: pl.Expr) -> pl.Expr:
    """Upper-case, `Ä→AE Ö→OE Ü→UE ß→SS`, other accents folded, only `A-Z` kept."""
    return (
        value.str.to_uppercase()
        .str.replace_many({"Ä": "AE", "Ö": "OE", "Ü": "UE", "ß": "SS", "ẞ": "SS"})
        .str.normalize("NFKD")
        .str.replace_all(r"[^A-Z]", "")
    )


def state(value: pl.Expr, country: pl.Expr) -> Rule:
    """The country's map decides; countries without a map keep the first two letters."""
    key = state_lookup_key(value)
    maps = state_maps()
    # One lookup over "CC:KEY" so every mapped country is served by a single hash-map pass.
    combined = {f"{cc}:{name}": code for cc, names in maps.items() for name, code in names.items()}
    mapped = pl.concat_str(country, pl.lit(":"), key).replace_strict(
        combined, default=None, return_dtype=pl.String
    )
    has_map = country.is_in(list(maps))
    code = pl.when(has_map).then(mapped).otherwise(key.str.head(2)).str.to_lowercase()
    reason = (
        pl.when(has_map & mapped.is_null())
        .then(pl.lit("unknown_state"))
        .when(code == "")
        .then(pl.lit("empty_after_normalization"))
    )
    return Rule(pl.when(reason.is_null()).then(code), reason)


# --- zip -------------------------------------------------------------------------------------------

_FIVE_DIGIT_ZIPS = ["US", "DE", "FR", "IT", "ES"]
_GB_POSTCODE = r"^[A-Z]{1,2}[0-9][A-Z0-9]?[0-9][A-Z]{2}$"


def zip_code(value: pl.Expr, country: pl.Expr) -> Rule:
    """Postal code per country: digit counts, Canadian and British formats, US leading zeros restored."""
    digits = value.str.replace_all(r"[^0-9]", "")
    alnum = value.str.to_uppercase().str.replace_all(r"[^A-Z0-9]", "")
    us_padded = pl.when(digits.str.len_chars().is_between(3, 4)).then(digits.str.zfill(5)).otherwise(digits)
    candidate = (
        pl.when(country == "US")
        .then(us_padded.str.head(5))
        .when(country.is_in(_FIVE_DIGIT_ZIPS))
        .then(digits.str.head(5))
        .when(country == "CA")
        .then(alnum.str.head(6))
        .when(country == "GB")
        .then(alnum.str.head(7))
        .when(country == "JP")
        .then(digits.str.head(7))
        .when(country == "IN")
        .then(digits.str.head(6))
        .otherwise(alnum)
    )
    valid = (
        pl.when(country.is_in(_FIVE_DIGIT_ZIPS))
        .then(candidate.str.len_chars() == 5)
        .when(country == "CA")
        .then(candidate.str.contains(r"^[A-Z][0-9][A-Z][0-9][A-Z][0-9]$"))
        .when(country == "GB")
        .then(candidate.str.contains(_GB_POSTCODE))
        .when(country == "JP")
        .then(candidate.str.len_chars() == 7)
        .when(country == "IN")
        .then(candidate.str.len_chars() == 6)
        .otherwise(candidate != "")
    )
    return Rule(pl.when(valid).then(candidate), pl.when(~valid).then(pl.lit("invalid_zip")))


def country_code(value: pl.Expr, country: pl.Expr) -> Rule:
    """The row's own country, lowercase alpha-2 (the engine resolves codes, alpha-3 and names)."""
    return Rule(country.str.to_lowercase(), pl.when(country.is_null()).then(pl.lit("unknown_country")))


# --- identifiers that are never hashed -------------------------------------------------------------

_UUID = r"^([0-9a-f]{8})-?([0-9a-f]{4})-?([0-9a-f]{4})-?([0-9a-f]{4})-?([0-9a-f]{12})$"
ZEROED_MAID = "00000000-0000-0000-0000-000000000000"


def mobile_ad_id(value: pl.Expr, country: pl.Expr) -> Rule:
    """A UUID, canonical lowercase with dashes; the all-zero ID of limited ad tracking is rejected."""
    lowered = value.str.to_lowercase()
    valid = lowered.str.contains(_UUID)
    canonical = lowered.str.replace(_UUID, "$1-$2-$3-$4-$5")
    reason = (
        pl.when(~valid)
        .then(pl.lit("invalid_maid"))
        .when(canonical == ZEROED_MAID)
        .then(pl.lit("zeroed_maid"))
    )
    return Rule(pl.when(reason.is_null()).then(canonical), reason)


def passthrough(value: pl.Expr, country: pl.Expr) -> Rule:
    """Partner, customer and social IDs go as given (already trimmed)."""
    return Rule(value, pl.lit(None, dtype=pl.String))
