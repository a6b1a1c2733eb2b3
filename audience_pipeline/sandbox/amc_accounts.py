"""AMC accounts: the entities the caller's credentials reach, for "blank account id = first account".

`GET /amc/accounts?maxResults&nextToken` (bearer token and `Amazon-Advertising-API-ClientId`, no AMC
headers) → `200 {"amcAccounts": [{"accountId", "accountName", "marketplaceId"}], "nextToken"}`.
`accountId` is what the data upload calls send as `Amazon-Advertising-API-AdvertiserId`.

The sandbox lists `DEFAULT_ACCOUNTS` unless a test has put a list under `state.family("amc")["accounts"]`.
"""

from flask import Blueprint, current_app

from audience_pipeline.sandbox.amc_jobs import page

blueprint = Blueprint("amc_accounts", __name__)

# The first one is the account the sandbox's AMC tests already send as their advertiser id.
DEFAULT_ACCOUNTS = (
    {"accountId": "ENTITY1SANDBOX", "accountName": "Sandbox AMC Account", "marketplaceId": "ATVPDKIKX0DER"},
    {
        "accountId": "ENTITY2SANDBOX",
        "accountName": "Sandbox AMC Account UK",
        "marketplaceId": "A1F83G8C2ARO7P",
    },
)


@blueprint.get("/amc/accounts")
def list_accounts():
    """The AMC accounts of the caller, a page at a time."""
    state = current_app.config["SANDBOX"].state
    with state.lock:
        accounts = [dict(account) for account in state.family("amc").get("accounts", DEFAULT_ACCOUNTS)]
    items, token = page(accounts)
    return {"amcAccounts": items, "nextToken": token}
