"""Amazon's address normalization, vectorized.

Tokens are cut on the spec's delimiters, `12-A` and `#` are split, and every token is replaced
through its country's maps in one Aho-Corasick pass (`str.replace_many`) per map set. Each token
stands between at least two spaces of its own, so a pattern ` KEY ` can only match a whole token;
how many spaces stand between two tokens does not matter, as every space goes in the end.

A house number at either end (`123 Main St`, `Dorfstr. 12`) is a token that stays as it is; the
rest of the address, which repeats far more often than whole addresses do, goes through those
steps once per distinct (rest, country) where that pays.
"""

import functools
import json
import operator
from importlib import resources

import polars as pl

from audience_pipeline.identity.rules import ENGINE, distinct_rows, in_row_order, positions

# Map order per country, from the spec: each map holding a token replaces it; the last one wins.
_COMMON = ("NumberIndicators", "DirectionalWords")
_MAP_SETS = {
    "US": (*_COMMON, "USStreetSuffixes", "USSubBuildingDesignator"),
    "GB": (*_COMMON, "UKOrganizationSuffixes", "UKStreetSuffixes", "UKSubBuildingDesignator"),
    "FR": (*_COMMON, "FRStreetDesignator", "DefaultStreetSuffixes"),
    "ES": (*_COMMON, "DefaultStreetSuffixes", "ESStreetPrefixes"),
    "IT": (*_COMMON, "DefaultStreetSuffixes", "ITStreetPrefixes"),
}
_DEFAULT = (*_COMMON, "DefaultStreetSuffixes")
EMPTY = "empty_after_normalization"
# The delimiters: `,!` brackets `.` and whitespace (Unicode White_Space, what `\s` matches). One
# Aho-Corasick pass over single characters costs half of a regex replacing runs of them.
_WHITESPACE = (
    "\t\n\x0b\x0c\r \x85\xa0\u1680\u2000\u2001\u2002\u2003\u2004\u2005\u2006\u2007\u2008\u2009\u200a"
    "\u2028\u2029\u202f\u205f\u3000"
)
_SPLIT = dict.fromkeys([*",![]{}().", *_WHITESPACE], "  ")
# Only text holding one of these characters can change in the C/O and `12-A` steps; without them,
# `#` is split off in the same pass as the delimiters.
_RARE = r"[-/]"
_SPLIT_NUMBER_SIGN = {**_SPLIT, "#": "  #  "}
# `C/O` has a literal of its own so each regex keeps a fast path (a `\b` in an alternation loses it).
_CARE_OF = r"\bC/O\b"
# A numeric part, the last inner `-`, then a part that is not all digits: `12-A` -> `12 A`.
_DASH = r" (\p{N}+)-([^ -]*[^ \p{N}-][^ -]*) "
# A house number (ASCII digits) at the start with the one delimiter after it, or at the end with
# the one before it.
_LEADING_NUMBER = r"^[0-9]+[\s,!\[\]{}().]"
_TRAILING_NUMBER = r"[\s,!\[\]{}().][0-9]+$"
# Addresses go by (rest, country) once house numbers are split off where at most this share of the
# pairs is distinct: 35 % of the sample data's, 21 % of the benchmark's synthetic data's.
_DISTINCT_SHARE = 0.5


@functools.cache
def _replacements(map_set: str) -> dict[str, str]:
    raw = json.loads(
        (resources.files(__package__) / "data" / "address_maps.json").read_text(encoding="utf-8")
    )
    merged: dict[str, str] = {}
    for name in _MAP_SETS.get(map_set, _DEFAULT):
        for entry in raw[name]:
            merged.update(entry)
    return {f" {token} ": f" {replacement} " for token, replacement in merged.items()}


def _padded(text: pl.Series, split: dict[str, str]) -> pl.Series:
    """`split`'s characters replaced, and the whole text between two spaces."""
    spaced = pl.concat_str(pl.lit(" "), pl.col("text").str.replace_many(split), pl.lit(" "))
    return text.to_frame("text").select(spaced).to_series()


