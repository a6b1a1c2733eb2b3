import subprocess
import sys
from pathlib import Path

import dagster as dg

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
    assert spec.group_name == "ingest"
    assert spec.kinds == {"duckdb", "polars", "parquet"}
    assert spec.owners
    assert {"source", "state_store"} <= snapshot.required_resource_keys


def test_resources_are_located_by_environment_variables(monkeypatch, tmp_path):
    monkeypatch.setenv("AUDIENCE_PIPELINE_SOURCE", str(tmp_path / "warehouse.duckdb"))
    monkeypatch.setenv("AUDIENCE_PIPELINE_STATE", str(tmp_path / "state"))

    resources = defs().resources

    assert resources["source"].database == str(tmp_path / "warehouse.duckdb")
    assert resources["state_store"].root == str(tmp_path / "state")


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
