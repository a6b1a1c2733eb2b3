"""AMC upload files: query rows turned into gzip CSV (or Parquet) parts plus a manifest on S3, streaming.

Each batch of query rows is prepared for the dataset (columns renamed to the dataset's, identities
normalized and hashed, times and numbers formatted the way AMC parses them, rows AMC would drop
skipped and counted) and appended to the current part. A part is closed before it could grow past
the size limit. Its bytes stream to S3 while it is written: gzip blocks are compressed on other
threads and uploaded in pieces while the next rows are prepared, so memory holds two batches (one
written, the next prepared) and a few pieces whatever the row count, and nothing is written to local
disk. Every object is tagged with the AMC instance and encrypted server-side, as AMC's data-upload
role requires. Raw PII never reaches S3, a message or the statistics: only hashes, and counts of
rejects by reason.
"""

import io
import os
import posixpath
import threading
from collections.abc import Callable, Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import suppress
from dataclasses import dataclass, field
from typing import Any, BinaryIO, Literal, NamedTuple, NoReturn, Protocol
from urllib.parse import urlencode

import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
from boto3.s3.transfer import TransferConfig
from botocore.exceptions import BotoCoreError, ClientError
from isal import igzip_threaded

from audience_pipeline.amc.compatibility import SchemaCheck
from audience_pipeline.amc.definitions import Column, DatasetDefinition
from audience_pipeline.clients.amc import PARQUET, csv_format
from audience_pipeline.identity import normalize_identities
from audience_pipeline.identity.countries import alpha2

MAX_PART_BYTES = 500 * 1024 * 1024
FileFormat = Literal["csv", "parquet"]

_SSE = ("AES256", "aws:kms")
# A part under 16 MiB goes as one PutObject, a larger one as a multipart upload of 8 MiB pieces, four
# at a time. Read from a stream, the upload holds at most eleven pieces (88 MiB) in memory.
_TRANSFER = TransferConfig(
    multipart_threshold=16 * 1024 * 1024, multipart_chunksize=8 * 1024 * 1024, max_concurrency=4
)
# ISA-L's level 1 packs hex digests, most of a row, tighter than zlib's level 1, at four to five times its
# speed. Two threads compress 1 MiB blocks side by side into one gzip stream (as pigz does), which is
# already faster than rows are prepared: more would only take cores from the preparation.
_GZIP_LEVEL = 1
_GZIP_THREADS = 2
# What closing adds after a sync flush: the final empty deflate block and the gzip trailer.
_GZIP_CLOSING = 10
_PARQUET_COMPRESSION = "snappy"
_INT32 = (-(2**31), 2**31 - 1)
_INT64 = (-(2**63), 2**63 - 1)
# Epoch seconds of 0001-01-01 and 9999-12-31T23:59:59: AMC's four-digit years.
_EPOCH_SECONDS = (-62_135_596_800, 253_402_300_799)


@dataclass
class PreparedBatch:
    """One batch of query rows made ready for AMC, with what was skipped and rejected on the way."""

    frame: pl.DataFrame
    """Dataset column names in definition order (mapped columns only), values formatted for AMC."""
    rows_in: int
    skipped_null: dict[str, int]
    """Dataset column → rows skipped for a null there (a row with two such nulls counts in both)."""
    rejects: dict[str, dict[str, int]]
    """Dataset column → reason → values rejected (made null); never the values."""


