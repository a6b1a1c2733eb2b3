"""Phone numbers to E.164 digits (no `+`), with `phonenumbers` semantics, mostly vectorized.

Calling `phonenumbers.parse` costs tens of microseconds, far more than hashing, so the common shapes
(digits with spaces, `-`, `.`, `(`, `)`, `/`, an optional leading `+`, an optional `ext. 12` and any
text before the number, such as `tel: `) follow the same steps as `phonenumbers.parse` +
`is_possible_number` — country code extraction, national prefix stripping, length checks — as polars
expressions driven by phonenumbers' own metadata. Everything else (other letters, IDD prefixes,
transformed national prefixes, unusual regions) goes to `phonenumbers` itself, once per distinct
(value, country). A differential test holds the two paths to the same answers.
"""

import functools
import re
from dataclasses import dataclass

import phonenumbers
import polars as pl
from phonenumbers import PhoneMetadata
from phonenumbers.phonenumberutil import COUNTRY_CODE_TO_REGION_CODE, SUPPORTED_REGIONS

from audience_pipeline.identity.rules import ENGINE, in_row_order, positions

INVALID = "invalid_phone"
NEEDS_COUNTRY = "phone_needs_country"
# Where a row goes: nowhere, to phonenumbers itself, the `+` path, a reject, or its country's plan.
_SKIP, _LIBRARY, _INTERNATIONAL, _NEEDS_COUNTRY, _NATIONAL = range(5)

_MIN_NSN, _MAX_NSN = 2, 17
_FAST_SHAPE = r"^\+?[0-9 ().\-/]*$"
_PUNCTUATION = dict.fromkeys(" ().-/+", "")
# A trailing extension that phonenumbers' own extension pattern takes the same way: `... ext. 12`.
_EXTENSION = r"(?i)^(\+?[0-9 ().\-/]*[0-9)])[ \t]*(?:ext\.?|x)[ \t]*[0-9]{1,6}$"
# What phonenumbers drops before a number: no `+`, no digit (Python's `\d` is Unicode `Nd`, which
# `\p{N}` holds), and no `;` so that an RFC 3966 `;phone-context=` never goes.
_LEADING_TEXT = r"^[^+＋\p{N};]+"
# phonenumbers rejects longer input before reading it.
_MAX_INPUT = 250


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
def _codes_by_head() -> dict[str, int]:
    """The country calling code that each text of up to three digits starts with, where one does.

    Calling codes are prefix-free and at most three digits long, so the first three digits of a
    number name at most one code: a single lookup finds it.
    """
    codes = {str(code): code for code in COUNTRY_CODE_TO_REGION_CODE}
    heads = (f"{i:0{n}d}" for n in (1, 2, 3) for i in range(10**n))
    return {head: code for head in heads for n in (1, 2, 3) if (code := codes.get(head[:n])) is not None}


@functools.cache
def _main_region(country_code: int) -> str | None:
    regions = COUNTRY_CODE_TO_REGION_CODE.get(country_code)
    return regions[0] if regions and regions[0] in SUPPORTED_REGIONS else None


def _full_match(expr: pl.Expr, plan: _Plan) -> pl.Expr:
    return expr.str.contains(plan.general) if plan.general else pl.lit(False)


def _length(column: str, plan: _Plan, *, possible: bool) -> pl.Expr:
    """phonenumbers' `_test_number_length` outcome as a boolean.

    With `possible`, True for IS_POSSIBLE and IS_POSSIBLE_LOCAL_ONLY (what `is_possible_number`
    accepts); without, True for IS_POSSIBLE and TOO_LONG (what keeps a stripped national prefix).
    """
    n = pl.col(column).str.len_chars()
    if possible:
        return n.is_in(list(plan.lengths + plan.local_lengths))
    return ~n.is_in(list(plan.local_lengths)) & (n.is_in(list(plan.lengths)) | (n > max(plan.lengths)))


# A plan is a sequence of projections over named columns, built once per region: nested expressions
# would be copied into every branch that uses them and evaluate their regexes many times per row.
Stages = tuple[dict[str, pl.Expr], ...]


def _apply(frame: pl.LazyFrame, stages: Stages) -> pl.LazyFrame:
    for stage in stages:
        frame = frame.with_columns(**stage)
    return frame


def _strip_national_prefix(source: str, target: str, plan: _Plan) -> Stages:
    """`_maybe_strip_national_prefix_carrier_code` into `target`; transformed prefixes set `slow`."""
    if plan.national_prefix is None:
        return ({target: pl.col(source)},)
    rest = pl.col("__rest")
    # A number that matched its plan keeps the prefix when stripping it would break the match.
    keep = rest.is_null() | (_full_match(pl.col(source), plan) & ~_full_match(rest, plan))
    slow = pl.col("slow")
    if plan.transform_group is not None:
        slow = slow | pl.col(source).str.extract(plan.national_prefix, plan.transform_group).is_not_null()
    return (
        # The prefix's length is a column of its own: used twice, it is extracted once.
        {"__prefix": pl.col(source).str.extract(plan.national_prefix, 0).str.len_chars()},
        {"__rest": pl.when(pl.col("__prefix").is_not_null()).then(pl.col(source).str.slice("__prefix"))},
        {target: pl.when(keep).then(pl.col(source)).otherwise(rest), "slow": slow},
    )


