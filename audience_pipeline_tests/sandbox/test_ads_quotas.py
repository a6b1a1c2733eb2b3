"""Request-rate quotas on the sandbox's Amazon Ads API: past the rate, Amazon's 429 with Retry-After."""

import hashlib

import pytest
import requests

from audience_pipeline.clients.adm import MEMBERS_MEDIA_TYPE, AdmClient
from audience_pipeline.clients.dsp import DspClient, maid_patch

from ..conftest import journal
from .test_dsp import PROFILE_ID, create, held, maids

PATCH_ROUTE = "PATCH /v2/dp/audience"
MEMBERS_ROUTE = "POST /adm/audiences/"


def set_quota(sandbox, route: str, requests_per_second: float) -> None:
    answer = requests.post(
        f"{sandbox.ads_url}/_sandbox/ads-quotas",
        json={"route": route, "requests_per_second": requests_per_second},
        timeout=10,
    )
    answer.raise_for_status()


def quota_counts(sandbox) -> dict:
    return requests.get(f"{sandbox.ads_url}/_sandbox/ads-quotas", timeout=10).json()


def call(ads_client, method: str, path: str, body: bytes, content_type: str) -> requests.Response:
    """One request as the client sends it, without its retries: the answer as the sandbox gave it."""
    headers = {
        "Authorization": f"Bearer {ads_client.access_token()}",
        "Amazon-Advertising-API-ClientId": ads_client.client_id,
        "Amazon-Ads-Manager-Account-ID": "amzn1.ads-account.quota",
        "Content-Type": content_type,
    }
    return requests.request(method, f"{ads_client.base_url}{path}", data=body, headers=headers, timeout=10)


def test_a_patch_over_the_quota_is_amazons_429_with_retry_after_and_changes_nothing(sandbox, ads_client):
    dsp = DspClient(ads_client, PROFILE_ID)
    audience = create(dsp)
    set_quota(sandbox, PATCH_ROUTE, 2)
    ids = maids(3)
    for maid in ids[:2]:
        dsp.patch_audiences([maid_patch("add", maid, audience.id)])

    body = f'{{"patches":[{{"op":"add","path":"/MAID-{ids[2]}/audiences","value":[{audience.id}]}}]}}'
    refused = call(ads_client, "PATCH", "/v2/dp/audience", body.encode(), "application/json")

    assert (refused.status_code, refused.headers["Retry-After"]) == (429, "1")
    assert refused.json()["error"]["httpStatusCode"] == "429"  # the Data Provider's error body
    assert held(sandbox, audience.id) == set(ids[:2])
    assert [e["status"] for e in journal(sandbox.ads_url) if e["method"] == "PATCH"] == [200, 200, 429]
    assert quota_counts(sandbox) == {PATCH_ROUTE: {"taken": 2, "throttled": 1}}


def test_a_member_upload_over_the_quota_is_refused_in_adms_error_body_and_other_routes_pass(
    sandbox, ads_client
):
    adm = AdmClient(ads_client, "amzn1.ads-account.quota")
    dataset = adm.create_audience("Quota_Test", "US")
    # Under one request a second: the bucket still holds one request, and the next is 2 s away.
    set_quota(sandbox, MEMBERS_ROUTE, 0.5)
    member = {
        "externalUserId": "u1",
        "action": "CREATE",
        "userIdentity": {"hashedPiis": [{"em": hashlib.sha256(b"u1").hexdigest()}]},
    }
    adm.upload_members(dataset.data_set_id, [member])

    path = f"/adm/audiences/{dataset.data_set_id}/members"
    refused = call(ads_client, "POST", path, b'{"members":[]}', MEMBERS_MEDIA_TYPE)

    assert (refused.status_code, refused.headers["Retry-After"]) == (429, "2")
    assert refused.json()["code"] == "429" and refused.json()["errors"][0]["errorCode"] == 429
    # Dataset calls are not member uploads: `POST /adm/audiences` has no trailing slash.
    assert adm.create_audience("Quota_Other", "US") and adm.find_audience("Quota_Test")
    assert quota_counts(sandbox) == {MEMBERS_ROUTE: {"taken": 1, "throttled": 1}}


@pytest.mark.parametrize(
    ("quota", "field"),
    [
        ({"route": PATCH_ROUTE, "requests_per_second": 0}, "requests_per_second"),
        ({"route": "/v2/dp/audience", "requests_per_second": 5}, "route"),
    ],
)
def test_a_bad_quota_is_refused_naming_the_field(sandbox, quota, field):
    answer = requests.post(f"{sandbox.ads_url}/_sandbox/ads-quotas", json=quota, timeout=10)
    assert answer.status_code == 400 and answer.json()["details"][0]["loc"] == [field]


def test_a_reset_forgets_the_quotas(sandbox, ads_client):
    set_quota(sandbox, "GET /v2/profiles", 1)
    requests.post(f"{sandbox.ads_url}/_sandbox/reset", timeout=10).raise_for_status()

    assert quota_counts(sandbox) == {}
    assert [ads_client.request("GET", "/v2/profiles") for _ in range(3)]