@dataclass
class UploadStats:
    """Counts accumulated over a whole upload."""

    rows_in: int = 0
    rows_written: int = 0
    rows_skipped: int = 0
    skipped_null: dict[str, int] = field(default_factory=dict)
    rejects: dict[str, dict[str, int]] = field(default_factory=dict)
    parts: list[str] = field(default_factory=list)
    """S3 keys of the parts in order (the keys a dry run would have written)."""
    part_bytes: list[int] = field(default_factory=list)
    """Compressed bytes of each part."""

    def add(self, batch: PreparedBatch) -> None:
        """Count one prepared batch."""
        self.rows_in += batch.rows_in
        self.rows_written += batch.frame.height
        self.rows_skipped += batch.rows_in - batch.frame.height
        for column, n in batch.skipped_null.items():
            self.skipped_null[column] = self.skipped_null.get(column, 0) + n
        for column, reasons in batch.rejects.items():
            counts = self.rejects.setdefault(column, {})
            for reason, n in reasons.items():
                counts[reason] = counts.get(reason, 0) + n

    def metadata(self) -> dict[str, Any]:
        """Plain JSON-able counts for Dagster metadata; never values."""
        return {
            "rows_in": self.rows_in,
            "rows_written": self.rows_written,
            "rows_skipped": self.rows_skipped,
            "skipped_null": dict(self.skipped_null),
            "rejects": {column: dict(reasons) for column, reasons in self.rejects.items()},
            "rejected_values": sum(n for reasons in self.rejects.values() for n in reasons.values()),
            "parts": len(self.parts),
            "bytes": sum(self.part_bytes),
            "largest_part_bytes": max(self.part_bytes, default=0),
        }


class NoRowsToUpload(ValueError):
    """Every row was skipped (or there were none): there is nothing to upload. `stats` says why."""

    def __init__(self, message: str, stats: UploadStats):
        super().__init__(message)
        self.stats = stats


@dataclass(frozen=True)
class S3Location:
    """Where upload files go, and how they are tagged and encrypted."""

    bucket: str
    path_prefix: str
    """Folder inside the bucket; "" for the bucket's root. A trailing "/" is optional."""
    file_name_prefix: str
    """Prepended to every file name (parts and manifest)."""
    instance_id: str
    """Every object is tagged `instanceId=<instance_id>`: AMC reads only objects of its instance."""
    sse: str = "AES256"
    """ServerSideEncryption of every object: AES256 (S3-managed keys) or aws:kms."""
    kms_key_id: str | None = None

    def __post_init__(self) -> None:
        if self.sse not in _SSE:
            raise ValueError(f"sse: {self.sse!r} is not one of {', '.join(_SSE)}")
        if self.kms_key_id and self.sse != "aws:kms":
            raise ValueError("kms_key_id: only used with sse 'aws:kms'")
        if _hidden(self.file_name_prefix):
            raise ValueError(
                f"file_name_prefix: {self.file_name_prefix!r} makes file names start with '.' or '_', "
                "which AMC skips"
            )

    def key(self, name: str) -> str:
        """The S3 key of a file called `name` in this location."""
        folder = self.path_prefix.strip("/")
        return f"{folder}/{name}" if folder else name

    def extra_args(self) -> dict[str, str]:
        """boto3 upload `ExtraArgs`: the instance tag and server-side encryption."""
        args = {"Tagging": urlencode({"instanceId": self.instance_id}), "ServerSideEncryption": self.sse}
        if self.kms_key_id:
            args["SSEKMSKeyId"] = self.kms_key_id
        return args


@dataclass
class UploadFiles:
    """What was written: the manifest and parts (keys), counts, and how `POST /uploads` must describe them."""

    manifest_key: str
    part_keys: list[str]
    stats: UploadStats
    file_format: dict[str, Any]
    """The API's `fileFormat`."""
    compression: str
    """The API's `compressionFormat`: GZIP for CSV parts, NONE for Parquet (compressed inside)."""


# --- preparing rows -----------------------------------------------------------------------------------


