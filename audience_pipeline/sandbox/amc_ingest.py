"""What AMC does with an upload: read the files from S3, check them against the dataset, store the rows.

Files are fetched with boto3 from the sandbox's S3, decompressed into a temporary folder and read by
DuckDB; every check and the update strategy run as set-based SQL, never row by row in Python.
"""

import bz2
import gzip
import posixpath
import shutil
import tempfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import boto3
import duckdb
from botocore.exceptions import BotoCoreError, ClientError

from audience_pipeline.sandbox.amc_datasets import (
    PERIODS,
    SQL_TYPES,
    event_time_column,
    hashed_pii_columns,
    quote,
)

_TIMESTAMP = r"[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}(\.[0-9]+)?Z"
_DATE = r"[0-9]{4}-[0-9]{2}-[0-9]{2}"
_INTEGER = r"[+-]?[0-9]+"
_DECIMAL = r"[+-]?([0-9]+\.?[0-9]*|\.[0-9]+)([eE][+-]?[0-9]+)?"
_SHA256 = r"[0-9a-f]{64}"


class UploadFailed(Exception):
    """The upload cannot be ingested; the message is what AMC reports (never the data itself)."""


@dataclass
class IngestResult:
    """Rows read from the files, and rows stored in the dataset."""

    input_rows: int
    output_rows: int


def ingest(
    cursor: duckdb.DuckDBPyConnection,
    endpoint_url: str | None,
    dataset: dict[str, Any],
    table: str,
    upload: dict[str, Any],
) -> IngestResult:
    """Load the upload's files into `table` per its update strategy, or raise `UploadFailed`.

    Like AMC, it reads only objects (manifest included) tagged `instanceId=<the upload's instance>`.
    """
    cursor.execute("SET TimeZone = 'UTC'")
    with tempfile.TemporaryDirectory(prefix="amc-upload-") as folder:
        files = _download(
            endpoint_url,
            upload["dataSource"],
            upload["compressionFormat"],
            Path(folder),
            upload["instanceId"],
        )
        try:
            types = _stage(cursor, files, upload["fileFormat"], dataset)
        except duckdb.Error as error:
            # DuckDB quotes offending lines; the message names the problem, never the data.
            raise UploadFailed(
                f"The files could not be read as {_format_name(upload['fileFormat'])} "
                f"({type(error).__name__}); check the file format options and the header row"
            ) from None
    _check(cursor, dataset, types)
    input_rows = cursor.execute("SELECT count(*) FROM amc_raw").fetchone()[0]
    output_rows = _apply(cursor, dataset, table, upload["updateStrategy"])
    return IngestResult(input_rows, output_rows)


# --- reading S3 ---------------------------------------------------------------------------------------


def _download(
    endpoint_url: str | None, source: dict[str, Any], compression: str, folder: Path, instance_id: str
) -> list[str]:
    s3 = boto3.client(
        "s3",
        endpoint_url=endpoint_url,
        aws_access_key_id="sandbox",
        aws_secret_access_key="sandbox",
        region_name="us-east-1",
    )
    bucket = source["sourceS3Bucket"]
    try:
        locations = _locations(s3, bucket, source, instance_id)
        # AMC ignores hidden and marker files (`.keep`, `_SUCCESS`) wherever the keys come from.
        locations = [(b, k) for b, k in locations if not posixpath.basename(k).startswith((".", "_"))]
        if not locations:
            raise UploadFailed(f"No data files found in s3://{bucket} for {_describe(source)}")
        files = []
        for i, (file_bucket, key) in enumerate(locations):
            path = folder / f"part-{i:05d}"
            with _body(s3, file_bucket, key, instance_id) as body, open(path, "wb") as file:
                _decompress(body, file, compression, f"s3://{file_bucket}/{key}")
            files.append(str(path))
        return files
    except (ClientError, BotoCoreError) as error:
        raise UploadFailed(f"Cannot read the upload's files from S3: {error}") from None


def _body(s3: Any, bucket: str, key: str, instance_id: str) -> Any:
    """An object's body, a stream, if AMC's data-upload role may read it: tagged with the instance.

    Every object is encrypted at rest, as S3 has done by default since January 2023 (the sandbox's S3
    too, see `s3_encryption`), so there is no unencrypted object to refuse.
    """
    tags = {t["Key"]: t["Value"] for t in s3.get_object_tagging(Bucket=bucket, Key=key)["TagSet"]}
    if tags.get("instanceId") != instance_id:
        raise UploadFailed(
            f"s3://{bucket}/{key} is not tagged instanceId={instance_id}; AMC reads only such objects"
        )
    return s3.get_object(Bucket=bucket, Key=key)["Body"]


