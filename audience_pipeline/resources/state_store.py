"""Where the pipeline keeps what it computed and delivered: Parquet files under one root."""

from pathlib import Path

from pydantic import Field, PrivateAttr

from audience_pipeline.resources.aws import S3Resource
from audience_pipeline.state import ParquetStore

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
