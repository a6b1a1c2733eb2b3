"""The Firehose destination end to end against the sandbox: what lands in the stream's bucket."""

import functools
import json
import types

import dagster as dg
import duckdb
import polars as pl
import pytest
from cryptography.fernet import Fernet
from pydantic import ValidationError

from audience_pipeline.components import firehose as firehose_module
from audience_pipeline.components.audiences import SNAPSHOT_ASSET_KEY, Audience, AudiencesComponent
from audience_pipeline.components.firehose import FirehoseComponent
from audience_pipeline.membership.ledger import Ledger, ledger_key
from audience_pipeline.resources.aws import FirehoseResource
from audience_pipeline.resources.duckdb_source import DuckDBSource
from audience_pipeline.resources.ledger_cipher import LedgerCipher
from audience_pipeline.resources.state_store import StateStore
from audience_pipeline.sandbox.server import DUMMY_AWS_KEYS
from audience_pipeline.state import buckets

from .conftest import add_fault, clear_faults, wired_resources
from .sandbox.test_aws_firehose import PUT_RECORD_BATCH, STREAM, aws_clients, delivered_messages

PROFILES = [
    # user_id, email, customer_id, idfa, mpid, in audience
    ("u1", "alice@example.com", "c-1", None, "m1", True),
    ("u2", "bob@example.org", None, "6D92078A-8246-4BA4-AE5B-76104861E7DC", "m2", True),
    ("u3", None, None, None, "m3", True),  # anonymous: MPID only
    ("u4", "carol@example.net", "c-4", None, None, True),
    ("u5", "dave@example.com", "c-5", None, None, False),
]
EMAILS = [row[1] for row in PROFILES if row[1]]
DESTINATION = f"firehose/us-east-1/{STREAM}"


def write_source(path, rows) -> None:
    with duckdb.connect(str(path)) as conn:
        conn.execute("DROP TABLE IF EXISTS profiles")
        conn.execute(
            "CREATE TABLE profiles (user_id VARCHAR, email VARCHAR, customer_id VARCHAR, idfa VARCHAR, "
            "mpid VARCHAR, member BOOLEAN)"
        )
        conn.executemany("INSERT INTO profiles VALUES (?, ?, ?, ?, ?, ?)", rows)


class Pipeline:
    """The snapshot and Firehose assets of one audience (id 7) over a tiny source, on the sandbox."""

    def __init__(self, tmp_path, sandbox, **settings):
        self.source_path = tmp_path / "source.duckdb"
        write_source(self.source_path, PROFILES)
        audiences = AudiencesComponent(
            audiences=[
                Audience(
                    id=7, name="seven", external_name="Lucky Seven", sql="SELECT * FROM profiles WHERE member"
                )
            ],
            country_code="US",
        )
        self.component = FirehoseComponent(
            delivery_stream_name=STREAM, endpoint_url=sandbox.aws_url, audiences=[7], **settings
        )
        self.assets = [
            dg.build_defs_for_component(audiences).get_assets_def(SNAPSHOT_ASSET_KEY),
            self.component.build_asset(audiences),
        ]
        self.state = tmp_path / "state"
        self.firehose, self.s3 = aws_clients(sandbox)

    def run(self, dry_run: bool = False, raise_on_error: bool = True, **config):
        op = self.component.asset_key.to_python_identifier()
        return dg.materialize(
            self.assets,
            partition_key="7",
            resources={
                "source": DuckDBSource(database=str(self.source_path)),
                "state_store": StateStore(root=str(self.state)),
                **wired_resources("firehose", "ledger_cipher"),
            },
            run_config={"ops": {op: {"config": {"dry_run": dry_run, **config}}}},
            raise_on_error=raise_on_error,
        )

    def ledger(self) -> pl.DataFrame:
        return Ledger(StateStore(root=str(self.state)).store, DESTINATION, 7).read()


