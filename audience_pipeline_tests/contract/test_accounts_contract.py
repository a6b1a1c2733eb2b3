"""The login's calls, held to Amazon's definitions both ways: Login with Amazon's token grants and user
profile, the profiles, manager accounts, AMC accounts and AMC instances listings."""

import dataclasses
import json
from urllib.parse import parse_qs, urlencode, urlsplit

import pytest

from audience_pipeline.clients.accounts import (
    linked_user_name,
    list_amc_instances,
    list_manager_accounts,
    list_profiles,
)
from audience_pipeline.clients.ads_api import AdsApiClient, AmazonAdsApiError, AuthenticationError
from audience_pipeline.sandbox.auth import USER

from ..test_login import REDIRECT_URI, allow
from .openapi import operation_of, problems, recording_session, response_problems


def test_token_grants_conform(recorded, sandbox):
    recorded.api.access_token()
    query = {
        "client_id": recorded.api.client_id,
        "scope": "advertising::campaign_management",
        "response_type": "code",
        "redirect_uri": REDIRECT_URI,
    }
    location = allow(f"{sandbox.auth_url}?{urlencode(query)}")
    code = parse_qs(urlsplit(location).query)["code"][0]

    assert recorded.api.authorize(code, REDIRECT_URI).startswith("Atzr|")
    with pytest.raises(AuthenticationError):
        recorded.api.authorize(code, REDIRECT_URI)

    assert [e.status for e in recorded.exchanges] == [200, 200, 400]
    recorded.check("login_with_amazon")


def test_user_profile_conforms(recorded, sandbox):
    def signed_in(scope: str) -> AdsApiClient:
        """A recording client with the refresh token of a login that allowed `scope`."""
        query = {
            "client_id": "sandbox-client",
            "scope": scope,
            "response_type": "code",
            "redirect_uri": REDIRECT_URI,
        }
        code = parse_qs(urlsplit(allow(f"{sandbox.auth_url}?{urlencode(query)}")).query)["code"][0]
        api = AdsApiClient(
            "sandbox-client",
            "sandbox-secret",
            "",
            base_url=sandbox.ads_url,
            token_url=sandbox.token_url,
            session=recording_session(recorded.exchanges),
        )
        api.authorize(code, REDIRECT_URI)
        return api

    assert linked_user_name(recorded.api) == USER["name"]
    assert linked_user_name(signed_in("advertising::campaign_management profile:user_id")) is None
    with pytest.raises(AmazonAdsApiError) as no_profile:
        linked_user_name(signed_in("advertising::campaign_management"))
    profile_url = f"{sandbox.ads_url}/user/profile"
    unknown = recorded.api.session.get(profile_url, headers={"x-amz-access-token": "Atza|unknown"})
    missing = recorded.api.session.get(profile_url)

    assert (no_profile.value.status, no_profile.value.body["error"]) == (403, "insufficient_scope")
    assert (unknown.status_code, unknown.json()["error"]) == (401, "invalid_token")
    assert (missing.status_code, missing.json()["error"]) == (400, "invalid_request")
    # The whole profile, as the `profile` scope gives it; only the user id for `profile:user_id`.
    answers = [e.response_body for e in recorded.exchanges if e.path == "/user/profile" and e.status == 200]
    assert [sorted(json.loads(body)) for body in answers] == [["email", "name", "user_id"], ["user_id"]]
    recorded.check("login_with_amazon_profile")
    # The checker holds the answer closed: an invented field, or a missing user id, fails.
    [whole, _] = [e for e in recorded.exchanges if e.path == "/user/profile" and e.status == 200]
    for body in ({**USER, "phone": "+15550100"}, {"name": USER["name"]}):
        assert problems([dataclasses.replace(whole, response_body=json.dumps(body).encode())])


def test_profiles_conform(recorded):
    assert list_profiles(recorded.api)

    # No `Amazon-Advertising-API-Scope`: see RELAXED_HEADERS in extract.py.
    recorded.check("profiles")


def test_manager_accounts_conform(recorded):
    [manager] = list_manager_accounts(recorded.api)

    assert manager["managerAccountId"] == "amzn1.ads-account.sandbox"
    recorded.check("manager_accounts")


def test_amc_accounts_and_instances_conform(recorded):
    listed = list_amc_instances(recorded.api)
    with pytest.raises(AmazonAdsApiError) as unnamed_account:
        recorded.api.request("GET", "/amc/instances", media_type="application/vnd.amcinstances.v1+json")

    assert [(a["accountId"], i["instanceId"]) for a, i in listed] == [("ENTITY1SANDBOX", "amcsandbox01")]
    assert unnamed_account.value.status == 400
    # That request lacks the AMC headers on purpose: only the answer is held to the definition.
    refused = recorded.exchanges.pop()
    assert response_problems(operation_of(refused.method, refused.path), refused) == []
    recorded.check("amc_administration")
