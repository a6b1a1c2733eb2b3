"""The login's calls, held to Amazon's definitions both ways: Login with Amazon's token grants, the
profiles, manager accounts, AMC accounts and AMC instances listings."""

from urllib.parse import parse_qs, urlencode, urlsplit

import pytest

from audience_pipeline.clients.accounts import list_amc_instances, list_manager_accounts, list_profiles
from audience_pipeline.clients.ads_api import AmazonAdsApiError, AuthenticationError

from ..test_login import REDIRECT_URI, allow
from .openapi import operation_of, response_problems


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
