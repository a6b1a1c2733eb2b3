"""Phone numbers to E.164 digits (no `+`), with `phonenumbers` semantics, mostly vectorized.

Calling `phonenumbers.parse` costs tens of microseconds, far more than hashing, so the common shapes
(digits with spaces, `-`, `.`, `(`, `)`, `/` and an optional leading `+`) follow the same steps as
`phonenumbers.parse` + `is_possible_number` — country code extraction, national prefix stripping,
length checks — as polars expressions driven by phonenumbers' own metadata. Everything else
(letters, extensions, IDD prefixes, transformed national prefixes, unusual regions) goes to
`phonenumbers` itself, once per distinct (value, country). A differential test holds the two paths
to the same answers.
"""

import functools
import re
from dataclasses import dataclass

import phonenumbers
import polars as pl
from phonenumbers import PhoneMetadata
from phonenumbers.phonenumberutil import COUNTRY_CODE_TO_REGION_CODE, SUPPORTED_REGIONS

INVALID = "invalid_phone"
NEEDS_COUNTRY = "phone_needs_country"

_MIN_NSN, _MAX_NSN = 2, 17
_FAST_SHAPE = r"^\+?[0-9 ().\-/]*$"


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
def _main_region(country_code: int) -> str | None:
    regions = COUNTRY_CODE_TO_REGION_CODE.get(country_code)
    return regions[0] if regions and regions[0] in SUPPORTED_REGIONS else None


def _full_match(x: pl.Expr, plan: _Plan) -> pl.Expr:
    return x.str.contains(plan.general) if plan.general else pl.lit(False)


def _length_ok(x: pl.Expr, plan: _Plan, *, local_ok: bool) -> pl.Expr:
    """phonenumbers' `_test_number_length` outcome as a boolean.

    With `local_ok`, True for IS_POSSIBLE and IS_POSSIBLE_LOCAL_ONLY (what `is_possible_number`
    accepts); without, True for IS_POSSIBLE and TOO_LONG (what keeps a stripped national prefix).
    """
    n = x.str.len_chars()
    if local_ok:
        return n.is_in(list(plan.lengths + plan.local_lengths))
    return ~n.is_in(list(plan.local_lengths)) & (n.is_in(list(plan.lengths)) | (n > max(plan.lengths)))


def _too_long(x: pl.Expr, plan: _Plan) -> pl.Expr:
    return ~x.str.len_chars().is_in(list(plan.local_lengths)) & (x.str.len_chars() > max(plan.lengths))


def _strip_national_prefix(x: pl.Expr, plan: _Plan) -> tuple[pl.Expr, pl.Expr]:
    """`_maybe_strip_national_prefix_carrier_code` without a transform: (number, needs phonenumbers)."""
    if plan.national_prefix is None:
        return x, pl.lit(False)
    prefix = x.str.extract(plan.national_prefix, 0)
    rest = x.str.slice(prefix.str.len_chars())
    keep = prefix.is_null() | (_full_match(x, plan) & ~_full_match(rest, plan))
    needs_library = pl.lit(False)
    if plan.transform_group is not None:
        needs_library = x.str.extract(plan.national_prefix, plan.transform_group).is_not_null()
    return pl.when(keep).then(x).otherwise(rest), needs_library


def _finish(nsn: pl.Expr, strip_plan: _Plan, cc: int) -> tuple[pl.Expr, pl.Expr, pl.Expr]:
    """From a national number to (e164 digits, reject reason, needs phonenumbers)."""
    main = _plan(_main_region(cc)) if _main_region(cc) else None
    if main is None:
        return pl.lit(None, pl.String), pl.lit(None, pl.String), pl.lit(True)
    stripped, needs_library = _strip_national_prefix(nsn, strip_plan)
    # phonenumbers keeps the prefix when what is left could only be a short or local number.
    national = pl.when(_length_ok(stripped, strip_plan, local_ok=False)).then(stripped).otherwise(nsn)
    possible = (
        (nsn.str.len_chars() >= _MIN_NSN)
        & (national.str.len_chars() <= _MAX_NSN)
        & _length_ok(national, main, local_ok=True)
    )
    digits = pl.concat_str(pl.lit(str(cc)), national)
    return (
        pl.when(possible).then(digits),
        pl.when(~possible).then(pl.lit(INVALID)),
        needs_library,
    )