def prepare_batch(
    frame: pl.DataFrame,
    definition: DatasetDefinition,
    check: SchemaCheck,
    country_code: str | None = None,
    row_offset: int = 0,
) -> PreparedBatch:
    """Make a batch of query rows ready for AMC, per `check` (from `check_query_schema`).

    Mapped columns get their dataset names and definition order; ignored ones are dropped. Hashed-PII
    columns are normalized and hashed by their `hashedPii` type (hashes pass through). A row's country
    for phone, state, zip and address comes from the dataset's `isCountryCode` column, else from a
    COUNTRY_CODE column before it is hashed, else `country_code`, else the dataset's `countryCode`.
    Values that cannot be sent (rejected identities, unknown countries, numbers or times out of AMC's
    range, NaN) become null and are counted by reason; then rows with a null in a non-nullable column
    or in a FACT dataset's main event time are skipped and counted per column. `row_offset` places the
    batch in the whole upload for the identity engine's row numbers.
    """
    check.raise_for_errors()
    source = {target: name for name, target in check.mapping.items()}
    columns = [column for column in definition.columns if column.name in source]
    default_country = country_code or definition.country_code
    identities, rejects = _identities(frame, columns, source, default_country, row_offset)

    plain = {
        column.name: _format(column, pl.col(source[column.name]), frame.schema[source[column.name]])
        for column in columns
        if column.name not in identities
    }
    checked = {name: f for name, f in plain.items() if f.invalid is not None}
    if checked:
        counts = frame.select(f.invalid.sum().alias(name) for name, f in checked.items()).row(0, named=True)
        for name, n in counts.items():
            if n:
                rejects[name] = {checked[name].reason: n}
    prepared = frame.select(
        pl.lit(identities[column.name]).alias(column.name)
        if column.name in identities
        else plain[column.name].valid_only().alias(column.name)
        for column in columns
    )

    event_time = definition.main_event_time
    required = [name for name in check.non_nullable if name in prepared.columns]
    if event_time is not None and event_time.name in prepared.columns and event_time.name not in required:
        required.append(event_time.name)
    skipped_null = {}
    if required:
        skipped_null = prepared.select(pl.col(required).null_count()).row(0, named=True)
        prepared = prepared.filter(pl.all_horizontal(pl.col(required).is_not_null()))
    return PreparedBatch(
        frame=prepared,
        rows_in=frame.height,
        skipped_null={name: n for name, n in skipped_null.items() if n},
        rejects=rejects,
    )


def _identities(
    frame: pl.DataFrame,
    columns: list[Column],
    source: dict[str, str],
    default_country: str | None,
    row_offset: int,
) -> tuple[dict[str, pl.Series], dict[str, dict[str, int]]]:
    """Hashed-PII columns (dataset name → hashes) and the identity engine's rejects, by dataset column.

    The engine takes one column per identity field, so a dataset with two columns of one type is
    processed in rounds. A COUNTRY_CODE column is its own round: the engine reads it as the row's
    country, which for the other fields must be the dataset's chosen country column.
    """
    hashed = [(column.name, column.hashed_pii.lower()) for column in columns if column.hashed_pii]
    countries = [name for name, field_name in hashed if field_name == "country_code"]
    flagged = next((column.name for column in columns if column.is_country_code), None)
    country_source = flagged or next(iter(countries), None)

    rounds: list[dict[str, str]] = []
    for name, field_name in hashed:
        if field_name != "country_code":
            target = next((r for r in rounds if field_name not in r.values()), None)
            if target is None:
                target = {}
                rounds.append(target)
            target[name] = field_name

    values: dict[str, pl.Series] = {}
    rejects: dict[str, dict[str, int]] = {}
    for round_columns in [*({name: "country_code"} for name in countries), *rounds]:
        inputs = [pl.col(source[name]).alias(field_name) for name, field_name in round_columns.items()]
        if "country_code" not in round_columns.values() and country_source is not None:
            inputs.append(pl.col(source[country_source]).alias("country_code"))
        result = normalize_identities(
            frame.select(inputs),
            fields=list(round_columns.values()),
            default_country=default_country,
            row_offset=row_offset,
        )
        by_field = {field_name: name for name, field_name in round_columns.items()}
        for field_name, reasons in result.reject_counts().items():
            # An unknown row country is counted once, on the column it came from, not per round.
            if field_name in by_field:
                rejects[by_field[field_name]] = reasons
        values.update(
            {name: result.frame.get_column(field_name) for name, field_name in round_columns.items()}
        )
    return values, rejects


