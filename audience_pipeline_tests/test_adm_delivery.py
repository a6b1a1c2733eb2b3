"""The Ads Data Manager destination end to end against the sandbox: what the ADM dataset holds."""

import json
import re

import dagster as dg
import duckdb
import polars as pl
import pytest
from pydantic import ValidationError

from audience_pipeline.clients.adm import MAX_REQUEST_BYTES, members_body
from audience_pipeline.components.ads_data_manager import AdsDataManagerComponent, dataset_name
from audience_pipeline.components.audiences import SNAPSHOT_ASSET_KEY, Audience, AudiencesComponent
from audience_pipeline.identity import normalize_identities
from audience_pipeline.membership.adm_delivery import (
    TARGET_IDENTITIES,
    MemberRules,
    adm_members,
    request_slices,
)
from audience_pipeline.membership.ledger import Ledger
from audience_pipeline.resources.duckdb_source import DuckDBSource
from audience_pipeline.resources.state_store import StateStore

from .conftest import add_fault, amazon_ads_resource, journal

ACCOUNT = "amzn1.ads-account.sandbox"
# The ledger of the example audience's dataset (`Lucky Seven` → `Lucky_Seven`).
DESTINATION = f"ads_data_manager/{ACCOUNT}/Lucky_Seven"
MEMBERS_ROUTE = "POST /adm/audiences/"
HEX64 = re.compile(r"[0-9a-f]{64}")
PROFILES = [
    # user_id, email, phone, first_name, country_code, live_ramp_id, idfa, amzn_user_data, in audience
    ("u1", "Alice@Example.com", "+1 206 555 0101", "Alice", "US", "LR-1", None, None, True),
    (
        "u2",
        "bob@example.org",
        None,
        None,
        "Germany",
        None,
        "6D92078A-8246-4BA4-AE5B-76104861E7DC",
        "denied",
        True,
    ),
    ("u3", None, "+1 (415) 555-0199", "Carol", None, None, None, "GRANTED", True),
    ("u4", "dave@example.com", None, None, "US", "LR-4", None, None, True),
    ("u5", "erin@example.com", None, None, "US", None, None, None, False),
]
RAW_VALUES = ["Alice@Example.com", "alice@example.com", "bob@example.org", "Alice", "Carol", "555"]


def write_source(path, rows) -> None:
    with duckdb.connect(str(path)) as conn:
        conn.execute("DROP TABLE IF EXISTS profiles")
        conn.execute(
            "CREATE TABLE profiles (user_id VARCHAR, email VARCHAR, phone VARCHAR, first_name VARCHAR, "
            "country_code VARCHAR, live_ramp_id VARCHAR, idfa VARCHAR, amzn_user_data VARCHAR, "
            "member BOOLEAN)"
        )
        conn.executemany("INSERT INTO profiles VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)", rows)


class Pipeline:
    """The snapshot and ADM assets of one audience (id 7) over a tiny source, on the sandbox."""

    def __init__(self, tmp_path, sandbox, external_name="Lucky Seven", **settings):
        self.sandbox = sandbox
        self.source_path = tmp_path / "source.duckdb"
        write_source(self.source_path, PROFILES)
        self.audiences = AudiencesComponent(
            audiences=[
                Audience(
                    id=7, name="seven", external_name=external_name, sql="SELECT * FROM profiles WHERE member"
                )
            ],
            country_code="US",
        )
        self.component = AdsDataManagerComponent(
            manager_account_id=ACCOUNT, consent="GRANTED", audiences=[7], **settings
        )
        self.assets = [
            dg.build_defs_for_component(self.audiences).get_assets_def(SNAPSHOT_ASSET_KEY),
            self.component.build_asset(self.audiences),
        ]
        self.state = tmp_path / "state"

    def run(self, dry_run: bool = False, raise_on_error: bool = True):
        op = self.component.asset_key.to_python_identifier()
        return dg.materialize(
            self.assets,
            partition_key="7",
            resources={
                "source": DuckDBSource(database=str(self.source_path)),
                "state_store": StateStore(root=str(self.state)),
                "amazon_ads": amazon_ads_resource(),
            },
            run_config={"ops": {op: {"config": {"dry_run": dry_run}}}},
            raise_on_error=raise_on_error,
        )

    def metadata(self, result) -> dict:
        [materialization] = result.asset_materializations_for_node(
            self.component.asset_key.to_python_identifier()
        )
        return {k: v.value for k, v in materialization.metadata.items()}

    def datasets(self) -> list[dict]:
        return list(self.sandbox.ads.state.family("adm").get("datasets", {}).values())

    def held(self) -> dict[str, dict]:
        """What the sandbox's one ADM dataset holds: externalUserId → userIdentity."""
        [dataset] = self.datasets()
        return self.sandbox.ads.state.members("adm", dataset["dataSetId"])

    def ledger(self) -> pl.DataFrame:
        return Ledger(StateStore(root=str(self.state)).store, DESTINATION, 7).read()


