"""Amazon DSP Data Provider API: the client against the sandbox over real HTTP."""

import json
import random
import uuid

import pytest

from audience_pipeline.clients.ads_api import AdsApiClient, AmazonAdsApiError
from audience_pipeline.clients.dsp import (
    MAX_PATCH_BODY_BYTES,
    DspClient,
    maid_patch,
    patch_batches,
)
from audience_pipeline.sandbox.config import SandboxConfig
from audience_pipeline.sandbox.identity_graph import is_known
from audience_pipeline.sandbox.member_store import DSP
from audience_pipeline.sandbox.profiles import PROFILES
from audience_pipeline.sandbox.server import start_sandbox

from ..conftest import add_fault, journal

PROFILE_ID = PROFILES[0]["profileId"]


def maids(count: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    return [str(uuid.UUID(int=rng.getrandbits(128), version=4)) for _ in range(count)]


@pytest.fixture
def dsp(ads_client) -> DspClient:
    return DspClient(ads_client, PROFILE_ID)


def create(dsp: DspClient, external_id: str = "aud-1"):
    return dsp.create_audience("Sandbox MAID audience", "IDFA and GAID", 123456789012, external_id, ["US"])


def error_field(error: AmazonAdsApiError) -> str:
    return error.body["error"]["errors"][0]["fieldName"]


def held(sandbox, audience_id: int, record_type: str = "MAID") -> set[str]:
    """The records of one type the sandbox's DSP audience holds."""
    return sandbox.ads.state.members("dsp", str(audience_id)).get(record_type, set())


def test_audience_ids_exceed_2_to_the_53_and_stay_exact(sandbox, dsp):
    audience = create(dsp)
    assert isinstance(audience.id, int) and audience.id > 2**53
    assert audience.metadata.external_audience_id == "aud-1"
    fetched = dsp.get_audience(audience.id)
    assert fetched.id == audience.id
    assert fetched.metadata.audience_size.received_record_size == 0
    assert str(audience.id) in sandbox.ads.state.family("dsp")["audiences"]
    assert dsp.get_audience(2**60 + 1) is None


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"name": "too short"}, "name"),
        ({"description": None}, "description"),
        ({"advertiserId": "123"}, "advertiserId"),
        (
            {"metadata": {"type": "ADVERTISER", "externalAudienceId": "a", "dataSourceCountry": ["US"]}},
            "metadata.type",
        ),
        (
            {
                "metadata": {
                    "type": "DATA_PROVIDER",
                    "externalAudienceId": "a",
                    "dataSourceCountry": ["US"],
                    "ttl": 34300801,
                }
            },
            "metadata.ttl",
        ),
        (
            {"metadata": {"type": "DATA_PROVIDER", "externalAudienceId": "a", "dataSourceCountry": []}},
            "metadata.dataSourceCountry",
        ),
    ],
)
def test_invalid_audiences_are_refused_naming_the_field(ads_client, change, field):
    body = {
        "name": "Valid audience name",
        "description": "d",
        "advertiserId": 1,
        "metadata": {"type": "DATA_PROVIDER", "externalAudienceId": "a", "dataSourceCountry": ["US"]},
        **change,
    }
    with pytest.raises(AmazonAdsApiError) as error:
        ads_client.request("POST", "/v2/dp/audiencemetadata/", json_body=body)
    assert error.value.status == 400
    assert error_field(error.value) == field


def test_ttl_0_and_audience_fees_are_taken_as_defined(ads_client):
    metadata = {
        "type": "DATA_PROVIDER",
        "externalAudienceId": "a",
        "dataSourceCountry": ["US"],
        "ttl": 0,
        "audienceFees": [{"cpmCents": 150, "currency": "USD"}],
    }
    body = {"name": "Valid audience name", "description": "", "advertiserId": 1, "metadata": metadata}
    created = ads_client.request("POST", "/v2/dp/audiencemetadata/", json_body=body)
    assert created["audience"]["metadata"] == metadata