class _Formatted(NamedTuple):
    value: pl.Expr
    invalid: pl.Expr | None = None
    """True where a value is present but cannot be sent; None when every value can."""
    reason: str = ""

    def valid_only(self) -> pl.Expr:
        return (
            self.value if self.invalid is None else pl.when(~self.invalid.fill_null(False)).then(self.value)
        )


def _format(column: Column, value: pl.Expr, dtype: pl.DataType) -> _Formatted:
    """A query column's values as AMC takes them in `column`."""
    data_type = column.data_type
    if column.is_country_code:
        text = value.cast(pl.String).str.strip_chars()
        code = alpha2(text)
        return _Formatted(code, (text != "") & code.is_null(), "unknown_country")
    if data_type == "STRING":
        return _Formatted(value.cast(pl.String))
    if data_type in ("INTEGER", "LONG"):
        low, high = _INT32 if data_type == "INTEGER" else _INT64
        target = pl.Int32 if data_type == "INTEGER" else pl.Int64
        return _Formatted(value.cast(target, strict=False), _outside(value, low, high), "out_of_range")
    if data_type == "DECIMAL":
        # AMC parses neither NaN nor infinity.
        return (
            _Formatted(value.cast(pl.Float64), ~value.is_finite(), "not_finite")
            if dtype.is_float()
            else _Formatted(value)
        )
    # TIMESTAMP or DATE, from a Datetime (naive is UTC), a Date or integer epoch seconds.
    if dtype.is_integer():
        invalid = _outside(value, *_EPOCH_SECONDS)
        moment = pl.from_epoch(pl.when(~invalid).then(value.cast(pl.Int64, strict=False)), time_unit="s")
    else:
        moment = value
        if dtype == pl.Datetime and dtype.time_zone is not None:
            moment = moment.dt.convert_time_zone("UTC")
        year = moment.dt.year()
        invalid = (year < 1) | (year > 9999)
    pattern = "%Y-%m-%dT%H:%M:%SZ" if data_type == "TIMESTAMP" else "%Y-%m-%d"
    return _Formatted(moment.dt.strftime(pattern), invalid, "out_of_range")


def _outside(value: pl.Expr, low: int, high: int) -> pl.Expr:
    # Compared in the column's own type: a UInt64 above 2**63 cast to Int64 first would be lost.
    return (value < low) | (value > high)


# --- writing parts ------------------------------------------------------------------------------------


