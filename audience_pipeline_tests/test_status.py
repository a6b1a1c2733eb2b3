"""The activation overview: `audience-pipeline status` and the `activation_status` asset, after real
deliveries to the sandbox, show what each destination holds, what waits and what was refused."""

import json
import re
import time
import uuid
from pathlib import Path

import boto3
import dagster as dg
import duckdb
import polars as pl
import pytest
import yaml
from click.testing import CliRunner
from cryptography.fernet import Fernet

import audience_pipeline
from audience_pipeline.activation_status import NOTHING_DELIVERED, held_members, text_table
from audience_pipeline.cli import main
from audience_pipeline.components.activation_status import ACTIVATION_STATUS_KEY
from audience_pipeline.components.amc import AmazonMarketingCloudComponent
from audience_pipeline.components.audiences import SNAPSHOT_ASSET_KEY
from audience_pipeline.components.firehose import FirehoseComponent
from audience_pipeline.membership.ledger import Ledger
from audience_pipeline.resources.state_store import StateStore
from audience_pipeline.sandbox.provision import provision_sandbox
from audience_pipeline.state import ParquetStore, buckets

from .conftest import add_fault, wired_resources
from .sandbox.test_aws_firehose import STREAM, delivered_messages

ACCOUNT = "amzn1.ads-account.sandbox"
ADVERTISER = 123456789
FIREHOSE = f"Firehose {STREAM}"
ADM = f"Ads Data Manager {ACCOUNT}"
DSP = f"DSP advertiser {ADVERTISER}"
AMC = "AMC amcsandbox01 upload"
IDFA = "6d92078a-8246-4ba4-ae5b-{:012d}"
PROFILE_ROWS = [
    # user_id, email, idfa, shopper
    ("u1", "alice@example.com", IDFA.format(1), True),
    ("u2", "bob@example.org", None, True),
    ("u3", "carol@example.net", IDFA.format(3), True),
    ("u4", "dave@example.com", None, True),
    ("u5", "erin@example.com", IDFA.format(5), False),
]
RAW = ["alice@example.com", "example.com", IDFA.format(1)]
EXAMPLE_DSP = yaml.safe_load(
    (Path(audience_pipeline.__file__).parent / "defs" / "dsp" / "defs.yaml").read_text()
)
# A dg project of its own: audience 7 (shoppers) to Firehose and Ads Data Manager, audience `app` (app
# users) to DSP, an AMC upload, and the overview.
DEFS = {
    "audiences": """
type: audience_pipeline.components.audiences.AudiencesComponent
attributes:
  country_code: US
  audiences:
    - {id: 7, name: shoppers, sql: "SELECT user_id, email FROM profiles WHERE shopper"}
    - {id: app, name: app_users, sql: "SELECT user_id, idfa FROM profiles WHERE idfa IS NOT NULL"}
""",
    "firehose": f"""
type: audience_pipeline.components.firehose.FirehoseComponent
attributes: {{delivery_stream_name: {STREAM}, audiences: [7]}}
""",
    "ads_data_manager": f"""
type: audience_pipeline.components.ads_data_manager.AdsDataManagerComponent
attributes: {{manager_account_id: {ACCOUNT}, consent: GRANTED, audiences: [7]}}
""",
    # The example's DSP destination (its sandbox profile), for another advertiser and audience.
    "dsp": yaml.safe_dump(
        {
            **EXAMPLE_DSP,
            "attributes": {**EXAMPLE_DSP["attributes"], "advertiser_id": ADVERTISER, "audiences": ["app"]},
        }
    ),
    "amc": """
type: audience_pipeline.components.amc.AmazonMarketingCloudComponent
attributes:
  instance_id: amcsandbox01
  bucket: status-amc-uploads
  poll_interval_seconds: 0.05
  uploads:
    - dataset_id: status_customers
      create_dataset: true
      update_strategy: FULL_REPLACE
      country_code: US
      query: SELECT user_id AS customer_id, email FROM profiles
      dataset_definition:
        dataSetId: status_customers
        columns:
          - {name: customer_id, columnType: DIMENSION, dataType: STRING, nullable: false}
          - {name: email, columnType: DIMENSION, dataType: STRING, externalUserIdType: {hashedPii: EMAIL}}
""",
    "activation_status": """
type: audience_pipeline.components.activation_status.ActivationStatusComponent
""",
}


