"""Login with Amazon, the bearer check, and the admin API both servers share — over real HTTP."""

import threading
import time

import pytest
import requests

from audience_pipeline.clients.ads_api import (
    AdsApiClient,
    AuthenticationError,
    ServerError,
    ThrottledError,
    _parse,
)
from audience_pipeline.sandbox.config import SandboxConfig
from audience_pipeline.sandbox.server import start_sandbox

from ..conftest import add_fault, clear_faults, journal, wait_for


def test_token_endpoint_issues_bearer_tokens(sandbox):
    response = requests.post(
        sandbox.token_url,
        data={"grant_type": "refresh_token", "refresh_token": "r", "client_id": "c", "client_secret": "s"},
        timeout=10,
    )
    assert response.status_code == 200
    body = response.json()
    assert body["token_type"] == "bearer"
    assert body["access_token"].startswith("Atza|")
    assert body["expires_in"] == 3600


def test_revoked_refresh_token_is_invalid_grant(sandbox):
    client = AdsApiClient("c", "s", "revoked-123", base_url=sandbox.ads_url, token_url=sandbox.token_url)
    with pytest.raises(AuthenticationError) as error:
        client.request("GET", "/v2/profiles")
    assert error.value.status == 400
    assert error.value.body["error"] == "invalid_grant"


def test_calls_without_a_valid_token_get_401(sandbox):
    response = requests.get(
        f"{sandbox.ads_url}/v2/profiles", headers={"Authorization": "Bearer nope"}, timeout=10
    )
    assert response.status_code == 401
    response = requests.get(f"{sandbox.ads_url}/adm/audiences", timeout=10)
    assert response.status_code == 401
    # Ads Data Manager's error `code` is the HTTP status, as a string (its OpenAPI file).
    assert response.json()["code"] == "401"


def test_profiles_keep_ids_above_2_to_the_53(ads_client):
    profiles = ads_client.request("GET", "/v2/profiles")
    assert all(p["profileId"] > 2**53 for p in profiles)
    assert {p["countryCode"] for p in profiles} >= {"US", "UK", "DE", "JP"}


def test_client_refreshes_an_expired_token_once():
    running = start_sandbox(config=SandboxConfig(token_ttl_seconds=1))
    try:
        client = AdsApiClient("c", "s", "r", base_url=running.ads_url, token_url=running.token_url)
        # Pretend the cached token is still fresh so the server's 401 is what triggers the refresh.
        client.access_token()
        client._token_expires = float("inf")
        time.sleep(1.2)
        assert client.request("GET", "/v2/profiles")
        statuses = [e["status"] for e in journal(running.ads_url) if e["path"] == "/v2/profiles"]
        assert statuses == [401, 200]
    finally:
        running.stop()


def test_throttling_is_retried_honouring_retry_after(sandbox, ads_client):
    waits = []
    ads_client._sleep = waits.append
    add_fault(sandbox.ads_url, route="GET /v2/profiles", status=429, count=2, retry_after=3)
    assert ads_client.request("GET", "/v2/profiles")
    assert [e["status"] for e in journal(sandbox.ads_url) if e["path"] == "/v2/profiles"] == [429, 429, 200]
    assert waits and all(w >= 3 for w in waits)
    assert ads_client.retries == 2


def test_throttling_past_the_retry_limit_raises_with_amazons_body(sandbox, ads_client):
    add_fault(sandbox.ads_url, route="GET /v2/profiles", status=429)
    with pytest.raises(ThrottledError) as error:
        ads_client.request("GET", "/v2/profiles")
    assert error.value.status == 429
    profile_calls = [e for e in journal(sandbox.ads_url) if e["path"] == "/v2/profiles"]
    assert len(profile_calls) == ads_client.max_retries + 1


def test_faults_can_be_cleared_and_bad_rules_are_refused(sandbox):
    add_fault(sandbox.ads_url, route="GET /v2/profiles", status=503)
    clear_faults(sandbox.ads_url)
    refused = requests.post(f"{sandbox.ads_url}/_sandbox/faults", json={"route": "x", "rate": 2}, timeout=10)
    assert refused.status_code == 400