def write_upload_files(
    batches: Iterable[pl.DataFrame],
    definition: DatasetDefinition,
    check: SchemaCheck,
    *,
    s3_client: Any,
    location: S3Location,
    upload_name: str,
    file_format: FileFormat = "csv",
    country_code: str | None = None,
    max_part_bytes: int = MAX_PART_BYTES,
    dry_run: bool = False,
) -> UploadFiles:
    """Prepare every batch (`prepare_batch`) and stream it into parts on S3, then write the manifest.

    Parts are `<file_name_prefix><upload_name>-part-00000.csv.gz` (gzip CSV with a header row) or
    `.parquet` (one row group per batch, Snappy inside), each at most `max_part_bytes`, uploaded while
    it is written and whole once closed; the manifest `<file_name_prefix><upload_name>.manifest` lists
    them as `s3://bucket/key` lines and is written last. Every object is tagged and encrypted per `location`.
    `dry_run` does the same work into a byte counter: no S3 call (`s3_client` may be None), and
    `stats.parts` holds the keys that would be written.

    Raises `ValueError` for a bad name, `SchemaMismatch` if `check` has errors, and `NoRowsToUpload`
    (a `ValueError` carrying the stats) when no row is left to upload; no manifest is written then.
    If writing fails part-way, the part being written is abandoned (S3 never holds it) and the parts
    already uploaded are deleted again.
    """
    check.raise_for_errors()
    if not location.bucket:
        raise ValueError("bucket: uploads need the S3 bucket AMC reads from")
    if max_part_bytes <= 0:
        raise ValueError(f"max_part_bytes must be positive, got {max_part_bytes}")
    if file_format not in ("csv", "parquet"):
        raise ValueError(f"file_format must be 'csv' or 'parquet', got {file_format!r}")
    base = f"{location.file_name_prefix}{upload_name}"
    if _hidden(base):
        raise ValueError(
            f"file_name_prefix {location.file_name_prefix!r} with upload name {upload_name!r} makes file "
            "names start with '.' or '_', which AMC skips"
        )
    suffix = ".csv.gz" if file_format == "csv" else ".parquet"
    stats = UploadStats()

    def part_key() -> str:
        # Parts are written one at a time: the next one is numbered after those published.
        return location.key(f"{base}-part-{len(stats.parts):05d}{suffix}")

    def open_part() -> _Sink:
        if dry_run:
            return _Counter()
        return _S3Object(s3_client, location.bucket, part_key(), location.extra_args())

    def publish(size: int) -> None:
        stats.parts.append(part_key())
        stats.part_bytes.append(size)

    try:
        with _Parts(file_format, max_part_bytes, open_part, publish) as parts:
            for batch in batches:
                prepared = prepare_batch(batch, definition, check, country_code, row_offset=stats.rows_in)
                stats.add(prepared)
                parts.add(prepared.frame)
        if not stats.rows_written:
            raise NoRowsToUpload(_nothing_left(stats), stats)
        manifest_key = location.key(f"{base}.manifest")
        if not dry_run:
            manifest = "".join(f"s3://{location.bucket}/{key}\n" for key in stats.parts).encode()
            s3_client.upload_fileobj(
                io.BytesIO(manifest), location.bucket, manifest_key, ExtraArgs=location.extra_args()
            )
    except BaseException:
        if stats.parts and not dry_run:
            # Best effort: the original error is the one to report, and no manifest names these parts.
            with suppress(BotoCoreError, ClientError):
                delete_upload_files(s3_client, location, stats.parts)
        raise
    return UploadFiles(
        manifest_key=manifest_key,
        part_keys=list(stats.parts),
        stats=stats,
        file_format=csv_format() if file_format == "csv" else dict(PARQUET),
        compression="GZIP" if file_format == "csv" else "NONE",
    )


def delete_upload_files(s3_client: Any, location: S3Location, files: UploadFiles | list[str]) -> None:
    """Delete an upload's parts and manifest (or the given keys): `clean_uploaded_files` after success."""
    keys = [*files.part_keys, files.manifest_key] if isinstance(files, UploadFiles) else list(files)
    # DeleteObjects takes at most 1,000 keys per call.
    for start in range(0, len(keys), 1000):
        objects = [{"Key": key} for key in keys[start : start + 1000]]
        response = s3_client.delete_objects(
            Bucket=location.bucket, Delete={"Objects": objects, "Quiet": True}
        )
        errors = response.get("Errors") or []
        if errors:
            failed = ", ".join(f"{e.get('Key')} ({e.get('Code')})" for e in errors[:5])
            raise RuntimeError(
                f"could not delete {len(errors)} upload file(s) from s3://{location.bucket}: {failed}"
            )


def check_key_prefix(prefix: str) -> str:
    """`prefix` if the keys it begins stay inside the bucket's folders; a ValueError otherwise."""
    if prefix.startswith("/") or ".." in prefix.split("/"):
        raise ValueError(f"{prefix!r} must be a relative path inside the bucket")
    return prefix


def check_file_name_prefix(prefix: str) -> str:
    """`prefix` if AMC reads the files it names (see `_hidden`); a ValueError otherwise."""
    check_key_prefix(prefix)
    if _hidden(prefix):
        raise ValueError("AMC skips files whose names start with '.' or '_'; choose another prefix")
    return prefix


def _hidden(name: str) -> bool:
    """Whether AMC skips a file of this name, as it does hidden and marker files (`.keep`, `_SUCCESS`)."""
    return posixpath.basename(name).startswith((".", "_"))


def _nothing_left(stats: UploadStats) -> str:
    if not stats.rows_in:
        return "no rows to upload: the query returned no rows"
    nulls = ", ".join(f"{column}: {n}" for column, n in stats.skipped_null.items())
    return (
        f"no rows to upload: all {stats.rows_in} rows were skipped for nulls in columns AMC requires "
        f"({nulls})"
    )


