"""The sandbox's ADM and DSP members on disk (`member_store`): requests only append, reads are SQL."""

import hashlib
import json
import random
import uuid

import duckdb
import pytest

from audience_pipeline.clients.adm import AdmClient
from audience_pipeline.clients.ads_api import AdsApiClient
from audience_pipeline.clients.dsp import DspClient, maid_patch
from audience_pipeline.sandbox import dsp as dsp_api
from audience_pipeline.sandbox.adm import MATCH_KEYS
from audience_pipeline.sandbox.config import SandboxConfig
from audience_pipeline.sandbox.identity_graph import is_known
from audience_pipeline.sandbox.member_store import (
    ADM,
    DSP,
    IDENTITY_PAIRS_SQL,
    MemberLog,
    adm_ops,
    identity_pairs,
)
from audience_pipeline.sandbox.profiles import PROFILES
from audience_pipeline.sandbox.server import start_sandbox
from audience_pipeline.sandbox.state import DUCKDB_MEMORY_LIMIT, SandboxState

MANAGER = "amzn1.ads-account.m.store"
PROFILE_ID = PROFILES[0]["profileId"]


def sha(value: str) -> str:
    return hashlib.sha256(value.encode()).hexdigest()


def member(user: str, identity: dict | None = None, action: str = "CREATE") -> dict:
    return {
        "externalUserId": user,
        "action": action,
        "userIdentity": identity if identity is not None else {"hashedPiis": [{"em": sha(user)}]},
        "userConsent": {"consent": {"amzn": {"amznAdStorage": "GRANTED", "amznUserData": "GRANTED"}}},
    }


def maids(count: int) -> list[str]:
    rng = random.Random(7)
    return [str(uuid.UUID(int=rng.getrandbits(128), version=4)) for _ in range(count)]


@pytest.fixture
def adm(ads_client) -> AdmClient:
    return AdmClient(ads_client, MANAGER)


@pytest.fixture
def dsp(ads_client) -> DspClient:
    return DspClient(ads_client, PROFILE_ID)


def dsp_audience(dsp: DspClient):
    return dsp.create_audience("Member store audience", "MAIDs", 123456789012, "store-1", ["US"])


class RecordingCursor:
    """A DuckDB cursor that notes every statement it is given."""

    def __init__(self, cursor, statements: list[str]):
        self._cursor, self._statements = cursor, statements

    def execute(self, query, *args, **kwargs):
        self._statements.append(query)
        return self._cursor.execute(query, *args, **kwargs)

    def sql(self, query, *args, **kwargs):
        self._statements.append(query)
        return self._cursor.sql(query, *args, **kwargs)

    def __getattr__(self, name):
        return getattr(self._cursor, name)


@pytest.fixture
def statements(sandbox, monkeypatch) -> list[str]:
    """Every statement the sandbox's handlers run from here on."""
    noted: list[str] = []
    state = sandbox.ads.state
    cursor = state.cursor
    monkeypatch.setattr(state, "cursor", lambda: RecordingCursor(cursor(), noted))
    return noted


def only_appended(statements: list[str], log: MemberLog) -> bool:
    """Whether these statements wrote to the log without reading it: a request's cost stays O(its
    members) whatever the audience holds."""
    touching = [s for s in statements if log.table in s]
    return bool(touching) and all(
        s.startswith(f"INSERT INTO {log.table} ") and s.count(log.table) == 1 for s in touching
    )


def test_a_dsp_patch_only_appends_its_own_changes(sandbox, dsp, statements):
    audience = dsp_audience(dsp)
    ids = maids(2_010)
    dsp.patch_audiences([maid_patch("add", maid, audience.id) for maid in ids[:2_000]])
    before = DSP.changes(sandbox.ads.state.cursor())
    statements.clear()

    patches = [maid_patch("add", maid, audience.id) for maid in ids[2_000:]]
    dsp.patch_audiences(patches + [maid_patch("remove", maid, audience.id) for maid in ids[:5]])

    # Reading, sorting or rewriting the 2,000 records held on a PATCH would make a bulk upload cost
    # the square of the audience: the PATCH logs its 15 changes and reads nothing.
    assert only_appended(statements, DSP)
    assert DSP.changes(sandbox.ads.state.cursor()) - before == 15
    assert sandbox.ads.state.members("dsp", str(audience.id)) == {"MAID": set(ids[5:])}


