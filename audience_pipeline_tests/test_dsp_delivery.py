"""The Amazon DSP destination end to end against the sandbox: the MAIDs the DSP audience holds."""

import logging
import time

import dagster as dg
import duckdb
import polars as pl
import pytest
from pydantic import ValidationError

from audience_pipeline.clients.accounts import ProfileNotFound, find_profile
from audience_pipeline.components.audiences import SNAPSHOT_ASSET_KEY, Audience, AudiencesComponent
from audience_pipeline.components.dsp import DspMobileAdIdsComponent
from audience_pipeline.membership.delivery import ITEM, Answer
from audience_pipeline.membership.dsp_delivery import DspAdapter, flush
from audience_pipeline.membership.dsp_queue import DspQueue, audience_maids, enqueue, queue_audience
from audience_pipeline.membership.ledger import Ledger
from audience_pipeline.resources.amazon_ads import AmazonAdsApi
from audience_pipeline.resources.duckdb_source import DuckDBSource
from audience_pipeline.resources.state_store import StateStore
from audience_pipeline.sandbox.auth import USER
from audience_pipeline.sandbox.profiles import PROFILES
from audience_pipeline.state import ParquetStore, buckets
from audience_pipeline.state.buckets import Spill

from .conftest import add_fault, amazon_ads_resource, clear_faults, journal
from .test_firehose_iam import failure_message
from .test_login import REDIRECT_URI, sandbox_client, sandbox_code

US = PROFILES[0]
IDFA_1 = "6d92078a-8246-4ba4-ae5b-76104861e7dc"
GAID_2 = "38400000-8cf0-11bd-b23e-10b96e40000d"
IDFA_3 = "aaaaaaaa-bbbb-4ccc-8ddd-eeeeeeeeeeee"
IDFA_3_NEW = "aaaaaaaa-bbbb-4ccc-8ddd-ffffffffffff"
ZEROED = "00000000-0000-0000-0000-000000000000"
ROWS = [
    # user_id, idfa, gaid, member
    ("u1", IDFA_1.upper(), None, True),
    ("u2", None, GAID_2, True),
    ("u3", IDFA_3, None, True),
    ("u4", ZEROED, None, True),  # limited ad tracking: nothing to send
    ("u5", "bbbbbbbb-bbbb-4bbb-8bbb-bbbbbbbbbbbb", None, False),
]
HOUR = 3600.0


def write_source(path, rows) -> None:
    with duckdb.connect(str(path)) as conn:
        conn.execute("DROP TABLE IF EXISTS profiles")
        conn.execute("CREATE TABLE profiles (user_id VARCHAR, idfa VARCHAR, gaid VARCHAR, member BOOLEAN)")
        conn.executemany("INSERT INTO profiles VALUES (?, ?, ?, ?)", rows)


class Clock:
    """A frozen clock the test moves by hand."""

    def __init__(self, now: float = 1_800_000_000.0):
        self.now = now

    def __call__(self) -> float:
        return self.now


SETTINGS = {
    "advertiser_id": 123456789,
    "marketplace_profile_name": US["accountInfo"]["name"],
    "marketplace": "US",
    "profile_name": USER["name"],
    "audiences": [7],
}


