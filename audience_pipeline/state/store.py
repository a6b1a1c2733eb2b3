"""Parquet files under one root, a local folder or `s3://bucket/prefix`, each replaced atomically.

A reader sees the old file or the new one, never a partial one: locally every write goes to a
temporary file in the target's folder and is moved into place with `os.replace`; on S3 the
complete Parquet bytes go up in one PutObject, which S3 makes visible all at once.

Each stored file has a revision: an opaque token that changes with every write (the S3 ETag, or a
random id kept in the local file's Parquet metadata). `write_if` replaces a file only while it is
still at the revision the caller read, which is how a ledger refuses a lost update.
"""

import fcntl
import io
import os
import tempfile
import uuid
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

import boto3
import polars as pl
from botocore.exceptions import BotoCoreError, ClientError

# Kept in the Parquet metadata of local files; S3 has ETags for the same purpose.
_REVISION_KEY = "audience_pipeline.revision"
# Ledgers are mostly hashes and ciphertext: zstd's higher levels barely shrink them and take about
# twice as long (10M members: 4 s and 984 MiB at level 1, 7 s and 1055 MiB at the default).
_COMPRESSION_LEVEL = 1
# 412: the object changed (If-Match) or appeared (If-None-Match); 409: a concurrent conditional
# write to the same key won; 404 under If-Match: the object was deleted since it was read.
_CONFLICT_CODES = {"PreconditionFailed", "ConditionalRequestConflict", "NoSuchKey", "404", "409", "412"}


class StoreError(RuntimeError):
    """The state store could not read, write or delete a file; the message names the root and key."""


class RevisionConflict(StoreError):
    """A conditional write found the file at another revision than the one the caller expected."""


class UnreadableFile(StoreError):
    """A stored file is there but is not Parquet (truncated, overwritten, not written by the pipeline)."""


@dataclass(frozen=True)
class StoredFrame:
    """A stored file: its rows, the metadata written with it, and the revision it is at."""

    frame: pl.DataFrame
    metadata: dict[str, str]
    revision: str


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
        with self._errors("reading", key):
            if self._local:
                return self._read_local(key)
            return self._read_s3(key)

    def write(self, key: str, frame: pl.DataFrame, *, metadata: Mapping[str, str] | None = None) -> str:
        """Replace the file at `key` with `frame` atomically; return the new revision."""
        with self._errors("writing", key):
            if self._local:
                return self._write_local(key, frame, metadata)
            return self._write_s3(key, frame, metadata, {})

    def write_if(
        self,
        key: str,
        frame: pl.DataFrame,
        expected_revision: str | None,
        *,
        metadata: Mapping[str, str] | None = None,
    ) -> str:
        """Like `write`, but only while `key` is at `expected_revision` (None: while it is absent).

        Raises `RevisionConflict` otherwise. The check and the replacement are one step: S3
        evaluates `If-Match`/`If-None-Match` itself; locally a lock file next to the target
        serializes conditional writers on this host, which is all a local folder can be shared by.
        """
        with self._errors("writing", key):
            if self._local:
                with self._locked(key):
                    current = self._local_revision(key)
                    if current != expected_revision:
                        raise RevisionConflict(self._conflict_message(key, expected_revision))
                    return self._write_local(key, frame, metadata)
            condition = {"IfNoneMatch": "*"} if expected_revision is None else {"IfMatch": expected_revision}
            try:
                return self._write_s3(key, frame, metadata, condition)
            except ClientError as error:
                if _error_code(error) in _CONFLICT_CODES:
                    raise RevisionConflict(self._conflict_message(key, expected_revision)) from None
                raise

    def delete(self, key: str) -> None:
        """Remove the file at `key`; nothing happens when it is absent."""
        with self._errors("deleting", key):
            if self._local:
                (self._folder / _checked(key)).unlink(missing_ok=True)
            else:
                self._s3.delete_object(Bucket=self._bucket, Key=self._object_key(key))

    # --- local folder ------------------------------------------------------------------------------

    def _read_local(self, key: str) -> StoredFrame | None:
        try:
            # One open file for both the footer and the rows: a concurrent os.replace swaps the
            # directory entry, not the file already open, so revision and rows always match.
            with open(self._folder / _checked(key), "rb") as file:
                metadata = pl.read_parquet_metadata(file)
                file.seek(0)
                frame = pl.read_parquet(file)
        except FileNotFoundError:
            return None
        revision = metadata.pop(_REVISION_KEY, "")
        return StoredFrame(frame, _user_metadata(metadata), revision)

    def _local_revision(self, key: str) -> str | None:
        try:
            return pl.read_parquet_metadata(self._folder / _checked(key)).get(_REVISION_KEY, "")
        except FileNotFoundError:
            return None

    def _write_local(self, key: str, frame: pl.DataFrame, metadata: Mapping[str, str] | None) -> str:
        target = self._folder / _checked(key)
        target.parent.mkdir(parents=True, exist_ok=True)
        revision = uuid.uuid4().hex
        fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
        os.close(fd)
        try:
            frame.write_parquet(
                tmp,
                compression_level=_COMPRESSION_LEVEL,
                metadata={**(metadata or {}), _REVISION_KEY: revision},
            )
            os.replace(tmp, target)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return revision

    @contextmanager
    def _locked(self, key: str) -> Iterator[None]:
        target = self._folder / _checked(key)
        target.parent.mkdir(parents=True, exist_ok=True)
        with open(target.parent / f".{target.name}.lock", "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            yield

    # --- S3 ----------------------------------------------------------------------------------------

    def _object_key(self, key: str) -> str:
        key = _checked(key)
        return f"{self._prefix}/{key}" if self._prefix else key

    def _read_s3(self, key: str) -> StoredFrame | None:
        try:
            response = self._s3.get_object(Bucket=self._bucket, Key=self._object_key(key))
        except ClientError as error:
            if _error_code(error) in ("NoSuchKey", "404"):
                return None
            raise
        data = response["Body"].read()
        metadata = pl.read_parquet_metadata(data)
        return StoredFrame(pl.read_parquet(data), _user_metadata(metadata), response["ETag"])

    def _write_s3(
        self, key: str, frame: pl.DataFrame, metadata: Mapping[str, str] | None, condition: dict[str, str]
    ) -> str:
        buffer = io.BytesIO()
        frame.write_parquet(buffer, compression_level=_COMPRESSION_LEVEL, metadata=dict(metadata or {}))
        response = self._s3.put_object(
            Bucket=self._bucket, Key=self._object_key(key), Body=buffer.getvalue(), **condition
        )
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
        except pl.exceptions.PolarsError as error:
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


def _user_metadata(metadata: dict[str, str]) -> dict[str, str]:
    # Parquet writers add their own entries (the Arrow schema); callers get back what they wrote.
    return {k: v for k, v in metadata.items() if k not in ("ARROW:schema", _REVISION_KEY)}


def _error_code(error: ClientError) -> str:
    return str(error.response.get("Error", {}).get("Code", ""))
