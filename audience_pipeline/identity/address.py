"""Amazon's address normalization, vectorized.

Tokens are cut on the spec's delimiters, `12-A` and `#` are split, and every token is replaced
through its country's maps in one Aho-Corasick pass (`str.replace_many`) per map set. Each token
stands between at least two spaces of its own, so a pattern ` KEY ` can only match a whole token;
how many spaces stand between two tokens does not matter, as every space goes in the end.
"""

import functools
import json
from importlib import resources

import polars as pl

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
    rare = values.str.contains(_RARE).arg_true()
    if rare.len():
        text = _padded(upper.gather(rare).str.replace_all(_CARE_OF, " "), _SPLIT)
        text = text.str.replace_all(_DASH, " ${1}  ${2} ").str.replace_all("#", "  #  ", literal=True)
        spaced = spaced.scatter(rare, text)
    return spaced


def normalize_addresses(values: pl.Series, countries: pl.Series) -> pl.DataFrame:
    """Normalized street addresses (`123 Main Street, Apt #5` -> `123mainstaptnumber5`) and reasons.

    `values` are trimmed text or null, `countries` upper-case alpha-2 or null. Returns a frame of
    the same length with `value` (null when rejected or absent) and `reason` (null unless rejected).
    """
    spaced = _tokens(values)
    known = countries.is_in(list(_MAP_SETS)).fill_null(False)
    sets = {c: (countries == c).fill_null(False) for c in _MAP_SETS} | {"DEFAULT": ~known}
    # Each country's rows go through its maps, then all of them back into place at once.
    rows = [(map_set, mask.arg_true()) for map_set, mask in sets.items() if mask.any()]
    replaced = [spaced.gather(at).str.replace_many(_replacements(map_set)) for map_set, at in rows]
    if rows:
        spaced = spaced.scatter(pl.concat([at for _, at in rows]), pl.concat(replaced))
    normalized = spaced.str.replace_all(" ", "", literal=True).str.to_lowercase()
    return pl.DataFrame({"normalized": normalized}).select(
        pl.when(pl.col("normalized") != "").then("normalized").alias("value"),
        pl.when(pl.col("normalized") == "").then(pl.lit(EMPTY)).alias("reason"),
    )
