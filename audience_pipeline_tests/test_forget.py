"""Forgetting a person everywhere, end to end against the sandbox: what each destination holds after."""

import functools
import json

import boto3
import dagster as dg
import duckdb
import pytest
from cryptography.fernet import Fernet

from audience_pipeline.components import firehose as firehose_module
from audience_pipeline.components.ads_data_manager import AdsDataManagerComponent
from audience_pipeline.components.amc import AmazonMarketingCloudComponent
from audience_pipeline.components.audiences import SNAPSHOT_ASSET_KEY, Audience, AudiencesComponent
from audience_pipeline.components.dsp import DspMobileAdIdsComponent
from audience_pipeline.components.firehose import FirehoseComponent
from audience_pipeline.components.forget import Destinations, ForgetComponent
from audience_pipeline.privacy import RECEIPTS_KEY, SUPPRESSED_KEY
from audience_pipeline.resources.duckdb_source import DuckDBSource
from audience_pipeline.resources.state_store import StateStore
from audience_pipeline.sandbox.auth import USER
from audience_pipeline.sandbox.aws import create_amc_bucket
from audience_pipeline.sandbox.profiles import PROFILES as SANDBOX_PROFILES
from audience_pipeline.sandbox.server import DUMMY_AWS_KEYS

from .conftest import add_fault, amazon_ads_resource, clear_faults, wired_resources
from .sandbox.test_aws_firehose import PUT_RECORD_BATCH, STREAM, aws_clients, delivered_messages
from .test_amc_component import BUCKET, INSTANCE, customers_upload, sha
from .test_dsp_delivery import dsp_records

ALICE_EMAIL, ALICE_IDFA = "alice@example.com", "6d92078a-8246-4ba4-ae5b-76104861e7dc"
PROFILES = [
    # user_id, email, phone, idfa
    ("u1", ALICE_EMAIL, "+1 206 555 0101", ALICE_IDFA),
    ("u2", "bob@example.org", None, "38400000-8cf0-11bd-b23e-10b96e40000d"),
    ("u3", "carol@example.net", "+1 415 555 0199", None),
]
# Alice asks to be forgotten, her address written as people write it: matching is on hashes.
REQUEST = ("req-1", "  Alice@Example.COM ", None)
RAW = ["alice", "Alice", "206", "6d92078a"]
BOB_EMAIL, BOB_IDFA = PROFILES[1][1], PROFILES[1][3]
# Where the receipts say the person was forgotten.
FIREHOSE, ADM, DSP = (
    "Firehose audience-changes, audience 7",
    "Ads Data Manager amzn1.ads-account.sandbox",
    "DSP advertiser 123456789, audience 7",
)


def write_source(path, withdrawn: bool = False, requests=(REQUEST,)) -> None:
    """The profiles, AMC's customers, and deletion requests (request id, e-mail, IDFA)."""
    with duckdb.connect(str(path)) as conn:
        conn.execute(
            "CREATE OR REPLACE TABLE profiles (user_id VARCHAR, email VARCHAR, phone VARCHAR, idfa VARCHAR)"
        )
        conn.executemany("INSERT INTO profiles VALUES (?, ?, ?, ?)", PROFILES)
        conn.execute(
            "CREATE OR REPLACE TABLE customers AS "
            "SELECT user_id AS customer_id, email, NULL::VARCHAR AS tier FROM profiles"
        )
        conn.execute(
            "CREATE OR REPLACE TABLE deletion_requests "
            "(request_id VARCHAR, email VARCHAR, idfa VARCHAR, withdrawn BOOLEAN)"
        )
        conn.executemany(
            "INSERT INTO deletion_requests VALUES (?, ?, ?, ?)", [[*r, withdrawn] for r in requests]
        )


