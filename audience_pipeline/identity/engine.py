"""The identity engine: normalize and hash identity columns of a polars frame, reporting rejects."""

from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor

import polars as pl

from audience_pipeline.identity import rules
from audience_pipeline.identity.address import normalize_addresses
from audience_pipeline.identity.countries import alpha2, normalize_country
from audience_pipeline.identity.fields import HASHED_FIELDS, IDENTITY_FIELDS, MAID_FIELDS
from audience_pipeline.identity.hashing import is_hashed, sha256_hex
from audience_pipeline.identity.phone import normalize_phones
from audience_pipeline.identity.result import REJECT_SCHEMA, IdentityResult
from audience_pipeline.identity.rules import ENGINE

_RULES: dict[str, rules.Rule] = {
    "email": rules.email,
    "first_name": rules.person_name,
    "last_name": rules.person_name,
    "city": rules.city,
    "state": rules.state,
    "zip": rules.zip_code,
    "country_code": rules.country_code,
    **{f: rules.mobile_ad_id for f in MAID_FIELDS},
}
# Fields whose rule partitions rows (by country or numbering plan) rather than being one plan:
# (values, countries) -> a frame of the same length with the normalized `value` and a `reason`.
_FRAME_RULES: dict[str, Callable[[pl.Series, pl.Series], pl.DataFrame]] = {
    "phone": normalize_phones,
    "address": normalize_addresses,
}
_COUNTRY = "__country"
_ROW = "__row"
_BY_DISTINCT = frozenset({"first_name", "last_name", "city", "state", "zip", "country_code"})
_COUNTRY_DEPENDENT = frozenset({"state", "zip", "country_code"})
_UNKNOWN_COUNTRY = "__unknown_country"
_GIVEN_COUNTRY = "__given_country"


def _as_text(column: str, dtype: pl.DataType) -> pl.Expr:
    """Any column as trimmed text: integers keep their digits and whole floats lose the `.0`."""
    expr = pl.col(column)
    if dtype.is_float():
        expr = (
            pl.when(expr == expr.round())
            .then(expr.cast(pl.Int64, strict=False).cast(pl.String))
            .otherwise(expr.cast(pl.String))
        )
    elif dtype != pl.String:
        expr = expr.cast(pl.String)
    stripped = expr.str.strip_chars()
    return pl.when(stripped != "").then(stripped)


def _outputs(plan: pl.LazyFrame, field: str, digest: Callable[[pl.Expr], pl.Expr]) -> pl.LazyFrame:
    """`<field>__out` and `<field>__reason` from a rule's `normalized` and `reason` columns."""
    value = pl.col("value")
    out = pl.col("normalized")
    if field in HASHED_FIELDS:
        out = pl.when("__already").then(value.str.to_lowercase()).otherwise(digest(out))
    # An absent value is neither normalized nor rejected (the country rule reads the row's country).
    present = value.is_not_null()
    return plan.with_columns(
        pl.when(present).then(out).alias(f"{field}__out"),
        pl.when(present & ~pl.col("__already")).then("reason").alias(f"{field}__reason"),
    )


def _finish(plan: pl.LazyFrame, field: str, digest: Callable[[pl.Expr], pl.Expr]) -> pl.LazyFrame:
    """Run the field's rule over `value`/`country` and give `<field>__out` and `<field>__reason`."""
    plan = plan.with_columns(
        __already=is_hashed(pl.col("value")) if field in HASHED_FIELDS else pl.lit(False)
    )
    return _outputs(_RULES.get(field, rules.passthrough)(plan), field, digest)


def choose_fields(columns: Sequence[str], fields: Sequence[str] | None) -> tuple[str, ...]:
    """The identity columns to normalize: the ones asked for, or every one present but `country_code`."""
    if fields is None:
        return tuple(f for f in IDENTITY_FIELDS if f in columns and f != "country_code")
    unknown = [f for f in fields if f not in IDENTITY_FIELDS]
    if unknown:
        raise ValueError(
            f"fields: {', '.join(unknown)} not identity fields (known: {', '.join(IDENTITY_FIELDS)})"
        )
    missing = [f for f in fields if f not in columns]
    if missing:
        raise ValueError(f"fields: {', '.join(missing)} not among the input columns")
    return tuple(dict.fromkeys(fields))


