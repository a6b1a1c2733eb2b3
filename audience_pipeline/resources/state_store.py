"""Where the pipeline keeps what it computed and delivered: Parquet files under one root."""

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import dagster as dg
import polars as pl
from pydantic import Field, PrivateAttr

from audience_pipeline.resources.aws import S3Resource
from audience_pipeline.state import ParquetStore, StoreError

STATE_ENV_VAR = "AUDIENCE_PIPELINE_STATE"
DEFAULT_STATE = ".audience_state"


class StateStore(S3Resource):
    """Parquet files addressed by relative keys such as `snapshots/42.parquet`, under a local folder or
    `s3://bucket/prefix` (see `ParquetStore`); a reader sees the old file or the new one, never a partial
    one.

    For S3, its client is made as every AWS client of the pipeline is: this resource is an `S3Resource`
    (`resources/aws.py`, on dagster-aws's `ResourceWithBoto3Configuration`), so region, endpoint, profile,
    keys and a role to assume are its fields, and `get_client` makes the client `ParquetStore` uses.
    Unset, boto3's default chain and `AWS_ENDPOINT_URL` apply, so the sandbox can stand in.
    """

    root: str = Field(
        description="Folder (created on first write) or `s3://bucket/prefix` that holds the state files."
    )
    _store: ParquetStore | None = PrivateAttr(default=None)

    @property
    def store(self) -> ParquetStore:
        """The Parquet store under `root`, for components that keep more than snapshots (ledgers)."""
        if self._store is None:
            self._store = ParquetStore(self.root, s3_client=self.get_client)
        return self._store

    def path(self, key: str) -> Path | str:
        """Where a key is stored: a local path, or an `s3://` URI."""
        uri = self.store.uri(key)
        return uri if uri.startswith("s3://") else Path(uri)

    def write_parquet(self, key: str, frame: pl.DataFrame) -> Path | str:
        """Replace the file at `key` with `frame`, atomically; return where it is stored."""
        with _as_failure():
            self.store.write(key, frame)
        return self.path(key)

    def read_parquet(self, key: str) -> pl.DataFrame | None:
        """The frame stored at `key`, or None when nothing was stored there yet."""
        with _as_failure():
            return self.store.read(key)


@contextmanager
def _as_failure() -> Iterator[None]:
    """A store error fails the run with its message alone: it names the root, the key and the cause."""
    try:
        yield
    except StoreError as error:
        raise dg.Failure(str(error)) from None