def _locations(s3: Any, bucket: str, source: dict[str, Any], instance_id: str) -> list[tuple[str, str]]:
    if "sourceFileS3Key" in source:
        return [(bucket, source["sourceFileS3Key"])]
    if "sourceS3Prefix" in source:
        pages = s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=source["sourceS3Prefix"])
        return [
            (bucket, o["Key"]) for p in pages for o in p.get("Contents", []) if not o["Key"].endswith("/")
        ]
    with _body(s3, bucket, source["sourceManifestS3Key"], instance_id) as body:
        manifest = body.read().decode()
    locations = []
    for line in filter(None, (line.strip() for line in manifest.splitlines())):
        if not line.startswith("s3://") or "/" not in line[5:]:
            raise UploadFailed(f"Manifest lines must be s3://bucket/key locations, got {line[:200]!r}")
        file_bucket, _, key = line[5:].partition("/")
        locations.append((file_bucket, key))
    return locations


def _describe(source: dict[str, Any]) -> str:
    for field in ("sourceFileS3Key", "sourceS3Prefix", "sourceManifestS3Key"):
        if field in source:
            return f"{field} {source[field]!r}"
    return "the data source"


def _decompress(body: Any, file: BinaryIO, compression: str, location: str) -> None:
    """Copy `body` into `file`, decompressed, a block at a time: a part may be hundreds of MB."""
    if compression == "ZIP":
        raise UploadFailed("ZIP compression is deprecated since 2025-01-01; use GZIP, BZIP or NONE")
    if compression == "SNAPPY":
        raise UploadFailed("SNAPPY-compressed files are not supported by the sandbox; use GZIP or NONE")
    if compression == "GZIP":
        body = gzip.GzipFile(fileobj=body)
    elif compression == "BZIP":
        body = bz2.BZ2File(body)
    try:
        shutil.copyfileobj(body, file)
    except (OSError, EOFError, ValueError, zlib.error):
        if compression == "NONE":
            raise
        raise UploadFailed(f"{location} is not valid {compression} data") from None


# --- checking rows ------------------------------------------------------------------------------------


def _format_name(file_format: dict[str, Any]) -> str:
    return {"csvDataFormat": "CSV", "jsonDataFormat": "JSON", "parquetDataFormat": "Parquet"}[
        next(iter(file_format))
    ]