def normalize_identities(
    frame: pl.DataFrame,
    fields: Sequence[str] | None = None,
    default_country: str | None = None,
    row_offset: int = 0,
    hash_values: bool = True,
) -> IdentityResult:
    """Normalize and hash the identity columns of `frame` by `docs/normalization.md`.

    `fields` names the columns to process (default: every identity column present except
    `country_code`); hashed fields become lowercase SHA-256 hex, mobile ad IDs canonical UUIDs and
    partner IDs trimmed text. A `country_code` column gives each row's country, which wins over
    `default_country`; an unrecognised row country is a reject and leaves that row without a
    country. Rejects carry `row` = position in `frame` + `row_offset`, so callers processing a
    file in batches get file-wide row numbers. Raw values never leave this function except as
    hashes or canonical IDs — unless `hash_values=False`, which returns the normalized text of hashed
    fields instead, for inspecting normalization; such output is PII and must never be persisted.
    """
    digest = sha256_hex if hash_values else (lambda expr: expr)
    chosen = choose_fields(frame.columns, fields)
    default = normalize_country(default_country, "default country") if default_country else None

    schema = frame.schema
    given = (
        _as_text("country_code", schema["country_code"])
        if "country_code" in schema
        else pl.lit(None, pl.String)
    )
    # A source holds few distinct country spellings: resolve each once.
    countries = (
        frame.lazy()
        .select(given.alias(_GIVEN_COUNTRY))
        .unique()
        .with_columns(alpha2(pl.col(_GIVEN_COUNTRY)).alias(_COUNTRY))
        .with_columns(
            (pl.col(_GIVEN_COUNTRY).is_not_null() & pl.col(_COUNTRY).is_null()).alias(_UNKNOWN_COUNTRY),
            pl.when(pl.col(_GIVEN_COUNTRY).is_null())
            .then(pl.lit(default, pl.String))
            .otherwise(_COUNTRY)
            .alias(_COUNTRY),
        )
    )
    work = (
        frame.lazy()
        .select(
            (pl.int_range(pl.len(), dtype=pl.Int64) + row_offset).alias(_ROW), given.alias(_GIVEN_COUNTRY)
        )
        .join(countries, on=_GIVEN_COUNTRY, how="left", nulls_equal=True, maintain_order="left")
        .collect(engine=ENGINE)
    )

    def inputs(field: str) -> pl.LazyFrame:
        """The field's values as trimmed text beside each row's country."""
        return pl.concat(
            [
                frame.lazy().select(_as_text(field, schema[field]).alias("value")),
                work.lazy().select(country=_COUNTRY),
            ],
            how="horizontal",
        )

    plans = [work.lazy().select(_ROW)]
    for field in (f for f in chosen if f not in _FRAME_RULES):
        columns = inputs(field)
        if field in _BY_DISTINCT:
            # Few distinct values repeat across many rows here: normalize each distinct value (with
            # its country where the rule reads it) once and join the answers back.
            keys = ["value", "country"] if field in _COUNTRY_DEPENDENT else ["value"]
            answers = _finish(columns.select(keys).unique(), field, digest)
            columns = columns.select(keys).join(
                answers, on=keys, how="left", nulls_equal=True, maintain_order="left"
            )
        else:
            columns = _finish(columns, field, digest)
        plans.append(columns.select(f"{field}__out", f"{field}__reason"))
    # Phones take the longest chain of steps, so they start first and run beside everything else
    # (polars releases the GIL while it computes); more threads than cores would only slow them.
    with ThreadPoolExecutor(max_workers=1) as pool:
        phones = (
            pool.submit(_frame_rule_columns, inputs("phone"), "phone", digest) if "phone" in chosen else None
        )
        columns = pl.collect_all(plans, engine=ENGINE)
        if "address" in chosen:
            columns.append(_frame_rule_columns(inputs("address"), "address", digest))
        if phones is not None:
            columns.append(phones.result())
    normalized = pl.concat(columns, how="horizontal")
    normalized = normalized.rename({f"{f}__out": f for f in chosen})

    rejects = [
        normalized.select(
            pl.col(_ROW).alias("row"), pl.lit(f).alias("field"), pl.col(f"{f}__reason").alias("reason")
        ).filter(pl.col("reason").is_not_null())
        for f in chosen
    ]
    if "country_code" not in chosen:
        rejects.append(
            work.filter(_UNKNOWN_COUNTRY).select(
                pl.col(_ROW).alias("row"),
                pl.lit("country_code").alias("field"),
                pl.lit("unknown_country").alias("reason"),
            )
        )
    reject_frame = (
        pl.concat([r.cast(REJECT_SCHEMA) for r in rejects]).sort("row", maintain_order=True)
        if rejects
        else pl.DataFrame(schema=REJECT_SCHEMA)
    )
    result = frame.with_columns(normalized.select(chosen))
    return IdentityResult(frame=result, rejects=reject_frame, fields=chosen)


def _frame_rule_columns(plan: pl.LazyFrame, field: str, digest: Callable[[pl.Expr], pl.Expr]) -> pl.DataFrame:
    """`<field>__out` and `<field>__reason` from a partitioned rule over `value` and `country`."""
    columns = plan.collect(engine=ENGINE)
    values = columns.get_column("value")
    answers = _FRAME_RULES[field](values, columns.get_column("country"))
    ruled = pl.LazyFrame(
        {"value": values, "normalized": answers.get_column("value"), "reason": answers.get_column("reason")}
    ).with_columns(__already=is_hashed(pl.col("value")))
    return _outputs(ruled, field, digest).select(f"{field}__out", f"{field}__reason").collect(engine=ENGINE)