def metadata(result) -> dict:
    [materialization] = result.asset_materializations_for_node("firehose__audience_changes")
    return {k: v.value for k, v in materialization.metadata.items()}


@pytest.fixture
def env(monkeypatch):
    for name, value in DUMMY_AWS_KEYS.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("AUDIENCE_PIPELINE_LEDGER_KEY", Fernet.generate_key().decode())
    # Backoff without real waits, so fault tests stay fast.
    monkeypatch.setattr(
        firehose_module, "send_records", functools.partial(firehose_module.send_records, sleep=lambda s: None)
    )


@pytest.fixture
def pipeline(tmp_path, sandbox, env) -> Pipeline:
    return Pipeline(tmp_path, sandbox)


def identity_sets(messages, is_member: bool) -> list[str]:
    """The `UserIdentities` of the messages with this `IsMember`, comparable as sorted JSON."""
    return sorted(
        json.dumps(m["UserIdentities"], sort_keys=True) for m in messages if m["IsMember"] is is_member
    )


def as_json(*objects: dict) -> list[str]:
    return sorted(json.dumps(o, sort_keys=True) for o in objects)


ALICE = {"CustomerId": "c-1", "Email": "alice@example.com", "MPID": "m1"}
BOB = {
    "AppleAdvertisingIdentifier": "6D92078A-8246-4BA4-AE5B-76104861E7DC",
    "Email": "bob@example.org",
    "MPID": "m2",
}
CAROL = {"CustomerId": "c-4", "Email": "carol@example.net"}


def test_each_member_lands_once_as_the_source_holds_it_and_a_rerun_sends_nothing(pipeline):
    result = pipeline.run()

    messages = delivered_messages(pipeline.s3)
    assert {(m["AudienceId"], m["AudienceName"], m["IsMember"]) for m in messages} == {
        (7, "Lucky Seven", True)
    }
    assert all(m["MembershipChangedTimestamp"].isdigit() for m in messages)
    assert identity_sets(messages, True) == as_json(ALICE, BOB, {"MPID": "m3"}, CAROL)
    assert len({m["MessageId"] for m in messages}) == 4
    first = metadata(result)
    assert (first["added"], first["removed"], first["identity_changed"], first["sent"]) == (
        4,
        0,
        0,
        4,
    )
    assert first["ledger_version"] == 1 and first["failed"] == 0 and first["rejected"] == 0
    assert sorted(pipeline.ledger()["user_id"]) == ["u1", "u2", "u3", "u4"]

    again = metadata(pipeline.run())
    assert (again["added"], again["sent"], again["ledger_version"]) == (0, 0, 1)
    assert len(delivered_messages(pipeline.s3)) == 4


@pytest.fixture
def small_buckets(monkeypatch):
    """Buckets of a member or two, and everything set aside on disk: a large audience's path in small."""
    monkeypatch.setattr(buckets, "BUCKET_ROWS", 1)
    monkeypatch.setattr(buckets, "SPILL_MEMORY_BYTES", 0)


@pytest.mark.parametrize("bucketed", [False, True])
def test_joins_leaves_and_identity_changes(pipeline, request, bucketed):
    if bucketed:
        request.getfixturevalue("small_buckets")
    pipeline.run()
    first_ids = {m["MessageId"] for m in delivered_messages(pipeline.s3)}
    rows = [list(row) for row in PROFILES]
    rows[0][1] = "alice.new@example.com"  # u1 changes email
    rows[3][5] = False  # u4 leaves
    rows[4][5] = True  # u5 joins
    write_source(pipeline.source_path, rows)

    result = metadata(pipeline.run())

    assert (result["added"], result["removed"], result["identity_changed"]) == (1, 1, 1)
    assert result["sent"] == 4  # add, remove, and remove + add for the identity change
    latest = [m for m in delivered_messages(pipeline.s3) if m["MessageId"] not in first_ids]
    # Removals carry the identities the stream was given, decrypted from the ledger.
    assert identity_sets(latest, False) == as_json(ALICE, CAROL)
    assert identity_sets(latest, True) == as_json(
        {**ALICE, "Email": "alice.new@example.com"}, {"CustomerId": "c-5", "Email": "dave@example.com"}
    )
    assert sorted(pipeline.ledger()["user_id"]) == ["u1", "u2", "u3", "u5"]
    assert metadata(pipeline.run())["sent"] == 0