class Everywhere:
    """Audience 7 (everyone in `profiles`) at a Firehose stream, an ADM account, a DSP advertiser and an
    AMC instance, and the forget asset over them, on the sandbox."""

    def __init__(self, tmp_path, sandbox):
        self.sandbox = sandbox
        self.source_path = tmp_path / "source.duckdb"
        write_source(self.source_path)
        audiences = AudiencesComponent(
            audiences=[
                Audience(id=7, name="seven", external_name="Lucky Seven", sql="SELECT * FROM profiles")
            ],
            country_code="US",
        )
        self.firehose = FirehoseComponent(
            delivery_stream_name=STREAM, endpoint_url=sandbox.aws_url, audiences=[7]
        )
        self.adm = AdsDataManagerComponent(
            manager_account_id="amzn1.ads-account.sandbox", consent="GRANTED", audiences=[7]
        )
        self.dsp = DspMobileAdIdsComponent(
            advertiser_id=123456789,
            marketplace_profile_name=SANDBOX_PROFILES[0]["accountInfo"]["name"],
            marketplace="US",
            profile_name=USER["name"],
            audiences=[7],
        )
        self.amc = AmazonMarketingCloudComponent(
            instance_id=INSTANCE,
            bucket=BUCKET,
            path_prefix="amc/",
            file_name_prefix="test-",
            poll_interval_seconds=0.05,
            uploads=[customers_upload(wait_until_finish=True)],
        )
        forget = ForgetComponent(sql="SELECT * FROM deletion_requests", country_code="US")
        self.deliveries = [
            dg.build_defs_for_component(audiences).get_assets_def(SNAPSHOT_ASSET_KEY),
            self.firehose.build_asset(audiences),
            self.adm.build_asset(audiences),
            *self.dsp.build_assets(audiences),
        ]
        self.forget = forget.build_asset(
            audiences, Destinations([self.firehose], [self.adm], [self.dsp], [self.amc])
        )
        self.state = StateStore(root=str(tmp_path / "state"))
        self.resources = {
            "source": DuckDBSource(database=str(self.source_path)),
            "state_store": self.state,
            "amazon_ads": amazon_ads_resource(),
            **wired_resources("firehose", "ledger_cipher", "s3"),
        }
        amc_defs = dg.Definitions.merge(
            dg.build_defs_for_component(self.amc), dg.Definitions(resources=self.resources)
        )
        self.upload = amc_defs.resolve_assets_def(dg.AssetKey(["amc", "dataset", "customers"]))
        self.instance = dg.DagsterInstance.ephemeral()
        _, self.s3 = aws_clients(sandbox)
        create_amc_bucket(
            boto3.client("s3", endpoint_url=sandbox.aws_url, region_name="us-east-1"), BUCKET, INSTANCE
        )

    def deliver(self):
        """Snapshot, then every membership destination, of audience 7."""
        dg.materialize(self.deliveries, partition_key="7", resources=self.resources, instance=self.instance)

    def run_forget(self) -> dg.ExecuteInProcessResult:
        return dg.materialize([self.forget], resources=self.resources, instance=self.instance)

    def adm_members(self) -> set[str]:
        [dataset] = self.sandbox.ads.state.family("adm")["datasets"].values()
        return set(self.sandbox.ads.state.members("adm", dataset["dataSetId"]))

    def dsp_maids(self) -> set[str]:
        [audience_id] = dsp_records(self.sandbox)["audiences"]
        return {m.lower() for m in self.sandbox.ads.state.members("dsp", audience_id).get("MAID", set())}

    def amc_emails(self) -> set[str]:
        state = self.sandbox.ads.state
        table = state.family("amc")["instances"][INSTANCE]["dataSets"]["customers"]["_table"]
        return set(state.cursor().sql(f"SELECT email FROM {table}").pl().get_column("email"))

    def alice_messages(self, email: str = ALICE_EMAIL) -> list[bool]:
        """IsMember of every Firehose message about Alice (or whoever has `email`), in no particular order."""
        return [
            m["IsMember"] for m in delivered_messages(self.s3) if m["UserIdentities"].get("Email") == email
        ]

    def receipts(self) -> dict[tuple[str, str], str]:
        """(request id, destination) → state, of every stored receipt."""
        receipts = self.state.store.read(RECEIPTS_KEY)
        return {(r, d): s for r, d, s in receipts.select("request_id", "destination", "state").iter_rows()}


@pytest.fixture
def everywhere(tmp_path, sandbox_env, monkeypatch) -> Everywhere:
    for name, value in DUMMY_AWS_KEYS.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("AUDIENCE_PIPELINE_LEDGER_KEY", Fernet.generate_key().decode())
    monkeypatch.setattr(
        firehose_module, "send_records", functools.partial(firehose_module.send_records, sleep=lambda s: None)
    )
    return Everywhere(tmp_path, sandbox_env)


