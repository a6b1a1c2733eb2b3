"""Amazon's address normalization, vectorized.

Tokens are cut on the spec's delimiters, `12-A` and `#` are split, and every token is replaced
through its country's maps. The replacement runs as one Aho-Corasick pass over all rows: each token
is wrapped as ` <TAG>TOKEN ` where TAG names the row's map set, so a pattern can only ever match a
whole token of a row of that map set.
"""

import functools
import json
from importlib import resources

import polars as pl

from audience_pipeline.identity.rules import Rule

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
# Private-use code points cannot come from a real address, so tags never collide with text.
_TAG_OPEN, _TAG_CLOSE = "\ue000", "\ue001"
_DELIMITERS = r"(?:\bC/O\b|[,!\[\]{}()\s.])+"
_DASH = r" (\p{N}+)-([^ -]*[^ \p{N}-][^ -]*) "


@functools.cache
def _replacements() -> dict[str, str]:
    raw = json.loads(
        (resources.files(__package__) / "data" / "address_maps.json").read_text(encoding="utf-8")
    )
    patterns: dict[str, str] = {}
    for map_set, names in _MAP_SETS.items():
        merged: dict[str, str] = {}
        for name in names:
            for entry in raw[name]:
                merged.update(entry)
        for token, replacement in merged.items():
            patterns[f" {_TAG_OPEN}{map_set}{_TAG_CLOSE}{token} "] = f" {replacement} "
    return patterns


def address(value: pl.Expr, country: pl.Expr) -> Rule:
    """Street address -> Amazon's normalized form (`123 Main Street, Apt #5` -> `123mainstaptnumber5`)."""
    tokens = value.str.to_uppercase().str.replace_all(_DELIMITERS, " ").str.strip_chars(" ")
    # Every token gets spaces of its own on both sides so neighbouring tokens never share a match.
    spaced = pl.concat_str(pl.lit(" "), tokens.str.replace_all(" ", "  ", literal=True), pl.lit(" "))
    split = (
        spaced.str.replace_all(_DASH, " $1  $2 ")
        .str.replace_all("#", "  #  ", literal=True)
        .str.replace_all(r" +", " ")
        .str.strip_chars(" ")
    )
    map_set = pl.when(country.is_in(list(_MAP_SETS))).then(country).otherwise(pl.lit("DEFAULT"))
    tag = pl.concat_str(pl.lit(_TAG_OPEN), map_set, pl.lit(_TAG_CLOSE))
    tagged = pl.concat_str(
        pl.lit(" "),
        tag,
        split.str.replace_all(" ", pl.concat_str(pl.lit("  "), tag), literal=True),
        pl.lit(" "),
    )
    replaced = tagged.str.replace_many(_replacements())
    normalized = replaced.str.replace_all(f" |{_TAG_OPEN}[A-Z]+{_TAG_CLOSE}", "").str.to_lowercase()
    return Rule(
        pl.when(normalized != "").then(normalized),
        pl.when(normalized == "").then(pl.lit("empty_after_normalization")),
    )