def _tokens(values: pl.Series) -> pl.Series:
    """Upper-cased addresses with every token between spaces of its own."""
    upper = values.str.to_uppercase()
    spaced = _padded(upper, _SPLIT_NUMBER_SIGN)
    rare = positions(values.str.contains(_RARE))
    if rare.len():
        text = _padded(upper.gather(rare).str.replace_all(_CARE_OF, " "), _SPLIT)
        text = text.str.replace_all(_DASH, " ${1}  ${2} ").str.replace_all("#", "  #  ", literal=True)
        spaced = spaced.scatter(rare, text)
    return spaced


def _joined(values: pl.Series, countries: pl.Series) -> pl.Series:
    """Each address's tokens replaced through its country's maps, joined and lowercased, in row order."""
    spaced = _tokens(values)
    sets = {c: (countries == c).fill_null(False) for c in _MAP_SETS}
    sets["DEFAULT"] = ~functools.reduce(operator.or_, sets.values())
    # Each country's rows go through its maps, then all of them back into place at once.
    rows = [(map_set, positions(mask)) for map_set, mask in sets.items()]
    rows = [(map_set, at) for map_set, at in rows if at.len()]
    replaced = [spaced.gather(at).str.replace_many(_replacements(map_set)) for map_set, at in rows]
    joined = pl.concat([pl.Series([], dtype=pl.String), *replaced])
    joined = joined.str.replace_all(" ", "", literal=True).str.to_lowercase()
    at = pl.concat([pl.Series([], dtype=pl.UInt32), *(at for _, at in rows)])
    return in_row_order(joined.to_frame(), at, values.len()).to_series()


@functools.cache
def _numbers_are_tokens() -> bool:
    """No map holds a token of digits only, so a house number always stays as it is."""
    return not any(token.strip().isdigit() for s in (*_MAP_SETS, "DEFAULT") for token in _replacements(s))


def normalize_addresses(values: pl.Series, countries: pl.Series) -> pl.DataFrame:
    """Normalized street addresses (`123 Main Street, Apt #5` -> `123mainstaptnumber5`) and reasons.

    `values` are trimmed text or null, `countries` upper-case alpha-2 or null. Returns a frame of
    the same length with `value` (null when rejected or absent) and `reason` (null unless rejected).
    """
    height = values.len()
    # Absent values are left out from the start: a string kernel spends time on every row it is given.
    present = positions(values.is_not_null())
    values, countries = values.gather(present), countries.gather(present)
    normalized = None
    if _numbers_are_tokens():
        # `123 Main St` is `123` then what `Main St` gives, and `Dorfstr. 12` what `Dorfstr.` gives
        # then `12`: a house number with the delimiter beside it is a token of its own, which no map
        # holds and which neither the C/O nor the `12-A` step reaches across. Streets repeat where
        # house numbers do not, so where they repeat enough, the rest of each address goes through
        # the maps once per distinct (rest, country).
        split = (
            pl.LazyFrame({"text": values, "country": countries})
            .with_columns(lead=pl.col("text").str.extract(_LEADING_NUMBER, 0))
            .with_columns(rest=pl.col("text").str.strip_prefix(pl.col("lead").fill_null("")))
            .with_columns(trail=pl.col("rest").str.extract(_TRAILING_NUMBER, 0))
            .with_columns(rest=pl.col("rest").str.strip_suffix(pl.col("trail").fill_null("")))
            .collect(engine=ENGINE)
        )
        distinct = distinct_rows(split.select("rest", "country"), _DISTINCT_SHARE)
        if distinct is not None:
            rows, index = distinct
            joined = _joined(rows.get_column("rest"), rows.get_column("country")).gather(index)
            normalized = split.select(
                pl.concat_str(
                    pl.col("lead").str.head(-1),
                    pl.lit(joined),
                    pl.col("trail").str.tail(-1),
                    ignore_nulls=True,
                )
            ).to_series()
    if normalized is None:
        normalized = _joined(values, countries)
    answers = normalized.to_frame("normalized").select(
        pl.when(pl.col("normalized") != "").then("normalized").alias("value"),
        pl.when(pl.col("normalized") == "").then(pl.lit(EMPTY)).alias("reason"),
    )
    return in_row_order(answers, present, height)