def test_without_remove_on_identity_change_only_the_new_identities_go(tmp_path, sandbox, env):
    pipeline = Pipeline(tmp_path, sandbox, send_remove_on_identity_change=False, forward_customer_ids=False)
    pipeline.run()
    rows = [list(row) for row in PROFILES]
    rows[0][1] = "alice.new@example.com"
    write_source(pipeline.source_path, rows)

    result = metadata(pipeline.run())

    assert (result["identity_changed"], result["sent"]) == (1, 1)
    messages = delivered_messages(pipeline.s3)
    assert all(m["IsMember"] for m in messages)
    assert all("CustomerId" not in m["UserIdentities"] for m in messages)
    assert {"Email": "alice.new@example.com", "MPID": "m1"} in [m["UserIdentities"] for m in messages]


def test_throttling_and_failed_records_lose_nothing(pipeline, sandbox):
    add_fault(sandbox.aws_url, route=PUT_RECORD_BATCH, status=503, count=2)
    add_fault(sandbox.aws_url, route=PUT_RECORD_BATCH, record_failure_rate=0.2)

    result = metadata(pipeline.run())

    assert result["retries"] > 0 and result["failed"] == 0
    delivered = {m["MessageId"] for m in delivered_messages(pipeline.s3)}
    assert len(delivered) == 4
    assert sorted(pipeline.ledger()["user_id"]) == ["u1", "u2", "u3", "u4"]


def test_past_the_retry_limit_the_run_fails_and_the_changes_stay_pending(pipeline, sandbox):
    add_fault(sandbox.aws_url, route=PUT_RECORD_BATCH, record_failure_rate=1.0)

    result = pipeline.run(raise_on_error=False)

    assert not result.success
    failure = result.get_step_failure_events()[0].step_failure_data.error.message
    assert "Retry Limit Exceeded" in failure and "4 records were not delivered" in failure
    assert pipeline.ledger().is_empty()
    clear_faults(sandbox.aws_url)
    assert metadata(pipeline.run())["sent"] == 4


def test_a_crash_before_the_commit_resends_the_same_message_ids(pipeline, monkeypatch):
    real_commit = Ledger.commit_changes
    crashes = []

    def crash_once(self, *args, **kwargs):
        if not crashes:
            crashes.append(True)
            raise RuntimeError("killed between send and commit")
        return real_commit(self, *args, **kwargs)

    monkeypatch.setattr(Ledger, "commit_changes", crash_once)
    assert not pipeline.run(raise_on_error=False).success
    first = sorted(m["MessageId"] for m in delivered_messages(pipeline.s3))
    assert len(first) == 4 and pipeline.ledger().is_empty()

    assert metadata(pipeline.run())["sent"] == 4

    ids = [m["MessageId"] for m in delivered_messages(pipeline.s3)]
    assert sorted(set(ids)) == first and len(ids) == 8
    assert sorted(pipeline.ledger()["user_id"]) == ["u1", "u2", "u3", "u4"]


def test_no_raw_email_in_the_ledger_files_or_metadata(pipeline):
    result = pipeline.run()
    files = b"".join(path.read_bytes() for path in pipeline.state.rglob("*.parquet"))
    ledger = pipeline.ledger()
    text = json.dumps(metadata(result)) + ledger.write_csv()
    for email in EMAILS:
        assert email.encode() not in files
        assert email not in text
    assert (pipeline.state / ledger_key(DESTINATION, 7)).exists()


