"""Field rules of the normalization spec, as staged polars plans.

A rule takes a lazy frame with `value` (trimmed, non-empty text or null) and `country` (the row's
upper-case alpha-2 or null) and adds `normalized` (the text to hash, null when rejected) and
`reason` (null when accepted). Each intermediate is a column of its own: a nested expression would
be copied into every branch that uses it and computed once per copy. No rule runs Python per row.

Where most rows need only part of a rule, the field's rule is a function of whole columns instead
(`emails`, `zip_codes`, like the phone and address rules): polars computes every branch of a
`when/then` on every row, so such a function gathers the rows of each branch, runs only that
branch's plan on them, and puts the answers back in row order.
"""

import functools
import json
from collections.abc import Callable
from importlib import resources

import polars as pl

Rule = Callable[[pl.LazyFrame], pl.LazyFrame]
# These plans are short chains of whole-column string work; polars' in-memory engine runs them with
# less overhead than the streaming engine that polars 2 picks by default.
ENGINE = "in-memory"
EMPTY = "empty_after_normalization"

value, country, normalized = pl.col("value"), pl.col("country"), pl.col("normalized")


def positions(mask: pl.Series) -> pl.Series:
    """Row positions where `mask` is true (null counts as false), as `arg_true` gives them: filtering
    a range is many times faster in polars 2."""
    return pl.int_range(mask.len(), dtype=pl.UInt32, eager=True).filter(mask)


def in_row_order(answers: pl.DataFrame, at: pl.Series, height: int) -> pl.DataFrame:
    """`answers` given for the rows `at` (each row once at most), as `height` rows: null elsewhere.

    One gather through row positions moves every column at once; scattering copies each column
    whole first. Answers put together from parts are made contiguous first: a gather from many
    chunks costs more than the copy.
    """
    order = pl.repeat(None, height, dtype=pl.UInt32, eager=True).scatter(
        at, pl.int_range(at.len(), dtype=pl.UInt32, eager=True)
    )
    return answers.rechunk().gather(order)


def distinct_rows(keys: pl.DataFrame, share: float) -> tuple[pl.DataFrame, pl.Series] | None:
    """The distinct rows of `keys` and, for every row, the position of its own among them; None
    where more than `share` of the rows are distinct (answering every row then costs less).

    The share of distinct values of the first column alone (HyperLogLog over 64-bit hashes, a
    fraction of one pass) is a lower bound on that of whole rows, and close to it where the other
    columns follow the first (a value rarely spans countries). The same hashes, with the other
    columns', find the distinct rows and map every row to its own for a fraction of what hashing and
    comparing the text twice (unique, then a join) costs. A row goes to the first row of its hash;
    a hash shared by two different rows would show as a row unequal to that first row, and then
    the answer is None too.
    """
    first, *others = keys.columns
    hashes = keys.get_column(first).hash()
    if keys.height < 2 or hashes.approx_n_unique() > share * keys.height:
        return None
    for seed, column in enumerate(others, start=1):
        hashes = hashes ^ keys.get_column(column).hash(seed=seed)
    firsts = positions(hashes.is_first_distinct())
    distinct = keys.gather(firsts)
    index = (
        hashes.to_frame("h")
        .join(
            pl.DataFrame({"h": hashes.gather(firsts)}).with_row_index("i"),
            on="h",
            how="left",
            maintain_order="left",
        )
        .get_column("i")
    )
    return (distinct, index) if distinct.gather(index).equals(keys, null_equal=True) else None


def _accept_when(frame: pl.LazyFrame, valid: pl.Expr, reason: str) -> pl.LazyFrame:
    """Keep `normalized` where `valid`, otherwise null it and give `reason`."""
    frame = frame.with_columns(__valid=valid)
    return frame.with_columns(
        normalized=pl.when("__valid").then(normalized),
        reason=pl.when(~pl.col("__valid")).then(pl.lit(reason)),
    )


def email(frame: pl.LazyFrame) -> pl.LazyFrame:
    """Lowercase; keep word characters, `.`, `@`, `-`; exactly one `@` with text on both sides."""
    frame = frame.with_columns(normalized=value.str.to_lowercase().str.replace_all(r"[^\w.@-]", ""))
    return _accept_when(frame, normalized.str.contains(r"^[^@]+@[^@]+$"), "invalid_email")


# An address the rule would leave as it is: lowercase ASCII word characters, `.` and `-`, one `@`
# with text on both sides.
_NORMAL_EMAIL = r"^[a-z0-9_.\-]+@[a-z0-9_.\-]+$"