class Pipeline:
    """Snapshot, DSP queue and flush of one audience (id 7) over a tiny source, on the sandbox."""

    def __init__(self, tmp_path, **settings):
        tmp_path.mkdir(parents=True, exist_ok=True)
        self.source_path = tmp_path / "source.duckdb"
        write_source(self.source_path, ROWS)
        audiences = AudiencesComponent(
            audiences=[
                Audience(
                    id=7,
                    name="seven",
                    external_name="Lucky Seven App",
                    sql="SELECT * FROM profiles WHERE member",
                )
            ],
            country_code="US",
        )
        self.component = DspMobileAdIdsComponent(**{**SETTINGS, **settings})
        self.clock = Clock()
        self.snapshot = dg.build_defs_for_component(audiences).get_assets_def(SNAPSHOT_ASSET_KEY)
        self.queue_asset = self.component.build_queue_asset(audiences, clock=self.clock)
        self.flush_asset = self.component.build_flush_asset(audiences, clock=self.clock)
        self.sensor = self.component.build_sensor(clock=self.clock)
        self.state = StateStore(root=str(tmp_path / "state"))
        self.resources = {
            "source": DuckDBSource(database=str(self.source_path)),
            "state_store": self.state,
            "amazon_ads": amazon_ads_resource(),
        }

    def _run(self, assets, selection, dry_run=False, raise_on_error=True, instance=None, **config):
        ops = {key.to_python_identifier(): {"config": {"dry_run": dry_run, **config}} for key in selection}
        return dg.materialize(
            assets,
            selection=selection,
            partition_key="7",
            resources=self.resources,
            run_config={"ops": ops},
            raise_on_error=raise_on_error,
            instance=instance,
        )

    def enqueue(self, dry_run=False) -> dict:
        """Snapshot, then the queue asset."""
        assets = [self.snapshot, self.queue_asset]
        self._run(assets, [SNAPSHOT_ASSET_KEY])
        return metadata(self._run(assets, [self.component.queue_key], dry_run), self.component.queue_key)

    def flush(self, dry_run=False, raise_on_error=True, instance=None, **config):
        return self._run(
            [self.queue_asset, self.flush_asset],
            [self.component.flush_key],
            dry_run,
            raise_on_error,
            instance,
            **config,
        )

    def queue(self):
        return DspQueue(self.state.store, self.component.destination, "7").load()

    def queued(self) -> pl.DataFrame:
        """The queued changes."""
        queue = DspQueue(self.state.store, self.component.destination, "7")
        with queue.reader(queue.load()) as queued:
            return pl.concat([queued.read(bucket, queued.bits) for bucket in range(1 << queued.bits)])


def metadata(result, key: dg.AssetKey) -> dict:
    [materialization] = [m for m in result.get_asset_materialization_events() if m.asset_key == key]
    return {k: v.value for k, v in materialization.materialization.metadata.items()}


def dsp_records(sandbox) -> dict:
    return sandbox.ads.state.family("dsp")


def held(sandbox) -> set[str]:
    """The MAIDs of the sandbox's only DSP audience."""
    [audience_id] = dsp_records(sandbox)["audiences"]
    return sandbox.ads.state.members("dsp", audience_id).get("MAID", set())


@pytest.fixture
def env(sandbox_env):
    return sandbox_env


@pytest.fixture
def pipeline(tmp_path, env) -> Pipeline:
    return Pipeline(tmp_path)


def test_a_flush_leaves_dsp_holding_the_audiences_maids_and_round_two_sends_the_changes(pipeline, sandbox):
    queued = pipeline.enqueue()
    # The snapshot already rejected u4's zeroed IDFA; the DSP queue only counts what slips through.
    assert (queued["added"], queued["removed"], queued["rejects_total"]) == (3, 0, 0)

    first = metadata(pipeline.flush(), pipeline.component.flush_key)
    assert held(sandbox) == {IDFA_1, GAID_2, IDFA_3}
    assert (first["sent"], first["added"], first["removed"], first["requests"]) == (3, 3, 0, 1)
    assert 0.0 <= first["match_rate_pct"] <= 100.0 and first["received"] == 3
    assert pipeline.queue().changes == 0 and pipeline.queue().last_upload_at == int(pipeline.clock.now)
    [audience] = dsp_records(sandbox)["audiences"].values()
    assert (audience["advertiserId"], audience["metadata"]["externalAudienceId"]) == (123456789, "7")

    # u2 leaves, u3's IDFA changes: remove GAID_2 and IDFA_3, add IDFA_3_NEW.
    rows = [r for r in ROWS if r[0] != "u2"]
    write_source(pipeline.source_path, [(u, IDFA_3_NEW if u == "u3" else i, g, m) for u, i, g, m in rows])
    again = pipeline.enqueue()
    assert (again["added"], again["removed"]) == (1, 2)
    # Two of the three MAIDs held leave: more than the default 50 %, so only on request.
    assert not pipeline.flush(raise_on_error=False).success
    second = metadata(pipeline.flush(allow_mass_removal=True), pipeline.component.flush_key)
    assert (second["added"], second["removed"]) == (1, 2)
    assert held(sandbox) == {IDFA_1, IDFA_3_NEW}
    sent = [p["op"] for e in journal(sandbox.ads_url) if e["method"] == "PATCH" for p in e["body"]["patches"]]
    assert sorted(sent) == ["add", "add", "add", "add", "remove", "remove"]
    # The DSP audience was created once, and its id was remembered.
    assert len(dsp_records(sandbox)["audiences"]) == 1