class _Sink(Protocol):
    """Where one part's bytes go as they are written: an S3 object, or a byte counter in a dry run."""

    def write(self, data: Any) -> int: ...

    def flush(self) -> None: ...

    def tell(self) -> int: ...

    def finish(self) -> None:
        """Every byte is written: make the part whole where it goes."""

    def abort(self) -> None:
        """Drop the part: nothing of it is left where it goes."""


class _Counter(io.RawIOBase):
    """A write-only file that keeps nothing but the number of bytes written to it."""

    def __init__(self) -> None:
        super().__init__()
        self.size = 0

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        n = memoryview(data).nbytes
        self.size += n
        return n

    def tell(self) -> int:
        return self.size

    def finish(self) -> None:
        """Nothing to finish: a dry run writes nowhere."""

    def abort(self) -> None:
        """Nothing to drop: a dry run writes nowhere."""


class _Abandoned(Exception):
    """The writer gave a part up: its upload must fail rather than store what was written so far."""


class _S3Object(io.RawIOBase):
    """A write-only file streaming into one S3 object while it is written.

    `upload_fileobj` runs on a thread of its own and reads the other end of a pipe, so the object is
    uploaded (in `_TRANSFER`'s pieces, a few at a time) while the rest is still being compressed.
    The pipe holds the writer back while the upload has all the pieces it may keep in memory. Its end
    of file means "complete" only after `finish`: after `abort` the read fails, the transfer manager
    aborts the multipart upload, and S3 holds nothing of the object.
    """

    def __init__(self, s3_client: Any, bucket: str, key: str, extra_args: dict[str, str]):
        super().__init__()
        self._size = 0
        self._complete = threading.Event()
        self._error: BaseException | None = None
        read_end, write_end = os.pipe()
        self._writer = open(write_end, "wb")  # noqa: SIM115  (closed by finish or abort)
        reader = open(read_end, "rb")  # noqa: SIM115  (closed by the upload thread)
        self._upload = threading.Thread(
            target=self._run,
            args=(s3_client, reader, bucket, key, extra_args),
            name=f"amc-upload {key}",
            daemon=True,
        )
        self._upload.start()

    def _run(self, s3_client: Any, reader: BinaryIO, bucket: str, key: str, extra_args: dict) -> None:
        try:
            s3_client.upload_fileobj(
                _Stream(reader, self._complete), bucket, key, ExtraArgs=extra_args, Config=_TRANSFER
            )
        except BaseException as error:  # raised in the writing thread by write, flush or finish
            self._error = error
        finally:
            # A writer still writing then gets a broken pipe instead of waiting for a reader forever.
            reader.close()

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        try:
            n = self._writer.write(data)
        except BrokenPipeError:
            self._raise_upload_error()
        self._size += n
        return n

    def flush(self) -> None:
        # Also called when the file object is collected, after `finish` or `abort` closed the pipe.
        if self._writer.closed:
            return
        try:
            self._writer.flush()
        except BrokenPipeError:
            self._raise_upload_error()

    def _raise_upload_error(self) -> NoReturn:
        # The upload stopped reading because it failed: its error says why, not the broken pipe.
        self._upload.join()
        raise self._error or RuntimeError("the S3 upload stopped reading") from None

    def tell(self) -> int:
        return self._size

    def finish(self) -> None:
        """Wait until S3 holds the whole object; raise the upload's error if it failed."""
        self._complete.set()
        # A broken pipe means the upload ended early: its own error is raised below.
        with suppress(BrokenPipeError):
            self._writer.close()
        self._upload.join()
        if self._error is not None:
            raise self._error

    def abort(self) -> None:
        """Make the upload fail, so that S3 keeps nothing of the object, and wait for it to end."""
        # A broken pipe means the upload had already ended.
        with suppress(BrokenPipeError):
            self._writer.close()
        self._upload.join()


