"""`GET /managerAccounts`: the manager account the sandbox's credentials reach, and what it links.

`200 {"managerAccounts": [{"managerAccountId", "managerAccountName", "linkedAccounts": [{"accountId",
"accountName", "accountType", "marketplaceId", "profileId"}]}]}` as
`application/vnd.getmanageraccountsresponse.v1+json`. The manager account is the one the example Ads
Data Manager destination delivers to; it links every sandbox DSP profile and AMC account.
"""

from flask import Blueprint, jsonify

from audience_pipeline.sandbox.amc_accounts import DEFAULT_ACCOUNTS
from audience_pipeline.sandbox.profiles import PROFILES

blueprint = Blueprint("manager_accounts", __name__)

MEDIA_TYPE = "application/vnd.getmanageraccountsresponse.v1+json"
# `manager_account_id` of the example Ads Data Manager destination (defs/ads_data_manager/defs.yaml).
MANAGER_ACCOUNT_ID = "amzn1.ads-account.sandbox"

_LINKED_ACCOUNTS = [
    *(
        {
            "accountId": profile["accountInfo"]["id"],
            "accountName": profile["accountInfo"]["name"],
            "accountType": "DSP_ADVERTISING_ACCOUNT",
            "marketplaceId": profile["accountInfo"]["marketplaceStringId"],
            "profileId": str(profile["profileId"]),
        }
        for profile in PROFILES
    ),
    *(
        {
            "accountId": account["accountId"],
            "accountName": account["accountName"],
            "accountType": "MARKETING_CLOUD",
            "marketplaceId": account["marketplaceId"],
        }
        for account in DEFAULT_ACCOUNTS
    ),
]


@blueprint.get("/managerAccounts")
def list_manager_accounts():
    """The sandbox's one manager account."""
    response = jsonify(
        {
            "managerAccounts": [
                {
                    "managerAccountId": MANAGER_ACCOUNT_ID,
                    "managerAccountName": "Sandbox Manager Account",
                    "linkedAccounts": _LINKED_ACCOUNTS,
                }
            ]
        }
    )
    response.mimetype = MEDIA_TYPE
    return response