def test_changes_are_queued_once_while_pending_and_undone_ones_leave_the_queue(pipeline):
    pipeline.enqueue()
    again = pipeline.enqueue()
    assert (again["added"], again["removed"], again["queued"]) == (0, 0, 3)

    write_source(pipeline.source_path, [r for r in ROWS if r[0] != "u1"])
    undone = pipeline.enqueue()
    # u1's addition was never sent, so it is dropped rather than followed by a removal.
    assert (undone["added"], undone["removed"], undone["queued"]) == (0, 1, 2)
    assert set(pipeline.queued()["maid"]) == {GAID_2, IDFA_3}


def sensor_tick(pipeline, instance, cursor=None):
    # A context manager: the state store is an AWS resource, which the context sets up and tears down.
    with dg.build_sensor_context(
        cursor=cursor, instance=instance, resources={"state_store": pipeline.state}
    ) as context:
        return pipeline.sensor(context)


def test_the_sensors_skip_reason_counts_empty_queues_rather_than_naming_each(tmp_path, env):
    """A tick's reason is kept in the instance's database: with hundreds of audiences it stays short."""
    sensor = DspMobileAdIdsComponent(**{**SETTINGS, "audiences": list(range(1, 501))}).build_sensor()
    state = StateStore(root=str(tmp_path / "state"))
    with (
        dg.instance_for_test() as instance,
        dg.build_sensor_context(instance=instance, resources={"state_store": state}) as context,
    ):
        tick = sensor(context)
    assert not tick.run_requests
    assert tick.skip_reason.skip_message == (
        "waiting for an upload interval of 7200 s or 1000000 bytes; 500 of 500 queues empty"
    )


def test_the_sensor_flushes_on_time_or_on_size_and_not_otherwise(tmp_path, env):
    pipeline = Pipeline(tmp_path, upload_interval="PT2H")
    with dg.instance_for_test() as instance:
        empty = sensor_tick(pipeline, instance)
        assert (
            not empty.run_requests
            and "waiting for an upload interval of 7200 s" in empty.skip_reason.skip_message
            and empty.skip_reason.skip_message.endswith("; 1 of 1 queues empty")
        )

        pipeline.enqueue()
        pipeline.clock.now += HOUR
        early = sensor_tick(pipeline, instance, empty.cursor)
        assert not early.run_requests
        assert "; 0 of 1 queues empty; 7: 3 changes, " in early.skip_reason.skip_message

        pipeline.clock.now += HOUR
        due = sensor_tick(pipeline, instance, early.cursor)
        [request] = due.run_requests
        assert request.partition_key == "7" and request.asset_selection == [pipeline.component.flush_key]
        assert "since the oldest queued change" in request.tags["dsp/flush_reason"]
        # Not requested twice while that flush has not run.
        assert not sensor_tick(pipeline, instance, due.cursor).run_requests

        pipeline.flush()
        pipeline.clock.now += 60
        write_source(pipeline.source_path, [r for r in ROWS if r[0] != "u1"])
        pipeline.enqueue()
        after = sensor_tick(pipeline, instance, due.cursor)
        assert not after.run_requests and "7: 1 changes" in after.skip_reason.skip_message
        pipeline.clock.now += 2 * HOUR
        [late] = sensor_tick(pipeline, instance, after.cursor).run_requests
        assert "since the last upload" in late.tags["dsp/flush_reason"]

    small = Pipeline(tmp_path / "small", queue_size_limit_bytes=200)
    with dg.instance_for_test() as instance:
        small.enqueue()
        [request] = sensor_tick(small, instance).run_requests
        assert "reached the limit of 200" in request.tags["dsp/flush_reason"]


