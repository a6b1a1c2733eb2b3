"""The state store: Parquet files under a local folder or `s3://bucket/prefix`, each replaced atomically,
with conditional writes; snapshots, ledgers, DSP queues and DSP audience records live there (no Dagster)."""

from audience_pipeline.state.store import (
    ParquetStore,
    RevisionConflict,
    StoredFrame,
    StoreError,
    UnreadableFile,
)

__all__ = ["ParquetStore", "RevisionConflict", "StoreError", "StoredFrame", "UnreadableFile"]
