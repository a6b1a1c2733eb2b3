import subprocess
import sys
from datetime import UTC, datetime
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
    assert set(groups) == {"ingest", "transform", "deliver", "monitor", "privacy"}
    assert groups["privacy"] == {"privacy/forget"}
    assert groups["ingest"] == {"source/profiles", "source/events", "source/purchases"}
    assert groups["monitor"] == {"activation_status"}
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
        scheduled_execution_time=datetime(2026, 1, 1, 3, tzinfo=UTC),
        repository_def=definitions.get_repository_def(),
    ) as context:
        requests = schedule.evaluate_tick(context).run_requests
    assert [(r.partition_key, r.run_key) for r in requests] == [
        (key, f"{key}:20260101T0300Z") for key in ("1001", "1002", "newsletter_subscribers", "app_users_90d")
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


def test_aws_is_wired_once_pointing_where_aws_endpoint_url_says(monkeypatch):
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:4566")

    resources = defs().resources

    assert resources["s3"].endpoint_url == resources["firehose"].endpoint_url == "http://127.0.0.1:4566"
    # The ledger key stays a reference to the variable until a run needs it.
    assert resources["ledger_cipher"].key == dg.EnvVar("AUDIENCE_PIPELINE_LEDGER_KEY")


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


AUDIENCES = ["1001", "1002", "newsletter_subscribers", "app_users_90d"]
DSP_QUEUE = dg.AssetKey(["dsp", "advertiser_5551234567890"])
DSP_FLUSH = dg.AssetKey([*DSP_QUEUE.path, "flush"])


def _membership_destinations(graph) -> dict[dg.AssetKey, tuple[dg.AssetKey, list[str]]]:
    """Each membership destination asset of the example: its upstream and the audiences routed to it
    (as the YAML under defs/ routes them)."""
    [adm] = [key for key in graph.get_all_asset_keys() if key.path[0] == "ads_data_manager"]
    return {
        dg.AssetKey(["firehose", "audience_changes"]): (SNAPSHOT_ASSET_KEY, AUDIENCES),
        adm: (SNAPSHOT_ASSET_KEY, AUDIENCES),
        DSP_QUEUE: (SNAPSHOT_ASSET_KEY, ["app_users_90d"]),
        DSP_FLUSH: (DSP_QUEUE, ["app_users_90d"]),
    }


def test_each_destination_has_a_partition_per_routed_audience_mapped_to_the_same_upstream_partition():
    graph = defs().resolve_asset_graph()

    for key, (upstream, routed) in _membership_destinations(graph).items():
        assert graph.get(key).partitions_def.get_partition_keys() == routed, key
        for audience in graph.get(upstream).partitions_def.get_partition_keys():
            children = graph.get_child_partition_keys_of_parent(audience, upstream, key)
            assert list(children) == ([audience] if audience in routed else []), (key, audience)
        for audience in routed:
            parents = graph.get_parent_partition_keys_for_child(audience, upstream, key)
            assert list(parents.partitions_subset.get_partition_keys()) == [audience]
            assert not parents.required_but_nonexistent_subset.get_partition_keys()
        # Each check result is recorded for the audience its run delivered.
        for check_key in graph.get_check_keys_for_assets({key}):
            assert graph.get(check_key).partitions_def == graph.get(key).partitions_def, check_key


def test_eager_automation_delivers_a_new_snapshot_partition_to_the_destinations_routed_it_only():
    definitions = defs()
    destinations = _membership_destinations(definitions.resolve_asset_graph())
    with dg.instance_for_test() as instance:
        first = dg.evaluate_automation_conditions(defs=definitions, instance=instance)
        for audience in ("1001", "app_users_90d"):
            instance.report_runless_asset_event(
                dg.AssetMaterialization(SNAPSHOT_ASSET_KEY, partition=audience)
            )
        result = dg.evaluate_automation_conditions(defs=definitions, instance=instance, cursor=first.cursor)

    requested = {key: result.get_requested_partitions(key) for key in destinations}
    assert {key: routed for key, routed in requested.items() if key.path[0] != "dsp"} == dict.fromkeys(
        [key for key in destinations if key.path[0] != "dsp"], {"1001", "app_users_90d"}
    )
    # The DSP queue takes only its audience; its flush waits for the queue partition.
    assert (requested[DSP_QUEUE], requested[DSP_FLUSH]) == ({"app_users_90d"}, set())


def test_an_audiences_first_dsp_flush_follows_its_queue_and_later_ones_are_the_sensors():
    definitions = defs()

    def materialize(key: dg.AssetKey, instance: dg.DagsterInstance) -> None:
        instance.report_runless_asset_event(dg.AssetMaterialization(key, partition="app_users_90d"))

    with dg.instance_for_test() as instance:
        result = dg.evaluate_automation_conditions(defs=definitions, instance=instance)
        requested = [result.get_requested_partitions(DSP_FLUSH)]
        materialize(SNAPSHOT_ASSET_KEY, instance)
        result = dg.evaluate_automation_conditions(defs=definitions, instance=instance, cursor=result.cursor)
        requested.append(result.get_requested_partitions(DSP_FLUSH))
        # The queue partition is materialized and the flush partition never was: the first flush is due.
        materialize(DSP_QUEUE, instance)
        result = dg.evaluate_automation_conditions(defs=definitions, instance=instance, cursor=result.cursor)
        requested.append(result.get_requested_partitions(DSP_FLUSH))
        # Once flushed, a new snapshot and enqueue request no flush: the sensor's interval or size rule does.
        materialize(DSP_FLUSH, instance)
        materialize(SNAPSHOT_ASSET_KEY, instance)
        result = dg.evaluate_automation_conditions(defs=definitions, instance=instance, cursor=result.cursor)
        assert result.get_requested_partitions(DSP_QUEUE) == {"app_users_90d"}
        requested.append(result.get_requested_partitions(DSP_FLUSH))
        materialize(DSP_QUEUE, instance)
        result = dg.evaluate_automation_conditions(defs=definitions, instance=instance, cursor=result.cursor)
        requested.append(result.get_requested_partitions(DSP_FLUSH))

    assert requested == [set(), set(), {"app_users_90d"}, set(), set()]
