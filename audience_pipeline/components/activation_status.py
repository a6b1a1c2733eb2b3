"""The activation overview in the Dagster UI: the `activation_status` asset, and what the overview reads
from the Dagster instance (shared with `audience-pipeline status`).

The rows are built by `audience_pipeline.activation_status` (no Dagster); this module gives it the
project's targets (every audience at every membership destination, every AMC target) and what the
instance recorded about each: per asset and audience partition, the latest materialization that was not
a dry run and its metadata (the counts and match rates the destination assets record), the latest run
that materialized it or tried to and that run's status, and for AMC the job status sensor's observation
of where the job ended. A few queries per asset, not per partition.

The asset is materialized on demand (Materialize in the UI) or by the component's `refresh_schedule`;
it depends on every delivery asset, so the UI marks it stale once a delivery is newer than it.
"""

import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import dagster as dg
from pydantic import Field, field_validator

from audience_pipeline.activation_status import (
    MEMBERSHIP_KINDS,
    Recorded,
    StatusRow,
    Target,
    markdown_table,
    status_rows,
)
from audience_pipeline.components.ads_data_manager import AdsDataManagerComponent
from audience_pipeline.components.amc import AmazonMarketingCloudComponent
from audience_pipeline.components.audiences import SNAPSHOT_ASSET_KEY, find_audiences
from audience_pipeline.components.destination import DestinationComponent
from audience_pipeline.components.dsp import DspMobileAdIdsComponent
from audience_pipeline.components.firehose import FirehoseComponent
from audience_pipeline.components.schedules import check_cron, schedule_defs
from audience_pipeline.components.setting_errors import CheckedSettings
from audience_pipeline.components.ui import OWNERS
from audience_pipeline.membership.adm_delivery import dataset_name
from audience_pipeline.resources.state_store import StateStore
from audience_pipeline.state import ParquetStore
from audience_pipeline.td_cron import check_timezone

ACTIVATION_STATUS_KEY = dg.AssetKey("activation_status")
# Materializations read per query when looking past dry runs for the latest real delivery.
_PAGE = 20
_TABLE_SCHEMA = dg.TableSchema(
    columns=[
        dg.TableColumn("audience", "string", "Audience id (partition key), or the AMC target's name."),
        dg.TableColumn("name", "string", "The audience's or AMC target's name."),
        dg.TableColumn("destination", "string", "Stream, manager account, advertiser or AMC instance."),
        dg.TableColumn("kind", "string"),
        dg.TableColumn("delivered", "int", "Members the destination holds by its ledger (AMC: its figure)."),
        dg.TableColumn("pending", "int", "Changes waiting: queued for DSP, refused by the last delivery."),
        dg.TableColumn("rejected", "int", "Items the last delivery had refused."),
        dg.TableColumn("last_delivery_at", "string", "When the latest delivery run ended (UTC)."),
        dg.TableColumn("last_run_status", "string"),
        dg.TableColumn("last_run_id", "string"),
        dg.TableColumn("match_rate_pct", "float", "Amazon's match rate, where the delivery records one."),
        dg.TableColumn("state", "string", "Where the work stands."),
    ]
)


def activation_targets(context: dg.ComponentLoadContext) -> list[Target]:
    """The targets of the project `context` loads: each audience at each membership destination taking
    it (in the audiences' order, then the destinations'), then each AMC target."""
    tree = context.component_tree
    firehoses = tree.get_all_components(FirehoseComponent)
    managers = tree.get_all_components(AdsDataManagerComponent)
    advertisers = tree.get_all_components(DspMobileAdIdsComponent)
    # A project without membership destinations (AMC only) need not declare audiences.
    audiences = find_audiences(context).audiences if firehoses or managers or advertisers else []
    targets: list[Target] = []
    for audience in audiences:
        key, name = audience.partition_key, audience.name
        for stream in (c for c in firehoses if _takes(c, key)):
            path = _path(stream.asset_key)
            targets.append(Target(key, name, stream.label, "firehose", path, path, stream.destination))
        for manager in (c for c in managers if _takes(c, key)):
            path = _path(manager.asset_key)
            ledger = manager.ledger_destination(dataset_name(audience))
            targets.append(Target(key, name, manager.label, "ads_data_manager", path, path, ledger))
        for advertiser in (c for c in advertisers if _takes(c, key)):
            targets.append(
                Target(
                    key,
                    name,
                    advertiser.label,
                    "dsp",
                    _path(advertiser.flush_key),
                    _path(advertiser.queue_key),
                    advertiser.destination,
                    flush_interval_seconds=advertiser.upload_interval_seconds,
                    queue_size_limit_bytes=advertiser.queue_size_limit_bytes,
                )
            )
    for cloud in tree.get_all_components(AmazonMarketingCloudComponent):
        where = f"AMC {cloud.instance_id}"
        for upload in cloud.uploads:
            name = upload.dataset_id
            targets.append(Target(name, name, f"{where} upload", "amc_upload", _path(upload.asset_key)))
        for deletion in cloud.deletions:
            name = deletion.name
            targets.append(Target(name, name, f"{where} deletion", "amc_deletion", _path(deletion.asset_key)))
        for rule_based in cloud.audiences:
            name = rule_based.audience_name
            targets.append(
                Target(name, name, f"{where} audience", "amc_audience", _path(rule_based.asset_key))
            )
    return targets


