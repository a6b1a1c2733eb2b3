"""Phone numbers to E.164 digits (no `+`), with `phonenumbers` semantics, mostly vectorized.

Calling `phonenumbers.parse` costs tens of microseconds, far more than hashing, so the common shapes
(digits with spaces, `-`, `.`, `(`, `)`, `/`, an optional leading `+` and an optional `ext. 12`)
follow the same steps as `phonenumbers.parse` + `is_possible_number` — country code extraction,
national prefix stripping, length checks — as polars expressions driven by phonenumbers' own
metadata. Everything else (other letters, IDD prefixes, transformed national prefixes, unusual
regions) goes to `phonenumbers` itself, once per distinct (value, country). A differential test
holds the two paths to the same answers.
"""

import functools
import re
from dataclasses import dataclass

import phonenumbers
import polars as pl
from phonenumbers import PhoneMetadata
from phonenumbers.phonenumberutil import COUNTRY_CODE_TO_REGION_CODE, SUPPORTED_REGIONS

from audience_pipeline.identity.hashing import HEX64
from audience_pipeline.identity.rules import ENGINE

INVALID = "invalid_phone"
NEEDS_COUNTRY = "phone_needs_country"
# Routes that are not a region's numbering plan (regions are upper-case alpha-2).
_SKIP, _LIBRARY, _INTERNATIONAL = "skip", "library", "international"

_MIN_NSN, _MAX_NSN = 2, 17
_FAST_SHAPE = r"^\+?[0-9 ().\-/]*$"
# A trailing extension that phonenumbers' own extension pattern takes the same way: `... ext. 12`.
_EXTENSION = r"(?i)^(\+?[0-9 ().\-/]*[0-9)])[ \t]*(?:ext\.?|x)[ \t]*[0-9]{1,6}$"


@dataclass(frozen=True)
class _Plan:
    """What the vectorized path needs from one region's metadata."""

    country_code: int
    general: str | None  # national number pattern, anchored for a full match
    national_prefix: str | None  # national prefix for parsing, anchored at the start
    transform_group: int | None  # group whose participation means a transform rule applies
    international_prefix: str | None
    lengths: tuple[int, ...]
    local_lengths: tuple[int, ...]


def _rust_compatible(pattern: str) -> bool:
    try:
        pl.select(pl.lit("0").str.contains(pattern))
    except pl.exceptions.ComputeError:
        return False
    return True


@functools.cache
def _plan(region: str) -> _Plan | None:
    """The region's metadata as vectorizable patterns; None when it must go to phonenumbers."""
    meta = PhoneMetadata.metadata_for_region(region)
    if meta is None:
        return None
    general = meta.general_desc.national_number_pattern
    npp = meta.national_prefix_for_parsing or None
    transform_group = None
    if npp and meta.national_prefix_transform_rule:
        transform_group = re.compile(npp).groups or None
        if transform_group is None:
            return None
    plan = _Plan(
        country_code=meta.country_code,
        general=f"^(?:{general})$" if general else None,
        national_prefix=f"^(?:{npp})" if npp else None,
        transform_group=transform_group,
        international_prefix=f"^(?:{meta.international_prefix})" if meta.international_prefix else None,
        lengths=tuple(meta.general_desc.possible_length),
        local_lengths=tuple(meta.general_desc.possible_length_local_only),
    )
    patterns = [p for p in (plan.general, plan.national_prefix, plan.international_prefix) if p]
    return plan if all(_rust_compatible(p) for p in patterns) else None


@functools.cache
def _codes_by_length() -> dict[int, dict[str, int]]:
    """Country calling codes as text -> int, grouped by how many digits they have."""
    grouped: dict[int, dict[str, int]] = {}
    for code in COUNTRY_CODE_TO_REGION_CODE:
        grouped.setdefault(len(str(code)), {})[str(code)] = code
    return grouped


@functools.cache
def _main_region(country_code: int) -> str | None:
    regions = COUNTRY_CODE_TO_REGION_CODE.get(country_code)
    return regions[0] if regions and regions[0] in SUPPORTED_REGIONS else None


def _full_match(column: str, plan: _Plan) -> pl.Expr:
    return pl.col(column).str.contains(plan.general) if plan.general else pl.lit(False)


def _length(column: str, plan: _Plan, *, possible: bool) -> pl.Expr:
    """phonenumbers' `_test_number_length` outcome as a boolean.

    With `possible`, True for IS_POSSIBLE and IS_POSSIBLE_LOCAL_ONLY (what `is_possible_number`
    accepts); without, True for IS_POSSIBLE and TOO_LONG (what keeps a stripped national prefix).
    """
    n = pl.col(column).str.len_chars()
    if possible:
        return n.is_in(list(plan.lengths + plan.local_lengths))
    return ~n.is_in(list(plan.local_lengths)) & (n.is_in(list(plan.lengths)) | (n > max(plan.lengths)))


# Each step below is its own projection over named columns: nested expressions would be copied
# into every branch that uses them and evaluate their regexes many times per row.


