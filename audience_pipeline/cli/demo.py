"""The demo: sample data, every audience run through the project's Dagster definitions, a report.

Everything happens in-process, in a working folder, with a throwaway Dagster instance: the user's
DAGSTER_HOME is never touched. AWS and the Amazon Ads API are the endpoints the environment names,
else a sandbox the demo starts. The pipeline runs twice: once on the sample data, once after
`apply_round_two` changed it, so the destinations show adds, removes and identity changes. The
report is one dict with a section per stage; a destination adds its section by reading its
assets' materialization metadata the way `_audience_report` does.
"""

import json
import logging
import os
import shutil
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import boto3
import dagster as dg
from cryptography.fernet import Fernet

from audience_pipeline.components.ads_data_manager import AdsDataManagerComponent
from audience_pipeline.components.amc import AmazonMarketingCloudComponent
from audience_pipeline.components.audiences import SNAPSHOT_ASSET_KEY
from audience_pipeline.components.dsp import DspMobileAdIdsComponent
from audience_pipeline.components.firehose import FirehoseComponent
from audience_pipeline.definitions import defs as load_definitions
from audience_pipeline.definitions import project_components
from audience_pipeline.membership.payload_crypto import LEDGER_KEY_ENV_VAR
from audience_pipeline.resources.amazon_ads import (
    API_URL_ENV_VAR,
    CLIENT_ID_ENV_VAR,
    CLIENT_SECRET_ENV_VAR,
    REFRESH_TOKEN_ENV_VAR,
    TOKEN_URL_ENV_VAR,
)
from audience_pipeline.resources.duckdb_source import DuckDBSource
from audience_pipeline.resources.state_store import StateStore
from audience_pipeline.sample_data import apply_round_two, write_sample_data
from audience_pipeline.sandbox.provision import provision_sandbox
from audience_pipeline.sandbox.server import start_sandbox

# Dagster's per-event debug lines would bury the summary; warnings and errors still show.
_QUIET_LOGS = {"loggers": {"console": {"config": {"log_level": "WARNING"}}}}


class DemoError(Exception):
    """The demo cannot run as the environment is set; the message says what to set, in one line."""


def run_demo(workdir: Path, profiles: int, progress: Callable[[str], None] = print) -> dict[str, Any]:
    """Generate `profiles` sample profiles in `workdir`, materialize every audience, report counts.

    `progress` receives one line per step; the returned report holds counts only, never PII.
    """
    _check_login_variables()
    started = time.perf_counter()
    workdir = workdir.resolve()
    source_path = write_sample_data(workdir / "data", profiles=profiles)
    progress(f"sample data: {profiles:,} profiles in {source_path}")
    state_root = workdir / "state"
    # A fresh state folder each time, so every run of the demo starts from no deliveries.
    shutil.rmtree(state_root, ignore_errors=True)

    streams = project_components(FirehoseComponent)
    managers = project_components(AdsDataManagerComponent)
    advertisers = project_components(DspMobileAdIdsComponent)
    clouds = project_components(AmazonMarketingCloudComponent)
    # Materialized together, in one run per audience partition. DSP changes go to a queue that a
    # sensor flushes every two hours; the demo flushes it straight after, as a separate run.
    per_audience = (
        SNAPSHOT_ASSET_KEY,
        *(destination.asset_key for destination in (*streams, *managers)),
        *(advertiser.queue_key for advertiser in advertisers),
    )
    flushes = tuple(advertiser.flush_key for advertiser in advertisers)
    with _endpoints(streams, clouds), _temporary_instance() as instance:
        # Loaded once the environment names the endpoints: the resources read it.
        definitions = load_definitions()
        resources = {
            **definitions.resources,
            "source": DuckDBSource(database=str(source_path)),
            "state_store": StateStore(root=str(state_root)),
        }
        first = _materialize_audiences(definitions, (per_audience, flushes), resources, instance, progress)
        changes = apply_round_two(source_path)
        progress(f"round two: source changed ({', '.join(f'{k} {n:,}' for k, n in changes.items())})")
        second = _materialize_audiences(definitions, (per_audience, flushes), resources, instance, progress)
        amc = _run_amc(definitions, clouds, resources, instance, progress)
    rounds = (first, second)
    return {
        "profiles": profiles,
        **_audience_report(second[SNAPSHOT_ASSET_KEY]),
        "firehose": _firehose_report([_of(found, streams) for found in rounds]),
        "adm": _adm_report([_of(found, managers) for found in rounds]),
        "dsp": _dsp_report([{key: found.get(key, []) for key in flushes} for found in rounds]),
        "amc": amc,
        "state": str(state_root),
        "seconds": round(time.perf_counter() - started, 2),
    }