def _national(frame: pl.DataFrame, region: str) -> pl.DataFrame:
    """Numbers without an international prefix, read in `region`'s numbering plan."""
    plan = _plan(region)
    if plan is None:
        return frame.with_columns(slow=pl.lit(True))
    d = pl.col("digits")
    idd = d.str.contains(plan.international_prefix) if plan.international_prefix else pl.lit(False)
    cc = str(plan.country_code)
    # A national number may still start with the region's own country code (`44 20 7946 0958`).
    after_cc, cc_needs_library = _strip_national_prefix(d.str.slice(len(cc)), plan)
    extract_cc = d.str.starts_with(cc) & (
        (~_full_match(d, plan) & _full_match(after_cc, plan)) | _too_long(d, plan)
    )
    main_region = _main_region(plan.country_code)
    main = _plan(main_region) if main_region else None
    if main is None:
        return frame.with_columns(slow=pl.lit(True))
    # After extracting the code, phonenumbers continues with the metadata of the code's main region.
    kept = _finish(d, plan, plan.country_code)
    extracted = _finish(after_cc, main, plan.country_code)
    return frame.with_columns(
        e164=pl.when(extract_cc).then(extracted[0]).otherwise(kept[0]),
        reason=pl.when(extract_cc).then(extracted[1]).otherwise(kept[1]),
        slow=idd
        | (d.str.starts_with(cc) & cc_needs_library)
        | pl.when(extract_cc).then(extracted[2]).otherwise(kept[2]),
    )


def _international(frame: pl.DataFrame) -> pl.DataFrame:
    """Numbers written with `+` (or `00`): the country code comes from the number."""
    d = pl.col("digits")
    codes = frame.select(
        pl.coalesce(
            pl.when(d.str.head(n).cast(pl.Int32, strict=False).is_in(list(COUNTRY_CODE_TO_REGION_CODE)))
            .then(d.str.head(n).cast(pl.Int32, strict=False))
            for n in (1, 2, 3)
        ).alias("cc")
    )["cc"]
    frame = frame.with_columns(cc=pl.when(~d.str.starts_with("0")).then(codes))
    parts = [
        frame.filter(pl.col("digits").str.len_chars() <= 2).with_columns(reason=pl.lit(INVALID), slow=pl.lit(False)),
        frame.filter((pl.col("digits").str.len_chars() > 2) & pl.col("cc").is_null()).with_columns(slow=pl.lit(True)),
    ]
    rest = frame.filter((pl.col("digits").str.len_chars() > 2) & pl.col("cc").is_not_null())
    for (cc,), group in rest.group_by("cc"):
        region = _main_region(cc)
        plan = _plan(region) if region else None
        if plan is None:
            parts.append(group.with_columns(slow=pl.lit(True)))
            continue
        e164, reason, slow = _finish(d.str.slice(len(str(cc))), plan, cc)
        parts.append(group.with_columns(e164=e164, reason=reason, slow=slow))
    return pl.concat(parts, how="diagonal")


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


def normalize_phones(values: pl.Series, countries: pl.Series) -> pl.DataFrame:
    """E.164 digits and reject reasons for trimmed, non-empty phone values.

    `countries` holds each row's upper-case alpha-2 country or null. Returns a frame of the same
    length with `e164` (null when rejected) and `reason` (null when accepted).
    """
    frame = pl.DataFrame({"value": values, "country": countries}).with_row_index("i")
    v = pl.col("value")
    frame = frame.with_columns(
        # `00` is an international prefix wherever the number was dialled from.
        number=pl.when(v.str.starts_with("00")).then(pl.concat_str(pl.lit("+"), v.str.slice(2))).otherwise(v)
    ).with_columns(
        digits=pl.col("number").str.replace_all(r"[^0-9]", ""),
        e164=pl.lit(None, pl.String),
        reason=pl.lit(None, pl.String),
    )
    fast = pl.col("number").str.contains(_FAST_SHAPE) & (pl.col("digits").str.len_chars() >= 3)
    international = pl.col("number").str.starts_with("+")

    parts = [
        frame.filter(~fast).with_columns(slow=pl.lit(True)),
        frame.filter(fast & ~international & pl.col("country").is_null()).with_columns(
            reason=pl.lit(NEEDS_COUNTRY), slow=pl.lit(False)
        ),
        _international(frame.filter(fast & international)),
    ]
    national = frame.filter(fast & ~international & pl.col("country").is_not_null())
    for (region,), group in national.group_by("country"):
        parts.append(_national(group, region))
    done = pl.concat(parts, how="diagonal").select("i", "number", "country", "e164", "reason", "slow")

    slow = done.filter("slow").select("number", "country").unique()
    if slow.height:
        answers = [_with_library(number, region) for number, region in slow.iter_rows()]
        slow = slow.with_columns(
            slow_e164=pl.Series([a[0] for a in answers], dtype=pl.String),
            slow_reason=pl.Series([a[1] for a in answers], dtype=pl.String),
        )
        done = done.join(slow, on=["number", "country"], how="left", nulls_equal=True).with_columns(
            e164=pl.when("slow").then("slow_e164").otherwise("e164"),
            reason=pl.when("slow").then("slow_reason").otherwise("reason"),
        )
    return done.sort("i").select("e164", "reason")