def test_a_dry_run_reports_and_neither_sends_nor_commits(pipeline):
    result = metadata(pipeline.run(dry_run=True))

    assert result["dry_run"] is True
    assert (result["added"], result["planned"], result["skipped"], result["rejected"]) == (4, 4, 0, 0)
    assert delivered_messages(pipeline.s3) == []
    assert pipeline.ledger().is_empty()


def test_members_without_a_forwardable_identity_are_skipped(tmp_path, sandbox, env):
    pipeline = Pipeline(tmp_path, sandbox, send_anonymous_users=False)
    result = metadata(pipeline.run())
    assert (result["added"], result["skipped"]) == (3, 1)


def test_a_missing_ledger_key_stops_the_run_naming_the_variable(pipeline, monkeypatch):
    monkeypatch.delenv("AUDIENCE_PIPELINE_LEDGER_KEY")
    # The `ledger_cipher` resource's dg.EnvVar: Dagster refuses to start the run.
    with pytest.raises(dg.DagsterInvalidConfigError, match="AUDIENCE_PIPELINE_LEDGER_KEY"):
        pipeline.run(raise_on_error=False)
    assert pipeline.ledger().is_empty()


def test_a_malformed_ledger_key_names_the_variable_and_how_to_make_one(pipeline, monkeypatch):
    monkeypatch.setenv("AUDIENCE_PIPELINE_LEDGER_KEY", "not-a-fernet-key")
    result = pipeline.run(raise_on_error=False)
    message = result.get_step_failure_events()[0].step_failure_data.error.message
    assert "AUDIENCE_PIPELINE_LEDGER_KEY" in message and "Fernet.generate_key()" in message


@pytest.mark.parametrize(
    ("settings", "named"),
    [
        ({"delivery_stream_name": "no spaces"}, "delivery_stream_name"),
        ({"region": "moon-1"}, "region"),
        ({"identities_to_exclude": ["Shoe size"]}, "identities_to_exclude"),
        ({"access_key_id": "AKIAABCDEFGHIJKLMNOP", "secret_access_key": "X"}, "access_key_id"),
        ({"access_key_id": "ONLY_ONE"}, "secret_access_key"),
        ({"audiences": []}, "audiences"),
        ({"endpoint_url": "localhost:4566"}, "endpoint_url"),
    ],
)
def test_bad_settings_fail_at_load_naming_the_setting(settings, named):
    with pytest.raises(ValidationError, match=named) as error:
        FirehoseComponent(**{"delivery_stream_name": STREAM, "audiences": [7], **settings})
    assert "AKIAABCDEFGHIJKLMNOP" not in str(error.value)


def test_an_audience_the_project_does_not_declare_fails_at_load():
    audiences = AudiencesComponent(audiences=[Audience(id=7, name="seven", sql="SELECT 1 AS user_id")])
    with pytest.raises(dg.DagsterInvalidDefinitionError, match="`audiences` lists 8"):
        FirehoseComponent(delivery_stream_name=STREAM, audiences=[7, 8]).build_asset(audiences)


def failure(result):
    [event] = result.get_step_failure_events()
    return event.step_failure_data.error


def test_an_audience_query_that_suddenly_returns_nothing_wipes_nothing_unless_allowed(pipeline):
    pipeline.run()
    write_source(pipeline.source_path, [(*row[:5], False) for row in PROFILES])  # a broken upstream

    stopped = pipeline.run(raise_on_error=False)

    message = failure(stopped).message
    assert "4 of the 4 members the destination holds would be removed (100%" in message
    assert "`allow_mass_removal: true`" in message and "\n" not in message.split(": ", 1)[1].strip()
    [event] = stopped.get_step_failure_events()
    counts = {k: v.value for k, v in event.step_failure_data.user_failure_data.metadata.items()}
    assert (counts["removed"], counts["held"], counts["removal_share"]) == (4, 4, 1.0)
    assert len(delivered_messages(pipeline.s3)) == 4 and pipeline.ledger().height == 4

    allowed = metadata(pipeline.run(allow_mass_removal=True))
    assert (allowed["removed"], allowed["sent"]) == (4, 4) and pipeline.ledger().is_empty()