def member_requests(sandbox) -> list[list[dict]]:
    """The members of every member upload the sandbox received, in order."""
    return [
        entry["body"]["members"]
        for entry in journal(sandbox.ads_url)
        if entry["method"] == "POST" and entry["path"].endswith("/members") and entry.get("body")
    ]


@pytest.fixture
def pipeline(tmp_path, sandbox_env) -> Pipeline:
    return Pipeline(tmp_path, sandbox_env)


def test_first_run_makes_the_dataset_hold_the_audience_and_a_rerun_sends_nothing(pipeline, sandbox):
    first = pipeline.metadata(pipeline.run())

    assert [d["name"] for d in pipeline.datasets()] == ["Lucky_Seven"]
    held = pipeline.held()
    assert sorted(held) == ["u1", "u2", "u3", "u4"]
    assert held["u1"]["externalIdentities"] == [{"liveRampId": "LR-1"}]
    # Amazon's hashedPiis has no country key: the country goes as the consent country (`geo`).
    assert set(held["u1"]["hashedPiis"][0]) == {"em", "ph", "fn"}
    assert held["u2"]["externalIdentities"] == [{"maId": "6d92078a-8246-4ba4-ae5b-76104861e7dc"}]
    assert (first["added"], first["sent"], first["rejected"], first["requests"]) == (4, 4, 0, 1)
    assert first["accepted_count"] == 4 and 0 <= first["match_rate_pct"] <= 100
    assert first["ledger_version"] == 1 and sorted(pipeline.ledger()["user_id"]) == ["u1", "u2", "u3", "u4"]
    [members] = member_requests(sandbox)
    consent = {m["externalUserId"]: m["userConsent"] for m in members}
    # The row's consent overrides the component's; the member's country goes in `geo`.
    assert consent["u2"] == {
        "geo": {"countryCode": "DE"},
        "consent": {"amzn": {"amznAdStorage": "GRANTED", "amznUserData": "DENIED"}},
    }
    assert consent["u1"]["consent"]["amzn"] == {"amznAdStorage": "GRANTED", "amznUserData": "GRANTED"}

    again = pipeline.metadata(pipeline.run())

    assert (again["added"], again["sent"], again["requests"], again["ledger_version"]) == (0, 0, 0, 1)
    assert len(member_requests(sandbox)) == 1
    assert len(pipeline.datasets()) == 1  # found again by name, never duplicated


def test_a_renamed_audience_gets_a_new_dataset_holding_every_member(pipeline, tmp_path, sandbox_env):
    pipeline.run()
    renamed = Pipeline(tmp_path, sandbox_env, external_name="Lucky Seven Renamed")
    renamed.state = pipeline.state  # the same state store: the old dataset's ledger is there

    result = renamed.metadata(renamed.run())

    assert result["added"] == 4 and result["sent"] == 4
    datasets = {d["name"]: d["dataSetId"] for d in pipeline.datasets()}
    assert set(datasets) == {"Lucky_Seven", "Lucky_Seven_Renamed"}
    renamed_members = sandbox_env.ads.state.members("adm", datasets["Lucky_Seven_Renamed"])
    assert sorted(renamed_members) == ["u1", "u2", "u3", "u4"]


def test_removals_go_as_delete_and_identity_changes_as_create(pipeline, sandbox):
    pipeline.run()
    rows = [list(row) for row in PROFILES]
    rows[0][1] = "alice.new@example.com"  # u1 changes email
    rows[3][8] = False  # u4 leaves
    write_source(pipeline.source_path, rows)

    result = pipeline.metadata(pipeline.run())

    assert (result["added"], result["removed"], result["identity_changed"]) == (0, 1, 1)
    assert (result["sent"], result["ledger_version"]) == (2, 2)
    latest = member_requests(sandbox)[-1]
    assert {(m["externalUserId"], m["action"]) for m in latest} == {("u1", "CREATE"), ("u4", "DELETE")}
    held = pipeline.held()
    assert sorted(held) == ["u1", "u2", "u3"]
    new_email = normalize_identities(pl.DataFrame({"email": ["alice.new@example.com"]})).frame["email"][0]
    assert held["u1"]["hashedPiis"][0]["em"] == new_email
    assert sorted(pipeline.ledger()["user_id"]) == ["u1", "u2", "u3"]
    assert len(pipeline.datasets()) == 1