class _Stream:
    """The reading end of an `_S3Object`'s pipe, as the transfer manager reads it."""

    def __init__(self, pipe: BinaryIO, complete: threading.Event):
        self._pipe = pipe
        self._complete = complete

    def read(self, size: int = -1) -> bytes:
        data = self._pipe.read(size)
        # A short read is the pipe's end: the object is complete only if the writer said so.
        if (size < 0 or len(data) < size) and not self._complete.is_set():
            raise _Abandoned("the part was abandoned before it was complete")
        return data


class _Part(Protocol):
    """One part file being written: chunks of rows are encoded, then appended if they fit."""

    chunk_bytes: int | None
    """The most encoded bytes to hold in memory at once, or None for a whole batch."""
    rows: int

    def used(self) -> int:
        """The most bytes the part can end up with, as it stands (closing included)."""

    def encode(self, frame: pl.DataFrame) -> tuple[Any, int]:
        """The rows ready to append, and the most bytes appending them can add."""

    def append(self, payload: Any, rows: int, size: int) -> None:
        """Append encoded rows; `size` is what `encode` said they can add."""

    def close(self) -> None:
        """Finish the file (gzip trailer, Parquet footer)."""


class _CsvPart:
    """A gzip CSV part: one gzip stream, the header once, then each chunk of rows."""

    chunk_bytes: int | None = 8 * 2**20

    def __init__(self, file: _Sink):
        self._file = file
        # No name or time in the gzip header: the same rows always give the same bytes.
        self._gzip = igzip_threaded.open(file, "wb", compresslevel=_GZIP_LEVEL, threads=_GZIP_THREADS)
        self.rows = 0

    def used(self) -> int:
        # Exact after the sync flush that ends every append, plus the trailer that closing adds.
        return self._file.tell() + _GZIP_CLOSING

    def encode(self, frame: pl.DataFrame) -> tuple[memoryview, int]:
        """CSV text of the rows (with the header in a new part) and the most it can compress to."""
        buffer = io.BytesIO()
        frame.write_csv(buffer, include_header=self.rows == 0)
        data = buffer.getbuffer()
        # Deflate's worst case (incompressible data in stored blocks) plus the sync flush and header.
        return data, len(data) + len(data) // 1000 + 64

    def append(self, data: memoryview, rows: int, size: int) -> None:
        # `size` is not needed: the sync flush makes the file's own position exact.
        self._gzip.write(data)
        self._gzip.flush()
        self.rows += rows

    def close(self) -> None:
        self._gzip.close()


class _ParquetPart:
    """A Parquet part: one row group per chunk of rows.

    A chunk's size in the part is bounded by the size of the chunk written alone as a Parquet file: the
    row group's bytes are the same and the part holds the schema and footer once, not per chunk.
    """

    # One row group per batch (cut only at a part's end).
    chunk_bytes: int | None = None

    def __init__(self, file: _Sink):
        self._file = file
        self._writer: pq.ParquetWriter | None = None
        self._used = 0
        self.rows = 0

    def used(self) -> int:
        return self._used

    def encode(self, frame: pl.DataFrame) -> tuple[pa.Table, int]:
        # Plain large strings: every Parquet reader knows them, unlike Arrow's newer string views.
        table = frame.to_arrow(compat_level=pl.CompatLevel.oldest())
        if self._writer is not None and not table.schema.equals(self._writer.schema):
            table = table.cast(self._writer.schema)
        alone = _Counter()
        pq.write_table(table, alone, compression=_PARQUET_COMPRESSION, row_group_size=max(table.num_rows, 1))
        return table, alone.size

    def append(self, table: pa.Table, rows: int, size: int) -> None:
        if self._writer is None:
            self._writer = pq.ParquetWriter(self._file, table.schema, compression=_PARQUET_COMPRESSION)
        self._writer.write_table(table, row_group_size=table.num_rows)
        self._used += size
        self.rows += rows

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()