def test_a_ledger_deleted_and_started_again_never_repeats_a_message_id(pipeline):
    pipeline.run()
    first = {m["MessageId"] for m in delivered_messages(pipeline.s3)}
    (pipeline.state / ledger_key(DESTINATION, 7)).unlink()  # the recovery for a lost ledger key

    assert metadata(pipeline.run())["sent"] == 4

    again = {m["MessageId"] for m in delivered_messages(pipeline.s3)} - first
    assert len(again) == 4


def test_a_damaged_ledger_fails_naming_the_file_and_the_way_back(pipeline):
    pipeline.run()
    path = pipeline.state / ledger_key(DESTINATION, 7)
    path.write_bytes(b"not a parquet file")

    error = failure(pipeline.run(raise_on_error=False))

    message = error.message.split(": ", 1)[1].strip()
    assert message.startswith(f"Ledger {path} is not a readable Parquet file; nothing was sent.")
    assert "or delete both" in message and "\n" not in message
    assert error.cause is None


class FakeFirehoseClient:
    """Stands in for boto3's Firehose client: an ACTIVE Direct PUT stream that accepts every record."""

    def __init__(self, received: list[dict]):
        self.received = received
        self.meta = types.SimpleNamespace(region_name="us-east-1")

    def describe_delivery_stream(self, DeliveryStreamName):  # noqa: N803 (boto3's argument names)
        return {
            "DeliveryStreamDescription": {"DeliveryStreamStatus": "ACTIVE", "DeliveryStreamType": "DirectPut"}
        }

    def put_record_batch(self, DeliveryStreamName, Records):  # noqa: N803
        self.received += [json.loads(record["Data"]) for record in Records]
        return {"FailedPutCount": 0, "RequestResponses": [{"RecordId": "r"} for _ in Records]}


def test_a_fake_firehose_resource_stands_in_for_aws_without_the_sandbox(tmp_path, monkeypatch):
    """The `firehose` resource is the only door to AWS: a fake of it runs the delivery asset, no sandbox."""
    received: list[dict] = []

    class FakeFirehose(FirehoseResource):
        def get_client(self, connection=None):
            # The component still says how it reaches its stream, settings the fake may ignore.
            assert connection.region_name == "us-east-1"
            return FakeFirehoseClient(received)

    source = tmp_path / "source.duckdb"
    write_source(source, PROFILES)
    audiences = AudiencesComponent(
        audiences=[
            Audience(
                id=7, name="seven", external_name="Lucky Seven", sql="SELECT * FROM profiles WHERE member"
            )
        ],
        country_code="US",
    )
    component = FirehoseComponent(delivery_stream_name=STREAM, audiences=[7])
    result = dg.materialize(
        [
            dg.build_defs_for_component(audiences).get_assets_def(SNAPSHOT_ASSET_KEY),
            component.build_asset(audiences),
        ],
        partition_key="7",
        resources={
            "source": DuckDBSource(database=str(source)),
            "state_store": StateStore(root=str(tmp_path / "state")),
            "firehose": FakeFirehose(),
            "ledger_cipher": LedgerCipher(key=Fernet.generate_key().decode()),
        },
    )

    assert metadata(result)["sent"] == 4
    assert identity_sets(received, True) == as_json(ALICE, BOB, {"MPID": "m3"}, CAROL)


def test_the_stream_quota_is_awss_default_for_its_region_unless_set():
    large = FirehoseComponent(delivery_stream_name="s", audiences=[7])
    small = FirehoseComponent(delivery_stream_name="s", region="ap-south-1", audiences=[7], mib_per_second=2)

    assert large.quota == {"records": 500_000, "requests": 2_000, "bytes": 5 * 1024 * 1024}
    assert small.quota == {"records": 100_000, "requests": 1_000, "bytes": 2 * 1024 * 1024}