def write_project(folder: Path, monkeypatch) -> Path:
    """The project's files under `folder`, importable under a name of its own (a module imported by an
    earlier test would otherwise be found again)."""
    module = f"status_project_{uuid.uuid4().hex[:8]}"
    folder.mkdir()
    (folder / "pyproject.toml").write_text(
        f'[tool.dg]\ndirectory_type = "project"\n\n[tool.dg.project]\nroot_module = "{module}"\n'
    )
    package = folder / module
    (package / "defs").mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "defs" / "__init__.py").write_text("")
    for name, text in DEFS.items():
        (package / "defs" / name).mkdir()
        (package / "defs" / name / "defs.yaml").write_text(text.lstrip())
    # Resources wired as the example project wires them, from the environment.
    (package / "defs" / "resources.py").write_text("from audience_pipeline.defs.resources import resources\n")
    monkeypatch.syspath_prepend(str(folder))
    return folder


class Deployment:
    """The project of `write_project` run on a Dagster instance in a Dagster home of its own, with its
    source and state where the environment says, against the sandbox."""

    def __init__(self, folder: Path, monkeypatch):
        self.project = write_project(folder / "project", monkeypatch)
        self.home, self.state = folder / "dagster_home", folder / "state"
        self.home.mkdir()
        self.source = folder / "source.duckdb"
        with duckdb.connect(str(self.source)) as conn:
            conn.execute(
                "CREATE TABLE profiles (user_id VARCHAR, email VARCHAR, idfa VARCHAR, shopper BOOLEAN)"
            )
            conn.executemany("INSERT INTO profiles VALUES (?, ?, ?, ?)", PROFILE_ROWS)
        monkeypatch.setenv("AUDIENCE_PIPELINE_SOURCE", str(self.source))
        monkeypatch.setenv("AUDIENCE_PIPELINE_STATE", str(self.state))
        self.tree = dg.ComponentTree.for_project(self.project)
        self.defs = self.tree.build_defs()
        self.resources = wired_resources(
            "source", "state_store", "amazon_ads", "firehose", "ledger_cipher", "s3"
        )
        self.instance = dg.DagsterInstance.from_config(str(self.home))
        self.dsp = dg.AssetKey(["dsp", f"advertiser_{ADVERTISER}"])
        [self.adm] = [
            k for k in self.defs.resolve_asset_graph().get_all_asset_keys() if k.path[0] == "ads_data_manager"
        ]

    def run(self, *keys: dg.AssetKey, partition: str | None = None, raise_on_error: bool = True):
        """One run materializing `keys` (assets of one partitions definition) and their checks, with the
        resources the project wires."""
        return dg.materialize(
            [self.defs.resolve_assets_def(key) for key in keys],
            partition_key=partition,
            instance=self.instance,
            raise_on_error=raise_on_error,
        )

    def follow_amc(self) -> None:
        """Tick the AMC job status sensor until the upload is final, recording what it observed on the
        instance as the Dagster daemon does."""
        [cloud] = self.tree.get_all_components(AmazonMarketingCloudComponent)
        sensor = self.defs.resolve_sensor_def(cloud.sensor_name)
        cursor = None
        for _ in range(200):
            context = dg.build_sensor_context(
                instance=self.instance,
                cursor=cursor,
                resources={key: self.resources[key] for key in ("amazon_ads", "s3")},
            )
            result = sensor.evaluate_tick(context)
            cursor = result.cursor
            for event in result.asset_events:
                self.instance.report_runless_asset_event(event)
            if not json.loads(cursor or "{}").get("pending", [None]):
                return
            time.sleep(0.03)
        raise AssertionError("the AMC upload never finished")

    def status(self, *options: str, home: Path | None = None, state: Path | None = None):
        return CliRunner().invoke(
            main,
            [
                "status",
                *options,
                "--dagster-home",
                str(home or self.home),
                "--state",
                str(state or self.state),
                "--project",
                str(self.project),
            ],
        )

    def rows(self, **places) -> dict[tuple[str, str], dict]:
        result = self.status("--json", **places)
        assert result.exit_code == 0, result.output
        return {(row["audience"], row["destination"]): row for row in json.loads(result.stdout)["rows"]}


@pytest.fixture
def deployment(tmp_path, sandbox_env, monkeypatch) -> Deployment:
    monkeypatch.setenv("AUDIENCE_PIPELINE_LEDGER_KEY", Fernet.generate_key().decode())
    deployment = Deployment(tmp_path, monkeypatch)
    s3, firehose = (boto3.client(kind, endpoint_url=sandbox_env.aws_url) for kind in ("s3", "firehose"))
    provision_sandbox(
        s3,
        firehose,
        deployment.tree.get_all_components(FirehoseComponent),
        deployment.tree.get_all_components(AmazonMarketingCloudComponent),
    )
    yield deployment
    deployment.instance.dispose()