def _strip_national_prefix(frame: pl.LazyFrame, source: str, target: str, plan: _Plan) -> pl.LazyFrame:
    """`_maybe_strip_national_prefix_carrier_code` into `target`; transformed prefixes set `slow`."""
    if plan.national_prefix is None:
        return frame.with_columns(pl.col(source).alias(target))
    prefix = pl.col(source).str.extract(plan.national_prefix, 0)
    frame = frame.with_columns(
        __rest=pl.when(prefix.is_not_null()).then(pl.col(source).str.slice(prefix.str.len_chars()))
    )
    # A number that matched its plan keeps the prefix when stripping it would break the match.
    keep = pl.col("__rest").is_null() | (_full_match(source, plan) & ~_full_match("__rest", plan))
    slow = pl.col("slow")
    if plan.transform_group is not None:
        slow = slow | pl.col(source).str.extract(plan.national_prefix, plan.transform_group).is_not_null()
    return frame.with_columns(
        pl.when(keep).then(pl.col(source)).otherwise("__rest").alias(target), slow.alias("slow")
    )


def _finish(frame: pl.LazyFrame, plan: _Plan, cc: int) -> pl.LazyFrame:
    """From the national number in `nsn` to `e164` digits or a `reason`, as `phonenumbers.parse` does."""
    main_region = _main_region(cc)
    main = _plan(main_region) if main_region else None
    if main is None:
        return frame.with_columns(slow=pl.lit(True))
    frame = _strip_national_prefix(frame, "nsn", "__stripped", plan)
    # phonenumbers keeps the prefix when what is left could only be a short or local number.
    frame = frame.with_columns(
        __national=pl.when(_length("__stripped", plan, possible=False)).then("__stripped").otherwise("nsn")
    )
    possible = (
        (pl.col("nsn").str.len_chars() >= _MIN_NSN)
        & (pl.col("__national").str.len_chars() <= _MAX_NSN)
        & _length("__national", main, possible=True)
    )
    return frame.with_columns(
        e164=pl.when(possible).then(pl.concat_str(pl.lit(str(cc)), "__national")),
        reason=pl.when(~possible).then(pl.lit(INVALID)),
    )


def _national(frame: pl.DataFrame, region: str) -> list[pl.LazyFrame]:
    """Numbers without an international prefix, read in `region`'s numbering plan."""
    plan = _plan(region)
    main_region = _main_region(plan.country_code) if plan else None
    main = _plan(main_region) if main_region else None
    if plan is None or main is None:
        return [frame.lazy().with_columns(slow=pl.lit(True))]
    cc = str(plan.country_code)
    idd = (
        pl.col("digits").str.contains(plan.international_prefix)
        if plan.international_prefix
        else pl.lit(False)
    )
    lazy = frame.lazy().with_columns(slow=pl.lit(False), __after_cc=pl.col("digits").str.slice(len(cc)))
    # A national number may still start with the region's own country code (`44 20 7946 0958`).
    lazy = _strip_national_prefix(lazy, "__after_cc", "__after_cc", plan)
    starts = pl.col("digits").str.starts_with(cc)
    too_long = ~pl.col("digits").str.len_chars().is_in(list(plan.local_lengths)) & (
        pl.col("digits").str.len_chars() > max(plan.lengths)
    )
    extract_cc = starts & ((~_full_match("digits", plan) & _full_match("__after_cc", plan)) | too_long)
    lazy = lazy.with_columns(
        __extract=extract_cc,
        # The prefix stripping above only matters, and only needs phonenumbers, when the code is there.
        slow=idd | (starts & pl.col("slow")),
    )
    nsn = pl.when("__extract").then("__after_cc").otherwise("digits")
    if main == plan:
        return [_finish(lazy.with_columns(nsn=nsn), plan, plan.country_code)]
    # After extracting the code, phonenumbers goes on with the metadata of the code's main region.
    lazy = lazy.collect(engine=ENGINE)
    return [
        _finish(lazy.lazy().filter(~pl.col("__extract")).with_columns(nsn=nsn), plan, plan.country_code),
        _finish(lazy.lazy().filter("__extract").with_columns(nsn=nsn), main, plan.country_code),
    ]


def _international(frame: pl.DataFrame) -> list[pl.LazyFrame]:
    """Numbers written with `+` (or `00`): the country code comes from the number."""
    d = pl.col("digits")
    # Country calling codes are prefix-free: at most one of the first 1, 2 or 3 digits is a code.
    frame = frame.with_columns(
        cc=pl.when(~d.str.starts_with("0")).then(
            pl.coalesce(
                d.str.head(n).replace_strict(codes, default=None) for n, codes in _codes_by_length().items()
            )
        )
    )
    long_enough = d.str.len_chars() > 2
    parts = [
        frame.lazy().filter(~long_enough).with_columns(reason=pl.lit(INVALID), slow=pl.lit(False)),
        frame.lazy().filter(long_enough & pl.col("cc").is_null()).with_columns(slow=pl.lit(True)),
    ]
    for (cc,), group in frame.filter(long_enough & pl.col("cc").is_not_null()).group_by("cc"):
        region = _main_region(cc)
        plan = _plan(region) if region else None
        lazy = group.lazy().with_columns(slow=pl.lit(False), nsn=d.str.slice(len(str(cc))))
        parts.append(lazy.with_columns(slow=pl.lit(True)) if plan is None else _finish(lazy, plan, cc))
    return parts