@functools.cache
def _finish(region: str, cc: int) -> Stages:
    """From the national number in `nsn` to `e164` digits or a `reason`, as `phonenumbers.parse` does
    with `region`'s metadata; `slow` where only phonenumbers itself can tell."""
    plan = _plan(region)
    main_region = _main_region(cc)
    main = _plan(main_region) if main_region else None
    if main is None:
        return ({"slow": pl.lit(True)},)
    possible = (
        (pl.col("nsn").str.len_chars() >= _MIN_NSN)
        & (pl.col("__national").str.len_chars() <= _MAX_NSN)
        & _length("__national", main, possible=True)
    )
    return (
        *_strip_national_prefix("nsn", "__stripped", plan),
        # phonenumbers keeps the prefix when what is left could only be a short or local number.
        {
            "__national": pl.when(_length("__stripped", plan, possible=False))
            .then("__stripped")
            .otherwise("nsn")
        },
        {
            "e164": pl.when(possible).then(pl.concat_str(pl.lit(str(cc)), "__national")),
            "reason": pl.when(~possible).then(pl.lit(INVALID)),
        },
    )


def _idd(plan: _Plan) -> pl.Expr:
    """Where `digits` start with the region's international prefix: only phonenumbers reads those."""
    digits = pl.col("digits")
    return digits.str.contains(plan.international_prefix) if plan.international_prefix else pl.lit(False)


@functools.cache
def _national_number(region: str) -> Stages:
    """`nsn` from `digits` that start with `region`'s own country code, read in its plan, and
    `__extract` where that code came off."""
    plan = _plan(region)
    cc = str(plan.country_code)
    digits = pl.col("digits")
    too_long = ~digits.str.len_chars().is_in(list(plan.local_lengths)) & (
        digits.str.len_chars() > max(plan.lengths)
    )
    # A national number may still start with the region's own country code (`44 20 7946 0958`).
    extract_cc = (~_full_match(digits, plan) & _full_match(pl.col("__after_cc"), plan)) | too_long
    return (
        {"slow": pl.lit(False), "__after_cc": digits.str.slice(len(cc))},
        *_strip_national_prefix("__after_cc", "__after_cc", plan),
        # The prefix stripping above only matters, and only needs phonenumbers, when the code is there.
        {"__extract": extract_cc, "slow": _idd(plan) | pl.col("slow")},
        {"nsn": pl.when("__extract").then("__after_cc").otherwise("digits")},
    )


def _national(frame: pl.DataFrame, region: str) -> list[pl.LazyFrame]:
    """Numbers without an international prefix, read in `region`'s numbering plan."""
    plan = _plan(region)
    main_region = _main_region(plan.country_code) if plan else None
    main = _plan(main_region) if main_region else None
    if plan is None or main is None:
        return [frame.lazy().with_columns(slow=pl.lit(True))]
    cc = plan.country_code
    # Only a number that starts with the country code can lose it; every other one is its own
    # national number, and skips the regexes that decide whether the code comes off.
    starts = frame.get_column("digits").str.starts_with(str(cc))
    parts = [
        _apply(
            frame.filter(~starts).lazy().with_columns(slow=_idd(plan), nsn=pl.col("digits")),
            _finish(region, cc),
        )
    ]
    with_code = frame.filter(starts)
    if with_code.is_empty():
        return parts
    lazy = _apply(with_code.lazy(), _national_number(region))
    if main == plan:
        return [*parts, _apply(lazy, _finish(region, cc))]
    # After extracting the code, phonenumbers goes on with the metadata of the code's main region.
    lazy = lazy.collect(engine=ENGINE).lazy()
    return [
        *parts,
        _apply(lazy.filter(~pl.col("__extract")), _finish(region, cc)),
        _apply(lazy.filter("__extract"), _finish(main_region, cc)),
    ]


def _international(frame: pl.DataFrame) -> list[pl.LazyFrame]:
    """Numbers written with `+` (or `00`): the country code comes from the number."""
    d = pl.col("digits")
    frame = frame.with_columns(
        cc=d.str.head(3).replace_strict(_codes_by_head(), default=None, return_dtype=pl.Int64)
    )
    long_enough = d.str.len_chars() > 2
    parts = [
        frame.lazy().filter(~long_enough).with_columns(reason=pl.lit(INVALID), slow=pl.lit(False)),
        frame.lazy().filter(long_enough & pl.col("cc").is_null()).with_columns(slow=pl.lit(True)),
    ]
    for (cc,), group in frame.filter(long_enough & pl.col("cc").is_not_null()).group_by("cc"):
        region = _main_region(cc)
        lazy = group.lazy().with_columns(slow=pl.lit(False), nsn=d.str.slice(len(str(cc))))
        parts.append(
            _apply(lazy, _finish(region, cc))
            if region and _plan(region)
            else lazy.with_columns(slow=pl.lit(True))
        )
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


