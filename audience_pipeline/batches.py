"""Polars frames of a steady size from an Arrow record-batch stream.

DuckDB streams query results in batches of about 120k rows with a small one at the end; the
identity engine has a fixed cost per call, so callers gather batches up to a target row count.
"""

from collections.abc import Iterator

import polars as pl
import pyarrow as pa


def frames(reader: pa.RecordBatchReader, rows: int) -> Iterator[pl.DataFrame]:
    """Frames of at least `rows` rows (fewer only for the last), in stream order."""
    pending: list[pa.RecordBatch] = []
    count = 0
    for batch in reader:
        pending.append(batch)
        count += batch.num_rows
        if count >= rows:
            yield pl.from_arrow(pa.Table.from_batches(pending)).rechunk()
            pending, count = [], 0
    if pending:
        yield pl.from_arrow(pa.Table.from_batches(pending, schema=reader.schema)).rechunk()