def metadata(result, key: dg.AssetKey) -> dict:
    [event] = [e for e in result.get_asset_materialization_events() if e.asset_key == key]
    return {name: value.value for name, value in event.materialization.metadata.items()}


def test_status_shows_what_each_destination_holds_waits_for_and_refused(deployment, sandbox_env):
    sandbox, firehose_key = sandbox_env, dg.AssetKey(["firehose", "audience_changes"])
    flush = dg.AssetKey([*deployment.dsp.path, "flush"])
    upload = dg.AssetKey(["amc", "dataset", "status_customers"])
    # Audience 7 to Firehose and Ads Data Manager; `app` queued and flushed to DSP.
    deployment.run(SNAPSHOT_ASSET_KEY, partition="7")
    deployment.run(firehose_key, deployment.adm, partition="7")
    deployment.run(SNAPSHOT_ASSET_KEY, partition="app")
    deployment.run(deployment.dsp, partition="app")
    flushed = metadata(deployment.run(flush, partition="app"), flush)
    # A new app user: queued, not flushed (the next flush waits for the upload interval).
    with duckdb.connect(str(deployment.source)) as conn:
        conn.execute("INSERT INTO profiles VALUES ('u6', 'frank@example.com', ?, false)", [IDFA.format(6)])
    deployment.run(SNAPSHOT_ASSET_KEY, partition="app")
    deployment.run(deployment.dsp, partition="app")
    # Amazon refuses one member: its email in the snapshot is no SHA-256 (as in test_adm_delivery).
    store = StateStore(root=str(deployment.state)).store
    snapshot = store.read("snapshots/7.parquet")
    store.write(
        "snapshots/7.parquet",
        snapshot.with_columns(
            pl.when(pl.col("user_id") == "u4").then(pl.lit("not-a-hash")).otherwise("email").alias("email")
        ),
    )
    refused = metadata(deployment.run(deployment.adm, partition="7"), deployment.adm)
    assert refused["rejected"] == 1
    # Then Amazon fails every member upload: the next delivery run fails.
    add_fault(sandbox.ads_url, route="POST /adm/audiences/", status=500)
    failed = deployment.run(deployment.adm, partition="7", raise_on_error=False)
    assert not failed.success
    deployment.run(upload)
    submitted = deployment.rows()[("status_customers", AMC)]

    rows = deployment.rows()

    assert sorted(rows) == [("7", ADM), ("7", FIREHOSE), ("app", DSP), ("status_customers", AMC)]
    stream = rows[("7", FIREHOSE)]
    members = {
        m["UserIdentities"]["Email"]
        for m in delivered_messages(boto3.client("s3", endpoint_url=sandbox.aws_url))
        if m["IsMember"]
    }
    assert (stream["delivered"], stream["pending"], stream["rejected"]) == (len(members), 0, 0) == (4, 0, 0)
    assert (stream["last_run_status"], stream["match_rate_pct"], stream["state"]) == (
        "SUCCESS",
        None,
        "up to date",
    )

    adm = rows[("7", ADM)]
    [dataset] = sandbox.ads.state.family("adm")["datasets"].values()
    # u4 is still held with its earlier identities: the refused change waits for the next run.
    assert adm["delivered"] == len(sandbox.ads.state.members("adm", dataset["dataSetId"])) == 4
    assert (adm["pending"], adm["rejected"], adm["match_rate_pct"]) == (1, 1, refused["match_rate_pct"])
    assert 0 < adm["match_rate_pct"] <= 100
    assert adm["last_run_status"] == "FAILURE" and adm["last_run_id"] == failed.run_id
    assert adm["state"].startswith(f"last run FAILURE (run {failed.run_id[:8]}); last delivered ")
    assert adm["state"].endswith("1 refused, sent again next run")

    dsp = rows[("app", DSP)]
    [dsp_audience] = sandbox.ads.state.family("dsp")["audiences"]
    held = sandbox.ads.state.members("dsp", dsp_audience).get("MAID", set())
    assert (dsp["delivered"], dsp["pending"], dsp["rejected"]) == (len(held), 1, 0) == (3, 1, 0)
    assert flushed["received"] > 0 and dsp["match_rate_pct"] == flushed["match_rate_pct"]
    assert re.fullmatch(
        r"1 queued \(\d+ bytes\); next flush by \d{4}-\d\d-\d\d \d\d:\d\d UTC or at 1,000,000 bytes",
        dsp["state"],
    )

    assert submitted["state"] == "upload submitted; AMC is working on it (the job status sensor follows it)"
    deployment.follow_amc()
    amc = deployment.rows()[("status_customers", AMC)]
    # The final state as AMC reported it (with its own message), and the rows it took.
    assert amc["state"].startswith("upload SUCCESS") and amc["delivered"] == len(PROFILE_ROWS) + 1

    table = deployment.status()
    assert table.exit_code == 0, table.output
    lines = {tuple(re.split(r"\s{2,}", line.strip())) for line in table.stdout.splitlines()}
    assert ("7 (shoppers)", ADM, "4", "1", "1") in {line[:5] for line in lines}
    assert ("app (app_users)", DSP, "3", "1", "0") in {line[:5] for line in lines}
    assert not any(raw in table.stdout for raw in RAW)

    # The asset shows the same rows in the UI.
    overview = metadata(deployment.run(ACTIVATION_STATUS_KEY), ACTIVATION_STATUS_KEY)
    assert [record.data for record in overview["rows"].records] == list(deployment.rows().values())
    assert (overview["members_delivered"], overview["pending"], overview["rejected"]) == (11, 2, 1)
    assert overview["failed_deliveries"] == 1
    assert "| 7 (shoppers) | Ads Data Manager amzn1.ads-account.sandbox | 4 | 1 | 1 |" in overview["overview"]
    assert not any(raw in overview["overview"] for raw in RAW)