def test_a_delete_without_granted_consent_is_sent_and_committed_though_amazon_ignores_it(pipeline, sandbox):
    pipeline.run()
    rows = [list(row) for row in PROFILES]
    rows[1][8] = False  # u2, whose user-data consent is DENIED, leaves
    write_source(pipeline.source_path, rows)

    result = pipeline.metadata(pipeline.run())

    assert (result["removed"], result["sent"], result["rejected"]) == (1, 1, 0)
    assert "u2" not in set(pipeline.ledger()["user_id"])
    assert "u2" in pipeline.held()  # Amazon's rule, not ours: the DELETE carried DENIED


def test_throttling_and_server_errors_lose_nothing(pipeline, sandbox):
    add_fault(sandbox.ads_url, route=MEMBERS_ROUTE, status=429, count=1, retry_after=0)
    add_fault(sandbox.ads_url, route=MEMBERS_ROUTE, status=503, count=1, retry_after=0)

    run = pipeline.run()
    result = pipeline.metadata(run)

    assert result["retries"] >= 2 and result["rejected"] == 0
    # Recorded for the audience (partition) delivered, as the UI reads it.
    assert [(c.passed, c.partition) for c in run.get_asset_check_evaluations()] == [(True, "7")]
    assert sorted(pipeline.held()) == ["u1", "u2", "u3", "u4"]
    assert sorted(pipeline.ledger()["user_id"]) == ["u1", "u2", "u3", "u4"]


def test_a_refused_member_is_a_reject_while_the_rest_advance(pipeline, sandbox):
    delivery = pipeline.assets[1]
    pipeline.run()  # round 1, then corrupt one member's hash in the stored snapshot
    store = StateStore(root=str(pipeline.state))
    snapshot = store.store.read("snapshots/7.parquet")
    store.store.write(
        "snapshots/7.parquet",
        snapshot.with_columns(
            pl.when(pl.col("user_id") == "u4").then(pl.lit("not-a-hash")).otherwise("email").alias("email"),
            pl.when(pl.col("user_id") == "u3")
            .then(pl.lit("ab" * 32))
            .otherwise("first_name")
            .alias("first_name"),
        ),
    )
    pipeline.assets = [delivery]  # deliver the edited snapshot as it is

    run = pipeline.run()
    result = pipeline.metadata(run)

    assert (result["identity_changed"], result["sent"], result["rejected"]) == (2, 2, 1)
    [reason] = result["rejects"]
    assert "64-character" in reason and result["rejects"][reason] == 1
    assert "not-a-hash" not in reason
    # The UI shows the refusal as a failing check (a warning) that carries Amazon's own reason.
    [check] = run.get_asset_check_evaluations()
    assert check.check_name == "members_accepted" and not check.passed and check.partition == "7"
    assert check.severity == dg.AssetCheckSeverity.WARN
    assert check.description == f"Amazon refused 1 member(s): {reason} (1)"
    ledger = pipeline.ledger().sort("user_id")
    # u3's change advanced; u4's stays at round 1 and is sent again next time.
    assert ledger.filter(pl.col("user_id") == "u3")["version"][0] == 2
    assert ledger.filter(pl.col("user_id") == "u4")["version"][0] == 1
    assert pipeline.metadata(pipeline.run())["rejected"] == 1


def test_no_raw_pii_reaches_the_sandbox(pipeline, sandbox):
    pipeline.run()

    # The dataset's random id (in paths) and the requests' times may hold "555" by chance: no PII.
    entries = [
        {k: v for k, v in e.items() if k not in ("started", "ended")} for e in journal(sandbox.ads_url)
    ]
    text = json.dumps(entries).replace(pipeline.datasets()[0]["dataSetId"], "")
    assert not [value for value in RAW_VALUES if value in text]
    for members in member_requests(sandbox):
        for member in members:
            identity = member["userIdentity"]
            assert all(HEX64.fullmatch(v) for entry in identity.get("hashedPiis", []) for v in entry.values())
            partner = {v for entry in identity.get("externalIdentities", []) for v in entry.values()}
            assert partner <= {"LR-1", "LR-4", "6d92078a-8246-4ba4-ae5b-76104861e7dc"}


def test_dry_run_reports_the_requests_and_sends_nothing(pipeline, sandbox):
    result = pipeline.metadata(pipeline.run(dry_run=True))

    assert result["dry_run"] is True
    assert (result["added"], result["planned"], result["removed"], result["requests"]) == (4, 4, 0, 1)
    assert result["ledger_version"] == 0 and pipeline.ledger().is_empty()
    assert not [e for e in journal(sandbox.ads_url) if e["path"].startswith("/adm/")]
    assert pipeline.datasets() == []