def _check_login_variables() -> None:
    """An Amazon Ads API the environment names (an external sandbox, or Amazon) is signed in to with
    the Login with Amazon variables: all of them must be set."""
    if not os.environ.get(API_URL_ENV_VAR):
        return
    names = (CLIENT_ID_ENV_VAR, CLIENT_SECRET_ENV_VAR, REFRESH_TOKEN_ENV_VAR)
    missing = [name for name in names if not os.environ.get(name)]
    if missing:
        raise DemoError(
            f"{API_URL_ENV_VAR} is set, so the demo signs in with Login with Amazon: set "
            f"{', '.join(missing)} (or unset {API_URL_ENV_VAR} to run against a sandbox of its own)"
        )


def _of(
    found: Mapping[dg.AssetKey, list[dg.AssetMaterialization]], destinations: Iterable[Any]
) -> dict[dg.AssetKey, list[dg.AssetMaterialization]]:
    """The materializations of these destinations' assets."""
    return {d.asset_key: found.get(d.asset_key, []) for d in destinations}


@contextmanager
def _endpoints(
    streams: Iterable[FirehoseComponent], clouds: Iterable[AmazonMarketingCloudComponent]
) -> Iterator[None]:
    """Where the destinations send: the endpoints `AWS_ENDPOINT_URL` and `AMAZON_ADS_API_URL` name (a
    sandbox or the real services someone runs), else a sandbox started here for whichever is unset,
    with throwaway Login with Amazon credentials; each Firehose stream and its bucket made, and each
    AMC upload bucket; a throwaway ledger key unless one is set. The environment is restored
    afterwards."""
    # One access-log line per API call would bury the progress lines.
    logging.getLogger("werkzeug").setLevel(logging.WARNING)
    own_aws, own_ads = not os.environ.get("AWS_ENDPOINT_URL"), not os.environ.get(API_URL_ENV_VAR)
    sandbox = start_sandbox() if own_aws or own_ads else None
    names: dict[str, str] = {}
    if own_aws:
        names.update({k: v for k, v in sandbox.env().items() if k.startswith("AWS_")})
    if own_ads:
        names.update({API_URL_ENV_VAR: sandbox.ads_url, TOKEN_URL_ENV_VAR: sandbox.token_url})
        names.update(dict.fromkeys((CLIENT_ID_ENV_VAR, CLIENT_SECRET_ENV_VAR, REFRESH_TOKEN_ENV_VAR), "demo"))
    if not os.environ.get(LEDGER_KEY_ENV_VAR):
        names[LEDGER_KEY_ENV_VAR] = Fernet.generate_key().decode()
    try:
        with _environ(names):
            endpoint = os.environ["AWS_ENDPOINT_URL"]
            s3, firehose = (boto3.client(kind, endpoint_url=endpoint) for kind in ("s3", "firehose"))
            provision_sandbox(s3, firehose, streams, clouds)
            yield
    finally:
        if sandbox is not None:
            sandbox.stop()


