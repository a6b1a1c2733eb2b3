"""The demo: sample data, every audience run through the project's Dagster definitions, a report.

Everything happens in-process, in a working folder, with a throwaway Dagster instance: the user's
DAGSTER_HOME is never touched. The report is one dict with a section per stage; a destination
adds its section by reading its assets' materialization metadata the way `_audience_report` does.
"""

import os
import shutil
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import dagster as dg

from audience_pipeline.components.audiences import SNAPSHOT_ASSET_KEY
from audience_pipeline.definitions import defs as load_definitions
from audience_pipeline.resources.duckdb_source import DuckDBSource
from audience_pipeline.resources.state_store import StateStore
from audience_pipeline.sample_data import write_sample_data

# Materialized together, in one run per audience partition; destinations add their assets here.
PER_AUDIENCE_ASSETS: tuple[dg.AssetKey, ...] = (SNAPSHOT_ASSET_KEY,)

# Dagster's per-event debug lines would bury the summary; warnings and errors still show.
_QUIET_LOGS = {"loggers": {"console": {"config": {"log_level": "WARNING"}}}}


def run_demo(workdir: Path, profiles: int, progress: Callable[[str], None] = print) -> dict[str, Any]:
    """Generate `profiles` sample profiles in `workdir`, materialize every audience, report counts.

    `progress` receives one line per step; the returned report holds counts only, never PII.
    """
    started = time.perf_counter()
    workdir = workdir.resolve()
    source_path = write_sample_data(workdir / "data", profiles=profiles)
    progress(f"sample data: {profiles:,} profiles in {source_path}")
    state_root = workdir / "state"
    # A fresh state folder each time, so every run of the demo starts from no deliveries.
    shutil.rmtree(state_root, ignore_errors=True)

    definitions = load_definitions()
    resources = {
        **definitions.resources,
        "source": DuckDBSource(database=str(source_path)),
        "state_store": StateStore(root=str(state_root)),
    }
    materializations = _materialize_audiences(definitions, resources, progress)
    return {
        "profiles": profiles,
        **_audience_report(materializations[SNAPSHOT_ASSET_KEY]),
        "state": str(state_root),
        "seconds": round(time.perf_counter() - started, 2),
    }


def _materialize_audiences(
    definitions: dg.Definitions, resources: Mapping[str, Any], progress: Callable[[str], None]
) -> dict[dg.AssetKey, list[dg.AssetMaterialization]]:
    """Run the per-audience assets once per audience partition; their materializations by key."""
    assets = [definitions.get_assets_def(key) for key in PER_AUDIENCE_ASSETS]
    partition_keys = assets[0].partitions_def.get_partition_keys()
    found: dict[dg.AssetKey, list[dg.AssetMaterialization]] = defaultdict(list)
    with _temporary_instance() as instance:
        for key in partition_keys:
            result = dg.materialize(
                assets, resources=resources, partition_key=key, instance=instance, run_config=_QUIET_LOGS
            )
            for event in result.get_asset_materialization_events():
                materialization = event.materialization
                found[materialization.asset_key].append(materialization)
            progress(
                f"audience {key}: materialized {', '.join(k.to_user_string() for k in PER_AUDIENCE_ASSETS)}"
            )
    return found


@contextmanager
def _temporary_instance() -> Iterator[dg.DagsterInstance]:
    """A throwaway Dagster instance, with DAGSTER_HOME pointing at it meanwhile so that nothing
    Dagster writes on the side (telemetry, logs) lands in the user's home either."""
    previous = os.environ.get("DAGSTER_HOME")
    with tempfile.TemporaryDirectory(prefix="dagster_home_") as home:
        Path(home, "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
        os.environ["DAGSTER_HOME"] = home
        try:
            with dg.DagsterInstance.get() as instance:
                yield instance
        finally:
            if previous is None:
                del os.environ["DAGSTER_HOME"]
            else:
                os.environ["DAGSTER_HOME"] = previous


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
    lines += [
        f"Identity: {identity['values_hashed']:,} values hashed; rejects: {rejects}",
        f"Snapshots (hashed, Parquet): {report['state']}",
        f"Done in {report['seconds']:.1f} s",
    ]
    return "\n".join(lines)
