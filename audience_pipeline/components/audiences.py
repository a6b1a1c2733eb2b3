"""Audiences: the YAML list of audiences and the snapshot asset partitioned by audience id.

Other components get the same audiences with `find_audiences(context)`: `routed` checks the
audiences a destination names, `routed_partitions_def` gives the partitions of its per-audience assets
(only those audiences, mapped to the snapshot's partitions of the same keys), `open_snapshot` /
`snapshot_state_key` give an audience's snapshot, and `query_stream` its query's result.
"""

import re
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Annotated

import dagster as dg
import duckdb
import polars as pl
from pydantic import AfterValidator, Field, field_validator

from audience_pipeline.components.schedules import check_cron, schedule_defs
from audience_pipeline.components.setting_errors import CheckedSettings, SettingError
from audience_pipeline.components.source import source_table_key
from audience_pipeline.components.source_changes import source_change_sensor
from audience_pipeline.components.ui import OWNERS, rejects_by_reason
from audience_pipeline.identity.countries import country_setting
from audience_pipeline.privacy import load_suppressed
from audience_pipeline.resources.duckdb_source import (
    DuckDBSource,
    QueryStream,
    source_query_errors,
    source_tables,
)
from audience_pipeline.resources.state_store import StateStore
from audience_pipeline.snapshot import MissingUserIdError, build_snapshot
from audience_pipeline.state import StoreError
from audience_pipeline.state.buckets import BucketedFile
from audience_pipeline.td_cron import check_timezone

SNAPSHOT_ASSET_KEY = dg.AssetKey("audience_snapshot")

# Ids become partition keys and file names, so they keep to characters that are safe in both.
_ID_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,99}")

# An audience query's rows are only set aside as they come (the identity engine works on buckets, not
# batches), so small batches cost nothing, and keep what DuckDB and Arrow hold small: streaming 1M
# rows of 48 columns peaks at ~0.7 GiB with batches of 50k rows, ~1.2 GiB with 250k.
_BATCH_ROWS = 50_000