def test_an_adm_upload_only_appends_its_own_members_and_keeps_none_in_the_saved_records(
    sandbox, adm, statements
):
    audience = adm.create_audience("Appends_Only", "US")
    adm.upload_members(audience.data_set_id, [member(f"u{i}") for i in range(2_000)])
    before = ADM.changes(sandbox.ads.state.cursor())
    statements.clear()

    # Within one request a member's last op counts: u0 is deleted then created, u1 the reverse.
    ops = [member("u0", action="DELETE"), member("u0"), member("u1"), member("u1", action="DELETE")]
    assert adm.upload_members(audience.data_set_id, [*ops, member("new")]).errors == []

    assert only_appended(statements, ADM)
    assert ADM.changes(sandbox.ads.state.cursor()) - before == 3
    held = sandbox.ads.state.members("adm", audience.data_set_id)
    assert set(held) == {f"u{i}" for i in range(2_000) if i != 1} | {"new"}
    assert held["new"] == {"hashedPiis": [{"em": sha("new")}]}
    # The records `save()` writes hold no member.
    assert "u1999" not in json.dumps(sandbox.ads.state.data)


def reference_metrics(identities: dict[str, dict], config) -> tuple[int, int]:
    """(recordsWithIdentity, recordsResolved) member by member, with `is_known`."""
    pairs = {
        user: [(k, v) for kind in identity.values() for entry in kind for k, v in entry.items()]
        for user, identity in identities.items()
    }
    with_identity = sum(1 for found in pairs.values() if found)
    resolved = sum(
        1
        for found in pairs.values()
        if any(
            k in MATCH_KEYS and is_known(v, seed=config.seed, known_share=config.known_share)
            for k, v in found
        )
    )
    return with_identity, resolved


def test_adm_metrics_match_the_identity_graph_member_by_member(sandbox, adm):
    audience = adm.create_audience("Metrics_Batches", "US")
    identities = {}
    for i in range(120):
        shape = i % 5
        if shape == 0:
            identities[f"u{i}"] = {"hashedPiis": [{"em": sha(f"e{i}"), "ph": sha(f"p{i}")}]}
        elif shape == 1:  # no key that singles out a person: carries an identity, never resolves
            identities[f"u{i}"] = {"hashedPiis": [{"fn": sha(f"f{i}"), "zip": sha(f"z{i}")}]}
        elif shape == 2:
            identities[f"u{i}"] = {
                "externalIdentities": [{"maId": str(uuid.UUID(int=i))}, {"liveRampId": f"L{i}"}]
            }
        elif shape == 3:  # no identity at all
            identities[f"u{i}"] = {"hashedPiis": []}
        else:
            identities[f"u{i}"] = {
                "hashedPiis": [{"em": sha(f"e{i}")}, {"ln": sha(f"l{i}")}],
                "externalIdentities": [{"merkleId": f"M{i}"}],
            }
    adm.upload_members(
        audience.data_set_id, [member(user, identity) for user, identity in identities.items()]
    )
    # Replaced and deleted members count as they now are.
    identities["u0"] = {"hashedPiis": [{"fn": sha("changed")}]}
    adm.upload_members(audience.data_set_id, [member("u0", identities["u0"]), member("u5", action="DELETE")])
    del identities["u5"]

    metrics = adm.metrics(audience.data_set_id)

    with_identity, resolved = reference_metrics(identities, sandbox.ads.config)
    assert 0 < resolved < with_identity < len(identities)
    assert (metrics.records_with_identity, metrics.records_resolved) == (with_identity, resolved)
    assert metrics.match_record_percentage == round(100 * resolved / with_identity, 2)
    assert sandbox.ads.state.members("adm", audience.data_set_id) == identities


def test_a_dsp_audience_size_counts_every_record_and_matches_maids_across_batches(sandbox, dsp, monkeypatch):
    monkeypatch.setattr(dsp_api, "MATCH_BATCH_ROWS", 7)
    audience = dsp_audience(dsp)
    ids = maids(100)
    cookies = [{"op": "add", "path": f"/COOKIE-c{i}/audiences", "value": [audience.id]} for i in range(3)]
    dsp.patch_audiences([maid_patch("add", maid, audience.id) for maid in ids] + cookies)
    dsp.patch_audiences([maid_patch("remove", maid, audience.id) for maid in ids[:10]])

    size = dsp.get_audience(audience.id).metadata.audience_size

    config = sandbox.ads.config
    matched = sum(is_known(maid, seed=config.seed, known_share=config.known_share) for maid in ids[10:])
    assert (size.received_record_size, size.matched_record_size) == (93, matched)
    assert sandbox.ads.state.members("dsp", str(audience.id)) == {
        "MAID": set(ids[10:]),
        "COOKIE": {"c0", "c1", "c2"},
    }


