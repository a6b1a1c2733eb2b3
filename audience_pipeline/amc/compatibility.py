"""Seed 003's column rules: does a query's schema fit an AMC dataset, before anything is written?

Query column types are mapped onto the seed's query types, then checked against its table:

    STRING → STRING; DOUBLE → DECIMAL; LONG → INTEGER | LONG; TIMESTAMP → TIMESTAMP | DATE;
    LONG (epoch seconds) → TIMESTAMP | DATE

polars String/Categorical/Enum count as STRING, any float or Decimal as DOUBLE, any integer as LONG,
Datetime (any unit or zone) as TIMESTAMP. The seed's query side has no DATE type; we take a polars Date
for a DATE field only. Sending it to a TIMESTAMP field would invent a time of day (midnight), which
matters for a FACT dataset's event time, so that needs an explicit cast in the query. Everything else
(booleans, times, durations, lists, structs, binary, all-null columns) fits no AMC type.
"""

from collections.abc import Mapping
from dataclasses import dataclass, field

import polars as pl

from audience_pipeline.amc.definitions import Column, DatasetDefinition, DataType

_COMPATIBLE: dict[str, tuple[DataType, ...]] = {
    "STRING": ("STRING",),
    "DOUBLE": ("DECIMAL",),
    "LONG": ("INTEGER", "LONG", "TIMESTAMP", "DATE"),
    "TIMESTAMP": ("TIMESTAMP", "DATE"),
    "DATE": ("DATE",),
}
# What to tell the user a field accepts, in polars terms.
_ACCEPTS: dict[DataType, str] = {
    "STRING": "a string",
    "DECIMAL": "a float or Decimal",
    "INTEGER": "an integer",
    "LONG": "an integer",
    "TIMESTAMP": "a Datetime or integer epoch seconds",
    "DATE": "a Date, a Datetime or integer epoch seconds",
}


class SchemaMismatch(ValueError):
    """The query's columns do not fit the dataset; the message names each offending column and why."""


@dataclass(frozen=True)
class SchemaCheck:
    """How a query's columns map onto a dataset's fields, and what is wrong with that."""

    mapping: dict[str, str] = field(default_factory=dict)
    """Query column → dataset column, for every matched column."""
    ignored: list[str] = field(default_factory=list)
    """Query columns matching no dataset column: not uploaded."""
    case_insensitive_matches: dict[str, str] = field(default_factory=dict)
    """The part of `mapping` matched only by ignoring case."""
    missing_nullable: list[str] = field(default_factory=list)
    """Nullable dataset columns the query does not provide: uploaded as null."""
    non_nullable: list[str] = field(default_factory=list)
    """Mapped dataset columns that are non-nullable: a row with a null there is skipped."""
    errors: list[str] = field(default_factory=list)
    """One message per offending column, naming it and why: any makes the upload fail before writing."""

    def raise_for_errors(self) -> None:
        """Raise `SchemaMismatch` listing every error, if there are any."""
        if self.errors:
            raise SchemaMismatch(
                "the query does not fit the dataset:\n" + "\n".join(f"- {error}" for error in self.errors)
            )


def check_query_schema(
    definition: DatasetDefinition, schema: Mapping[str, pl.DataType | type[pl.DataType]]
) -> SchemaCheck:
    """Match a query's columns (`schema`: name → polars dtype) to the dataset's columns by seed 003's rules.

    Exact names match first; a remaining query column then matches a still unmatched dataset column
    ignoring case (two such query columns for one dataset column is an error). A query column whose
    name equals an already exactly matched dataset column except for case is ignored, like any other
    extra column: the exact match is the one the seed's case-sensitive rule would upload.
    """
    by_name = {column.name: column for column in definition.columns}
    mapping = {name: name for name in schema if name in by_name}
    unclaimed = {
        column.name.lower(): column.name for column in definition.columns if column.name not in mapping
    }
    candidates: dict[str, list[str]] = {}
    for name in schema:
        if name not in mapping and name.lower() in unclaimed:
            candidates.setdefault(unclaimed[name.lower()], []).append(name)

    errors = []
    case_insensitive = {}
    for target, names in candidates.items():
        if len(names) > 1:
            errors.append(f"{target}: ambiguous, query columns {', '.join(names)} all match it ignoring case")
        else:
            case_insensitive[names[0]] = target
    mapping.update(case_insensitive)

    for name, target in mapping.items():
        problem = _type_problem(by_name[target], schema[name])
        if problem:
            errors.append(f"{_label(name, target)}: {problem}")

    mapped = set(mapping.values())
    ambiguous = {target for target, names in candidates.items() if len(names) > 1}
    ambiguous_names = {name for target in ambiguous for name in candidates[target]}
    event_time = definition.main_event_time
    missing_nullable = []
    for column in definition.columns:
        if column.name in mapped or column.name in ambiguous:
            continue
        if column is event_time:
            errors.append(
                f"{column.name}: missing from the query; it is the main event time of this FACT dataset"
            )
        elif not column.nullable:
            errors.append(f"{column.name}: missing from the query; the dataset column is non-nullable")
        else:
            missing_nullable.append(column.name)

    return SchemaCheck(
        mapping=mapping,
        ignored=[name for name in schema if name not in mapping and name not in ambiguous_names],
        case_insensitive_matches=case_insensitive,
        missing_nullable=missing_nullable,
        non_nullable=[
            column.name for column in definition.columns if column.name in mapped and not column.nullable
        ],
        errors=errors,
    )


def null_rows(frame: pl.DataFrame | pl.LazyFrame, check: SchemaCheck) -> dict[str, int]:
    """Dataset column → how many rows hold a null in it, for each mapped non-nullable column.

    Those rows are skipped by the upload writer (AMC would drop them anyway) and reported per column.
    """
    if not check.non_nullable:
        return {}
    query_column = {target: name for name, target in check.mapping.items()}
    counts = [pl.col(query_column[target]).null_count().alias(target) for target in check.non_nullable]
    return frame.lazy().select(counts).collect().row(0, named=True)


def _query_type(dtype: pl.DataType | type[pl.DataType]) -> str | None:
    """The seed's query type for a polars dtype, or None when it fits no AMC type."""
    if dtype == pl.String or dtype == pl.Categorical or dtype == pl.Enum:
        return "STRING"
    if dtype.is_float() or dtype.is_decimal():
        return "DOUBLE"
    if dtype.is_integer():
        return "LONG"
    if dtype == pl.Datetime:
        return "TIMESTAMP"
    if dtype == pl.Date:
        return "DATE"
    return None


def _type_problem(column: Column, dtype: pl.DataType | type[pl.DataType]) -> str | None:
    """Why a query column of `dtype` cannot fill `column`, or None when it can."""
    query_type = _query_type(dtype)
    if column.hashed_pii is not None and query_type != "STRING":
        # Identities are normalized and hashed as text: a number would already have lost leading zeros or '+'.
        return f"holds hashed PII ({column.hashed_pii}) so it must be a string, got {dtype}"
    if query_type is None or column.data_type not in _COMPATIBLE[query_type]:
        hint = " (cast it to Datetime to send midnight UTC)" if query_type == "DATE" else ""
        return (
            f"{dtype} cannot fill a {column.data_type} column, which takes {_ACCEPTS[column.data_type]}{hint}"
        )
    return None


def _label(name: str, target: str) -> str:
    return name if name == target else f"{name} (dataset column {target})"
