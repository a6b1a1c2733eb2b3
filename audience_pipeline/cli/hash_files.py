"""Hash the identity columns of a file: what `audience-pipeline hash` does.

Input is read through DuckDB in record batches, so memory stays flat for any file size; CSV is read
as text, so `02134` and `0207 946 0958` keep their leading zeros. Output is written to a temporary
file beside the target and moved into place only when complete.
"""

import os
import re
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

import duckdb
import polars as pl
import pyarrow.parquet as pq

from audience_pipeline.batches import frames
from audience_pipeline.identity import (
    HASHED_FIELDS,
    REJECT_SCHEMA,
    choose_fields,
    normalize_country,
    normalize_identities,
)
from audience_pipeline.identity.countries import alpha2

READERS = {
    ".csv": "read_csv(?, header = true, all_varchar = true)",
    ".jsonl": "read_json(?, format = 'newline_delimited')",
    ".ndjson": "read_json(?, format = 'newline_delimited')",
    ".parquet": "read_parquet(?)",
}
WRITERS = (".parquet", ".csv")
BATCH_ROWS = 250_000
_CSV_LINE = re.compile(r"CSV Error on Line: (\d+)")


class HashFileError(Exception):
    """A problem with the command's input or settings; the message names it and holds no row data."""


@dataclass
class HashSummary:
    rows: int = 0
    fields: tuple[str, ...] = ()
    values_out: Counter = field(default_factory=Counter)
    rejects: Counter = field(default_factory=Counter)  # (field, reason) -> count
    seconds: float = 0.0


def _reader(path: Path) -> str:
    reader = READERS.get(path.suffix.lower())
    if reader is None:
        raise HashFileError(f"INPUT: {path.name} must end in {', '.join(READERS)}")
    if not path.is_file():
        raise HashFileError(f"INPUT: {path} does not exist")
    return reader


def _reason(error: Exception) -> str:
    """DuckDB's reason for not reading the input, with the line for a CSV; never the input itself.

    A CSV error reads "CSV Error on Line: N", the line quoted ("Original Line: ..."; PII, possibly
    over several lines), the reason on one line, then suggestions and the reader's settings.
    """
    text = str(error)
    first = text.splitlines()[0] if text else type(error).__name__
    line = _CSV_LINE.search(first)
    if line is None:
        return first
    # Searched from the end: the quoted line, before them, may hold anything.
    ends = [text.rfind(marker) for marker in ("\n\nPossible Solution:", "\n\n  file = ")]
    end = max(ends) if min(ends) == -1 else min(ends)
    reason = text[:end].rsplit("\n", 1)[-1] if end > 0 else ""
    if not reason or reason == first or reason.startswith("Original Line:"):
        reason = "not readable as CSV"
    return f"line {line[1]}: {reason}"


def hash_file(
    source: Path,
    target: Path,
    country: str | None = None,
    fields: list[str] | None = None,
    rejects_path: Path | None = None,
) -> HashSummary:
    """Write `target` with every row and column of `source`, identity columns normalized and hashed.

    `fields` defaults to every hashable identity column present except `country_code`. A
    `country_code` column gives each row's country and is written as upper-case alpha-2 unless it
    is itself one of `fields`. Reject rows (row number from 1, field, reason) go to `rejects_path`.
    """
    reader = _reader(source)
    if target.suffix.lower() not in WRITERS:
        raise HashFileError(f"OUTPUT: {target.name} must end in {' or '.join(WRITERS)}")
    default_country = None
    if country:
        try:
            default_country = normalize_country(country, "--country")
        except ValueError as error:
            raise HashFileError(str(error)) from None

    started = time.perf_counter()
    summary = HashSummary()
    conn = duckdb.connect()
    try:
        relation = conn.sql(f"SELECT * FROM {reader}", params=[str(source)])
        columns = relation.columns
        batches = frames(relation.to_arrow_reader(BATCH_ROWS), BATCH_ROWS)
    except duckdb.Error as error:
        raise HashFileError(f"INPUT: cannot read {source.name}: {_reason(error)}") from None
    if fields is None:
        fields = [f for f in HASHED_FIELDS if f in columns and f != "country_code"]
    try:
        summary.fields = choose_fields(columns, fields)
    except ValueError as error:
        raise HashFileError(f"--{error}") from None

    empty_output = pl.DataFrame(schema=dict.fromkeys(columns, pl.String))
    with (
        _Output(target, empty_output) as output,
        _Output(rejects_path, pl.DataFrame(schema=REJECT_SCHEMA)) as rejected,
    ):
        while True:
            try:
                frame = next(batches)
            except StopIteration:
                break
            # DuckDB's errors while streaming reach us through Arrow's reader, as OSError.
            except (duckdb.Error, OSError) as error:
                raise HashFileError(f"INPUT: cannot read {source.name}: {_reason(error)}") from None
            result = normalize_identities(frame, summary.fields, default_country, row_offset=summary.rows + 1)
            out = result.frame
            if "country_code" in out.columns and "country_code" not in summary.fields:
                out = out.with_columns(alpha2(pl.col("country_code").cast(pl.String).str.strip_chars()))
            output.write(out)
            rejected.write(result.rejects)
            summary.rows += frame.height
            summary.values_out.update(result.values_out())
            for field_name, reason, n in result.rejects.group_by("field", "reason").len().iter_rows():
                summary.rejects[(field_name, reason)] += n
    summary.seconds = time.perf_counter() - started
    return summary


class _Output:
    """A CSV or Parquet file written batch by batch into a temporary file, moved into place when whole."""

    def __init__(self, path: Path | None, empty: pl.DataFrame):
        self.path = path
        self.empty = empty
        self.partial = path.with_name(f".{path.name}.partial") if path else None
        self.parquet: pq.ParquetWriter | None = None
        self.csv: BinaryIO | None = None

    def __enter__(self):
        return self

    def write(self, frame: pl.DataFrame) -> None:
        if self.path is None:
            return
        if self.path.suffix.lower() == ".parquet":
            table = frame.to_arrow()
            if self.parquet is None:
                self.parquet = pq.ParquetWriter(self.partial, table.schema)
            self.parquet.write_table(table)
        elif self.csv is None:
            self.csv = open(self.partial, "wb")  # noqa: SIM115  (closed in __exit__)
            frame.write_csv(self.csv)
        else:
            frame.write_csv(self.csv, include_header=False)

    def __exit__(self, kind, error, traceback):
        if self.path is None:
            return
        if error is None and self.parquet is None and self.csv is None:
            self.write(self.empty)  # a file with its header even when the input had no rows
        for handle in (self.parquet, self.csv):
            if handle is not None:
                handle.close()
        if error is None:
            os.replace(self.partial, self.path)
        else:
            self.partial.unlink(missing_ok=True)
