import subprocess
import sys
from datetime import datetime
from pathlib import Path

import dagster as dg
import pytest

from audience_pipeline.components.audiences import SNAPSHOT_ASSET_KEY
from audience_pipeline.definitions import defs

PROJECT_ROOT = Path(__file__).parents[1]


def test_definitions_load_with_one_snapshot_asset_partitioned_by_audience():
    definitions = defs()
    dg.Definitions.validate_loadable(definitions)

    snapshot = definitions.get_assets_def(SNAPSHOT_ASSET_KEY)
    assert snapshot.partitions_def.get_partition_keys() == [
        "1001",
        "1002",
        "newsletter_subscribers",
        "app_users_90d",
    ]
    spec = next(iter(snapshot.specs))
    assert spec.description
    assert spec.group_name == "transform"
    assert spec.kinds == {"duckdb", "polars", "parquet"}
    assert spec.owners
    assert {"source", "state_store"} <= snapshot.required_resource_keys


def test_every_asset_explains_itself_in_the_ui():
    definitions = defs()
    graph = definitions.resolve_asset_graph()
    groups = {}
    for key in graph.get_all_asset_keys():
        node = graph.get(key)
        assert node.description, f"{key.to_user_string()} has no description"
        assert node.kinds and node.owners, f"{key.to_user_string()} lacks kinds or owners"
        groups.setdefault(node.group_name, set()).add(key.to_user_string())
    assert set(groups) == {"ingest", "transform", "deliver"}
    assert groups["ingest"] == {"source/profiles", "source/events", "source/purchases"}
    assert {"audience_snapshot", "dsp/advertiser_5551234567890"} <= groups["transform"]
    destinations = ("firehose/", "ads_data_manager/", "dsp/", "amc/")
    assert all(key.startswith(destinations) for key in groups["deliver"])
    # The graph starts at the source: the snapshot and the AMC uploads depend on the tables they read.
    assert dg.AssetKey(["source", "events"]) in graph.get(SNAPSHOT_ASSET_KEY).parent_keys
    assert graph.get(dg.AssetKey(["amc", "dataset", "sample_purchases"])).parent_keys == {
        dg.AssetKey(["source", "purchases"]),
        dg.AssetKey(["source", "profiles"]),
    }


def test_a_job_per_destination_and_the_amc_schedules_are_defined():
    definitions = defs()
    jobs = {job.name for job in definitions.resolve_all_job_defs()}
    assert {
        "audience_snapshots",
        "firehose__audience_changes_delivery",
        "dsp__advertiser_5551234567890_delivery",
        "amc_amcsandbox01",
    } <= jobs
    assert any(name.startswith("ads_data_manager__") and name.endswith("_delivery") for name in jobs)
    schedules = {s.name: s for s in definitions.schedules}
    assert schedules["amc_dataset_sample_customer_identities_schedule"].cron_schedule == "0 3 * * *"
    assert schedules["amc_dataset_sample_customer_identities_schedule"].default_status == (
        dg.DefaultScheduleStatus.RUNNING
    )


def test_the_refresh_schedule_asks_for_one_run_per_audience_once_per_tick():
    definitions = defs()
    schedule = definitions.resolve_schedule_def("audience_snapshots_schedule")
    assert schedule.cron_schedule == "0 * * * *"
    assert schedule.default_status == dg.DefaultScheduleStatus.RUNNING
    with dg.build_schedule_context(
        scheduled_execution_time=datetime(2026, 1, 1, 3), repository_def=definitions.get_repository_def()
    ) as context:
        requests = schedule.evaluate_tick(context).run_requests
    assert [(r.partition_key, r.run_key) for r in requests] == [
        (key, f"{key}:20260101T0300") for key in ("1001", "1002", "newsletter_subscribers", "app_users_90d")
    ]


def test_deliveries_follow_snapshots_because_the_automation_sensor_runs_by_default():
    sensor = defs().resolve_sensor_def("default_automation_condition_sensor")
    assert sensor.default_status == dg.DefaultSensorStatus.RUNNING


def test_resources_are_located_by_environment_variables(monkeypatch, tmp_path):
    monkeypatch.setenv("AUDIENCE_PIPELINE_SOURCE", str(tmp_path / "warehouse.duckdb"))
    monkeypatch.setenv("AUDIENCE_PIPELINE_STATE", str(tmp_path / "state"))

    resources = defs().resources

    assert resources["source"].database == str(tmp_path / "warehouse.duckdb")
    assert resources["state_store"].root == str(tmp_path / "state")


def test_the_ads_api_region_comes_from_the_environment_and_is_checked(monkeypatch):
    monkeypatch.setenv("AMAZON_ADS_REGION", "EU")
    assert defs().resources["amazon_ads"].region == "EU"
    monkeypatch.setenv("AMAZON_ADS_REGION", "Mars")
    with pytest.raises(Exception) as raised:
        defs()
    # The loader wraps the resource's error; the cause names the variable to fix.
    assert "set AMAZON_ADS_REGION to one of them" in str(raised.value.__cause__)


def test_resources_default_to_the_project_folder_layout(monkeypatch):
    monkeypatch.delenv("AUDIENCE_PIPELINE_SOURCE", raising=False)
    monkeypatch.delenv("AUDIENCE_PIPELINE_STATE", raising=False)

    resources = defs().resources

    assert resources["source"].database == "data/sample.duckdb"
    assert resources["state_store"].root == ".audience_state"


def test_dg_check_defs_passes(tmp_path):
    result = subprocess.run(
        [Path(sys.executable).parent / "dg", "check", "defs"],
        cwd=PROJECT_ROOT,
        env={"PATH": str(Path(sys.executable).parent), "DAGSTER_HOME": str(tmp_path), "HOME": str(tmp_path)},
        capture_output=True,
        text=True,
        timeout=300,
    )

    assert result.returncode == 0, result.stdout + result.stderr
    assert "All definitions loaded successfully" in result.stdout + result.stderr