class _Parts:
    """Cuts a stream of prepared rows into parts of at most `max_bytes`, publishing each once closed.

    Rows are encoded, compressed and handed to the upload on a writing thread of its own, while the
    caller reads and prepares the next batch: one batch is written while the next is prepared, never
    more. `open_file()` gives the sink of the next part; `publish(size)` is called once the part is
    whole in it. On an error the part being written is aborted instead.
    """

    def __init__(
        self,
        file_format: FileFormat,
        max_bytes: int,
        open_file: Callable[[], _Sink],
        publish: Callable[[int], None],
    ):
        self._format = file_format
        self._max = max_bytes
        self._open_file = open_file
        self._publish = publish
        self._file: _Sink | None = None
        self._part: _Part | None = None
        self._bytes_per_row: float | None = None
        # Every part operation runs on this one thread: a part's compression threads end with the
        # thread that opened it.
        self._writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="amc-upload-parts")
        self._writing: Future[None] | None = None

    def __enter__(self) -> "_Parts":
        return self

    def __exit__(self, kind, error, traceback) -> None:
        with self._writer:
            try:
                if error is None:
                    self._wait()
            except BaseException:
                self._writer.submit(self._end, complete=False).result()
                raise
            # After an error in the caller, this waits for the batch being written, then drops the part.
            self._writer.submit(self._end, complete=error is None).result()

    def add(self, frame: pl.DataFrame) -> None:
        """Hand rows to the writing thread once it has written those handed before (raising its error)."""
        self._wait()
        self._writing = self._writer.submit(self._write, frame)

    def _wait(self) -> None:
        writing, self._writing = self._writing, None
        if writing is not None:
            writing.result()

    def _end(self, complete: bool) -> None:
        if self._part is None:
            return
        if complete and self._part.rows:
            self._close()
        else:
            self._abort()

    def _write(self, frame: pl.DataFrame) -> None:
        """Append rows to the current part, closing it and opening the next whenever it is full."""
        rest = frame
        while rest.height:
            part = self._part or self._open()
            chunk = self._fit(part, rest)
            if chunk is None:
                if not part.rows:
                    raise ValueError(
                        f"a single row does not fit in a part of max_part_bytes={self._max}; raise the limit"
                    )
                self._close()
                continue
            payload, rows, size = chunk
            part.append(payload, rows, size)
            rest = rest.slice(rows)

    def _fit(self, part: _Part, rest: pl.DataFrame) -> tuple[Any, int, int] | None:
        """The most leading rows of `rest` that fit in the part's room, encoded; None if not even one."""
        room = self._max - part.used()
        rows = rest.height
        width = self._bytes_per_row
        if part.chunk_bytes is not None:
            # The encoded text is held in memory until compressed: a few MiB of it at a time, not a
            # whole batch; the first rows of an upload measure how wide a row is.
            rows = min(rows, max(1, int(part.chunk_bytes / width)) if width else 1000)
        if width:
            # Near a part's end, encode about what fits rather than the whole remainder again and again.
            rows = min(rows, max(1, int(room / width)))
        while rows > 0:
            payload, size = part.encode(rest.head(rows))
            self._bytes_per_row = size / rows
            if size <= room:
                return payload, rows, size
            # Shrink in proportion, with a margin for rows of uneven width; always by one row at least.
            rows = min(rows - 1, int(rows * room / size * 0.95))
        return None

    def _open(self) -> _Part:
        self._file = self._open_file()
        self._part = _CsvPart(self._file) if self._format == "csv" else _ParquetPart(self._file)
        return self._part

    def _close(self) -> None:
        assert self._part is not None and self._file is not None
        part, file = self._part, self._file
        self._part, self._file = None, None
        try:
            part.close()
        except BaseException:
            file.abort()
            raise
        size = file.tell()
        file.finish()
        self._publish(size)

    def _abort(self) -> None:
        assert self._part is not None and self._file is not None
        part, file = self._part, self._file
        self._part, self._file = None, None
        # Closing stops the part's compression threads; an error it raises is a consequence of the one
        # already on its way, and what it writes is dropped with the part.
        with suppress(Exception):
            part.close()
        file.abort()