@contextmanager
def _environ(values: Mapping[str, str]) -> Iterator[None]:
    """These environment variables set meanwhile; each one's earlier value (or absence) restored."""
    previous = {name: os.environ.get(name) for name in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for name, value in previous.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def _materialize_audiences(
    definitions: dg.Definitions,
    steps: Iterable[Iterable[dg.AssetKey]],
    resources: Mapping[str, Any],
    instance: dg.DagsterInstance,
    progress: Callable[[str], None],
) -> dict[dg.AssetKey, list[dg.AssetMaterialization]]:
    """For each audience partition, in order, the runs of each step (a group of assets materialized
    together) that take the audience; their materializations by key."""
    steps = [[definitions.get_assets_def(key) for key in step] for step in steps]
    partition_keys = steps[0][0].partitions_def.get_partition_keys()
    found: dict[dg.AssetKey, list[dg.AssetMaterialization]] = defaultdict(list)
    for key in partition_keys:
        done: list[dg.AssetsDefinition] = []
        for assets in (run for step in steps for run in _runs(step, key)):
            result = dg.materialize(
                assets, resources=resources, partition_key=key, instance=instance, run_config=_QUIET_LOGS
            )
            for event in result.get_asset_materialization_events():
                materialization = event.materialization
                found[materialization.asset_key].append(materialization)
            done.extend(assets)
        progress(f"audience {key}: materialized {', '.join(a.key.to_user_string() for a in done)}")
    return found


def _runs(assets: Iterable[dg.AssetsDefinition], partition_key: str) -> list[list[dg.AssetsDefinition]]:
    """The assets that have this partition (a destination has only the audiences routed to it), in one
    run per partitions definition, as Dagster runs them; in order of appearance."""
    runs: dict[dg.PartitionsDefinition, list[dg.AssetsDefinition]] = {}
    for asset in assets:
        if asset.partitions_def.has_partition_key(partition_key):
            runs.setdefault(asset.partitions_def, []).append(asset)
    return list(runs.values())


def _run_amc(
    definitions: dg.Definitions,
    clouds: Iterable[AmazonMarketingCloudComponent],
    resources: Mapping[str, Any],
    instance: dg.DagsterInstance,
    progress: Callable[[str], None],
) -> dict[str, list[dict[str, Any]]]:
    """Every AMC target run in turn (uploads, then deletions, then audiences) and followed to its
    final state by the job status sensor, ticked here as the Dagster daemon would; the report of
    where each ended."""
    report: dict[str, list[dict[str, Any]]] = {"uploads": [], "deletions": [], "audiences": []}
    for cloud in clouds:
        sensor = definitions.resolve_sensor_def(cloud.sensor_name)
        cursor = None
        for stage, targets in (
            ("uploads", cloud.uploads),
            ("deletions", cloud.deletions),
            ("audiences", cloud.audiences),
        ):
            if not targets:
                continue
            assets = [definitions.get_assets_def(target.asset_key) for target in targets]
            result = dg.materialize(assets, resources=resources, instance=instance, run_config=_QUIET_LOGS)
            final = {
                e.asset_key: e.materialization.metadata for e in result.get_asset_materialization_events()
            }
            cursor, observed = _follow(sensor, cursor, resources, instance)
            final.update(observed)
            for target in targets:
                metadata = {k: getattr(v, "value", v) for k, v in final[target.asset_key].items()}
                report[stage].append(_amc_entry(stage, target, metadata))
            progress(
                f"amc {stage}: " + ", ".join(f"{e.get('status')}" for e in report[stage][-len(targets) :])
            )
    return report


def _follow(
    sensor: dg.SensorDefinition,
    cursor: str | None,
    resources: Mapping[str, Any],
    instance: dg.DagsterInstance,
) -> tuple[str | None, dict[dg.AssetKey, Mapping[str, Any]]]:
    """Tick the AMC job status sensor until no job is left running; its cursor and what it observed."""
    observed: dict[dg.AssetKey, Mapping[str, Any]] = {}
    deadline = time.monotonic() + _AMC_TIMEOUT_SECONDS
    while True:
        context = dg.build_sensor_context(
            instance=instance, cursor=cursor, resources={key: resources[key] for key in ("amazon_ads", "s3")}
        )
        result = sensor.evaluate_tick(context)
        cursor = result.cursor
        for event in result.asset_events:
            if isinstance(event, dg.AssetObservation):
                observed[event.asset_key] = event.metadata
        if not json.loads(cursor or "{}").get("pending"):
            return cursor, observed
        if time.monotonic() > deadline:
            raise TimeoutError(f"AMC work still running after {_AMC_TIMEOUT_SECONDS} s")
        time.sleep(0.5)


def _amc_entry(stage: str, target: Any, metadata: Mapping[str, Any]) -> dict[str, Any]:
    """One line of the `amc` report section."""
    # No AMC status: the query gave nothing to send, so nothing was started.
    status = metadata.get("amc_status", "NOTHING_SENT")
    if stage == "uploads":
        return {
            "dataset_id": target.dataset_id,
            "status": status,
            "rows": metadata.get("output_row_count", 0),
        }
    if stage == "deletions":
        return {"name": target.name, "status": status, "identities": metadata.get("identity_count", 0)}
    return {"name": target.audience_name, "status": status, "audience_count": metadata.get("audience_count")}


_AMC_TIMEOUT_SECONDS = 600
_FIREHOSE_COUNTS = ("sent", "added", "removed", "identity_changed")


def _firehose_report(rounds: Iterable[Mapping[dg.AssetKey, list[dg.AssetMaterialization]]]) -> dict[str, Any]:
    """Messages delivered and changes found by every Firehose delivery, per round and in total."""
    per_round = []
    for found in rounds:
        sums = dict.fromkeys(_FIREHOSE_COUNTS, 0)
        for materialization in (m for ms in found.values() for m in ms):
            for name in _FIREHOSE_COUNTS:
                sums[name] += materialization.metadata[name].value
        per_round.append({"messages_delivered": sums.pop("sent"), **sums})
    return {name: sum(r[name] for r in per_round) for name in per_round[0]} | {"rounds": per_round}


def _adm_report(rounds: Sequence[Mapping[dg.AssetKey, list[dg.AssetMaterialization]]]) -> dict[str, Any]:
    """Members sent and refused over every round, and Amazon's match rate after the last (mean over
    audiences, percent)."""
    sent = [m for found in rounds for ms in found.values() for m in ms if not m.metadata["dry_run"].value]
    last = [
        m.metadata["match_rate_pct"].value
        for ms in rounds[-1].values()
        for m in ms
        if "match_rate_pct" in m.metadata
    ]
    return {
        "members_sent": sum(m.metadata["sent"].value for m in sent),
        "rejected": sum(m.metadata["rejected"].value for m in sent),
        "match_rate_pct": round(sum(last) / len(last), 2) if last else None,
    }


def _dsp_report(rounds: Sequence[Mapping[dg.AssetKey, list[dg.AssetMaterialization]]]) -> dict[str, Any]:
    """Patches sent and flushes made over every round, and DSP's match rate after the last flush of
    each audience (mean over audiences, percent)."""
    sent = [m for found in rounds for ms in found.values() for m in ms if not m.metadata["dry_run"].value]
    last = {m.partition: m.metadata["match_rate_pct"].value for m in sent if "match_rate_pct" in m.metadata}
    return {
        "patches_sent": sum(m.metadata["sent"].value for m in sent),
        "flushes": len(sent),
        "match_rate_pct": round(sum(last.values()) / len(last), 2) if last else None,
    }


@contextmanager
def _temporary_instance() -> Iterator[dg.DagsterInstance]:
    """A throwaway Dagster instance, with DAGSTER_HOME pointing at it meanwhile so that nothing
    Dagster writes on the side (telemetry, logs) lands in the user's home either."""
    with tempfile.TemporaryDirectory(prefix="dagster_home_") as home:
        Path(home, "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
        with _environ({"DAGSTER_HOME": home}), dg.DagsterInstance.get() as instance:
            yield instance


def _audience_report(snapshots: Iterable[dg.AssetMaterialization]) -> dict[str, Any]:
    """`audiences` (id, name, members) and `identity` (values hashed, rejects) from snapshot metadata."""
    audiences = []
    values_hashed = 0
    by_reason: dict[str, int] = defaultdict(int)
    by_field: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    for snapshot in snapshots:
        metadata = snapshot.metadata
        audiences.append(
            {
                "id": snapshot.partition,
                "name": metadata["audience_name"].value,
                "members": metadata["members"].value,
            }
        )
        values_hashed += metadata["values_hashed"].value
        for field, reasons in metadata["rejects"].value.items():
            for reason, n in reasons.items():
                by_reason[reason] += n
                by_field[field][reason] += n
    return {
        "audiences": audiences,
        "identity": {
            "values_hashed": values_hashed,
            "rejects": dict(sorted(by_reason.items())),
            "rejects_by_field": {field: dict(sorted(r.items())) for field, r in sorted(by_field.items())},
        },
    }


def format_report(report: Mapping[str, Any]) -> str:
    """The report as a few lines for a person."""
    lines = [f"Profiles: {report['profiles']:,}", "Audiences:"]
    width = max(len(a["id"]) for a in report["audiences"])
    lines += [f"  {a['id']:<{width}}  {a['members']:>9,}  {a['name']}" for a in report["audiences"]]
    identity = report["identity"]
    rejects = ", ".join(f"{reason} {n:,}" for reason, n in identity["rejects"].items()) or "none"
    firehose, adm, dsp = report["firehose"], report["adm"], report["dsp"]
    lines += [
        f"Identity: {identity['values_hashed']:,} values hashed; rejects: {rejects}",
        f"Firehose (two rounds): {firehose['messages_delivered']:,} messages delivered; "
        f"{firehose['added']:,} added, {firehose['removed']:,} removed, "
        f"{firehose['identity_changed']:,} identity changed",
        f"Ads Data Manager: {adm['members_sent']:,} members sent, {adm['rejected']:,} rejected; "
        f"match rate {_shown(adm['match_rate_pct'], '{:.2f} %')}",
        f"DSP mobile ad IDs: {dsp['patches_sent']:,} patches sent in {dsp['flushes']:,} flushes; "
        f"match rate {_shown(dsp['match_rate_pct'], '{:.2f} %')}",
        *_amc_lines(report["amc"]),
        f"Snapshots (hashed, Parquet): {report['state']}",
        f"Done in {report['seconds']:.1f} s",
    ]
    return "\n".join(lines)


def _shown(rate: float | None, form: str) -> str:
    """A match rate as `form` shows it; Amazon reports none before it has matched anything."""
    return "not reported" if rate is None else form.format(rate)


def _amc_lines(amc: Mapping[str, list[dict[str, Any]]]) -> list[str]:
    """The `amc` section as lines: each upload, deletion and audience with its final state."""
    lines = [f"AMC upload {u['dataset_id']}: {u['status']}, {u['rows']:,} rows" for u in amc["uploads"]]
    lines += [
        f"AMC deletion {d['name']}: {d['status']}, {d['identities']:,} identities" for d in amc["deletions"]
    ]
    lines += [
        f"AMC audience {a['name']}: {a['status']}, {a['audience_count'] or 0:,} users"
        for a in amc["audiences"]
    ]
    return lines
