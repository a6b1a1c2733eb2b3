"""The one place resources are wired; every asset gets its resources from here."""

import os

import dagster as dg

from audience_pipeline.resources.duckdb_source import DEFAULT_SOURCE, SOURCE_ENV_VAR, DuckDBSource
from audience_pipeline.resources.state_store import DEFAULT_STATE, STATE_ENV_VAR, StateStore


@dg.definitions
def resources() -> dg.Definitions:
    """`source` (read-only DuckDB) and `state_store` (Parquet state), located by env vars."""
    return dg.Definitions(
        resources={
            "source": DuckDBSource(database=os.environ.get(SOURCE_ENV_VAR, DEFAULT_SOURCE)),
            "state_store": StateStore(root=os.environ.get(STATE_ENV_VAR, DEFAULT_STATE)),
        }
    )