def _numbers(values: pl.Series, countries: pl.Series) -> pl.DataFrame:
    """Row index `i`, `number` (`00` read as `+`), `digits` and each row's `route`."""
    # `00` is an international prefix wherever the number was dialled from. Few numbers are written
    # so: the cheap test finds them, and only they go through the regex.
    dialled = positions(values.str.starts_with("00"))
    if dialled.len():
        values = values.clone().scatter(dialled, values.gather(dialled).str.replace("^00", "+"))
    frame = pl.DataFrame({"country": countries, "number": values}).with_row_index("i")
    number = pl.col("number")
    frame = frame.with_columns(skip=number.is_null(), fast=number.str.contains(_FAST_SHAPE))
    # A number that misses the vectorized shape may only carry text that phonenumbers ignores: what
    # comes before the first `+` or digit (`tel: `), which it drops from any number it reads (not too
    # long, no RFC 3966 `;phone-context=`), and an extension (`... ext. 12`), which it takes off
    # where the number stays viable without it.
    odd = positions(~frame.get_column("skip") & ~frame.get_column("fast"))
    numbers = frame.get_column("number").gather(odd)
    readable = numbers.str.len_chars() <= _MAX_INPUT
    odd, numbers = odd.filter(readable), numbers.filter(readable)
    if odd.len():
        numbers = numbers.str.replace(_LEADING_TEXT, "")
        bare = numbers.str.replace(_EXTENSION, "$1")
        numbers = bare.zip_with(bare.str.replace_all(r"[^0-9]", "").str.len_chars() >= 3, numbers)
        frame = frame.with_columns(
            frame.get_column("number").scatter(odd, numbers),
            frame.get_column("fast").scatter(odd, numbers.str.contains(_FAST_SHAPE)),
        )
    # Digits of the fast shape (the only rows that read them) are what is left without its punctuation.
    frame = frame.with_columns(digits=number.str.replace_many(_PUNCTUATION))
    route = (
        pl.when("skip")
        .then(_SKIP)
        .when(~pl.col("fast") | (pl.col("digits").str.len_bytes() < 3))
        .then(_LIBRARY)
        .when(number.str.starts_with("+"))
        .then(_INTERNATIONAL)
        .when(pl.col("country").is_null())
        .then(_NEEDS_COUNTRY)
        .otherwise(_NATIONAL)
    )
    return frame.select("i", "country", "number", "digits", route.cast(pl.UInt8).alias("route"))


def normalize_phones(values: pl.Series, countries: pl.Series) -> pl.DataFrame:
    """E.164 digits and reject reasons for trimmed phone values.

    `countries` holds each row's upper-case alpha-2 country or null. Returns a frame of the same
    length with `value`, the E.164 digits (null when rejected), and `reason` (null when accepted);
    null values get neither.
    """
    # Absent values are left out from the start: a string kernel spends time on every row it is
    # given. `i` below counts the rows that are left.
    present = positions(values.is_not_null())
    countries = countries.gather(present)
    frame = _numbers(values.gather(present), countries)
    route = pl.col("route")
    parts = []
    # International numbers carry their own country: they form one group, without a region.
    work = frame.filter(route.is_in([_INTERNATIONAL, _NATIONAL])).select(
        "i",
        "digits",
        pl.when(route == _NATIONAL).then("country").alias("region"),
        e164=pl.lit(None, pl.String),
        reason=pl.lit(None, pl.String),
    )
    for (region,), group in work.group_by("region"):
        group = group.drop("region")
        parts.extend(_national(group, region) if region else _international(group))
    done = (
        pl.concat([p.select("i", "e164", "reason", "slow") for p in parts]).collect(engine=ENGINE)
        if parts
        else pl.DataFrame(schema={"i": pl.UInt32, "e164": pl.String, "reason": pl.String, "slow": pl.Boolean})
    )

    # What the vectorized path could not settle goes to phonenumbers, once per distinct value.
    routes = frame.get_column("route")
    slow = pl.concat([done.filter("slow").get_column("i"), positions(routes == _LIBRARY)])
    asked = pl.DataFrame(
        {"i": slow, "number": frame.get_column("number").gather(slow), "country": countries.gather(slow)}
    )
    library = asked.select("number", "country").unique()
    answers = [_with_library(number, region) for number, region in library.iter_rows()]
    library = library.with_columns(
        e164=pl.Series([a[0] for a in answers], dtype=pl.String),
        reason=pl.Series([a[1] for a in answers], dtype=pl.String),
    )
    looked_up = asked.join(library, on=["number", "country"], how="left", nulls_equal=True)
    needs_country = pl.DataFrame({"i": positions(routes == _NEEDS_COUNTRY)})
    answered = pl.concat(
        [
            done.filter(~pl.col("slow")).select("i", "e164", "reason"),
            looked_up.select("i", "e164", "reason"),
            needs_country.with_columns(e164=pl.lit(None, pl.String), reason=pl.lit(NEEDS_COUNTRY)),
        ]
    )
    return in_row_order(
        answered.select(value="e164", reason="reason"), present.gather(answered.get_column("i")), len(values)
    )
