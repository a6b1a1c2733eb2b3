"""The DSP Data Provider client and the sandbox, held to Amazon's `DataProvider_openapi.yaml`."""

import dataclasses
import json
import random
import uuid

import pytest

from audience_pipeline.clients.ads_api import AmazonAdsApiError
from audience_pipeline.clients.dsp import MAX_PATCH_BODY_BYTES, MAX_PATCHES_PER_REQUEST, DspClient, maid_patch
from audience_pipeline.sandbox.profiles import PROFILES

from .openapi import Exchange, problems

PROFILE_ID = PROFILES[0]["profileId"]


def maids(count: int) -> list[str]:
    rng = random.Random(count)
    return [str(uuid.UUID(int=rng.getrandbits(128), version=4)) for _ in range(count)]


@pytest.fixture
def dsp(recorded) -> DspClient:
    return DspClient(recorded.api, PROFILE_ID)


def create(dsp: DspClient):
    return dsp.create_audience(
        "Contract test audience", "MAIDs of the contract test", 123456789012, "contract-1", ["US"], ttl=0
    )


def raw_patch(recorded, body: bytes):
    """A PATCH the client would refuse to send, sent as it would send it, through its session."""
    api = recorded.api
    return api.session.patch(
        f"{api.base_url}/v2/dp/audience",
        data=body,
        headers={
            "Authorization": f"Bearer {api.access_token()}",
            "Amazon-Advertising-API-ClientId": api.client_id,
            "Content-Type": "application/json",
        },
        timeout=30,
    )


def test_every_data_provider_call_conforms_to_amazons_definition(recorded, dsp):
    audience = create(dsp)
    ids = maids(3)
    assert dsp.patch_audiences([maid_patch("add", maid, audience.id) for maid in ids])
    dsp.patch_audiences([maid_patch("remove", ids[0], audience.id)])
    fetched = dsp.get_audience(audience.id)
    assert (fetched.id, fetched.metadata.audience_size.received_record_size) == (audience.id, 2)
    assert dsp.get_audience(2**62 + 1) is None  # 404

    with pytest.raises(AmazonAdsApiError) as bad:
        dsp.patch_audiences([{"op": "add", "path": "/IDFA-1234/audiences", "value": [audience.id]}])
    assert bad.value.status == 400

    too_many = [maid_patch("add", maid, audience.id) for maid in maids(MAX_PATCHES_PER_REQUEST + 1)]
    # Within 2,000 patches but over 1 MB: every patch names the audience 60 times over.
    too_big = [{**patch, "value": [audience.id] * 60} for patch in too_many[:1_000]]
    bodies = [json.dumps({"patches": patches}).encode() for patches in (too_many, too_big)]
    assert len(bodies[1]) > MAX_PATCH_BODY_BYTES
    assert [raw_patch(recorded, body).status_code for body in bodies] == [413, 413]

    answered = {(e.method, e.status) for e in recorded.exchanges if e.path.startswith("/v2/dp/")}
    assert answered == {
        ("POST", 200),
        ("GET", 200),
        ("GET", 404),
        ("PATCH", 200),
        ("PATCH", 400),
        ("PATCH", 413),
    }
    recorded.check("data_provider")


def test_the_checker_catches_a_missing_required_field_and_an_invented_one(recorded, dsp):
    audience = create(dsp)
    dsp.get_audience(audience.id)
    [created] = [e for e in recorded.exchanges if e.method == "POST" and e.path.startswith("/v2/dp/")]
    [fetched] = [e for e in recorded.exchanges if e.method == "GET" and e.path.startswith("/v2/dp/")]
    assert problems([created, fetched]) == []

    sent = json.loads(created.request_body)
    del sent["description"]
    without_description = dataclasses.replace(created, request_body=json.dumps(sent).encode())
    assert problems([without_description]) == [
        "POST /v2/dp/audiencemetadata/ request: body: 'description' is a required property"
    ]

    answered = json.loads(fetched.response_body)
    answered["audience"]["metadata"]["audienceStatus"] = "ACTIVE"
    invented: Exchange = dataclasses.replace(fetched, response_body=json.dumps(answered).encode())
    [problem] = problems([invented])
    assert problem.startswith(f"GET {fetched.path} -> 200: audience/metadata: Additional properties")
    assert "audienceStatus" in problem
