"""Who a Login with Amazon user is and what they can reach: advertising profiles, manager accounts and
AMC instances.

These are the names and ids the YAML asks for (DSP `marketplace_profile_name`, `marketplace` and
`profile_name`, Ads Data Manager `manager_account_id`, AMC `instance_id` and `account_id`), as
`audience-pipeline login` lists them after signing in.

- `GET /v2/profiles` → a JSON array of profiles, one per account and marketplace (`profileId`,
  `countryCode`, `currencyCode`, `timezone`, `accountInfo`: `marketplaceStringId`, `id`, `type`, `name`,
  `validPaymentMethod`); a region's host lists its own marketplaces' profiles only.
- `GET /user/profile` on Login with Amazon's host (not the API's) → `{"user_id", "name", "email"}` for
  a token granted the `profile` scope, `{"user_id"}` for `profile:user_id`; 403 `insufficient_scope`
  without either.
- `GET /managerAccounts` → `{"managerAccounts": [{"managerAccountId", "managerAccountName",
  "linkedAccounts"}]}` as `application/vnd.getmanageraccountsresponse.v1+json`.
- `GET /amc/instances?nextToken` with an AMC account's `Amazon-Advertising-API-AdvertiserId` and
  `-MarketplaceId` → `{"instances": [...], "nextToken"}` as `application/vnd.amcinstances.v1+json`.
"""

from collections.abc import Mapping
from typing import Any

from audience_pipeline.clients.ads_api import AdsApiClient, AmazonAdsApiError
from audience_pipeline.clients.amc import _paged, list_amc_accounts

MANAGER_ACCOUNTS_MEDIA_TYPE = "application/vnd.getmanageraccountsresponse.v1+json"
AMC_INSTANCES_MEDIA_TYPE = "application/vnd.amcinstances.v1+json"
USER_PROFILE_PATH = "/user/profile"
# The profile names an error lists at most: a manager account can see thousands.
_MAX_LISTED = 30


def list_profiles(api: AdsApiClient) -> list[dict[str, Any]]:
    """Every advertising profile of the user (`profileId` is an integer that may exceed 2^53)."""
    return api.request("GET", "/v2/profiles") or []


class ProfileNotFound(LookupError):
    """No profile or Amazon user of the login matches a setting; `setting` is that setting's name."""

    def __init__(self, setting: str, problem: str):
        self.setting = setting
        super().__init__(problem)


def find_profile(api: AdsApiClient, name: str, marketplace: str | None = None) -> dict[str, Any]:
    """The advertiser profile named `name` (its `accountInfo.name`, or its `profileId`) in `marketplace`
    (a country code or marketplace id; None: the one marketplace where a profile has that name), among
    `list_profiles`. `ProfileNotFound` names the setting that finds none and lists the profile names
    the login sees per marketplace."""
    profiles = list_profiles(api)
    candidates = profiles
    if marketplace is not None:
        candidates = [p for p in profiles if _in_marketplace(p, marketplace)]
        if not candidates:
            raise ProfileNotFound(
                "marketplace",
                f"these credentials see no profile in {marketplace!r}; they see {_seen(profiles)}",
            )
    named = [p for p in candidates if name in (p["accountInfo"].get("name"), str(p["profileId"]))]
    if not named:
        where = f" in {marketplace!r}" if marketplace is not None else ""
        problem = f"no profile{where} is named {name!r}; these credentials see {_seen(candidates)}"
        # The settings' earlier meaning: the marketplace in `marketplace_profile_name`.
        if any(_in_marketplace(p, name) for p in profiles):
            problem += (
                f". {name!r} is a marketplace: `marketplace_profile_name` is the advertiser profile's name "
                f"(mParticle's Marketplace Profile Name); set `marketplace: {name}` and "
                "`marketplace_profile_name` to a name listed for it"
            )
        raise ProfileNotFound("marketplace_profile_name", problem)
    markets = sorted({str(p.get("countryCode")) for p in named})
    if len(markets) > 1:
        raise ProfileNotFound(
            "marketplace",
            f"{name!r} has a profile in each of {', '.join(markets)}: set `marketplace` to the target one",
        )
    if len(named) > 1:
        ids = ", ".join(str(p["profileId"]) for p in named)
        raise ProfileNotFound(
            "marketplace_profile_name",
            f"{len(named)} profiles in {markets[0]} are named {name!r}: set `marketplace_profile_name` to "
            f"the profile id of the one to use ({ids})",
        )
    return named[0]


def _in_marketplace(profile: Mapping[str, Any], marketplace: str) -> bool:
    codes = (profile.get("countryCode"), profile["accountInfo"].get("marketplaceStringId"))
    return marketplace.upper() in {str(code).upper() for code in codes}


def _seen(profiles: list[dict[str, Any]]) -> str:
    """The profile names per marketplace, e.g. `US: 'A', 'B'; CA: 'A'`, at most `_MAX_LISTED` names."""
    if not profiles:
        return "no profile in this region (each region's host lists its own marketplaces': check `region`)"
    markets: dict[str, set[str]] = {}
    for profile in profiles:
        markets.setdefault(str(profile.get("countryCode")), set()).add(
            str(profile["accountInfo"].get("name"))
        )
    listed, parts = 0, []
    for market, names in sorted(markets.items()):
        shown = sorted(names)[: max(_MAX_LISTED - listed, 0)]
        listed += len(shown)
        if shown:
            parts.append(f"{market}: {', '.join(map(repr, shown))}")
    total = sum(map(len, markets.values()))
    more = f" and {total - listed} more (`audience-pipeline login` lists them all)" if total > listed else ""
    return "; ".join(parts) + more


def linked_user_name(api: AdsApiClient) -> str | None:
    """The name of the Amazon user who granted `api`'s refresh token: Login with Amazon's customer
    profile (`GET /user/profile` on the token host), which needs the `profile` scope; None when the
    token has `profile:user_id` only. The profile's e-mail address is not kept: nothing needs it."""
    return api.request("GET", USER_PROFILE_PATH, base_url=api.login_url).get("name")


def check_linked_user(api: AdsApiClient, profile_name: str) -> None:
    """`ProfileNotFound` for `profile_name` unless `api`'s refresh token belongs to the Amazon user of
    that name (mParticle's Profile Name), naming the user it belongs to."""
    try:
        name = linked_user_name(api)
    except AmazonAdsApiError as error:
        if not (isinstance(error.body, Mapping) and error.body.get("error") == "insufficient_scope"):
            raise
        name = None
    if name is None:
        raise ProfileNotFound(
            "profile_name",
            "the refresh token was granted without Login with Amazon's `profile` scope, so the Amazon user "
            "linked to it cannot be read: sign in again with `audience-pipeline login` (it asks for "
            "`profile`), or remove `profile_name` to skip this check",
        )
    if name == profile_name:
        return
    problem = f"the refresh token belongs to the Amazon user {name!r}, not {profile_name!r}"
    # The settings' earlier meaning: the profile's name in `profile_name`.
    if any(p["accountInfo"].get("name") == profile_name for p in list_profiles(api)):
        problem += (
            f"; {profile_name!r} is an advertiser profile's name: `profile_name` is the Amazon user linked "
            "to the account (mParticle's Profile Name), the profile's name goes in `marketplace_profile_name`"
        )
    else:
        problem += (
            "; set `profile_name` to that name, or sign in as the intended user with "
            "`audience-pipeline login`"
        )
    raise ProfileNotFound("profile_name", problem)


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
