import boto3
import polars as pl
from click.testing import CliRunner

from audience_pipeline.cli import demo, main
from audience_pipeline.components.setting_errors import SettingError
from audience_pipeline_tests.conftest import DEMO_PROFILES, DemoRun

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


def test_demo_json_reports_every_audience_and_leaves_dagster_home_alone(demo_run: DemoRun):
    report, sandbox = demo_run.report, demo_run.sandbox
    assert report["profiles"] == DEMO_PROFILES
    assert f"sample data: {DEMO_PROFILES:,} profiles" in demo_run.stderr
    assert [a["id"] for a in report["audiences"]] == EXAMPLE_AUDIENCE_IDS
    assert all(a["name"] and a["members"] > 0 for a in report["audiences"])
    assert report["identity"]["values_hashed"] > 0
    assert all(isinstance(n, int) for n in report["identity"]["rejects"].values())
    assert report["seconds"] > 0
    assert list(demo_run.dagster_home.iterdir()) == []
    # The environment pointed the demo at endpoints someone else runs: the demo used them.
    delivered = boto3.client("s3", endpoint_url=sandbox.aws_url).list_objects_v2(Bucket=FIREHOSE_BUCKET)
    assert delivered["KeyCount"] > 0 and report["firehose"]["messages_delivered"] > 0
    assert report["adm"]["members_sent"] > 0 and report["adm"]["rejected"] == 0
    assert 0 < report["adm"]["match_rate_pct"] <= 100
    assert report["dsp"]["patches_sent"] > 0 and report["dsp"]["flushes"] >= 2
    assert 0 < report["dsp"]["match_rate_pct"] <= 100
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
    # Fewer profiles than the 2,000 repeat purchasers DSP needs: AMC fails it, and says so.
    assert audience["name"] == "sample_repeat_purchasers" and audience["status"] == "FAILED"
    uploads = boto3.client("s3", endpoint_url=sandbox.aws_url).list_objects_v2(Bucket="audience-pipeline-amc")
    assert uploads["KeyCount"] == 0, "clean_uploaded_files removed the parts and manifests"
    for audience in report["audiences"]:
        snapshot = pl.read_parquet(demo_run.workdir / "state" / "snapshots" / f"{audience['id']}.parquet")
        assert snapshot.height == audience["members"]
        assert snapshot["email"].str.contains("@").not_().all()


def test_demo_prints_a_summary_of_every_destination_for_people(demo_run: DemoRun, monkeypatch):
    # The demo's one run, printed the way people read it.
    monkeypatch.setattr("audience_pipeline.cli.demo.run_demo", lambda *args, **kwargs: demo_run.report)

    result = CliRunner().invoke(main, ["demo", "--profiles", "300"])

    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[0] == f"Profiles: {DEMO_PROFILES:,}"
    assert "cart_abandoners_30d" in result.stdout
    adm, dsp = demo_run.report["adm"], demo_run.report["dsp"]
    for start, counts in [
        ("Identity:", ["values hashed"]),
        ("Firehose (two rounds):", [f"{demo_run.report['firehose']['messages_delivered']:,} messages"]),
        ("Ads Data Manager:", [f"{adm['members_sent']:,} members sent", f"{adm['match_rate_pct']:.2f} %"]),
        ("DSP mobile ad IDs:", [f"{dsp['patches_sent']:,} patches", f"{dsp['flushes']} flushes"]),
        ("AMC upload sample_customer_identities: SUCCESS", []),
        ("AMC upload sample_purchases: SUCCESS", []),
        ("AMC deletion amazon_user_data_denied: SUCCEEDED", []),
        ("AMC audience sample_repeat_purchasers: FAILED", []),
    ]:
        [line] = [line for line in lines if line.startswith(start)]
        assert all(count in line for count in counts), line


def test_demo_against_an_external_api_without_login_variables_names_them_in_one_line(monkeypatch, tmp_path):
    monkeypatch.setenv("AMAZON_ADS_API_URL", "https://advertising-api.amazon.com")
    monkeypatch.setenv("AMAZON_ADS_CLIENT_ID", "amzn1.application-oa2-client.x")
    monkeypatch.delenv("AMAZON_ADS_CLIENT_SECRET", raising=False)
    monkeypatch.setenv("AMAZON_ADS_REFRESH_TOKEN", "")

    result = CliRunner().invoke(main, ["demo", "--workdir", str(tmp_path / "demo")])

    assert result.exit_code == 1
    assert result.stdout == ""
    assert result.stderr == (
        "Error: AMAZON_ADS_API_URL is set, so the demo signs in with Login with Amazon: set "
        "AMAZON_ADS_CLIENT_SECRET, AMAZON_ADS_REFRESH_TOKEN (or unset AMAZON_ADS_API_URL to run "
        "against a sandbox of its own)\n"
    )
    assert not (tmp_path / "demo").exists(), "nothing was started"


def test_demo_with_a_broken_project_setting_says_which_in_one_line(monkeypatch, tmp_path):
    def broken(kind):
        raise SettingError("audience_pipeline/defs/firehose/defs.yaml: region: 'mars-1' is not an AWS region")

    monkeypatch.setattr(demo, "project_components", broken)

    result = CliRunner().invoke(main, ["demo", "--workdir", str(tmp_path / "demo")])

    assert result.exit_code == 1
    assert result.stderr.splitlines()[-1] == (
        "Error: audience_pipeline/defs/firehose/defs.yaml: region: 'mars-1' is not an AWS region"
    )
    assert "Traceback" not in result.output
