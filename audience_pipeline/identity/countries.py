"""Country codes: ISO 3166-1 alpha-2 from whatever a source holds (alpha-2, alpha-3, English names)."""

import functools
import re
from typing import Annotated

import polars as pl
import pycountry
from phonenumbers import SUPPORTED_REGIONS
from pydantic import AfterValidator

# The nine countries with their own rules in the normalization spec; every other country gets the defaults.
SPEC_COUNTRIES = ("US", "CA", "GB", "DE", "FR", "IT", "ES", "JP", "IN")

# Names people write that are not ISO short names; `UK` is the spec's own alias for GB.
_ALIASES = {
    "UK": "GB",
    "GREATBRITAIN": "GB",
    "ENGLAND": "GB",
    "UNITEDSTATESOFAMERICA": "US",
    "AMERICA": "US",
    "SOUTHKOREA": "KR",
    "NORTHKOREA": "KP",
    "RUSSIA": "RU",
    "VIETNAM": "VN",
    "IRAN": "IR",
    "SYRIA": "SY",
    "BOLIVIA": "BO",
    "VENEZUELA": "VE",
    "TANZANIA": "TZ",
    "TAIWAN": "TW",
    "LAOS": "LA",
    "MOLDOVA": "MD",
    "CZECHREPUBLIC": "CZ",
    "TURKEY": "TR",
}


def _key(text: str) -> str:
    return re.sub(r"[^A-Z0-9]", "", text.upper())


@functools.cache
def country_lookup() -> dict[str, str]:
    """Lookup key (upper-case, letters and digits only) -> alpha-2, for codes and English names."""
    lookup: dict[str, str] = {}
    for country in pycountry.countries:
        code = country.alpha_2
        for name in (
            country.alpha_2,
            country.alpha_3,
            country.name,
            getattr(country, "common_name", None),
            getattr(country, "official_name", None),
        ):
            if name:
                lookup.setdefault(_key(name), code)
    # Codes phonenumbers knows beyond ISO 3166-1 (XK Kosovo, AC Ascension, TA Tristan da Cunha).
    lookup.update({region: region for region in SUPPORTED_REGIONS if region not in lookup})
    lookup.update(_ALIASES)
    return lookup


def lookup_key(expr: pl.Expr) -> pl.Expr:
    """The vectorized form of the lookup key."""
    return expr.str.to_uppercase().str.replace_all(r"[^A-Z0-9]", "")


def alpha2(expr: pl.Expr) -> pl.Expr:
    """Upper-case alpha-2 for each value, null where the value is absent or not a known country."""
    return lookup_key(expr).replace_strict(country_lookup(), default=None, return_dtype=pl.String)


def normalize_country(value: str, setting: str = "country") -> str:
    """Alpha-2 for one configured country, or a ValueError that names the setting."""
    code = country_lookup().get(_key(value))
    if code is None:
        raise ValueError(
            f"{setting}: unknown country {value!r} (use an ISO 3166-1 code such as 'US' or 'GB')"
        )
    return code


def country_setting(value: str | None) -> str | None:
    """A configured `country_code` as alpha-2, so a typo fails at load time rather than in every run."""
    return normalize_country(value, "country_code") if value is not None else None


CountrySetting = Annotated[str | None, AfterValidator(country_setting)]
"""The type of a `country_code` setting: alpha-2 once validated, None when unset."""