def _takes(destination: DestinationComponent, audience: str) -> bool:
    """Whether a membership destination takes the audience (its `audiences` setting names it)."""
    return audience in {str(a) for a in destination.audiences}


def read_status(
    instance: dg.DagsterInstance, store: ParquetStore, targets: Sequence[Target], now: float
) -> list[StatusRow]:
    """The overview's rows: what `instance` recorded about each target and what `store` (the state
    store) holds, at `now`."""
    return status_rows(targets, recorded_deliveries(instance, targets), store, now)


def recorded_deliveries(instance: dg.DagsterInstance, targets: Sequence[Target]) -> dict[Target, Recorded]:
    """What `instance` recorded about each target's delivery asset partition (see `Recorded`)."""
    # Membership assets have a partition per audience; AMC targets' assets have none.
    partitioned = {
        path: t.kind in MEMBERSHIP_KINDS for t in targets for path in (t.asset, t.intake) if path is not None
    }
    keys = {path: dg.AssetKey(list(path)) for path in partitioned}
    latest = {path: _latest_deliveries(instance, keys[path], partitioned[path]) for path in keys}
    attempts = {path: _newer_attempts(instance, keys[path], partitioned[path]) for path in keys}
    snapshots = (
        instance.get_latest_storage_id_by_partition(
            SNAPSHOT_ASSET_KEY, dg.DagsterEventType.ASSET_MATERIALIZATION
        )
        if any(partitioned.values())
        else {}
    )
    run_ids = {r.run_id for records in latest.values() for r in records.values()}
    run_ids |= {run_id for runs in attempts.values() for run_id in runs.values()}
    runs = (
        {r.dagster_run.run_id: r for r in instance.get_run_records(dg.RunsFilter(run_ids=list(run_ids)))}
        if run_ids
        else {}
    )
    recorded = {}
    for target in targets:
        partition = target.audience if partitioned[target.asset] else None
        delivery = latest[target.asset].get(partition)
        run_id = attempts[target.asset].get(partition) or (delivery.run_id if delivery else None)
        run = runs.get(run_id) if run_id else None
        intake = latest[target.intake].get(partition) if target.intake else None
        snapshot = snapshots.get(target.audience)
        metadata = _plain(delivery) if delivery else None
        recorded[target] = Recorded(
            metadata=metadata,
            delivered_at=delivery.timestamp if delivery else None,
            run_id=run_id,
            run_status=run.dagster_run.status.value if run else None,
            run_at=_ended(run) if run else None,
            followed_up=_followed_up(instance, delivery, metadata) if delivery and metadata else None,
            snapshot_newer=intake is not None and snapshot is not None and snapshot > intake.storage_id,
        )
    return recorded


def _latest_deliveries(
    instance: dg.DagsterInstance, key: dg.AssetKey, partitioned: bool
) -> dict[str | None, dg.EventLogRecord]:
    """The latest materialization of `key` that was not a dry run, by partition (None: unpartitioned)."""
    if partitioned:
        ids = instance.get_latest_storage_id_by_partition(key, dg.DagsterEventType.ASSET_MATERIALIZATION)
        records = (
            instance.fetch_materializations(
                dg.AssetRecordsFilter(asset_key=key, storage_ids=list(ids.values())), limit=len(ids)
            ).records
            if ids
            else []
        )
    else:
        records = instance.fetch_materializations(key, limit=1).records
    latest = {}
    for record in records:
        partition = record.partition_key
        real = _before_dry_runs(instance, key, partition, record) if _dry_run(record) else record
        if real is not None:
            latest[partition] = real
    return latest


def _before_dry_runs(
    instance: dg.DagsterInstance, key: dg.AssetKey, partition: str | None, record: dg.EventLogRecord
) -> dg.EventLogRecord | None:
    """The latest materialization of the partition before `record` that was not a dry run."""
    before = record.storage_id
    while True:
        records = instance.fetch_materializations(
            dg.AssetRecordsFilter(
                asset_key=key,
                asset_partitions=[partition] if partition is not None else None,
                before_storage_id=before,
            ),
            limit=_PAGE,
        ).records
        real = next((r for r in records if not _dry_run(r)), None)
        if real is not None or len(records) < _PAGE:
            return real
        before = records[-1].storage_id


def _newer_attempts(
    instance: dg.DagsterInstance, key: dg.AssetKey, partitioned: bool
) -> dict[str | None, str]:
    """By partition (None: unpartitioned), the run that was to materialize `key` after its latest
    materialization and has not: one that failed, or one still going."""
    if partitioned:
        storage = instance.event_log_storage
        attempts = storage.get_latest_asset_partition_materialization_attempts_without_materializations(key)
        return {partition: run_id for partition, (run_id, _) in attempts.items()}
    planned = instance.get_latest_planned_materialization_info(key)
    if planned is None:
        return {}
    latest = instance.fetch_materializations(key, limit=1).records
    return {None: planned.run_id} if not latest or planned.storage_id > latest[0].storage_id else {}