def test_identity_deletion_matches_key_and_value_across_the_accounts_datasets_only(sandbox, adm, ads_client):
    other = AdmClient(ads_client, "amzn1.ads-account.m.other")
    mine = [adm.create_audience(f"Mine_{n}", "US") for n in ("One", "Two")]
    theirs = other.create_audience("Theirs_One", "US")
    identities = {
        "a": {"hashedPiis": [{"em": sha("a"), "fn": sha("shared")}]},
        "b": {"hashedPiis": [{"ln": sha("shared")}]},  # the same value under another key: spared
        "c": {"externalIdentities": [{"liveRampId": "LR-c"}]},
        "d": {"hashedPiis": [{"em": sha("d")}]},
    }
    for client, audience in ((adm, mine[0]), (adm, mine[1]), (other, theirs)):
        client.upload_members(audience.data_set_id, [member(u, i) for u, i in identities.items()])

    adm.delete_identities(
        [
            {"identity": {"hashedPiis": [{"fn": sha("shared")}]}},
            {"identity": {"externalIdentities": [{"liveRampId": "LR-c"}]}},
            {"externalUserId": "d"},
            {"externalUserId": "nobody"},
        ]
    )

    for audience in mine:
        assert sandbox.ads.state.members("adm", audience.data_set_id) == {"b": identities["b"]}
    assert sandbox.ads.state.members("adm", theirs.data_set_id) == identities
    # A deleted member sent again is held again.
    adm.upload_members(mine[0].data_set_id, [member("d", identities["d"])])
    assert set(sandbox.ads.state.members("adm", mine[0].data_set_id)) == {"b", "d"}


def test_adm_members_kept_on_disk_survive_a_restart(tmp_path):
    identities = {f"u{i}": {"hashedPiis": [{"em": sha(f"u{i}")}]} for i in range(6)}
    first = start_sandbox(config=SandboxConfig(state_dir=tmp_path))
    try:
        adm = AdmClient(
            AdsApiClient("c", "s", "r", base_url=first.ads_url, token_url=first.token_url), MANAGER
        )
        data_set_id = adm.create_audience("Kept_On_Disk", "US").data_set_id
        adm.upload_members(data_set_id, [member(user, identity) for user, identity in identities.items()])
        adm.upload_members(data_set_id, [member("u0", action="DELETE")])
        adm.delete_identities([{"externalUserId": "u1"}])
        before = adm.metrics(data_set_id)
    finally:
        first.stop()
        first.ads.state.close()

    second = start_sandbox(config=SandboxConfig(state_dir=tmp_path))
    try:
        api = AdsApiClient("c", "s", "r", base_url=second.ads_url, token_url=second.token_url)
        after = AdmClient(api, MANAGER).metrics(data_set_id)
        assert after == before and after.records_with_identity == 4
        assert second.ads.state.members("adm", data_set_id) == {
            user: identity for user, identity in identities.items() if user not in ("u0", "u1")
        }
        # The saved records hold datasets and counters, no member.
        assert "u2" not in (tmp_path / "state.json").read_text()
    finally:
        second.stop()
        second.ads.state.close()


def test_a_reset_forgets_the_members(sandbox, adm, dsp):
    data_set_id = adm.create_audience("Forgotten", "US").data_set_id
    adm.upload_members(data_set_id, [member("u1")])
    audience = dsp_audience(dsp)
    dsp.patch_audiences([maid_patch("add", maids(1)[0], audience.id)])

    sandbox.ads.state.reset()

    assert sandbox.ads.state.members("adm", data_set_id) == {}
    assert sandbox.ads.state.members("dsp", str(audience.id)) == {}
    assert ADM.changes(sandbox.ads.state.cursor()) == DSP.changes(sandbox.ads.state.cursor()) == 0


@pytest.mark.parametrize(
    "identity",
    [
        {},
        {"hashedPiis": []},
        {"externalIdentities": [{"maId": "m"}], "hashedPiis": [{"em": "e", "ph": "p"}, {"fn": "f"}]},
        {"hashedPiis": [{"zip": "z"}], "externalIdentities": [{"liveRampId": "l"}, {"kantarId": "k"}]},
    ],
)
def test_a_stored_identity_reads_back_as_sent_and_its_sql_pairs_are_identity_pairs(identity):
    state = SandboxState()
    cursor = state.cursor()
    ADM.append(cursor, adm_ops("ds", {"u": identity}, [False]), state.next_batch())
    [(pairs,)] = cursor.execute(
        f"SELECT {IDENTITY_PAIRS_SQL} FROM ({ADM.live(['identity'])})", {"collections": ["ds"]}
    ).fetchall()
    assert [(pair["key"], pair["value"]) for pair in pairs] == identity_pairs(identity)
    assert state.members("adm", "ds") == {"u": identity}
    state.close()


def test_without_a_state_directory_the_database_is_a_scratch_file_with_a_memory_limit():
    state = SandboxState()
    [(limit, spill)] = state.db.execute(
        "SELECT current_setting('memory_limit'), current_setting('temp_directory')"
    ).fetchall()
    configured = duckdb.connect(config={"memory_limit": DUCKDB_MEMORY_LIMIT})
    [(expected,)] = configured.execute("SELECT current_setting('memory_limit')").fetchall()
    # On disk, so table data need not stay in memory, and queries spill next to it past the limit.
    assert state.database.exists()
    assert (limit, spill) == (expected, f"{state.database}.tmp")
    state.close()
    assert not state.database.parent.exists()
