"""`GET /amc/accounts` over real HTTP: the sandbox's accounts, paging, auth, faults, and the first account."""

import pytest
import requests

from audience_pipeline.clients.ads_api import AmazonAdsApiError
from audience_pipeline.clients.amc import first_amc_account, list_amc_accounts
from audience_pipeline.sandbox.amc_accounts import DEFAULT_ACCOUNTS

from ..conftest import add_fault, journal


def test_the_sandbox_lists_two_accounts_and_the_first_is_used(ads_client):
    accounts = list_amc_accounts(ads_client)
    assert accounts == list(DEFAULT_ACCOUNTS)
    assert len(accounts) == 2 and all(
        set(a) == {"accountId", "accountName", "marketplaceId"} for a in accounts
    )
    assert first_amc_account(ads_client) == {
        "accountId": "ENTITY1SANDBOX",
        "accountName": "Sandbox AMC Account",
        "marketplaceId": "ATVPDKIKX0DER",
    }


def test_accounts_come_a_page_at_a_time_and_the_client_follows_every_page(sandbox, ads_client):
    many = [
        {"accountId": f"ENTITY{i}", "accountName": f"Account {i}", "marketplaceId": "ATVPDKIKX0DER"}
        for i in range(150)
    ]
    sandbox.ads.state.family("amc")["accounts"] = many
    first = ads_client.request("GET", "/amc/accounts", params={"maxResults": 1})
    assert first == {"amcAccounts": many[:1], "nextToken": "1"}
    last = ads_client.request("GET", "/amc/accounts", params={"nextToken": "100"})
    # The last page has no nextToken at all (Amazon's uploader loops `while 'nextToken' in response`).
    assert last == {"amcAccounts": many[100:]}
    assert list_amc_accounts(ads_client) == many


def test_no_account_is_a_clear_error(sandbox, ads_client):
    sandbox.ads.state.family("amc")["accounts"] = []
    assert list_amc_accounts(ads_client) == []
    with pytest.raises(LookupError, match="no AMC account for these credentials: set account_id"):
        first_amc_account(ads_client)


def test_accounts_need_a_bearer_token(sandbox):
    response = requests.get(f"{sandbox.ads_url}/amc/accounts", timeout=10)
    assert response.status_code == 401
    # AMCAdministration_prod_3p.json: `{message, requestId}` in the operation's media type.
    assert response.headers["Content-Type"] == "application/vnd.amcaudiencesconnections.v1+json"
    assert set(response.json()) == {"message", "requestId"}


def test_faults_and_the_journal_apply(sandbox, ads_client):
    add_fault(sandbox.ads_url, route="GET /amc/accounts", status=429, count=1, retry_after=0)
    assert first_amc_account(ads_client)["accountId"] == "ENTITY1SANDBOX"
    assert [e["status"] for e in journal(sandbox.ads_url) if e["path"] == "/amc/accounts"] == [429, 200]
    add_fault(sandbox.ads_url, route="GET /amc/accounts", status=500)
    with pytest.raises(AmazonAdsApiError) as error:
        list_amc_accounts(ads_client)
    assert error.value.status == 500 and set(error.value.body) == {"message", "requestId"}
