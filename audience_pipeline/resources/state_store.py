"""Where the pipeline keeps what it computed and delivered: Parquet files under one root."""

import os
import tempfile
from pathlib import Path

import dagster as dg
import polars as pl
from pydantic import Field

STATE_ENV_VAR = "AUDIENCE_PIPELINE_STATE"
DEFAULT_STATE = ".audience_state"


class StateStore(dg.ConfigurableResource):
    """A folder of Parquet files addressed by relative keys such as `snapshots/42.parquet`.

    Every write goes to a temporary file in the target's folder and is moved into place with
    `os.replace`, so a reader sees the old file or the new one, never a partial one.
    """

    root: str = Field(description="Folder that holds the state files; created on first write.")

    def path(self, key: str) -> Path:
        """The file a key is stored in."""
        return Path(self.root) / key

    def write_parquet(self, key: str, frame: pl.DataFrame) -> Path:
        """Replace the file at `key` with `frame`, atomically; return its path."""
        target = self.path(key)
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
        os.close(fd)
        try:
            frame.write_parquet(tmp)
            os.replace(tmp, target)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return target

    def read_parquet(self, key: str) -> pl.DataFrame | None:
        """The frame stored at `key`, or None when nothing was stored there yet."""
        target = self.path(key)
        return pl.read_parquet(target) if target.exists() else None