def emails(values: pl.Series, countries: pl.Series) -> pl.DataFrame:
    """`email` for a column, as a rule that partitions rows: most addresses arrive in normal form,
    which one regex recognises, and only the others go through the rule's three passes.

    Returns a frame of the same length with `value` (null when rejected or absent) and `reason`.
    """
    other = positions(~values.str.contains(_NORMAL_EMAIL))
    reason = pl.repeat(None, values.len(), dtype=pl.String, eager=True)
    if other.len():
        lazy = pl.LazyFrame({"value": values.gather(other), "country": countries.gather(other)})
        ruled = email(lazy).select("normalized", "reason").collect(engine=ENGINE)
        values = values.clone().scatter(other, ruled.get_column("normalized"))
        reason = reason.scatter(other, ruled.get_column("reason"))
    return pl.DataFrame({"value": values, "reason": reason})


_NAME_TRANSLITERATION = {"ß": "ss", "ä": "ae", "ö": "oe", "ü": "ue", "ø": "o", "æ": "ae"}


def person_name(frame: pl.LazyFrame) -> pl.LazyFrame:
    """first_name / last_name: lowercase, German/Nordic transliteration, then only `[a-z0-9]`."""
    frame = frame.with_columns(
        normalized=value.str.to_lowercase()
        .str.replace_many(_NAME_TRANSLITERATION)
        .str.replace_all(r"[^a-z0-9]", "")
    )
    return _accept_when(frame, normalized != "", EMPTY)


def city(frame: pl.LazyFrame) -> pl.LazyFrame:
    """Lowercase, then only `[a-z0-9]` (no transliteration: `München` -> `mnchen`)."""
    frame = frame.with_columns(normalized=value.str.to_lowercase().str.replace_all(r"[^a-z0-9]", ""))
    return _accept_when(frame, normalized != "", EMPTY)


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


def state_lookup_key(text: pl.Expr) -> pl.Expr:
    """Upper-case, `Ä→AE Ö→OE Ü→UE ß→SS`, other accents folded, only `A-Z` kept."""
    return (
        text.str.to_uppercase()
        .str.replace_many({"Ä": "AE", "Ö": "OE", "Ü": "UE", "ß": "SS", "ẞ": "SS"})
        .str.normalize("NFKD")
        .str.replace_all(r"[^A-Z]", "")
    )


def state(frame: pl.LazyFrame) -> pl.LazyFrame:
    """The country's map decides; countries without a map keep the first two letters."""
    maps = state_maps()
    # One lookup over "CC:KEY" so every mapped country is served by a single hash-map pass.
    combined = {f"{cc}:{name}": code for cc, names in maps.items() for name, code in names.items()}
    frame = frame.with_columns(__key=state_lookup_key(value), __has_map=country.is_in(list(maps)))
    frame = frame.with_columns(
        __mapped=pl.concat_str(country, pl.lit(":"), "__key").replace_strict(
            combined, default=None, return_dtype=pl.String
        )
    )
    frame = frame.with_columns(
        normalized=pl.when("__has_map")
        .then("__mapped")
        .otherwise(pl.col("__key").str.head(2))
        .str.to_lowercase()
    )
    frame = frame.with_columns(
        reason=pl.when(pl.col("__has_map") & pl.col("__mapped").is_null())
        .then(pl.lit("unknown_state"))
        .when(normalized == "")
        .then(pl.lit(EMPTY))
    )
    return frame.with_columns(normalized=pl.when(pl.col("reason").is_null()).then(normalized))


# --- zip -------------------------------------------------------------------------------------------

# Countries whose postal codes are digits only, and how many digits count.
_DIGIT_ZIPS = {"US": 5, "DE": 5, "FR": 5, "IT": 5, "ES": 5, "JP": 7, "IN": 6}
# Countries whose postal codes keep letters, and how many characters count.
_ALNUM_ZIPS = {"CA": 6, "GB": 7}
_ZIP_PATTERNS = {"CA": r"^[A-Z][0-9][A-Z][0-9][A-Z][0-9]$", "GB": r"^[A-Z]{1,2}[0-9][A-Z0-9]?[0-9][A-Z]{2}$"}