def test_throttling_and_server_errors_on_patch_lose_nothing(pipeline, sandbox):
    pipeline.enqueue()
    add_fault(sandbox.ads_url, route="PATCH /v2/dp/audience", status=429, count=1, retry_after=0)
    add_fault(sandbox.ads_url, route="PATCH /v2/dp/audience", status=503, count=1)
    result = metadata(pipeline.flush(), pipeline.component.flush_key)
    assert result["retries"] == 2 and result["sent"] == 3
    assert held(sandbox) == {IDFA_1, GAID_2, IDFA_3}

    write_source(pipeline.source_path, [r for r in ROWS if r[0] != "u1"])
    pipeline.enqueue()
    add_fault(sandbox.ads_url, route="PATCH /v2/dp/audience", status=500, count=6)
    failed = pipeline.flush(raise_on_error=False)
    assert not failed.success
    assert held(sandbox) == {IDFA_1, GAID_2, IDFA_3}
    assert list(pipeline.queued()["maid"]) == [IDFA_1]

    retried = metadata(pipeline.flush(), pipeline.component.flush_key)
    assert (retried["removed"], retried["queued_left"]) == (1, 0)
    assert held(sandbox) == {GAID_2, IDFA_3}
    assert len(dsp_records(sandbox)["audiences"]) == 1


def test_dry_run_sends_and_writes_nothing(pipeline, sandbox):
    planned = pipeline.enqueue(dry_run=True)
    assert (planned["dry_run"], planned["added"]) == (True, 3)
    assert pipeline.queue().changes == 0

    pipeline.enqueue()
    dry = metadata(pipeline.flush(dry_run=True), pipeline.component.flush_key)
    assert (dry["dry_run"], dry["added"], dry["requests"], dry["projected_audience_size"]) == (True, 3, 1, 3)
    assert [e for e in journal(sandbox.ads_url) if "/v2/" in e["path"] or e["path"] == "/user/profile"] == []
    assert pipeline.queue().changes == 3


def failure_of(pipeline: Pipeline) -> str:
    """The message of the flush's `dg.Failure`, after a first enqueue."""
    pipeline.enqueue()
    return failure_message(pipeline.flush(raise_on_error=False))


def created(sandbox) -> list[dict]:
    """The DSP audiences the sandbox received a creation of."""
    return [e for e in journal(sandbox.ads_url) if e["method"] == "POST" and "audiencemetadata" in e["path"]]


def test_the_profile_is_the_one_of_its_name_in_the_target_marketplace_and_the_user_is_checked(
    tmp_path, env, sandbox
):
    # "Sandbox Brand" has a profile in US and one in CA, as an account in two marketplaces does.
    pipeline = Pipeline(tmp_path, marketplace_profile_name="Sandbox Brand", marketplace="CA")
    pipeline.enqueue()
    pipeline.flush()

    assert held(sandbox) == {IDFA_1, GAID_2, IDFA_3}
    [audience] = dsp_records(sandbox)["audiences"].values()
    assert audience["metadata"]["dataSourceCountry"] == ["CA"]
    paths = [e["path"] for e in journal(sandbox.ads_url)]
    # Both names resolved before anything was created.
    assert (
        paths.index("/v2/profiles") < paths.index("/user/profile") < paths.index("/v2/dp/audiencemetadata/")
    )

    by_market_id = Pipeline(
        tmp_path / "id", marketplace_profile_name="Sandbox Brand", marketplace="ATVPDKIKX0DER"
    )
    by_market_id.enqueue()
    by_market_id.flush()
    assert [a["metadata"]["dataSourceCountry"] for a in dsp_records(sandbox)["audiences"].values()] == [
        ["CA"],
        ["US"],
    ]


def test_a_name_in_several_marketplaces_asks_for_the_marketplace(tmp_path, env, sandbox):
    message = failure_of(Pipeline(tmp_path, marketplace_profile_name="Sandbox Brand", marketplace=None))

    assert message.startswith("DSP setting `marketplace`: 'Sandbox Brand' has a profile in each of CA, US")
    assert created(sandbox) == []


