"""Change-driven refresh (seed 001's streaming export): audiences follow their source tables' changes.

A sensor reads the version of every table an audience's SQL reads (`audience_pipeline.source_changes`:
file listings and a `change_query` where set, never a scan) and requests an `audience_snapshot` run
for exactly the audiences that read a table whose version changed; the deliveries follow the
snapshots as they always do (eager automation). Its cursor holds the versions it saw last, so an
unchanged source requests nothing, and a change is seen once. The versions it sees are recorded as
observations of the tables' assets, whose data versions the UI shows.
"""

import json
from collections.abc import Mapping
from typing import Any

import dagster as dg

# Not exported by `dagster`: the tag an observation's data version is recorded under.
from dagster._core.definitions.data_version import DATA_VERSION_TAG

from audience_pipeline.components.source import CHANGE_QUERY_METADATA, source_table_key, table_version
from audience_pipeline.resources.duckdb_source import DuckDBSource
from audience_pipeline.source_changes import audiences_reading, changed_tables

SENSOR_NAME = "audience_snapshots_on_source_change"
# Which of an audience's tables changed, on the run the change requested.
CHANGED_TABLES_TAG = "audience_pipeline/changed_tables"


def source_change_sensor(
    reads: Mapping[str, list[str]],
    interval_seconds: int,
    job: Any,
) -> dg.SensorDefinition:
    """The sensor running `job` (the snapshots' asset job) for each audience (partition key in `reads`,
    with the tables its SQL reads) whose tables changed, checking every `interval_seconds`."""
    tables = sorted({table for read in reads.values() for table in read})

    @dg.sensor(
        name=SENSOR_NAME,
        job=job,
        minimum_interval_seconds=interval_seconds,
        # Seed 001's export is "always on": the refresh follows the source from the first `dg dev`.
        default_status=dg.DefaultSensorStatus.RUNNING,
        description="Refreshes the audiences whose source tables changed (versions from file listings or "
        f"`change_query`), checking every {interval_seconds} s; their deliveries follow.",
    )
    def refresh_on_source_change(
        context: dg.SensorEvaluationContext, source: DuckDBSource
    ) -> dg.SensorResult:
        """One run per audience reading a table whose version differs from the last one seen."""
        queries = change_queries(context.repository_def, tables)
        with source.catalog() as catalog:
            versions = {table: table_version(catalog, table, queries.get(table)) for table in tables}
        previous = json.loads(context.cursor) if context.cursor else {}
        changed = changed_tables(previous, versions)
        refresh = audiences_reading(reads, changed)
        cursor = json.dumps(versions, sort_keys=True)
        # A table seen for the first time has no earlier version to compare: its version is recorded.
        observed = sorted(changed | (versions.keys() - previous.keys()))
        events = [
            dg.AssetObservation(
                source_table_key(table),
                tags={DATA_VERSION_TAG: versions[table]},
                metadata={"audiences_refreshed": [a for a in refresh if table in reads[a]]},
            )
            for table in observed
        ]
        if not refresh:
            reason = "no table an audience reads changed" if previous else "first versions recorded"
            return dg.SensorResult(skip_reason=reason, cursor=cursor, asset_events=events)
        # No run key: a table can go back to a version seen before (a file restored), and Dagster
        # would skip a run whose key it has seen.
        run_requests = [
            dg.RunRequest(
                partition_key=audience,
                tags={CHANGED_TABLES_TAG: ",".join(sorted(changed.intersection(reads[audience])))},
            )
            for audience in refresh
        ]
        context.log.info(f"changed: {', '.join(sorted(changed))}; refreshing {', '.join(refresh)}")
        return dg.SensorResult(run_requests=run_requests, cursor=cursor, asset_events=events)

    return refresh_on_source_change


def change_queries(repository: dg.RepositoryDefinition, tables: list[str]) -> dict[str, str]:
    """The `change_query` of each of `tables` whose asset has one (the source component puts it in the
    asset's metadata, so that it is set in one place, next to the table's declaration)."""
    graph = repository.asset_graph
    queries = {}
    for table in tables:
        key = source_table_key(table)
        if graph.has(key) and CHANGE_QUERY_METADATA in graph.get(key).metadata:
            queries[table] = graph.get(key).metadata[CHANGE_QUERY_METADATA]
    return queries
