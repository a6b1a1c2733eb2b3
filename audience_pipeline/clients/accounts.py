"""What a Login with Amazon user can reach: advertising profiles, manager accounts and AMC instances.

These are the ids the YAML asks for (DSP `profile_name`, Ads Data Manager `manager_account_id`, AMC
`instance_id` and `account_id`), as `audience-pipeline login` lists them after signing in.

- `GET /v2/profiles` → a JSON array of profiles (`profileId`, `countryCode`, `accountInfo`).
- `GET /managerAccounts` → `{"managerAccounts": [{"managerAccountId", "managerAccountName",
  "linkedAccounts"}]}` as `application/vnd.getmanageraccountsresponse.v1+json`.
- `GET /amc/instances?nextToken` with an AMC account's `Amazon-Advertising-API-AdvertiserId` and
  `-MarketplaceId` → `{"instances": [...], "nextToken"}` as `application/vnd.amcinstances.v1+json`.
"""

from typing import Any

from audience_pipeline.clients.ads_api import AdsApiClient
from audience_pipeline.clients.amc import _paged, list_amc_accounts

MANAGER_ACCOUNTS_MEDIA_TYPE = "application/vnd.getmanageraccountsresponse.v1+json"
AMC_INSTANCES_MEDIA_TYPE = "application/vnd.amcinstances.v1+json"


def list_profiles(api: AdsApiClient) -> list[dict[str, Any]]:
    """Every advertising profile of the user (`profileId` is an integer that may exceed 2^53)."""
    return api.request("GET", "/v2/profiles") or []


class ProfileNotFound(LookupError):
    """No profile of the user matches the names asked for; `setting` is the name that matched none."""

    def __init__(self, setting: str, problem: str):
        self.setting = setting
        super().__init__(problem)


def find_profile(api: AdsApiClient, profile_name: str, marketplace: str) -> dict[str, Any]:
    """The profile named `profile_name` (`accountInfo.name`) in `marketplace` (country code or
    marketplace id), among `list_profiles`; `ProfileNotFound` says which name finds none."""
    profiles = list_profiles(api)
    named = [p for p in profiles if p.get("accountInfo", {}).get("name") == profile_name]
    if not named:
        names = sorted({str(p.get("accountInfo", {}).get("name")) for p in profiles})
        raise ProfileNotFound(
            "profile_name",
            f"no profile of these credentials is named {profile_name!r} "
            f"(there are: {', '.join(names) or 'none'})",
        )
    for profile in named:
        if marketplace.upper() in (
            str(profile.get("countryCode")).upper(),
            profile["accountInfo"].get("marketplaceStringId"),
        ):
            return profile
    markets = sorted(str(p.get("countryCode")) for p in named)
    raise ProfileNotFound(
        "marketplace_profile_name",
        f"{profile_name!r} has no profile for {marketplace!r} (it has: {', '.join(markets)})",
    )


def list_manager_accounts(api: AdsApiClient) -> list[dict[str, Any]]:
    """Every manager account of the user, each with its `linkedAccounts`."""
    body = api.request("GET", "/managerAccounts", media_type=MANAGER_ACCOUNTS_MEDIA_TYPE) or {}
    return body.get("managerAccounts") or []


def list_amc_instances(api: AdsApiClient) -> list[tuple[dict[str, Any], dict[str, Any]]]:
    """Every AMC instance the user reaches, as (AMC account, instance) pairs: an instance is listed per
    account, whose `accountId` and `marketplaceId` its calls send as AdvertiserId and MarketplaceId."""
    return [
        (account, instance)
        for account in list_amc_accounts(api)
        for instance in _paged(
            api,
            "GET",
            "/amc/instances",
            "instances",
            {},
            headers={
                "Amazon-Advertising-API-AdvertiserId": account["accountId"],
                "Amazon-Advertising-API-MarketplaceId": account["marketplaceId"],
            },
            media_type=AMC_INSTANCES_MEDIA_TYPE,
        )
    ]