def test_a_wrong_marketplace_profile_name_fails_listing_the_names_in_that_marketplace(tmp_path, env, sandbox):
    message = failure_of(Pipeline(tmp_path, marketplace_profile_name="Nobody", marketplace="US"))

    assert message == (
        "DSP setting `marketplace_profile_name`: no profile in 'US' is named 'Nobody'; these credentials "
        "see US: 'Sandbox Advertiser US', 'Sandbox Brand'; nothing was sent"
    )
    assert created(sandbox) == []

    elsewhere = failure_of(Pipeline(tmp_path / "fr", marketplace="FR"))
    assert elsewhere.startswith(
        "DSP setting `marketplace`: these credentials see no profile in 'FR'; they see "
    )
    assert "CA: 'Sandbox Advertiser CA', 'Sandbox Brand'; DE: 'Sandbox Advertiser DE';" in elsewhere


def test_a_wrong_linked_user_fails_naming_the_linked_user(tmp_path, env, sandbox):
    message = failure_of(Pipeline(tmp_path, profile_name="Someone Else"))

    assert message.startswith(
        "DSP setting `profile_name`: the refresh token belongs to the Amazon user 'Sandbox User', "
        "not 'Someone Else'; set `profile_name` to that name"
    )
    assert USER["email"] not in message and "@" not in message
    assert created(sandbox) == []

    # A profile's name where the user's goes: the settings' earlier meaning, said so.
    swapped = failure_of(Pipeline(tmp_path / "swapped", profile_name=US["accountInfo"]["name"]))
    assert (
        "'Sandbox Advertiser US' is an advertiser profile's name: `profile_name` is the Amazon user"
        in swapped
    )


def test_a_login_without_the_profile_scope_fails_clearly_unless_no_user_is_checked(
    tmp_path, env, sandbox, monkeypatch
):
    # Signed in before the login asked for `profile`: the Amazon Ads API scope alone.
    refresh_token = sandbox_client(sandbox).authorize(sandbox_code(sandbox), REDIRECT_URI)
    monkeypatch.setenv("AMAZON_ADS_REFRESH_TOKEN", refresh_token)

    message = failure_of(Pipeline(tmp_path))

    assert message == (
        "DSP setting `profile_name`: the refresh token was granted without Login with Amazon's `profile` "
        "scope, so the Amazon user linked to it cannot be read: sign in again with `audience-pipeline "
        "login` (it asks for `profile`), or remove `profile_name` to skip this check; nothing was sent"
    )
    [refused] = [e for e in journal(sandbox.ads_url) if e["path"] == "/user/profile"]
    assert refused["status"] == 403 and created(sandbox) == []

    unchecked = Pipeline(tmp_path / "unchecked", profile_name=None)
    unchecked.enqueue()
    unchecked.flush()
    assert held(sandbox) == {IDFA_1, GAID_2, IDFA_3}


def test_settings_in_their_earlier_meaning_still_deliver_with_a_warning(tmp_path, env, sandbox):
    earlier = {"marketplace_profile_name": "US", "marketplace": None, "profile_name": "Sandbox Advertiser US"}
    pipeline = Pipeline(tmp_path, **earlier)
    assert pipeline.component.profile_settings == ("Sandbox Advertiser US", "US", None)

    pipeline.enqueue()
    with dg.instance_for_test() as instance:
        run_id = pipeline.flush(instance=instance).run_id
        warnings = [e.user_message for e in instance.all_logs(run_id) if e.level == logging.WARNING]

    assert held(sandbox) == {IDFA_1, GAID_2, IDFA_3}
    # No user to check: `profile_name` held the profile's name.
    assert "/user/profile" not in [e["path"] for e in journal(sandbox.ads_url)]
    [warning] = warnings
    assert warning.startswith(
        "DSP settings `marketplace_profile_name: US` and `profile_name: Sandbox Advertiser US`"
    )
    assert "`marketplace_profile_name: Sandbox Advertiser US` (the advertiser profile's name)" in warning
    for written in (
        {**earlier, "marketplace": "US"},
        {**earlier, "profile_name": None},
        {"marketplace": None},
    ):
        settings = {"advertiser_id": 1, "marketplace_profile_name": "x", "audiences": [7], **written}
        assert not DspMobileAdIdsComponent(**settings).in_earlier_meaning
    by_id = DspMobileAdIdsComponent(
        advertiser_id=1, marketplace_profile_name="A1F83G8C2ARO7P", profile_name="Acme", audiences=[7]
    )
    assert by_id.profile_settings == ("Acme", "A1F83G8C2ARO7P", None)