def test_the_profile_scope_is_optional_but_must_be_known(ads_client):
    # The definition lists no Amazon-Advertising-API-Scope header: without one, the call goes through.
    with pytest.raises(AmazonAdsApiError) as error:
        ads_client.request("GET", "/v2/dp/audiencemetadata/1")
    assert (error.value.status, error_field(error.value)) == (404, "audienceId")
    with pytest.raises(AmazonAdsApiError) as error:
        ads_client.request("GET", "/v2/dp/audiencemetadata/1", headers={"Amazon-Advertising-API-Scope": "42"})
    assert error.value.status == 403


def test_a_body_must_come_as_json(sandbox, ads_client, dsp):
    audience = create(dsp)
    body = json.dumps({"patches": [maid_patch("add", maids(1)[0], audience.id)]})
    auth = {
        "Authorization": f"Bearer {ads_client.access_token()}",
        "Amazon-Advertising-API-ClientId": ads_client.client_id,
    }
    for content_type in ({}, {"Content-Type": "text/plain"}):
        response = ads_client.session.patch(
            f"{sandbox.ads_url}/v2/dp/audience", data=body, headers={**auth, **content_type}, timeout=10
        )
        assert response.status_code == 400
        assert response.json()["error"]["errors"][0]["fieldName"] == "Content-Type"
    assert held(sandbox, audience.id) == set()


def test_patches_add_and_remove_maids(sandbox, dsp):
    audience, other = create(dsp), create(dsp, "aud-2")
    ids = maids(10)
    assert dsp.patch_audiences([maid_patch("add", maid, audience.id) for maid in ids])
    dsp.patch_audiences([maid_patch("remove", maid.upper(), audience.id) for maid in ids[:3]])
    dsp.patch_audiences([maid_patch("add", ids[0], other.id), maid_patch("add", ids[0], other.id)])
    assert held(sandbox, audience.id) == set(ids[3:])
    assert held(sandbox, other.id) == {ids[0]}
    assert dsp.get_audience(audience.id).metadata.audience_size.received_record_size == 7


def test_more_than_2000_patches_or_1_mb_is_413(ads_client, dsp):
    audience = create(dsp)
    patches = [maid_patch("add", maid, audience.id) for maid in maids(2_001)]
    with pytest.raises(ValueError):
        dsp.patch_audiences(patches)
    for body in (
        {"patches": patches},
        {"patches": [{**p, "consent": {"padding": "x" * 1_000}} for p in patches[:1_500]]},
    ):
        with pytest.raises(AmazonAdsApiError) as error:
            ads_client.request("PATCH", "/v2/dp/audience", json_body=body)
        assert error.value.status == 413
        assert "fieldName" not in error.value.body["error"]["errors"][0]


@pytest.mark.parametrize(
    ("bad", "field"),
    [
        ({"path": "/MAID-not-a-uuid/audiences"}, "patches[1].path"),
        ({"path": "/IDFA-123e4567-e89b-12d3-a456-426614174000/audiences"}, "patches[1].path"),
        ({"path": "/MAID-123e4567-e89b-12d3-a456-426614174000/audiences\n"}, "patches[1].path"),
        ({"op": "replace"}, "patches[1].op"),
        ({"value": [12345]}, "patches[1].value"),
        ({"value": ["12345"]}, "patches[1].value"),
        ({"path": "/COOKIE-/audiences"}, "patches[1].path"),
        (
            {"consent": {"consentType": "Amazon", "amazonConsent": {"amazonAdStorage": "GRANTED"}}},
            "patches[1].consent.amazonConsent",
        ),
    ],
)
def test_a_bad_patch_refuses_the_request_naming_the_field(sandbox, dsp, bad, field):
    audience = create(dsp)
    first, second = (maid_patch("add", maid, audience.id) for maid in maids(2))
    with pytest.raises(AmazonAdsApiError) as error:
        dsp.patch_audiences([first, {**second, **bad}])
    assert (error.value.status, error_field(error.value)) == (400, field)
    assert held(sandbox, audience.id) == set()


