import json

import boto3
import polars as pl
from click.testing import CliRunner

from audience_pipeline.cli import main

EXAMPLE_AUDIENCE_IDS = ["1001", "1002", "newsletter_subscribers", "app_users_90d"]
# The example Firehose destination (defs/firehose) streams into this bucket in the demo.
FIREHOSE_BUCKET = "audience-changes-bucket"


def test_sample_data_prints_the_path_and_row_counts(tmp_path):
    result = CliRunner().invoke(
        main, ["sample-data", "--profiles", "40", "--out", str(tmp_path), "--seed", "3"]
    )

    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[0] == str(tmp_path / "sample.duckdb")
    assert "  profiles: 40 rows" in lines
    assert {line.split(":")[0].strip() for line in lines[1:]} >= {"profiles", "events", "purchases"}


def test_demo_json_reports_every_audience_and_leaves_dagster_home_alone(tmp_path, monkeypatch, sandbox):
    dagster_home = tmp_path / "dagster_home"
    dagster_home.mkdir()
    monkeypatch.setenv("DAGSTER_HOME", str(dagster_home))
    # The environment points the demo at endpoints someone else runs: the demo must use them.
    for name, value in sandbox.env().items():
        monkeypatch.setenv(name, value)
    for name in ("AMAZON_ADS_CLIENT_ID", "AMAZON_ADS_CLIENT_SECRET", "AMAZON_ADS_REFRESH_TOKEN"):
        monkeypatch.setenv(name, "external-sandbox")
    workdir = tmp_path / "demo"

    result = CliRunner().invoke(main, ["demo", "--json", "--profiles", "2000", "--workdir", str(workdir)])

    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["profiles"] == 2000
    assert [a["id"] for a in report["audiences"]] == EXAMPLE_AUDIENCE_IDS
    assert all(a["name"] and a["members"] > 0 for a in report["audiences"])
    assert report["identity"]["values_hashed"] > 0
    assert all(isinstance(n, int) for n in report["identity"]["rejects"].values())
    assert report["seconds"] > 0
    assert list(dagster_home.iterdir()) == []
    delivered = boto3.client("s3", endpoint_url=sandbox.aws_url).list_objects_v2(Bucket=FIREHOSE_BUCKET)
    assert delivered["KeyCount"] > 0 and report["firehose"]["messages_delivered"] > 0
    assert report["adm"]["members_sent"] > 0 and report["adm"]["rejected"] == 0
    assert 0 < report["adm"]["match_rate"] <= 100
    assert report["dsp"]["patches_sent"] > 0 and report["dsp"]["flushes"] >= 2
    assert 0 < report["dsp"]["match_rate"] <= 1
    assert sandbox.ads.state.family("adm"), "the members went to the sandbox the environment named"
    amc = report["amc"]
    assert [(u["dataset_id"], u["status"]) for u in amc["uploads"]] == [
        ("sample_customer_identities", "SUCCESS"),
        ("sample_purchases", "SUCCESS"),
    ]
    assert all(u["rows"] > 0 for u in amc["uploads"])
    [deletion] = amc["deletions"]
    assert deletion["status"] == "SUCCEEDED" and deletion["identities"] > 0
    [audience] = amc["audiences"]
    # 2,000 profiles make fewer than the 2,000 repeat purchasers DSP needs: AMC fails it, and says so.
    assert audience["name"] == "sample_repeat_purchasers" and audience["status"] == "FAILED"
    uploads = boto3.client("s3", endpoint_url=sandbox.aws_url).list_objects_v2(Bucket="audience-pipeline-amc")
    assert uploads["KeyCount"] == 0, "clean_uploaded_files removed the parts and manifests"
    for audience in report["audiences"]:
        snapshot = pl.read_parquet(workdir / "state" / "snapshots" / f"{audience['id']}.parquet")
        assert snapshot.height == audience["members"]
        assert snapshot["email"].str.contains("@").not_().all()


def test_demo_prints_a_summary_for_people(tmp_path):
    result = CliRunner().invoke(main, ["demo", "--profiles", "300", "--workdir", str(tmp_path)])

    assert result.exit_code == 0, result.output
    assert "Profiles: 300" in result.stdout
    assert "cart_abandoners_30d" in result.stdout
    assert "values hashed" in result.stdout
    assert "sample data: 300 profiles" in result.stderr