def test_a_marketplace_where_the_profiles_name_goes_is_explained(tmp_path, env, sandbox):
    message = failure_of(
        Pipeline(tmp_path, marketplace_profile_name="DE", marketplace=None, profile_name=None)
    )

    assert message.startswith(
        "DSP setting `marketplace_profile_name`: no profile is named 'DE'; these credentials see "
    )
    assert message.endswith(
        "'DE' is a marketplace: `marketplace_profile_name` is the advertiser profile's name (mParticle's "
        "Marketplace Profile Name); set `marketplace: DE` and `marketplace_profile_name` to a name "
        "listed for it; nothing was sent"
    )


def test_a_manager_accounts_thousands_of_profiles_are_listed_in_part():
    class Api:
        """What `GET /v2/profiles` answers a manager account: 40 advertisers in US."""

        def request(self, method, path):
            return [
                {**US, "accountInfo": {**US["accountInfo"], "name": f"Client {n:02d}"}} for n in range(40)
            ]

    with pytest.raises(ProfileNotFound) as missing:
        find_profile(Api(), "Nobody", "US")

    assert str(missing.value).endswith(
        "'Client 28', 'Client 29' and 10 more (`audience-pipeline login` lists them all)"
    )


@pytest.mark.parametrize(
    ("setting", "value"),
    [
        ("region", "US"),
        ("upload_interval", "soon"),
        ("upload_interval", 0),
        ("queue_size_limit_bytes", 0),
        ("max_in_flight_requests", 0),
        ("max_in_flight_requests", 11),
        ("requests_per_second", 0),
        ("marketplace_profile_name", ""),
        ("marketplace", ""),
        ("profile_name", ""),
    ],
)
def test_bad_settings_fail_at_load_naming_the_setting(setting, value):
    settings = {"advertiser_id": 1, "marketplace_profile_name": "x", "marketplace": "US", "audiences": [7]}
    with pytest.raises(ValidationError, match=setting):
        DspMobileAdIdsComponent(**{**settings, setting: value})


def test_zeroed_and_malformed_maids_are_rejects_and_shared_maids_one_member():
    snapshot = pl.DataFrame(
        {
            "user_id": ["a", "b", "c", "d"],
            "idfa": [IDFA_1, ZEROED, "not-a-uuid", IDFA_1],
            "gaid": [GAID_2, None, None, None],
        }
    )
    found = audience_maids(snapshot)
    assert sorted(found.maids) == sorted([IDFA_1, GAID_2])
    assert found.rejects == {"zeroed_maid": 1, "invalid_maid": 1}

    queued = enqueue(
        pl.DataFrame(schema={"maid": pl.String, "op": pl.String, "queued_at": pl.Int64}),
        pl.Series([GAID_2, IDFA_3]),
        found.maids,
        now=5,
    )
    assert sorted(queued.frame.select("maid", "op").rows()) == [(IDFA_1, "add"), (IDFA_3, "remove")]