class Audience(dg.Model):
    """One audience: its members are the rows `sql` returns over the source."""

    id: int | str = Field(
        description="Immutable id and partition key: a non-negative integer, or letters, digits, `_-.`."
    )
    name: str = Field(description="Internal name.")
    external_name: str | None = Field(
        default=None, description="Name sent to destinations in preference to `name`."
    )
    sql: str = Field(
        description="DuckDB SQL over the source; one row per member: `user_id` plus identity columns."
    )
    country_code: str | None = Field(
        default=None, description="Country for rows without a `country_code`; overrides the component's."
    )

    @field_validator("id", mode="before")
    @classmethod
    def _check_id(cls, value: object) -> object:
        if (
            isinstance(value, bool)
            or not isinstance(value, int | str)
            or not _ID_PATTERN.fullmatch(str(value))
        ):
            raise ValueError(
                f"audience id {value!r} is invalid: use a non-negative integer or up to 100 letters, "
                "digits, `_`, `-` and `.`, starting with a letter or digit"
            )
        return value

    @field_validator("name", "sql")
    @classmethod
    def _check_not_blank(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("must not be empty")
        return value

    @field_validator("country_code")
    @classmethod
    def _check_country(cls, value: str | None) -> str | None:
        return country_setting(value)

    @property
    def partition_key(self) -> str:
        """The audience's partition key: its id as text."""
        return str(self.id)

    @property
    def destination_name(self) -> str:
        """The name destinations show: `external_name` when set, else `name`."""
        return self.external_name or self.name


def check_audience_ids(value: list[int | str]) -> list[int | str]:
    """A destination's `audiences` setting, each id listed once (a ValueError for its validator)."""
    keys = [str(v) for v in value]
    repeated = sorted({k for k in keys if keys.count(k) > 1})
    if repeated:
        raise ValueError(f"audience ids listed more than once: {', '.join(repeated)}")
    return value


def _check_unique_ids(audiences: list[Audience]) -> list[Audience]:
    first_index: dict[str, int] = {}
    for index, audience in enumerate(audiences):
        earlier = first_index.setdefault(audience.partition_key, index)
        if earlier != index:
            raise ValueError(
                f"audiences[{index}].id: duplicate audience id {audience.partition_key!r}, "
                f"already used by audiences[{earlier}]; audience ids must be unique"
            )
    return audiences


class AudiencesComponent(CheckedSettings, dg.Component, dg.Model, dg.Resolvable):
    """Declares the audiences and builds `audience_snapshot`, one partition per audience.

    Each partition runs its audience's SQL through the `source` resource, normalizes and hashes
    the identities, and stores the snapshot as Parquet in the `state_store` resource.
    """

    audiences: Annotated[list[Audience], AfterValidator(_check_unique_ids)] = Field(
        min_length=1, description="The audiences; each id is a partition key."
    )
    country_code: str | None = Field(
        default=None, description="Country for rows without a `country_code`, unless the audience sets one."
    )
    refresh_schedule: str | None = Field(
        default=None,
        description="Cron schedule, as Treasure Data reads it, refreshing every audience's snapshot (e.g. "
        "`0 * * * *`, `@daily`); the deliveries follow. None or empty: snapshots refresh only when run.",
    )
    refresh_timezone: str = Field(
        default="UTC", description="IANA time zone `refresh_schedule` is read in (e.g. `Asia/Tokyo`)."
    )
    refresh_delay_seconds: int = Field(
        default=0,
        ge=0,
        description="Seconds each scheduled refresh starts after its time in `refresh_schedule`.",
    )
    refresh_on_source_change: bool = Field(
        default=True,
        description="Refresh an audience as soon as a source table its SQL reads changes (seed 001's "
        "streaming export); the deliveries follow. False: only `refresh_schedule` and runs by hand.",
    )
    source_check_interval_seconds: int = Field(
        # Dagster's sensor daemon looks at its sensors every 5 s, so that is the shortest interval it
        # keeps; a look costs ~30 ms of CPU (a connection, the catalog, file listings). The automation
        # sensor's 10 s come after it on a change's way to the destinations.
        default=5,
        ge=5,
        description="Seconds between two looks at the source tables' versions (file listings or "
        "`change_query`, never a scan) when `refresh_on_source_change` is on.",
    )

    @field_validator("country_code")
    @classmethod
    def _check_country(cls, value: str | None) -> str | None:
        return country_setting(value)

    @field_validator("refresh_schedule")
    @classmethod
    def _check_schedule(cls, value: str | None) -> str | None:
        return check_cron(value)

    @field_validator("refresh_timezone")
    @classmethod
    def _check_timezone(cls, value: str) -> str:
        return check_timezone(value)

    @property
    def partitions_def(self) -> dg.StaticPartitionsDefinition:
        """One partition per audience, keyed by audience id, in declaration order."""
        return dg.StaticPartitionsDefinition([a.partition_key for a in self.audiences])

    def routed(self, audience_ids: list[int | str], destination: str) -> set[str]:
        """The partition keys of the audiences a destination takes; ids the component does not declare
        fail the definitions, naming the destination and its `audiences` setting."""
        known = {a.partition_key for a in self.audiences}
        unknown = [str(a) for a in audience_ids if str(a) not in known]
        if unknown:
            raise SettingError(
                f"{destination}: `audiences` lists {', '.join(unknown)}, which the audiences component "
                f"does not declare (it has {', '.join(sorted(known))})"
            )
        return {str(a) for a in audience_ids}

    def routed_partitions_def(
        self, audience_ids: list[int | str], destination: str
    ) -> dg.StaticPartitionsDefinition:
        """The partitions of a destination's assets: the audiences it takes (`routed`), in declaration
        order, so that a destination taking every audience has exactly the snapshot's partitions."""
        keys = self.routed(audience_ids, destination)
        return dg.StaticPartitionsDefinition(
            [a.partition_key for a in self.audiences if a.partition_key in keys]
        )

    def audience(self, partition_key: str) -> Audience:
        """The audience whose partition key this is."""
        for audience in self.audiences:
            if audience.partition_key == partition_key:
                return audience
        raise KeyError(f"no audience with id {partition_key!r}")

    def build_defs(self, context: dg.ComponentLoadContext) -> dg.Definitions:
        """The snapshot asset, partitioned by audience id, the job refreshing every audience, its
        schedule and the sensor refreshing the audiences whose source tables change."""
        reads = {audience.partition_key: source_tables(audience.sql) for audience in self.audiences}
        tables = sorted({table for read in reads.values() for table in read})

        @dg.asset(
            key=SNAPSHOT_ASSET_KEY,
            partitions_def=self.partitions_def,
            group_name="transform",
            kinds={"duckdb", "polars", "parquet"},
            owners=OWNERS,
            deps=[source_table_key(table) for table in tables],
        )
        def audience_snapshot(
            context: dg.AssetExecutionContext, source: DuckDBSource, state_store: StateStore
        ) -> dg.MaterializeResult:
            """Current members of one audience, identities normalized and SHA-256 hashed.

            Runs the audience's SQL on the source, keeps one row per `user_id` (null and repeated
            ids are rejects), hashes the identities and replaces the audience's snapshot Parquet
            in the state store, a bucket of members at a time as the result streams in (memory does
            not grow with the audience). Metadata holds counts only.
            """
            audience = self.audience(context.partition_key)
            started = time.perf_counter()
            key = snapshot_state_key(audience.partition_key)
            country = audience.country_code or self.country_code
            try:
                with query_stream(source, audience) as result, state_store.store.replacing(key) as staged:
                    # People forgotten by an open deletion request (`privacy/forget`) stay out.
                    suppressed = load_suppressed(state_store.store)
                    snapshot = build_snapshot(result.frames, result.schema, staged.path, country, suppressed)
            except MissingUserIdError as e:
                raise dg.Failure(f"{_describe(audience)}: {e}; its `sql` must select `user_id`") from None
            except StoreError as e:
                raise dg.Failure(str(e)) from None
            path = state_store.path(key)
            rejects_total = sum(n for reasons in snapshot.rejects.values() for n in reasons.values())
            context.log.info(
                f"audience {audience.partition_key}: {snapshot.members} members from {snapshot.rows} rows, "
                f"{rejects_total} rejects"
            )
            return dg.MaterializeResult(
                metadata={
                    "audience_name": audience.name,
                    "rows": snapshot.rows,
                    "members": snapshot.members,
                    "dagster/row_count": snapshot.members,
                    "values_hashed": snapshot.values_hashed,
                    "values_by_field": dg.MetadataValue.json(snapshot.values_out),
                    "rejects_total": rejects_total,
                    **rejects_by_reason(snapshot.rejects),
                    "rejects": dg.MetadataValue.json(snapshot.rejects),
                    "dropped_columns": dg.MetadataValue.json(list(snapshot.dropped_columns)),
                    "suppressed": snapshot.suppressed,
                    "seconds": round(time.perf_counter() - started, 3),
                    "path": dg.MetadataValue.path(str(path)),
                }
            )

        job = dg.define_asset_job(
            "audience_snapshots",
            selection=[SNAPSHOT_ASSET_KEY],
            description="Refreshes audience snapshots: pick the audiences (partitions) to run.",
        )
        sensors = []
        if self.refresh_on_source_change:
            sensors.append(source_change_sensor(reads, self.source_check_interval_seconds, job))
        return dg.Definitions.merge(
            dg.Definitions(assets=[audience_snapshot], jobs=[job], sensors=sensors),
            schedule_defs(
                "audience_snapshots_schedule",
                self.refresh_schedule,
                self.refresh_timezone,
                self.refresh_delay_seconds,
                runs="Refreshes every audience's snapshot, one run per audience,",
                target=job,
                partition_keys=[a.partition_key for a in self.audiences],
            ),
        )


def _describe(audience: Audience) -> str:
    return f"audience {audience.partition_key!r} ({audience.name})"


@contextmanager
def query_stream(source: DuckDBSource, audience: Audience) -> Iterator[QueryStream]:
    """The audience query's result, read a batch of rows at a time inside the `with` block; its errors,
    while it runs or while it streams, name the audience but never quote source data."""
    with source_query_errors(_describe(audience), "sql"), source.stream(audience.sql, _BATCH_ROWS) as stream:
        yield QueryStream(stream.schema, _duckdb_errors(stream.frames))


def _duckdb_errors(frames: Iterator[pl.DataFrame]) -> Iterator[pl.DataFrame]:
    """`frames`, with DuckDB's errors while streaming raised as DuckDB's exceptions again.

    They reach us through Arrow's reader as an OSError whose message starts with DuckDB's kind
    ("Conversion Error: ..."), so `source_query_errors` would not know them.
    """
    try:
        yield from frames
    except OSError as error:
        kind = str(error).split(" Error:", 1)[0].replace(" ", "")
        exception = getattr(duckdb, f"{kind}Exception", None)
        if not (isinstance(exception, type) and issubclass(exception, duckdb.Error)):
            exception = duckdb.Error
        raise exception(str(error)) from None


@contextmanager
def open_snapshot(
    state_store: StateStore, audience: Audience, columns: list[str] | None = None
) -> Iterator[BucketedFile]:
    """An audience's current snapshot (its `columns`, default all), read a bucket at a time inside the
    `with` block; a run before its first snapshot fails saying what to do."""
    with state_store.store.open(snapshot_state_key(audience.partition_key)) as stored:
        if stored is None:
            raise dg.Failure(
                f"audience {audience.partition_key} has no snapshot yet: materialize audience_snapshot first"
            )
        yield BucketedFile(stored, columns=columns)


def snapshot_state_key(partition_key: str) -> str:
    """Where in the state store the snapshot of an audience partition is kept."""
    return f"snapshots/{partition_key}.parquet"


def find_audiences(context: dg.ComponentLoadContext) -> AudiencesComponent:
    """The project's audiences component, for components that deliver audiences."""
    found = context.component_tree.get_all_components(AudiencesComponent)
    if len(found) != 1:
        raise SettingError(
            f"expected exactly one {AudiencesComponent.__name__} instance under defs/, found {len(found)}"
        )
    return found[0]
