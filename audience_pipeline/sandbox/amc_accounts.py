"""AMC accounts: the entities the caller's credentials reach, for "blank account id = first account".

`GET /amc/accounts?nextToken` (bearer token and `Amazon-Advertising-API-ClientId`, no AMC headers) →
`200 {"amcAccounts": [{"accountId", "accountName", "marketplaceId"}], "nextToken"?}`.
`accountId` is what the data upload calls send as `Amazon-Advertising-API-AdvertiserId`.

The sandbox lists `DEFAULT_ACCOUNTS` unless a test has put a list under `state.family("amc")["accounts"]`.
"""

from flask import Blueprint, Response, current_app, jsonify, request

from audience_pipeline.sandbox.amc_jobs import answer_as, page

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


# AMCAdministration_prod_3p.json: `GET /amc/accounts` answers (and fails) in this media type.
ACCOUNTS_MEDIA_TYPE = "application/vnd.amcaudiencesconnections.v1+json"


@blueprint.after_request
def label_accounts_answer(response: Response) -> Response:
    """Answers of `GET /amc/accounts`, errors included, in that operation's media type."""
    return answer_as(response, ACCOUNTS_MEDIA_TYPE) if request.path == "/amc/accounts" else response


@blueprint.get("/amc/accounts")
def list_accounts():
    """The AMC accounts of the caller, a page at a time (`nextToken` only when more follow)."""
    state = current_app.config["SANDBOX"].state
    with state.lock:
        accounts = [dict(account) for account in state.family("amc").get("accounts", DEFAULT_ACCOUNTS)]
    return page("amcAccounts", accounts)


# `GET /amc/instances?nextToken&limit` (with the AMC account's `Amazon-Advertising-API-AdvertiserId` and
# `-MarketplaceId`) → `200 {"instances": [...], "nextToken"}` as `application/vnd.amcinstances.v1+json`.
# The sandbox's instances by account: the example AMC destination's (defs/amc/defs.yaml), fewer than
# a page, so the sandbox never answers a `nextToken`.
INSTANCES_MEDIA_TYPE = "application/vnd.amcinstances.v1+json"
INSTANCES = {
    "ENTITY1SANDBOX": [
        {
            "instanceId": "amcsandbox01",
            "instanceName": "amcsandbox01",
            "customerCanonicalName": "Sandbox AMC Instance",
            "creationStatus": "COMPLETED",
            "creationDatetime": "2025-01-06T09:00:00Z",
            "entities": ["ENTITY1SANDBOX"],
            "awsAccountId": "",
            # moto's account, which the sandbox's S3 belongs to.
            "dataUploadAwsAccountId": "123456789012",
            "s3BucketName": "amc-amcsandbox01",
            "s3BucketRegion": "us-east-1",
        },
    ],
}


@blueprint.get("/amc/instances")
def list_instances():
    """The AMC instances of the account named by the request's AdvertiserId and MarketplaceId headers."""
    headers = ("Amazon-Advertising-API-AdvertiserId", "Amazon-Advertising-API-MarketplaceId")
    missing = [name for name in headers if not request.headers.get(name)]
    if missing:
        # Amazon documents this operation's errors as `{"code", "details"}` in its own media type.
        body = {"code": "BAD_REQUEST", "details": f"Missing required header(s): {', '.join(missing)}"}
        return answer_as(jsonify(body), INSTANCES_MEDIA_TYPE), 400
    instances = INSTANCES.get(request.headers[headers[0]], [])
    # The API endpoint of an instance is the host that serves it: here, the sandbox.
    body = {"instances": [{**i, "apiEndpoint": request.host_url.rstrip("/")} for i in instances]}
    return answer_as(jsonify(body), INSTANCES_MEDIA_TYPE)