def test_cookies_and_external_user_ids_are_kept_apart_from_maids(sandbox, dsp):
    audience = create(dsp)
    maid = maids(1)[0]
    patches = [
        maid_patch("add", maid, audience.id),
        {"op": "add", "path": "/COOKIE-EMpBAI0GRcK4nBNGpPGg5g/audiences", "value": [audience.id]},
        {"op": "add", "path": f"/EXTERNAL_USER_ID-{maid}/audiences", "value": [audience.id]},
    ]
    dsp.patch_audiences(patches)
    assert held(sandbox, audience.id) == {maid}
    assert held(sandbox, audience.id, "COOKIE") == {"EMpBAI0GRcK4nBNGpPGg5g"}
    assert held(sandbox, audience.id, "EXTERNAL_USER_ID") == {maid}
    dsp.patch_audiences([{**patches[2], "op": "remove"}])
    assert held(sandbox, audience.id) == {maid} and held(sandbox, audience.id, "EXTERNAL_USER_ID") == set()
    assert dsp.get_audience(audience.id).metadata.audience_size.received_record_size == 2


def test_match_rate_follows_the_identity_graph(sandbox, dsp):
    audience = create(dsp)
    ids = maids(1_500, seed=7)
    for batch in patch_batches([maid_patch("add", maid, audience.id) for maid in ids]):
        dsp.patch_audiences(batch)
    size = dsp.get_audience(audience.id).metadata.audience_size
    config = sandbox.ads.config
    expected = sum(is_known(maid, seed=config.seed, known_share=config.known_share) for maid in ids)
    assert (size.received_record_size, size.matched_record_size) == (1_500, expected)
    assert size.match_rate == pytest.approx(config.known_share, abs=0.05)


def test_patches_ride_out_throttling_and_server_errors(sandbox, dsp):
    audience = create(dsp)
    add_fault(sandbox.ads_url, route="PATCH /v2/dp/audience", status=429, count=1, retry_after=0)
    add_fault(sandbox.ads_url, route="PATCH /v2/dp/audience", status=500, count=1)
    dsp.patch_audiences([maid_patch("add", maid, audience.id) for maid in maids(4)])
    assert [e["status"] for e in journal(sandbox.ads_url) if e["method"] == "PATCH"] == [429, 500, 200]
    assert dsp.get_audience(audience.id).metadata.audience_size.received_record_size == 4


def test_records_kept_on_disk_survive_a_restart_and_a_patch_writes_only_its_own_changes(tmp_path):
    first = start_sandbox(config=SandboxConfig(state_dir=tmp_path))
    try:
        api = AdsApiClient("c", "s", "r", base_url=first.ads_url, token_url=first.token_url)
        dsp = DspClient(api, PROFILE_ID)
        audience = create(dsp)
        a, b, c, d = maids(4)
        saves = []
        first.ads.state.save = lambda: saves.append(1)
        dsp.patch_audiences([maid_patch("add", maid, audience.id) for maid in (a, b, c)])
        dsp.patch_audiences([maid_patch("remove", b, audience.id), *[maid_patch("add", d, audience.id)] * 2])
        # Writing the whole state after each PATCH is what made a bulk upload quadratic: each PATCH
        # appends its own changes (a record's last op) to the log, 3 and then 2, whatever the audience.
        assert saves == []
        assert DSP.changes(first.ads.state.cursor()) == 5
    finally:
        first.stop()
        # Closed, so the next sandbox reads the members back from the file, not from this connection.
        first.ads.state.close()

    second = start_sandbox(config=SandboxConfig(state_dir=tmp_path))
    try:
        assert held(second, audience.id) == {a, c, d}
        api = AdsApiClient("c", "s", "r", base_url=second.ads_url, token_url=second.token_url)
        size = DspClient(api, PROFILE_ID).get_audience(audience.id).metadata.audience_size
        assert size.received_record_size == 3
    finally:
        second.stop()


def test_batches_stay_within_the_count_and_size_limits():
    small = [maid_patch("add", maid, 2**60) for maid in maids(4_500)]
    assert [len(batch) for batch in patch_batches(small)] == [2_000, 2_000, 500]
    large = [{**patch, "consent": {"padding": "x" * 2_000}} for patch in small[:1_200]]
    batches = list(patch_batches(large))
    assert sum(len(batch) for batch in batches) == 1_200 and len(batches) == 3
    assert all(len(json.dumps({"patches": batch}).encode()) <= MAX_PATCH_BODY_BYTES for batch in batches)