def test_only_the_chosen_identities_are_sent():
    snapshot = normalize_identities(
        pl.DataFrame({"user_id": ["a", "b"], "email": ["a@example.com", None], "gaid": [None, None]})
    ).frame

    members = adm_members(snapshot, MemberRules(("phone_sha256",), "DENIED", "US"))

    assert members.frame.is_empty() and members.skipped == 2
    both = adm_members(snapshot, MemberRules(TARGET_IDENTITIES, "DENIED", "US"))
    [payload] = both.frame["payload"]
    assert json.loads(payload)["userConsent"]["consent"]["amzn"]["amznUserData"] == "DENIED"


def test_dataset_names_are_valid_for_amazon():
    assert dataset_name(
        Audience(id=1, name="x", external_name="Cart Abandoners (30 days)", sql="SELECT 1")
    ) == ("Cart_Abandoners_30_days")
    assert dataset_name(Audience(id=2, name="vip", sql="SELECT 1")) == "audience_vip"


@pytest.mark.parametrize(
    ("settings", "named"),
    [
        ({"consent": "MAYBE"}, "consent"),
        ({"country_code": "Atlantis"}, "country_code"),
        ({"identities": ["email"]}, "identities"),
        ({"identities": ["country"]}, "identities"),
        ({"advertiser_account_id": "has space"}, "advertiser_account_id"),
        ({"audiences": [7, "7"]}, "audiences"),
        ({"manager_account_id": "has space"}, "manager_account_id"),
        ({"max_in_flight_requests": 0}, "max_in_flight_requests"),
        ({"max_in_flight_requests": 11}, "max_in_flight_requests"),
        ({"requests_per_second": -1}, "requests_per_second"),
    ],
)
def test_bad_settings_fail_at_load_naming_the_setting(settings, named):
    with pytest.raises(ValidationError, match=named):
        AdsDataManagerComponent(
            **{"manager_account_id": ACCOUNT, "consent": "GRANTED", "audiences": [7], **settings}
        )


def test_unknown_audiences_fail_at_load():
    audiences = AudiencesComponent(audiences=[Audience(id=7, name="seven", sql="SELECT 1")])
    component = AdsDataManagerComponent(manager_account_id=ACCOUNT, consent="GRANTED", audiences=[8])

    with pytest.raises(dg.DagsterInvalidDefinitionError, match="audiences"):
        component.build_asset(audiences)


def test_requests_hold_at_most_5000_members_and_10_mb():
    small = pl.Series(["{}"] * 12_001)
    assert request_slices(small) == [(0, 5_000), (5_000, 5_000), (10_000, 2_001)]
    # Members of 3 MB each: three per request.
    big = pl.Series(['{"a":"' + "x" * 3_000_000 + '"}'] * 7)
    assert request_slices(big) == [(0, 3), (3, 3), (6, 1)]
    assert request_slices(pl.Series([], dtype=pl.String)) == []


def test_a_request_body_is_sized_exactly_up_to_10_mb():
    # Two members whose body, `{"members":[a,b]}`, is exactly 10 MB go together.
    room = MAX_REQUEST_BYTES - len(members_body(["", ""]))
    exact = pl.Series(["x" * (room // 2), "x" * (room - room // 2)])
    assert len(members_body(exact.to_list())) == MAX_REQUEST_BYTES
    assert request_slices(exact) == [(0, 2)]
    # One byte more (a character of two bytes for one of one) and they go apart.
    over = pl.Series([exact[0], exact[1][1:] + "é"])
    assert len(members_body(over.to_list())) == MAX_REQUEST_BYTES + 1
    assert request_slices(over) == [(0, 1), (1, 1)]
    # A member alone over the limit still goes alone, for Amazon to refuse.
    assert request_slices(pl.Series(["{}", "x" * MAX_REQUEST_BYTES, "{}"])) == [(0, 1), (1, 1), (2, 1)]


def test_the_country_identity_sends_no_hashed_pii_only_the_consent_country():
    snapshot = normalize_identities(
        pl.DataFrame({"user_id": ["a"], "email": ["a@example.com"], "country_code": ["Germany"]})
    ).frame

    [payload] = adm_members(snapshot, MemberRules(("email_lc_sha256", "country"), "GRANTED", "US")).frame[
        "payload"
    ]

    member = json.loads(payload)
    assert [set(entry) for entry in member["userIdentity"]["hashedPiis"]] == [{"em"}]
    assert member["userConsent"]["geo"] == {"countryCode": "DE"}
