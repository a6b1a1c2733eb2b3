"""Seed 003's column rules: name matching, required columns, the type table, and null counting."""

from decimal import Decimal

import polars as pl
import pytest

from audience_pipeline.amc.compatibility import SchemaMismatch, check_query_schema, null_rows
from audience_pipeline.amc.definitions import DatasetDefinition


def _definition(*columns: dict) -> DatasetDefinition:
    return DatasetDefinition.parse({"dataSetId": "ds", "columns": list(columns)})


def _column(name: str, data_type: str = "STRING", **extra: object) -> dict:
    return {"name": name, "columnType": "DIMENSION", "dataType": data_type, **extra}


# Seed 003's tutorial_off_amazon_purchases: a FACT dataset whose fields are all non-nullable.
PURCHASES = _definition(
    _column("product_name", nullable=False),
    _column("product_sku", nullable=False),
    _column("product_quantity", "INTEGER", nullable=False),
    _column("purchase_time", "TIMESTAMP", nullable=False, isMainEventTime=True),
    _column("purchase_value", "DECIMAL", nullable=False),
)
PURCHASES_SCHEMA = {
    "product_name": pl.String,
    "product_sku": pl.String,
    "product_quantity": pl.Int64,
    "purchase_time": pl.Datetime("us", "UTC"),
    "purchase_value": pl.Float64,
}


def test_exact_match() -> None:
    check = check_query_schema(PURCHASES, PURCHASES_SCHEMA)
    assert check.errors == []
    assert check.mapping == {name: name for name in PURCHASES_SCHEMA}
    assert check.ignored == check.missing_nullable == []
    assert check.case_insensitive_matches == {}
    check.raise_for_errors()


def test_case_insensitive_matches_are_reported() -> None:
    schema = {("Product_Name" if k == "product_name" else k): v for k, v in PURCHASES_SCHEMA.items()}
    check = check_query_schema(PURCHASES, schema)
    assert check.errors == []
    assert check.case_insensitive_matches == {"Product_Name": "product_name"}
    assert check.mapping["Product_Name"] == "product_name"


def test_exact_match_wins_over_case_insensitive() -> None:
    check = check_query_schema(PURCHASES, {**PURCHASES_SCHEMA, "PRODUCT_NAME": pl.String})
    assert check.errors == []
    assert check.mapping["product_name"] == "product_name"
    assert check.ignored == ["PRODUCT_NAME"]


def test_ambiguous_case_insensitive_match_is_an_error() -> None:
    schema = {k: v for k, v in PURCHASES_SCHEMA.items() if k != "product_sku"}
    check = check_query_schema(PURCHASES, {**schema, "Product_Sku": pl.String, "PRODUCT_SKU": pl.String})
    assert check.errors == [
        "product_sku: ambiguous, query columns Product_Sku, PRODUCT_SKU all match it ignoring case"
    ]
    assert "product_sku" not in check.mapping.values()
    assert check.ignored == []


def test_extra_columns_are_ignored_and_reported() -> None:
    check = check_query_schema(PURCHASES, {"store": pl.String, **PURCHASES_SCHEMA, "flag": pl.Boolean})
    assert check.errors == []
    assert check.ignored == ["store", "flag"]
    assert "store" not in check.mapping


def test_missing_columns() -> None:
    definition = _definition(
        _column("email", nullable=False, externalUserIdType={"hashedPii": "EMAIL"}), _column("segment")
    )
    check = check_query_schema(definition, {"segment": pl.String})
    assert check.missing_nullable == []
    assert check.errors == ["email: missing from the query; the dataset column is non-nullable"]
    check = check_query_schema(definition, {"email": pl.String})
    assert check.errors == []
    assert check.missing_nullable == ["segment"]


def test_main_event_time_is_required_for_a_fact_dataset() -> None:
    # Nullable, yet required: AMC partitions a FACT dataset by it.
    definition = _definition(_column("email"), _column("record_date", "DATE", isMainEventTime=True))
    check = check_query_schema(definition, {"email": pl.String})
    assert check.errors == [
        "record_date: missing from the query; it is the main event time of this FACT dataset"
    ]
    assert check.missing_nullable == []


def test_raise_for_errors_names_every_offending_column() -> None:
    schema = {**PURCHASES_SCHEMA, "purchase_value": pl.String}
    del schema["product_sku"], schema["purchase_time"]
    check = check_query_schema(PURCHASES, schema)
    with pytest.raises(SchemaMismatch) as raised:
        check.raise_for_errors()
    message = str(raised.value)
    assert isinstance(raised.value, ValueError)
    assert len(check.errors) == 3
    for name, why in [
        ("purchase_value", "String cannot fill a DECIMAL column"),
        ("product_sku", "non-nullable"),
        ("purchase_time", "main event time"),
    ]:
        assert f"- {name}: " in message and why in message