def _with_library(number: str, region: str | None) -> tuple[str | None, str | None]:
    try:
        parsed = phonenumbers.parse(number, region)
    except phonenumbers.NumberParseException as error:
        no_country = region is None or region not in SUPPORTED_REGIONS
        missing_region = error.error_type == phonenumbers.NumberParseException.INVALID_COUNTRY_CODE
        if no_country and missing_region and "+" not in number:
            return None, NEEDS_COUNTRY
        return None, INVALID
    if not phonenumbers.is_possible_number(parsed):
        return None, INVALID
    return f"{parsed.country_code}{phonenumbers.national_significant_number(parsed)}", None


def _route(frame: pl.LazyFrame) -> pl.LazyFrame:
    """Each row's route: a region's numbering plan, the `+` path, or phonenumbers itself."""
    number = pl.col("number")
    frame = frame.with_columns(digits=number.str.replace_all(r"[^0-9]", ""))
    route = (
        pl.when(pl.col("value").is_null() | pl.col("value").str.contains(HEX64))
        .then(pl.lit(_SKIP))
        .when(~number.str.contains(_FAST_SHAPE) | (pl.col("digits").str.len_chars() < 3))
        .then(pl.lit(_LIBRARY))
        .when(number.str.starts_with("+"))
        .then(pl.lit(_INTERNATIONAL))
        .when(pl.col("country").is_null())
        .then(pl.lit(NEEDS_COUNTRY))
        .otherwise("country")
    )
    return frame.select("i", "value", "country", "digits", "number", route.alias("route"))


def normalize_phones(values: pl.Series, countries: pl.Series) -> pl.DataFrame:
    """E.164 digits and reject reasons for trimmed phone values.

    `countries` holds each row's upper-case alpha-2 country or null. Returns a frame of the same
    length with `value`, the E.164 digits (null when rejected), and `reason` (null when accepted);
    null and already-hashed values get neither.
    """
    if values.is_empty():
        return pl.DataFrame(schema={"value": pl.String, "reason": pl.String})
    # `00` is an international prefix wherever the number was dialled from.
    frame = pl.LazyFrame({"value": values, "country": countries}).with_row_index("i")
    frame = _route(frame.with_columns(number=pl.col("value").str.replace("^00", "+"))).collect(engine=ENGINE)
    # A number that misses the vectorized shape may only carry an extension (`... ext. 12`); taking it
    # off is only right where phonenumbers would, which needs the number to stay viable without it.
    library = frame.filter(pl.col("route") == _LIBRARY)
    bare = library.lazy().with_columns(number=pl.col("number").str.replace(_EXTENSION, "$1"))
    bare = _route(bare.filter(pl.col("number").str.replace_all(r"[^0-9]", "").str.len_chars() >= 3))
    retried = pl.concat([bare, library.lazy().join(bare.select("i"), on="i", how="anti")]).collect(
        engine=ENGINE
    )
    frame = pl.concat([frame.filter(pl.col("route") != _LIBRARY), retried])
    parts = []
    for (name,), group in frame.group_by("route"):
        lazy = group.lazy().with_columns(e164=pl.lit(None, pl.String), reason=pl.lit(None, pl.String))
        if name == _SKIP:
            parts.append(lazy.with_columns(slow=pl.lit(False)))
        elif name == _LIBRARY:
            parts.append(lazy.with_columns(slow=pl.lit(True)))
        elif name == NEEDS_COUNTRY:
            parts.append(lazy.with_columns(reason=pl.lit(NEEDS_COUNTRY), slow=pl.lit(False)))
        elif name == _INTERNATIONAL:
            parts.extend(_international(lazy.collect(engine=ENGINE)))
        else:
            parts.extend(_national(lazy.collect(engine=ENGINE), name))
    columns = ["i", "number", "country", "e164", "reason", "slow"]
    done = pl.concat([p.select(columns) for p in parts]).collect(engine=ENGINE)

    # What the vectorized path could not settle goes to phonenumbers, once per distinct value.
    library = done.filter("slow").select("number", "country").unique()
    answers = [_with_library(number, region) for number, region in library.iter_rows()]
    library = library.with_columns(
        e164=pl.Series([a[0] for a in answers], dtype=pl.String),
        reason=pl.Series([a[1] for a in answers], dtype=pl.String),
    )
    settled = done.filter(~pl.col("slow")).select("i", "e164", "reason")
    looked_up = (
        done.filter("slow")
        .select("i", "number", "country")
        .join(library, on=["number", "country"], how="left", nulls_equal=True)
    )
    return (
        pl.concat([settled, looked_up.select("i", "e164", "reason")])
        .sort("i")
        .select(pl.col("e164").alias("value"), "reason")
    )
