"""Amazon's address normalization, vectorized.

Tokens are cut on the spec's delimiters, `12-A` and `#` are split, and every token is replaced
through its country's maps in one Aho-Corasick pass (`str.replace_many`) per map set. Each token
stands between two spaces of its own, so a pattern ` KEY ` can only match a whole token.
"""

import functools
import json
from importlib import resources

import polars as pl

from audience_pipeline.identity.rules import ENGINE

# Map order per country, from the spec: each map holding a token replaces it; the last one wins.
_COMMON = ("NumberIndicators", "DirectionalWords")
_MAP_SETS = {
    "US": (*_COMMON, "USStreetSuffixes", "USSubBuildingDesignator"),
    "GB": (*_COMMON, "UKOrganizationSuffixes", "UKStreetSuffixes", "UKSubBuildingDesignator"),
    "FR": (*_COMMON, "FRStreetDesignator", "DefaultStreetSuffixes"),
    "ES": (*_COMMON, "DefaultStreetSuffixes", "ESStreetPrefixes"),
    "IT": (*_COMMON, "DefaultStreetSuffixes", "ITStreetPrefixes"),
    "DEFAULT": (*_COMMON, "DefaultStreetSuffixes"),
}
EMPTY = "empty_after_normalization"
# `C/O` has a literal of its own so each regex keeps a fast path (a `\b` in an alternation loses it).
_CARE_OF = r"\bC/O\b"
_DELIMITERS = r"[,!\[\]{}()\s.]+"
# A numeric part, the last inner `-`, then a part that is not all digits: `12-A` -> `12 A`.
_DASH = r" (\p{N}+)-([^ -]*[^ \p{N}-][^ -]*) "


@functools.cache
def _replacements(map_set: str) -> dict[str, str]:
    raw = json.loads(
        (resources.files(__package__) / "data" / "address_maps.json").read_text(encoding="utf-8")
    )
    merged: dict[str, str] = {}
    for name in _MAP_SETS[map_set]:
        for entry in raw[name]:
            merged.update(entry)
    return {f" {token} ": f" {replacement} " for token, replacement in merged.items()}


def _normalize(addresses: pl.LazyFrame, map_set: str) -> pl.LazyFrame:
    # Every token gets two spaces of its own, so neighbouring tokens never share a match.
    tokens = (
        pl.col("value")
        .str.to_uppercase()
        .str.replace_all(_CARE_OF, " ")
        .str.replace_all(_DELIMITERS, "  ")
        .str.strip_chars(" ")
    )
    spaced = (
        pl.concat_str(pl.lit(" "), tokens, pl.lit(" "))
        .str.replace_all(_DASH, " ${1}  ${2} ")
        .str.replace_all("#", "  #  ", literal=True)
    )
    normalized = spaced.str.replace_many(_replacements(map_set)).str.replace_all(" ", "", literal=True)
    return addresses.with_columns(normalized.str.to_lowercase().alias("value"))


def normalize_addresses(values: pl.Series, countries: pl.Series) -> pl.DataFrame:
    """Normalized street addresses (`123 Main Street, Apt #5` -> `123mainstaptnumber5`) and reasons.

    `values` are trimmed text or null, `countries` upper-case alpha-2 or null. Returns a frame of
    the same length with `value` (null when rejected or absent) and `reason` (null unless rejected).
    """
    frame = pl.DataFrame({"value": values, "map_set": countries}).with_row_index("i")
    frame = frame.with_columns(
        pl.when(pl.col("map_set").is_in(list(_MAP_SETS))).then("map_set").otherwise(pl.lit("DEFAULT"))
    )
    parts = [_normalize(group.lazy(), map_set) for (map_set,), group in frame.group_by("map_set")]
    done = pl.concat(parts).collect(engine=ENGINE).sort("i") if parts else frame
    value = pl.col("value")
    return done.select(
        pl.when(value != "").then(value).alias("value"),
        pl.when(value == "").then(pl.lit(EMPTY)).alias("reason"),
    )
