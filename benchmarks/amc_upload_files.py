"""AMC upload files: rows per second and peak memory, streaming query rows into gzip CSV parts on S3.

    python benchmarks/amc_upload_files.py --rows 5000000

Generates FACT purchase rows batch by batch (a raw e-mail to normalize and hash, a timestamp, a
decimal, integers, strings; one e-mail in 1,000 invalid, one amount in 5,000 null) and streams them
through `write_upload_files` into a moto S3 server on loopback, part by part, then deletes the files.
moto runs in a child process: it keeps the uploaded objects, which must not count in this process's
memory. Peak RSS covers generating, preparing, compressing and uploading; run it at two row counts
to see that it does not grow with the rows.

Then, in the same run, the baseline: the same rows prepared again and written as the same CSV text,
of which only the compression is timed, by the standard library's single-threaded gzip at level 1
(the fastest) and 6 (the gzip tool's default). The ratio is the upload's rows/s over gzip's alone: above
1, the whole upload (generating, hashing, formatting, compressing, uploading) outruns plain gzip of
its own output. Figures are printed, never asserted.
"""

import argparse
import gzip
import io
import os
import resource
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import datetime

import boto3
import polars as pl
import requests

from audience_pipeline.amc.compatibility import SchemaCheck, check_query_schema
from audience_pipeline.amc.definitions import DatasetDefinition
from audience_pipeline.amc.upload_files import (
    MAX_PART_BYTES,
    S3Location,
    delete_upload_files,
    prepare_batch,
    write_upload_files,
)

BUCKET = "amc-benchmark"
DEFINITION = {
    "dataSetId": "purchases",
    "period": "P1D",
    "countryCode": "US",
    "columns": [
        {
            "name": "email",
            "columnType": "DIMENSION",
            "dataType": "STRING",
            "externalUserIdType": {"hashedPii": "EMAIL"},
        },
        {
            "name": "purchase_time",
            "columnType": "DIMENSION",
            "dataType": "TIMESTAMP",
            "isMainEventTime": True,
        },
        {"name": "amount", "columnType": "METRIC", "dataType": "DECIMAL", "nullable": False},
        {"name": "quantity", "columnType": "METRIC", "dataType": "INTEGER"},
        {"name": "order_id", "columnType": "DIMENSION", "dataType": "LONG"},
        {"name": "sku", "columnType": "DIMENSION", "dataType": "STRING"},
    ],
}


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def batches(rows: int, batch_size: int) -> Iterator[pl.DataFrame]:
    """Purchase rows as a query would stream them, `batch_size` at a time."""
    for start in range(0, rows, batch_size):
        i = pl.col("i")
        yield pl.DataFrame({"i": pl.int_range(start, min(start + batch_size, rows), eager=True)}).select(
            email=pl.when(i % 1000 == 999)
            .then(pl.lit("not-an-email"))
            .otherwise(pl.format(" User{}@Example.com", i)),
            purchase_time=pl.lit(datetime(2025, 1, 1)) + pl.duration(seconds=i * 7),
            amount=pl.when(i % 5000 != 4999).then((i % 100_000) / 100),
            quantity=(i % 7 + 1).cast(pl.Int32),
            order_id=i + 10**12,
            sku=pl.format("SKU-{}", i % 5000),
        )


def gzip_seconds(
    rows: int, batch_size: int, definition: DatasetDefinition, check: SchemaCheck, levels: list[int]
) -> dict[int, float]:
    """Seconds plain gzip takes at each level for the CSV text of the uploaded rows, a batch at a time."""
    seconds = dict.fromkeys(levels, 0.0)
    with open(os.devnull, "wb") as null:
        streams = {level: gzip.GzipFile(fileobj=null, mode="wb", compresslevel=level) for level in levels}
        for i, batch in enumerate(batches(rows, batch_size)):
            text = io.BytesIO()
            prepare_batch(batch, definition, check).frame.write_csv(text, include_header=i == 0)
            for level, stream in streams.items():
                started = time.perf_counter()
                stream.write(text.getbuffer())
                seconds[level] += time.perf_counter() - started
        for level, stream in streams.items():
            started = time.perf_counter()
            stream.close()
            seconds[level] += time.perf_counter() - started
    return seconds


def start_moto() -> tuple[subprocess.Popen, str]:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while True:
        try:
            requests.get(f"{url}/moto-api/", timeout=1)
            return server, url
        except requests.ConnectionError:
            if time.monotonic() > deadline:
                server.kill()
                raise
            time.sleep(0.1)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--batch-size", type=int, default=250_000)
    parser.add_argument("--format", choices=["csv", "parquet"], default="csv")
    parser.add_argument("--max-part-mb", type=float, default=MAX_PART_BYTES / 2**20)
    args = parser.parse_args()

    definition = DatasetDefinition.parse(DEFINITION)
    check = check_query_schema(definition, next(batches(1, 1)).schema)
    server, url = start_moto()
    try:
        s3 = boto3.client(
            "s3",
            endpoint_url=url,
            aws_access_key_id="bench",
            aws_secret_access_key="bench",
            region_name="us-east-1",
        )
        s3.create_bucket(Bucket=BUCKET)
        location = S3Location(BUCKET, "benchmark/", "bench-", "amcbenchmark")
        started = time.perf_counter()
        files = write_upload_files(
            batches(args.rows, args.batch_size),
            definition,
            check,
            s3_client=s3,
            location=location,
            upload_name="purchases",
            file_format=args.format,
            max_part_bytes=int(args.max_part_mb * 2**20),
        )
        seconds = time.perf_counter() - started
        rss = peak_rss_mib()
        stored = [s3.head_object(Bucket=BUCKET, Key=key) for key in files.part_keys]
        delete_upload_files(s3, location, files)
    finally:
        server.terminate()
        server.wait()

    baseline = gzip_seconds(args.rows, args.batch_size, definition, check, levels=[1, 6])

    stats = files.stats
    sizes = ", ".join(f"{head['ContentLength'] / 2**20:,.1f}" for head in stored)
    multipart = sum("-" in head["ETag"] for head in stored)
    print(f"rows in / written        {stats.rows_in:,} / {stats.rows_written:,}")
    print(f"skipped / rejected       {stats.skipped_null} / {stats.rejects}")
    print(f"format, batch            {args.format}, {args.batch_size:,} rows")
    print(f"time                     {seconds:.2f} s  {stats.rows_in / seconds:,.0f} rows/s")
    print(f"parts                    {len(stored)} ({multipart} multipart), MiB: {sizes}")
    print(f"uploaded                 {sum(stats.part_bytes) / 2**20:,.1f} MiB")
    print(f"peak RSS                 {rss:,.0f} MiB")
    for level, gzip_time in baseline.items():
        print(
            f"baseline: gzip -{level} alone   {gzip_time:.2f} s  {stats.rows_in / gzip_time:,.0f} rows/s  "
            f"(upload / gzip: {gzip_time / seconds:.2f}x)"
        )


if __name__ == "__main__":
    main()