def zip_codes(values: pl.Series, countries: pl.Series) -> pl.DataFrame:
    """Postal code per country: digit counts, Canadian and British formats, US leading zeros restored.

    A rule that partitions rows, as phones and addresses do: `values` trimmed text or null,
    `countries` upper-case alpha-2 or null; returns a frame of the same length with `value` (null
    when rejected or absent) and `reason` (null unless rejected). Rows of digit-only countries and
    the others each go through only their own steps: a polars branch would compute both for all.
    """
    digit_country = countries.is_in(list(_DIGIT_ZIPS)).fill_null(False)
    present = values.is_not_null()
    parts = []
    for rows, plan in ((digit_country & present, _digit_zips), (~digit_country & present, _other_zips)):
        at = positions(rows)
        if at.len():
            lazy = pl.LazyFrame({"at": at, "value": values.gather(at), "country": countries.gather(at)})
            parts.append(plan(lazy).select("at", "normalized", "reason"))
    answers = (
        pl.concat(parts).collect(engine=ENGINE)
        if parts
        else pl.DataFrame(schema={"at": pl.UInt32, "normalized": pl.String, "reason": pl.String})
    )
    return in_row_order(
        answers.select(value="normalized", reason="reason"), answers.get_column("at"), values.len()
    )


def _digit_zips(frame: pl.LazyFrame) -> pl.LazyFrame:
    """Countries whose postal codes are digits only: that many digits, US ZIPs zero-filled."""
    frame = frame.with_columns(
        __digits=country.replace_strict(_DIGIT_ZIPS, default=None, return_dtype=pl.Int64),
        normalized=value.str.replace_all(r"[^0-9]", ""),
    )
    # Spreadsheets drop the leading zeros of New England ZIPs: 2134 is 02134.
    frame = frame.with_columns(
        normalized=pl.when((country == "US") & normalized.str.len_chars().is_between(3, 4))
        .then(normalized.str.zfill(5))
        .otherwise(normalized)
    )
    frame = frame.with_columns(normalized=normalized.str.head("__digits"))
    return _accept_when(frame, normalized.str.len_chars() == pl.col("__digits"), "invalid_zip")


def _other_zips(frame: pl.LazyFrame) -> pl.LazyFrame:
    """Every other country (or none): letters and digits, upper case; CA and GB in their formats."""
    frame = frame.with_columns(
        __length=country.replace_strict(_ALNUM_ZIPS, default=None, return_dtype=pl.Int64),
        normalized=value.str.to_uppercase().str.replace_all(r"[^A-Z0-9]", ""),
    )
    frame = frame.with_columns(
        normalized=pl.when(pl.col("__length").is_not_null())
        .then(normalized.str.head("__length"))
        .otherwise(normalized)
    )
    valid = (
        pl.when(country == "CA")
        .then(normalized.str.contains(_ZIP_PATTERNS["CA"]))
        .when(country == "GB")
        .then(normalized.str.contains(_ZIP_PATTERNS["GB"]))
        .otherwise(normalized != "")
    )
    return _accept_when(frame, valid, "invalid_zip")


def country_code(frame: pl.LazyFrame) -> pl.LazyFrame:
    """The row's own country, lowercase alpha-2 (the engine resolves codes, alpha-3 and names)."""
    return frame.with_columns(
        normalized=country.str.to_lowercase(),
        reason=pl.when(country.is_null()).then(pl.lit("unknown_country")),
    )


# --- identifiers that are never hashed -------------------------------------------------------------

_UUID = r"^([0-9a-f]{8})-?([0-9a-f]{4})-?([0-9a-f]{4})-?([0-9a-f]{4})-?([0-9a-f]{12})$"
ZEROED_MAID = "00000000-0000-0000-0000-000000000000"


def mobile_ad_id(frame: pl.LazyFrame) -> pl.LazyFrame:
    """A UUID, canonical lowercase with dashes; the all-zero ID of limited ad tracking is rejected."""
    frame = frame.with_columns(__lowered=value.str.to_lowercase())
    frame = frame.with_columns(
        __valid=pl.col("__lowered").str.contains(_UUID),
        normalized=pl.col("__lowered").str.replace(_UUID, "$1-$2-$3-$4-$5"),
    )
    reason = (
        pl.when(~pl.col("__valid"))
        .then(pl.lit("invalid_maid"))
        .when(normalized == ZEROED_MAID)
        .then(pl.lit("zeroed_maid"))
    )
    frame = frame.with_columns(reason=reason)
    return frame.with_columns(normalized=pl.when(pl.col("reason").is_null()).then(normalized))


def passthrough(frame: pl.LazyFrame) -> pl.LazyFrame:
    """Partner, customer and social IDs go as given (already trimmed)."""
    return frame.with_columns(normalized=value, reason=pl.lit(None, dtype=pl.String))
