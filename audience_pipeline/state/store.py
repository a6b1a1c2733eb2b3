"""Parquet files under one root, a local folder or `s3://bucket/prefix`, each replaced atomically.

A reader sees the old file or the new one, never a partial one: a file is written whole into a
staging file first (locally in the target's folder, for S3 in a temporary folder), then moved into
place with `os.replace` or sent in one PutObject, which S3 makes visible all at once. Files can be
written and read a part at a time (`replacing`, `open`), so no file has to fit in memory.

Each stored file has a revision: an opaque token that changes with every write (the S3 ETag, or the
local file's inode, modification time and size: every write is a new file moved into place). `write_if`
and `replacing` replace a file only while it is still at the revision the caller read, which is how a
ledger refuses a lost update.
"""

import fcntl
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from itertools import accumulate
from pathlib import Path, PurePosixPath
from typing import Any, BinaryIO

import boto3
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
from botocore.exceptions import BotoCoreError, ClientError

# Local files written before revisions came from the file system kept one in their metadata.
_OLD_REVISION_KEY = "audience_pipeline.revision"
# Ledgers are mostly hashes and ciphertext: zstd's higher levels barely shrink them and take about
# twice as long (10M members: 4 s and 984 MiB at level 1, 7 s and 1055 MiB at the default).
COMPRESSION_LEVEL = 1
# 412: the object changed (If-Match) or appeared (If-None-Match); 409: a concurrent conditional
# write to the same key won; 404 under If-Match: the object was deleted since it was read.
_CONFLICT_CODES = {"PreconditionFailed", "ConditionalRequestConflict", "NoSuchKey", "404", "409", "412"}
_COPY_BUFFER = 1 << 20


class StoreError(RuntimeError):
    """The state store could not read, write or delete a file; the message names the root and key."""


class RevisionConflict(StoreError):
    """A conditional write found the file at another revision than the one the caller expected."""


class UnreadableFile(StoreError):
    """A stored file is there but is not Parquet (truncated, overwritten, not written by the pipeline)."""


class _Unconditional:
    """`replacing` without a revision to check."""


UNCONDITIONAL = _Unconditional()


@dataclass(frozen=True)
class StoredFrame:
    """A stored file: its rows, the metadata written with it, and the revision it is at."""

    frame: pl.DataFrame
    metadata: dict[str, str]
    revision: str


@dataclass
class Staged:
    """A file being replaced: write the new Parquet file at `path`; `revision` is its revision once
    it is in place. Set `discard` to leave the stored file as it is after all."""

    path: str
    revision: str | None = None
    discard: bool = False


class StoredFile:
    """A stored Parquet file, open for reading a range of its row groups: what `ParquetStore.open` yields."""

    def __init__(self, store: "ParquetStore", key: str, file: BinaryIO, revision: str):
        self._store, self.key, self.revision = store, key, revision
        with store._errors("reading", key):
            footer = pq.read_metadata(file)
        self.metadata = _user_metadata({k.decode(): v.decode() for k, v in (footer.metadata or {}).items()})
        self._starts = list(
            accumulate((footer.row_group(i).num_rows for i in range(footer.num_row_groups)), initial=0)
        )
        # Polars reads the open file through its descriptor, so the rows are those of the revision
        # opened even when the file is replaced meanwhile (and a temporary copy needs no name).
        self._path = f"/dev/fd/{file.fileno()}"

    @property
    def row_groups(self) -> int:
        """How many row groups the file has."""
        return len(self._starts) - 1

    @property
    def rows(self) -> int:
        """How many rows the file has."""
        return self._starts[-1]

    @property
    def schema(self) -> pl.Schema:
        """The columns of the file's rows."""
        with self._store._errors("reading", self.key):
            return pl.scan_parquet(self._path).collect_schema()

    def read(
        self, row_groups: range | None = None, columns: list[str] | None = None, where: pl.Expr | None = None
    ) -> pl.DataFrame:
        """The rows of the consecutive `row_groups` (default: all of them), with `columns` (default: all),
        those for which `where` holds (default: all): columns outside `where` are decoded only for
        those rows."""
        with self._store._errors("reading", self.key):
            scan = pl.scan_parquet(self._path)
            if row_groups is not None:
                start = self._starts[row_groups.start]
                scan = scan.slice(start, self._starts[row_groups.stop] - start)
            if where is not None:
                scan = scan.filter(where)
            if columns is not None:
                scan = scan.select(columns)
            return scan.collect()