def test_a_person_is_forgotten_at_every_destination_and_stays_out_until_the_request_is_withdrawn(everywhere):
    everywhere.deliver()
    dg.materialize([everywhere.upload], instance=everywhere.instance)
    assert everywhere.adm_members() == {"u1", "u2", "u3"}
    assert ALICE_IDFA in everywhere.dsp_maids()
    assert everywhere.alice_messages() == [True]
    assert sha(ALICE_EMAIL) in everywhere.amc_emails()

    result = everywhere.run_forget()

    assert everywhere.adm_members() == {"u2", "u3"}
    assert ALICE_IDFA not in everywhere.dsp_maids() and everywhere.dsp_maids()
    assert sorted(everywhere.alice_messages()) == [False, True]
    assert sha(ALICE_EMAIL) not in everywhere.amc_emails()
    assert len(everywhere.amc_emails()) == 2
    receipts = everywhere.state.store.read(RECEIPTS_KEY)
    assert everywhere.receipts() == {
        ("req-1", FIREHOSE): "DONE",
        ("req-1", ADM): "DONE",
        ("req-1", DSP): "DONE",
        ("req-1", f"AMC {INSTANCE}"): "SUCCEEDED",
    }
    [amc_ids] = receipts.filter(receipts["destination"] == f"AMC {INSTANCE}")["amazon_ids"].to_list()
    assert amc_ids and set(receipts["request_id"]) == {"req-1"}

    # No raw identity in the receipts, the suppression list, the metadata or the logs.
    [event] = result.get_asset_materialization_events()
    metadata = json.dumps({k: str(v.value) for k, v in event.materialization.metadata.items()})
    logs = " ".join(entry.user_message for entry in everywhere.instance.all_logs(result.run_id))
    suppressed = everywhere.state.store.read(SUPPRESSED_KEY)
    for text in (str(receipts.to_dicts()), str(suppressed.to_dicts()), metadata, logs):
        assert not any(raw in text for raw in RAW)
    assert sha(ALICE_EMAIL) in set(suppressed["hash"])

    # The next refresh and deliveries leave her out; a second forget run has nothing new to do.
    everywhere.deliver()
    assert everywhere.adm_members() == {"u2", "u3"}
    assert ALICE_IDFA not in everywhere.dsp_maids()
    assert sorted(everywhere.alice_messages()) == [False, True]
    again = everywhere.run_forget()
    [event] = again.get_asset_materialization_events()
    assert event.materialization.metadata["requests_processed"].value == 0

    # Withdrawn, the request no longer suppresses her: the next refresh delivers her again.
    write_source(everywhere.source_path, withdrawn=True)
    everywhere.run_forget()
    assert everywhere.state.store.read(SUPPRESSED_KEY).height == 0
    everywhere.deliver()
    assert everywhere.adm_members() == {"u1", "u2", "u3"}
    assert sorted(everywhere.alice_messages()) == [False, True, True]


def test_requests_are_forgotten_together_and_a_person_asked_for_by_one_id_is_found_by_the_others(everywhere):
    """Alice by e-mail, Bob by his IDFA only, and someone no destination holds, in one run: Bob's user id
    (ADM, Firehose) is found through the snapshot's row that carries his IDFA."""
    write_source(
        everywhere.source_path,
        requests=[REQUEST, ("req-2", None, BOB_IDFA.upper()), ("req-3", "nobody@example.com", None)],
    )
    everywhere.deliver()
    dg.materialize([everywhere.upload], instance=everywhere.instance)

    result = everywhere.run_forget()

    assert everywhere.adm_members() == {"u3"}
    assert everywhere.dsp_maids() == set()
    assert sorted(everywhere.alice_messages()) == [False, True]
    assert sorted(everywhere.alice_messages(BOB_EMAIL)) == [False, True]
    assert sha(ALICE_EMAIL) not in everywhere.amc_emails() and sha(BOB_EMAIL) in everywhere.amc_emails()
    receipts = everywhere.receipts()
    assert {d for (r, d) in receipts if r == "req-2"} == {FIREHOSE, ADM, DSP}
    # The nobody is deleted where deletion goes by identity (ADM by hashed e-mail, AMC), held nowhere else.
    assert {d for (r, d) in receipts if r == "req-3"} == {ADM, f"AMC {INSTANCE}"}
    assert set(receipts.values()) <= {"DONE", "SUCCEEDED"}
    [event] = result.get_asset_materialization_events()
    assert event.materialization.metadata["requests_processed"].value == 3
    suppressed = everywhere.state.store.read(SUPPRESSED_KEY)
    assert sha("u2") in set(suppressed.filter(suppressed["kind"] == "user_id")["hash"])

    # Bob's refreshed row is left out by his user id and IDFA alike.
    everywhere.deliver()
    assert everywhere.adm_members() == {"u3"}
    assert sorted(everywhere.alice_messages(BOB_EMAIL)) == [False, True]


def test_a_destination_that_failed_is_tried_again_and_still_finds_the_person(everywhere):
    """The first run drops Alice from the snapshot but Firehose fails; the next run has no snapshot row
    to learn her user id from, and still sends her removal (her resolved keys were kept)."""
    everywhere.deliver()
    add_fault(everywhere.sandbox.aws_url, route=PUT_RECORD_BATCH, record_failure_rate=1.0)

    with pytest.raises(dg.Failure, match="req-1 at Firehose audience-changes, audience 7"):
        everywhere.run_forget()

    assert everywhere.receipts()[("req-1", FIREHOSE)] == "FAILED"
    assert everywhere.alice_messages() == [True]
    assert everywhere.adm_members() == {"u2", "u3"}
    clear_faults(everywhere.sandbox.aws_url)

    result = everywhere.run_forget()

    assert sorted(everywhere.alice_messages()) == [False, True]
    assert everywhere.receipts()[("req-1", FIREHOSE)] == "DONE"
    [event] = result.get_asset_materialization_events()
    assert event.materialization.metadata["requests_processed"].value == 1
    # Done everywhere now: the next run has nothing to do.
    again = everywhere.run_forget()
    [event] = again.get_asset_materialization_events()
    assert event.materialization.metadata["requests_processed"].value == 0