def test_a_lost_creation_answer_never_makes_a_second_dsp_audience(pipeline, sandbox, monkeypatch):
    real_client = AmazonAdsApi.client

    def impatient_client(self, region=None):
        client = real_client(self, region)
        client.timeout = 0.5
        return client

    monkeypatch.setattr(AmazonAdsApi, "client", impatient_client)
    pipeline.enqueue()
    # DSP creates the audience, but only after the client stopped waiting: the answer is lost.
    add_fault(sandbox.ads_url, route="POST /v2/dp/audiencemetadata/", latency_ms=1500)

    first = pipeline.flush(raise_on_error=False)
    clear_faults(sandbox.ads_url)
    second = pipeline.flush(raise_on_error=False)

    record = pipeline.state.path("dsp_audiences/dsp/NA/123456789/7.parquet")
    for failed in (first, second):
        [event] = [e for e in failed.all_events if e.is_step_failure]
        message = event.step_failure_data.error.message
        assert "(externalAudienceId '7', requested " in message and "was lost" in message
        assert f"then delete {record} so that the next flush creates it again" in message
    for _ in range(50):  # the sandbox answers the lost request after its latency
        if dsp_records(sandbox).get("audiences"):
            break
        time.sleep(0.1)
    posts = [e for e in journal(sandbox.ads_url) if e["method"] == "POST" and "audiencemetadata" in e["path"]]
    assert len(posts) == 1 and len(dsp_records(sandbox)["audiences"]) == 1
    [audience_id] = dsp_records(sandbox)["audiences"]
    assert sandbox.ads.state.members("dsp", audience_id) == {}
    assert pipeline.queue().changes == 3


class ConfirmingDsp(DspAdapter):
    """The DSP adapter with a destination that confirms every patch, without HTTP."""

    def __init__(self):
        super().__init__(None, None, time.time)
        self.sent: list[tuple[str, str]] = []

    def send(self, items: pl.DataFrame):
        self.sent += items.select("user_id", "op").rows()
        yield Answer(confirmed=items[ITEM].to_list())


def test_maids_are_queued_flushed_and_saved_a_bucket_at_a_time(tmp_path, monkeypatch):
    # Buckets of about five MAIDs, everything set aside on disk.
    monkeypatch.setattr(buckets, "BUCKET_ROWS", 5)
    monkeypatch.setattr(buckets, "SPILL_MEMORY_BYTES", 0)
    store = ParquetStore(str(tmp_path))
    queue, ledger = DspQueue(store, "dsp/NA/1", "7"), Ledger(store, "dsp/NA/1", "7")
    maids = [f"{i:08x}-0000-4000-8000-000000000000" for i in range(40)]

    def snapshot(users: list[int]) -> Spill:
        spill = Spill(pl.Schema({"user_id": pl.String, "idfa": pl.String}), 3)
        spill.add(pl.DataFrame({"user_id": [f"u{i}" for i in users], "idfa": [maids[i] for i in users]}))
        return spill

    with snapshot(list(range(30))) as audience:
        queued = queue_audience(queue, audience, ledger, now=10)
    assert (queued.maids, queued.added, queued.queue.changes, queued.queue.oldest_queued_at) == (
        30,
        30,
        30,
        10,
    )
    dsp = ConfirmingDsp()
    flushed = flush(queue, ledger, dsp, now=20, max_removal_share=0.5)
    assert (flushed.left, flushed.outcome.ledger.bits > 0) == (0, True)
    assert sorted(dsp.sent) == sorted((m, "add") for m in maids[:30])
    assert sorted(ledger.read()["user_id"]) == maids[:30] and queue.load().last_upload_at == 20

    with snapshot(list(range(5, 40))) as audience:
        queued = queue_audience(queue, audience, ledger, now=30)
    assert (queued.added, queued.removed, queue.load().changes) == (10, 5, 15)
    dsp = ConfirmingDsp()
    assert flush(queue, ledger, dsp, now=40, max_removal_share=0.5).left == 0
    assert sorted(dsp.sent) == sorted(
        [*((m, "remove") for m in maids[:5]), *((m, "add") for m in maids[30:])]
    )
    assert sorted(ledger.read()["user_id"]) == maids[5:40]


def test_a_queue_written_in_one_piece_by_an_earlier_version_is_read(tmp_path):
    store = ParquetStore(str(tmp_path))
    queue = DspQueue(store, "dsp/NA/1", "7")
    rows = pl.DataFrame({"maid": [IDFA_1, GAID_2], "op": ["add", "remove"], "queued_at": [5, 9]})
    store.write(queue.key, rows, metadata={"last_upload_at": "3"})

    state = queue.load()

    assert (state.adds, state.removes, state.oldest_queued_at, state.last_upload_at) == (1, 1, 5, 3)
    with queue.reader(state) as queued:
        assert queued.bits == 0 and queued.read(0, 0).equals(rows)