class ParquetStore:
    """Parquet files addressed by relative keys such as `ledgers/firehose/my_stream/1001.parquet`.

    `root` is a local folder (created on first write) or `s3://bucket/prefix`. For S3, `s3_client`
    makes the boto3 S3 client, called once on first use (the `state_store` resource passes its own
    `S3Resource.get_client`, so the state store reaches AWS the way every other AWS client does).
    Without it, a plain boto3 client with the default credential chain is made; `endpoint_url`
    (else boto3's own `AWS_ENDPOINT_URL`) and `region` point it elsewhere, e.g. at the sandbox.
    """

    def __init__(
        self,
        root: str,
        *,
        s3_client: Callable[[], Any] | None = None,
        endpoint_url: str | None = None,
        region: str | None = None,
    ):
        self.root = root
        self._s3_client: Any = None
        self._local = not root.startswith("s3://")
        if not self._local:
            bucket, _, prefix = root.removeprefix("s3://").partition("/")
            if not bucket:
                raise ValueError(f"State store root {root!r} names no bucket; use s3://bucket/prefix")
            self._bucket, self._prefix = bucket, prefix.strip("/")
            self._make_s3_client = s3_client or (
                lambda: boto3.client("s3", endpoint_url=endpoint_url, region_name=region)
            )
        else:
            self._make_s3_client = None
            self._folder = Path(root)

    @property
    def _s3(self) -> Any:
        """The S3 client, made on first use (inside `_errors`, so a failure names the root and key)."""
        if self._s3_client is None:
            self._s3_client = self._make_s3_client()
        return self._s3_client

    def uri(self, key: str) -> str:
        """Where `key` is stored: a local path or an `s3://` URI."""
        key = _checked(key)
        if self._local:
            return str(self._folder / key)
        return f"s3://{self._bucket}/{self._object_key(key)}"

    def read(self, key: str) -> pl.DataFrame | None:
        """The frame stored at `key`, or None when nothing is stored there."""
        stored = self.read_stored(key)
        return None if stored is None else stored.frame

    def read_stored(self, key: str) -> StoredFrame | None:
        """The frame, metadata and revision stored at `key`, or None when nothing is stored there."""
        with self.open(key) as stored:
            if stored is None:
                return None
            return StoredFrame(stored.read(), stored.metadata, stored.revision)

    @contextmanager
    def open(self, key: str) -> Iterator[StoredFile | None]:
        """The file at `key` open for reading a part at a time, or None when nothing is stored there.

        What is read through it is the revision opened, even if the file is replaced meanwhile.
        """
        with self._errors("reading", key):
            opened = self._open_local(key) if self._local else self._open_s3(key)
        if opened is None:
            yield None
            return
        file, revision = opened
        with file:
            yield StoredFile(self, key, file, revision)

    def write(self, key: str, frame: pl.DataFrame, *, metadata: Mapping[str, str] | None = None) -> str:
        """Replace the file at `key` with `frame` atomically; return the new revision."""
        return self.write_if(key, frame, UNCONDITIONAL, metadata=metadata)

    def write_if(
        self,
        key: str,
        frame: pl.DataFrame,
        expected_revision: str | None | _Unconditional,
        *,
        metadata: Mapping[str, str] | None = None,
    ) -> str:
        """Like `write`, but only while `key` is at `expected_revision` (None: while it is absent).

        Raises `RevisionConflict` otherwise; see `replacing`.
        """
        with self.replacing(key, expected_revision) as staged, self._errors("writing", key):
            frame.write_parquet(
                staged.path, compression_level=COMPRESSION_LEVEL, metadata=dict(metadata or {})
            )
        return staged.revision

    @contextmanager
    def replacing(
        self, key: str, expected_revision: str | None | _Unconditional = UNCONDITIONAL
    ) -> Iterator[Staged]:
        """Replace the file at `key` with the Parquet file the caller writes at the yielded `Staged.path`,
        once the `with` block ends without an error (with one, or `Staged.discard` set, the file at `key`
        stays as it was).

        With `expected_revision` (None: absent), the file is replaced only while `key` is still at that
        revision, else `RevisionConflict`. The check and the replacement are one step: S3 evaluates
        `If-Match`/`If-None-Match` itself; locally a lock file next to the target serializes conditional
        writers on this host, which is all a local folder can be shared by.
        """
        with self._errors("writing", key):
            if self._local:
                folder = (self._folder / _checked(key)).parent
                folder.mkdir(parents=True, exist_ok=True)
            else:
                folder = None
            fd, path = tempfile.mkstemp(dir=folder, prefix=f".{PurePosixPath(key).name}.", suffix=".tmp")
            os.close(fd)
        staged = Staged(path)
        try:
            yield staged
            if staged.discard:
                return
            with self._errors("writing", key):
                staged.revision = (
                    self._place_local(key, path, expected_revision)
                    if self._local
                    else self._place_s3(key, path, expected_revision)
                )
        finally:
            Path(path).unlink(missing_ok=True)

    def delete(self, key: str) -> None:
        """Remove the file at `key`; nothing happens when it is absent."""
        with self._errors("deleting", key):
            if self._local:
                (self._folder / _checked(key)).unlink(missing_ok=True)
            else:
                self._s3.delete_object(Bucket=self._bucket, Key=self._object_key(key))

    def keys(self, folder: str) -> list[str]:
        """The keys of the files stored under `folder` (a key prefix ending before a `/`), sorted."""
        with self._errors("listing", folder):
            if self._local:
                base = self._folder / _checked(folder)
                if not base.is_dir():
                    return []
                return sorted(
                    f"{folder}/{path.relative_to(base).as_posix()}"
                    for path in base.rglob("*")
                    if path.is_file() and not path.name.startswith(".")
                )
            prefix = self._object_key(folder) + "/"
            pages = self._s3.get_paginator("list_objects_v2").paginate(Bucket=self._bucket, Prefix=prefix)
            strip = len(self._prefix) + 1 if self._prefix else 0
            return sorted(item["Key"][strip:] for page in pages for item in page.get("Contents", []))

    # --- local folder ------------------------------------------------------------------------------

    def _open_local(self, key: str) -> tuple[BinaryIO, str] | None:
        # The revision is the open file's: a concurrent os.replace swaps the directory entry, not the
        # file already open, so revision and rows always match.
        try:
            file = open(self._folder / _checked(key), "rb")  # noqa: SIM115 (closed by `open`)
        except FileNotFoundError:
            return None
        return file, _revision(os.fstat(file.fileno()))

    def _local_revision(self, key: str) -> str | None:
        try:
            return _revision(os.stat(self._folder / _checked(key)))
        except FileNotFoundError:
            return None

    def _place_local(self, key: str, path: str, expected_revision: str | None | _Unconditional) -> str:
        target = self._folder / _checked(key)
        # A rename keeps inode, modification time and size: this is the revision once in place.
        revision = _revision(os.stat(path))
        if isinstance(expected_revision, _Unconditional):
            os.replace(path, target)
            return revision
        with self._locked(key):
            if self._local_revision(key) != expected_revision:
                raise RevisionConflict(self._conflict_message(key, expected_revision))
            os.replace(path, target)
        return revision

    @contextmanager
    def _locked(self, key: str) -> Iterator[None]:
        target = self._folder / _checked(key)
        with open(target.parent / f".{target.name}.lock", "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            yield

    # --- S3 ----------------------------------------------------------------------------------------

    def _object_key(self, key: str) -> str:
        key = _checked(key)
        return f"{self._prefix}/{key}" if self._prefix else key

    def _open_s3(self, key: str) -> tuple[BinaryIO, str] | None:
        try:
            response = self._s3.get_object(Bucket=self._bucket, Key=self._object_key(key))
        except ClientError as error:
            if _error_code(error) in ("NoSuchKey", "404"):
                return None
            raise
        # On local disk rather than in memory: a snapshot or ledger part may be larger than memory.
        file = tempfile.TemporaryFile()  # noqa: SIM115 (closed by `open`)
        try:
            shutil.copyfileobj(response["Body"], file, _COPY_BUFFER)
            file.seek(0)
        except BaseException:
            file.close()
            raise
        return file, response["ETag"]

    def _place_s3(self, key: str, path: str, expected_revision: str | None | _Unconditional) -> str:
        if isinstance(expected_revision, _Unconditional):
            condition = {}
        elif expected_revision is None:
            condition = {"IfNoneMatch": "*"}
        else:
            condition = {"IfMatch": expected_revision}
        try:
            with open(path, "rb") as body:
                response = self._s3.put_object(
                    Bucket=self._bucket, Key=self._object_key(key), Body=body, **condition
                )
        except ClientError as error:
            if condition and _error_code(error) in _CONFLICT_CODES:
                raise RevisionConflict(self._conflict_message(key, expected_revision)) from None
            raise
        return response["ETag"]

    # --- errors ------------------------------------------------------------------------------------

    def _conflict_message(self, key: str, expected_revision: str | None) -> str:
        expected = "absent" if expected_revision is None else f"at revision {expected_revision}"
        return f"State store {self.root}: {key} was expected {expected} but changed in the meantime"

    @contextmanager
    def _errors(self, action: str, key: str) -> Iterator[None]:
        # Name the root, the key and the cause; the exception chain is cut so no frame data or
        # request body can surface through a traceback.
        try:
            yield
        except StoreError:
            raise
        except (pl.exceptions.PolarsError, pa.ArrowInvalid) as error:
            raise UnreadableFile(f"State store {self.root}: {action} {key} failed: {error}") from None
        except (OSError, ClientError, BotoCoreError) as error:
            raise StoreError(f"State store {self.root}: {action} {key} failed: {error}") from None


def _checked(key: str) -> str:
    """`key` as a clean relative path, or a ValueError when it could escape the root."""
    path = PurePosixPath(key)
    if (
        not key
        or "\\" in key
        or path.is_absolute()
        or any(part in ("", ".", "..") for part in key.split("/"))
    ):
        raise ValueError(
            f"State store key {key!r} must be a relative path without '.', '..', empty parts or backslashes"
        )
    return key


def _revision(stat: os.stat_result) -> str:
    return f"{stat.st_ino:x}-{stat.st_mtime_ns:x}-{stat.st_size:x}"


def _user_metadata(metadata: dict[str, str]) -> dict[str, str]:
    # Parquet writers add their own entries (the Arrow schema); callers get back what they wrote.
    return {k: v for k, v in metadata.items() if k not in ("ARROW:schema", _OLD_REVISION_KEY)}


def _error_code(error: ClientError) -> str:
    return str(error.response.get("Error", {}).get("Code", ""))