def test_aws_server_speaks_s3_and_takes_faults(sandbox):
    import boto3

    s3 = boto3.client("s3", endpoint_url=sandbox.aws_url, **_aws_keys())
    s3.create_bucket(Bucket="sandbox-test")
    s3.put_object(Bucket="sandbox-test", Key="a.txt", Body=b"hello")
    assert s3.get_object(Bucket="sandbox-test", Key="a.txt")["Body"].read() == b"hello"
    add_fault(sandbox.aws_url, route="GET /sandbox-test", status=500)
    with pytest.raises(Exception, match="InternalError"):
        boto3.client("s3", endpoint_url=sandbox.aws_url, config=_no_retries(), **_aws_keys()).get_object(
            Bucket="sandbox-test", Key="a.txt"
        )
    requests.post(f"{sandbox.aws_url}/_sandbox/reset", timeout=10).raise_for_status()
    assert "Buckets" not in s3.list_buckets() or s3.list_buckets()["Buckets"] == []


def _aws_keys() -> dict:
    return {"aws_access_key_id": "sandbox", "aws_secret_access_key": "sandbox", "region_name": "us-east-1"}


def _no_retries():
    from botocore.config import Config

    return Config(retries={"max_attempts": 1, "mode": "standard"})


def test_server_errors_are_retried_for_reads_but_never_for_creating_posts(sandbox, ads_client):
    add_fault(sandbox.ads_url, route="GET /v2/profiles", status=500, count=1)
    assert ads_client.request("GET", "/v2/profiles")
    add_fault(sandbox.ads_url, route="POST /adm/audiences", status=500, count=1)
    with pytest.raises(ServerError):
        ads_client.request(
            "POST",
            "/adm/audiences",
            json_body={"name": "never_twice", "countryCode": "US"},
            headers={"Amazon-Ads-Manager-Account-ID": "amzn1.sandbox"},
        )
    creates = [e for e in journal(sandbox.ads_url) if e["path"] == "/adm/audiences"]
    assert [e["status"] for e in creates] == [500]


def test_slow_answers_time_out_and_reads_are_retried(sandbox):
    client = AdsApiClient(
        "c",
        "s",
        "r",
        base_url=sandbox.ads_url,
        token_url=sandbox.token_url,
        timeout=0.5,
        sleep=lambda s: None,
    )
    add_fault(sandbox.ads_url, route="GET /v2/profiles", latency_ms=1500, rate=1.0)
    with pytest.raises(requests.Timeout):
        client.request("GET", "/v2/profiles")
    assert client.retries == client.max_retries


def test_a_barrier_holds_its_first_requests_until_all_have_arrived_then_lets_later_ones_through(sandbox):
    """A barrier of 2 shows two clients in flight at once: neither is answered before the other arrived
    (the first waits as long as the second takes), and a third request is answered at once."""
    client = AdsApiClient("c", "s", "r", base_url=sandbox.ads_url, token_url=sandbox.token_url)
    client.access_token()
    add_fault(sandbox.ads_url, route="GET /v2/profiles", barrier=2, barrier_timeout_s=60)
    # On the sandbox's clock (it runs in this process): an earlier test's slow calls may end meanwhile.
    since = time.monotonic()
    first = threading.Thread(target=client.request, args=("GET", "/v2/profiles"))
    first.start()
    wait_for(lambda: sandbox.ads.faults.held() == 1, 30, "the first request to be held", every=0.02)
    client.request("GET", "/v2/profiles")
    assert sandbox.ads.faults.held() == 0
    first.join()
    client.request("GET", "/v2/profiles")
    calls = [e for e in journal(sandbox.ads_url) if e["path"] == "/v2/profiles" and e["started"] >= since]
    held_1, held_2, later = sorted(calls, key=lambda e: e["started"])
    assert max(held_1["started"], held_2["started"]) <= min(held_1["ended"], held_2["ended"])
    assert held_2["ended"] - held_2["started"] < held_1["ended"] - held_1["started"]
    assert later["started"] >= max(held_1["ended"], held_2["ended"])
    assert all(e["status"] == 200 for e in (held_1, held_2, later))


def test_a_barrier_whose_others_never_come_lets_its_request_on(sandbox):
    client = AdsApiClient("c", "s", "r", base_url=sandbox.ads_url, token_url=sandbox.token_url)
    add_fault(sandbox.ads_url, route="GET /v2/profiles", barrier=2, barrier_timeout_s=0.2)
    assert client.request("GET", "/v2/profiles") is not None


def test_json_is_parsed_whatever_the_content_type_and_big_ids_stay_exact():
    response = requests.Response()
    response.status_code = 200
    response.headers["Content-Type"] = "application/octet-stream"
    response._content = b'{"audienceId": 9007199254740993123}'
    assert _parse(response) == {"audienceId": 9007199254740993123}