def test_a_project_with_nothing_delivered_says_so(deployment, tmp_path):
    empty = tmp_path / "empty_home"
    empty.mkdir()

    result = deployment.status(home=empty, state=tmp_path / "no_state")
    rows = deployment.rows(home=empty, state=tmp_path / "no_state")

    assert result.exit_code == 0, result.output
    assert result.stdout.rstrip().endswith(NOTHING_DELIVERED)
    assert all(row["delivered"] is None and row["last_run_status"] is None for row in rows.values())
    assert rows[("7", FIREHOSE)]["state"] == "never delivered"
    assert rows[("status_customers", AMC)]["state"] == "never run"
    overview = metadata(deployment.run(ACTIVATION_STATUS_KEY), ACTIVATION_STATUS_KEY)
    assert overview["overview"].endswith(NOTHING_DELIVERED) and overview["members_delivered"] == 0


def test_a_missing_dagster_home_is_one_line_naming_the_option(deployment, tmp_path):
    result = deployment.status(home=tmp_path / "nowhere")

    assert result.exit_code == 1
    assert result.stderr.strip() == (
        f"Error: Dagster home {tmp_path / 'nowhere'} is not a folder: point --dagster-home (or DAGSTER_HOME) "
        "at the one the pipeline runs with"
    )


def test_no_destinations_is_said_plainly():
    assert text_table([]) == "No destinations are configured: add one under defs/ (see docs/adding.md)."


@pytest.mark.parametrize("counted", [True, False])
def test_the_ledger_count_is_its_members_through_commits_that_leave_deltas(tmp_path, monkeypatch, counted):
    # Buckets of a member or two: commits leave delta parts, as they do for a large audience.
    monkeypatch.setattr(buckets, "BUCKET_ROWS", 2)
    store = ParquetStore(str(tmp_path))
    ledger = Ledger(store, "firehose/us-east-1/stream", 7)

    def members(ids) -> pl.DataFrame:
        return pl.DataFrame({"user_id": ids, "fingerprint": ids, "payload": ids})

    state = ledger.start(ledger.load())
    state = ledger.commit(state, added=members([f"u{i}" for i in range(40)]))
    state = ledger.commit(state, added=members(["v1", "v2"]), removed=members(["u1", "u2", "u3"]))
    state = ledger.commit(state, changed=members(["u10"]), removed=members(["u20"]))
    assert any(part.bucket is None for part in state.parts), "the ledger has delta parts"
    if not counted:
        # A manifest written before the count was kept: the members are counted from the parts.
        stored = store.read_stored(ledger.key)
        kept = {k: v for k, v in stored.metadata.items() if k != "ledger_members"}
        store.write(ledger.key, stored.frame, metadata=kept)
        assert ledger.load().members is None

    assert held_members(ledger) == ledger.read().height == 40 + 2 - 3 - 1