def _literal(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def _stage(
    cursor: duckdb.DuckDBPyConnection, files: list[str], file_format: dict, dataset: dict
) -> list[str]:
    """Create `amc_raw`: the dataset's columns as the files hold them (NULL where they lack one).

    Returns each column's source type: Parquet keeps its own types, CSV and JSON values are text.
    """
    file_list = "[" + ", ".join(_literal(f) for f in files) + "]"
    columns = [column["name"] for column in dataset["columns"]]
    if "jsonDataFormat" in file_format:
        layout = "newline_delimited" if file_format["jsonDataFormat"] == "LINES" else "auto"
        source = f"read_json_objects({file_list}, format = '{layout}')"
        raw = [f"json ->> {_literal(name)}" for name in columns]
        types = ["VARCHAR"] * len(columns)
    else:
        if "csvDataFormat" in file_format:
            options = file_format["csvDataFormat"] or {}
            extra = "".join(
                f", {option} = {_literal(options[field])}"
                for field, option in (("fieldDelimiter", "delim"), ("quoteCharacter", "quote"))
                if options.get(field)
            )
            source = f"read_csv({file_list}, header = true, all_varchar = true, union_by_name = true{extra})"
        else:
            source = f"read_parquet({file_list}, union_by_name = true)"
        found = {row[0]: row[1] for row in cursor.execute(f"DESCRIBE SELECT * FROM {source}").fetchall()}
        raw = [quote(name) if name in found else "NULL" for name in columns]
        types = [found.get(name, "VARCHAR") for name in columns]
    selected = ", ".join(f"{expr} AS r{i}" for i, expr in enumerate(raw))
    cursor.execute(f"CREATE OR REPLACE TEMP TABLE amc_raw AS SELECT {selected} FROM {source}")
    return types


def _reject_raw_pii(cursor: duckdb.DuckDBPyConnection, dataset: dict[str, Any]) -> None:
    hashed = hashed_pii_columns(dataset)
    indexes = [i for i, column in enumerate(dataset["columns"]) if column["name"] in hashed]
    if not indexes:
        return
    counts = cursor.execute(
        "SELECT "
        + ", ".join(
            f"count(*) FILTER (WHERE r{i} IS NOT NULL AND NOT regexp_full_match(CAST(r{i} AS VARCHAR), "
            f"'{_SHA256}'))"
            for i in indexes
        )
        + " FROM amc_raw"
    ).fetchone()
    bad = [dataset["columns"][i]["name"] for i, count in zip(indexes, counts, strict=True) if count]
    if bad:
        # Name the columns, never the values: they may be raw PII.
        raise UploadFailed(
            f"Column(s) {', '.join(bad)} must hold SHA-256 hashes (64 lowercase hex characters) of "
            f"{', '.join(hashed[name] for name in bad)}; found values that are not hashed "
            "(raw PII is rejected)"
        )


def _typed(raw: str, source_type: str, data_type: str) -> str:
    """The SQL that turns a raw value into the dataset's type: NULL when it is not a valid value."""
    text = raw if source_type == "VARCHAR" else f"CAST({raw} AS VARCHAR)"
    temporal = source_type.startswith(("TIMESTAMP", "DATE"))
    sql_type = SQL_TYPES[data_type]
    if data_type == "STRING":
        return text
    if data_type == "TIMESTAMP":
        if temporal:
            return f"CAST({raw} AS TIMESTAMP)"
        return _matching(text, _TIMESTAMP, f"rtrim({text}, 'Z')", sql_type)
    if data_type == "DATE":
        if temporal:
            return f"CAST({raw} AS DATE)"
        return _matching(text, _DATE, text, sql_type)
    if source_type != "VARCHAR":
        return f"TRY_CAST({raw} AS {sql_type})"
    pattern = _DECIMAL if data_type == "DECIMAL" else _INTEGER
    return _matching(f"trim({text})", pattern, f"trim({text})", sql_type)


def _matching(text: str, pattern: str, value: str, sql_type: str) -> str:
    """`value` cast to `sql_type` where `text` matches `pattern` in full, else NULL."""
    return f"CASE WHEN regexp_full_match({text}, '{pattern}') THEN TRY_CAST({value} AS {sql_type}) END"


def _check(cursor: duckdb.DuckDBPyConnection, dataset: dict[str, Any], types: list[str]) -> None:
    """Create `amc_rows`: the valid rows in the dataset's types, each with its pseudo `user_id`."""
    _reject_raw_pii(cursor, dataset)
    event_time = event_time_column(dataset)
    columns = dataset["columns"]
    typed = [
        f"{_typed(f'r{i}', t, c['dataType'])} AS v{i}"
        for i, (c, t) in enumerate(zip(columns, types, strict=True))
    ]
    # A row keeps a NULL only where the file had none and the column allows it. FACT rows need their
    # event time: without it they belong to no partition.
    keep = [
        f"(v{i} IS NOT NULL OR r{i} IS NULL)"
        if c["nullable"] and c["name"] != event_time
        else f"v{i} IS NOT NULL"
        for i, c in enumerate(columns)
    ]
    hashed = [f"v{i}" for i, c in enumerate(columns) if c["name"] in hashed_pii_columns(dataset)]
    # A stand-in for Amazon's user id: the same hashed identities always give the same user.
    identities = f"array_to_string(list_sort(list_distinct([{', '.join(hashed)}])), '|')"
    user_id = f"substr(sha256(nullif({identities}, '')), 1, 16)" if hashed else "NULL::VARCHAR"
    selected = ", ".join(f"v{i} AS {quote(c['name'])}" for i, c in enumerate(columns))
    cursor.execute(
        f"CREATE OR REPLACE TEMP TABLE amc_rows AS SELECT {selected}, {user_id} AS user_id "
        f"FROM (SELECT *, {', '.join(typed)} FROM amc_raw) WHERE {' AND '.join(keep)}"
    )


# --- storing rows -------------------------------------------------------------------------------------


def _apply(cursor: duckdb.DuckDBPyConnection, dataset: dict[str, Any], table: str, strategy: str) -> int:
    """Store `amc_rows` in `table` per the update strategy, in one transaction; the rows added."""
    columns = ", ".join([*(quote(c["name"]) for c in dataset["columns"]), "user_id"])
    event_time = event_time_column(dataset)
    partition = (
        f"date_trunc('{PERIODS[dataset.get('period') or 'P1D']}', CAST({quote(event_time)} AS TIMESTAMP))"
        if event_time
        else None
    )
    insert = f"INSERT INTO {table} ({columns}) SELECT {columns} FROM amc_rows"
    cursor.begin()
    try:
        if strategy == "FULL_REPLACE":
            cursor.execute(f"DELETE FROM {table}")
        elif strategy == "OVERLAP_REPLACE":
            cursor.execute(
                f"DELETE FROM {table} WHERE {partition} IN (SELECT DISTINCT {partition} FROM amc_rows)"
            )
        elif strategy == "OVERLAP_KEEP":
            insert += f" WHERE {partition} NOT IN (SELECT DISTINCT {partition} FROM {table})"
        added = cursor.execute(insert).fetchone()[0]
        cursor.commit()
    except duckdb.Error:
        cursor.rollback()
        raise
    return added