COMPATIBLE = [
    (pl.String, "STRING"),
    (pl.Categorical, "STRING"),
    (pl.Enum(["a", "b"]), "STRING"),
    (pl.Float64, "DECIMAL"),
    (pl.Float32, "DECIMAL"),
    (pl.Decimal(12, 2), "DECIMAL"),
    (pl.Int64, "INTEGER"),
    (pl.Int32, "LONG"),
    (pl.UInt8, "INTEGER"),
    (pl.Int64, "LONG"),
    (pl.Datetime("us", "UTC"), "TIMESTAMP"),
    (pl.Datetime("ns"), "DATE"),
    (pl.Int64, "TIMESTAMP"),  # epoch seconds
    (pl.Int64, "DATE"),  # epoch seconds
    (pl.Date, "DATE"),
]
INCOMPATIBLE = [
    (pl.Int64, "STRING"),
    (pl.Float64, "STRING"),
    (pl.String, "DECIMAL"),
    (pl.Int64, "DECIMAL"),
    (pl.Float64, "INTEGER"),
    (pl.Decimal(12, 2), "LONG"),
    (pl.String, "LONG"),
    (pl.Datetime("us"), "LONG"),
    (pl.String, "TIMESTAMP"),
    (pl.Float64, "TIMESTAMP"),
    (pl.Date, "TIMESTAMP"),
    (pl.String, "DATE"),
    (pl.Boolean, "STRING"),
    (pl.Boolean, "LONG"),
    (pl.Time, "TIMESTAMP"),
    (pl.Duration("us"), "LONG"),
    (pl.List(pl.String), "STRING"),
    (pl.Null, "STRING"),
]


@pytest.mark.parametrize(("dtype", "data_type"), COMPATIBLE)
def test_compatible_types(dtype: pl.DataType, data_type: str) -> None:
    check = check_query_schema(_definition(_column("value", data_type)), {"value": dtype})
    assert check.errors == []


@pytest.mark.parametrize(("dtype", "data_type"), INCOMPATIBLE)
def test_incompatible_types_name_the_column(dtype: pl.DataType, data_type: str) -> None:
    check = check_query_schema(_definition(_column("value", data_type)), {"Value": dtype})
    assert len(check.errors) == 1
    assert check.errors[0].startswith(
        f"Value (dataset column value): {dtype} cannot fill a {data_type} column"
    )


def test_date_to_timestamp_suggests_a_cast() -> None:
    check = check_query_schema(_definition(_column("t", "TIMESTAMP")), {"t": pl.Date})
    assert check.errors == [
        "t: Date cannot fill a TIMESTAMP column, which takes a Datetime or integer epoch "
        "seconds (cast it to Datetime to send midnight UTC)"
    ]


@pytest.mark.parametrize("dtype", [pl.Int64, pl.Float64, pl.Binary])
def test_hashed_pii_must_be_text(dtype: pl.DataType) -> None:
    definition = _definition(_column("phone", externalUserIdType={"hashedPii": "PHONE"}))
    check = check_query_schema(definition, {"phone": dtype})
    assert check.errors == [f"phone: holds hashed PII (PHONE) so it must be a string, got {dtype}"]
    assert check_query_schema(definition, {"phone": pl.String}).errors == []


def test_works_with_a_polars_schema() -> None:
    frame = pl.DataFrame({"product_name": ["a"], "purchase_value": [Decimal("1.50")]})
    check = check_query_schema(PURCHASES, frame.schema)
    assert check.mapping == {"product_name": "product_name", "purchase_value": "purchase_value"}
    assert all("purchase_value" not in error for error in check.errors)


def test_null_rows_counts_nulls_per_non_nullable_field() -> None:
    definition = _definition(
        _column("email", nullable=False, externalUserIdType={"hashedPii": "EMAIL"}),
        _column("quantity", "LONG", nullable=False),
        _column("note"),
    )
    frame = pl.DataFrame(
        {
            "EMAIL": ["a@x.com", None, None, "d@x.com"],
            "quantity": [1, None, 3, None],
            "note": [None, None, None, None],
        },
        schema_overrides={"note": pl.String},
    )
    check = check_query_schema(definition, frame.schema)
    assert check.errors == []
    assert check.non_nullable == ["email", "quantity"]
    assert null_rows(frame, check) == {"email": 2, "quantity": 2}
    assert null_rows(frame.lazy(), check) == {"email": 2, "quantity": 2}


def test_null_rows_without_non_nullable_fields() -> None:
    check = check_query_schema(_definition(_column("note")), {"note": pl.String})
    assert null_rows(pl.DataFrame({"note": [None]}, schema={"note": pl.String}), check) == {}