def _followed_up(
    instance: dg.DagsterInstance, delivery: dg.EventLogRecord, metadata: Mapping[str, Any]
) -> Mapping[str, Any] | None:
    """The job status sensor's observation of where the AMC job of `delivery` ended, if it recorded one."""
    job = metadata.get("amc_job")
    if not job or job.get("final"):
        return None
    observations = instance.fetch_observations(
        dg.AssetRecordsFilter(asset_key=delivery.asset_key, after_storage_id=delivery.storage_id),
        limit=_PAGE,
        ascending=True,
    ).records
    for observation in observations:
        observed = _plain(observation)
        if observed.get("amc_ids") == job["ids"]:
            return observed
    return None


def _plain(record: dg.EventLogRecord) -> dict[str, Any]:
    """A materialization's or observation's metadata as plain values."""
    event = record.asset_materialization or record.asset_observation
    return {name: value.value for name, value in (event.metadata if event else {}).items()}


def _dry_run(record: dg.EventLogRecord) -> bool:
    materialization = record.asset_materialization
    value = materialization.metadata.get("dry_run") if materialization else None
    return bool(value is not None and value.value)


def _ended(run: dg.RunRecord) -> float:
    """When a run ended, else when it started or was made."""
    return run.end_time or run.start_time or run.create_timestamp.timestamp()


def _path(key: dg.AssetKey) -> tuple[str, ...]:
    return tuple(key.path)


def status_metadata(rows: Sequence[StatusRow]) -> dict[str, Any]:
    """The asset's metadata: the overview as a Markdown table and as a table of values, and totals the UI
    can plot over time."""
    membership = [row for row in rows if row.kind in MEMBERSHIP_KINDS]
    return {
        "overview": dg.MetadataValue.md(markdown_table(rows)),
        "rows": dg.MetadataValue.table(
            records=[dg.TableRecord(data=row.to_json()) for row in rows], schema=_TABLE_SCHEMA
        ),
        "members_delivered": sum(row.delivered or 0 for row in membership),
        "pending": sum(row.pending or 0 for row in membership),
        "rejected": sum(row.rejected or 0 for row in membership),
        "failed_deliveries": sum(row.last_run_status == "FAILURE" for row in rows),
    }


def build_status_asset(
    targets: Sequence[Target], clock: Callable[[], float] = time.time
) -> dg.AssetsDefinition:
    """The `activation_status` asset over `targets`, downstream of every delivery asset."""
    deps = _unique(dg.AssetKey(list(path)) for t in targets for path in (t.intake, t.asset) if path)

    @dg.asset(
        key=ACTIVATION_STATUS_KEY,
        deps=deps,
        group_name="monitor",
        kinds={"dagster", "parquet"},
        owners=OWNERS,
    )
    def activation_status(context: dg.AssetExecutionContext, state_store: StateStore) -> dg.MaterializeResult:
        """Every audience at every destination in one table: members delivered (held by the destination
        by its ledger), pending (a DSP queue's changes; elsewhere the last delivery's refused items,
        sent again next run), rejected, the last delivery run and its status, Amazon's match rate
        (Ads Data Manager's, DSP's) and where the work stands (the DSP queue's next flush, AMC job
        states).

        Reads this Dagster instance's latest materializations of the delivery assets and the state
        store's ledger manifests and DSP queues, never their members. The same table as
        `audience-pipeline status`; materialize it to refresh it."""
        rows = read_status(context.instance, state_store.store, targets, clock())
        return dg.MaterializeResult(metadata=status_metadata(rows))

    return activation_status


def _unique(keys: Iterable[dg.AssetKey]) -> list[dg.AssetKey]:
    return list(dict.fromkeys(keys))


class ActivationStatusComponent(CheckedSettings, dg.Component, dg.Model, dg.Resolvable):
    """The activation overview as an asset, `activation_status`: every audience at every destination
    of the project, as `audience-pipeline status` prints it. It runs when materialized (on demand in
    the UI) and, with `refresh_schedule`, on that schedule."""

    refresh_schedule: str | None = Field(
        default=None,
        description="Cron, as Treasure Data reads it (e.g. `30 * * * *`), refreshing the overview; none or "
        "empty: only when materialized by hand.",
    )
    refresh_timezone: str = Field(default="UTC", description="IANA time zone `refresh_schedule` is read in.")

    @field_validator("refresh_schedule")
    @classmethod
    def _check_schedule(cls, value: str | None) -> str | None:
        return check_cron(value)

    @field_validator("refresh_timezone")
    @classmethod
    def _check_timezone(cls, value: str) -> str:
        return check_timezone(value)

    def build_defs(self, context: dg.ComponentLoadContext) -> dg.Definitions:
        """The asset over the project's targets, and its schedule."""
        return dg.Definitions.merge(
            dg.Definitions(assets=[build_status_asset(activation_targets(context))]),
            schedule_defs(
                "activation_status_schedule",
                self.refresh_schedule,
                self.refresh_timezone,
                0,
                runs="Refreshes the activation overview",
                target=[ACTIVATION_STATUS_KEY],
            ),
        )
