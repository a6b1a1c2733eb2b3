"""`GET /v2/profiles`: the advertiser profiles the DSP integration resolves names against.

A profile is an advertiser's account in one marketplace, as Amazon answers it: `profileId`,
`countryCode`, `currencyCode`, `timezone` and `accountInfo` (`marketplaceStringId`, `id`, `type`,
`name`, `validPaymentMethod`). An account in several marketplaces has a profile in each, under the same
name (Amazon's own example: one "Name of the Account" in CA, MX and US): "Sandbox Brand" here. Amazon
answers a region's host with that region's marketplaces only; the sandbox is one host for every
region and answers all of them.
"""

from flask import Blueprint, jsonify

blueprint = Blueprint("profiles", __name__)


def _profile(
    profile_id: int, country: str, currency: str, timezone: str, marketplace: str, name: str, entity: str
) -> dict:
    return {
        "profileId": profile_id,
        "countryCode": country,
        "currencyCode": currency,
        "timezone": timezone,
        "accountInfo": {
            "marketplaceStringId": marketplace,
            "id": entity,
            "type": "agency",
            "name": name,
            "validPaymentMethod": True,
        },
    }


def _advertiser(profile_id: int, country: str, currency: str, timezone: str, marketplace: str) -> dict:
    return _profile(
        profile_id,
        country,
        currency,
        timezone,
        marketplace,
        f"Sandbox Advertiser {country}",
        f"ENTITY2ABC0{country}",
    )


# Fixed sandbox profiles, with ids above 2^53 as real ones can be: an advertiser per marketplace, each
# named after its country, and one brand in two marketplaces under one name.
PROFILES = [
    _advertiser(36712345678901203, "US", "USD", "America/Los_Angeles", "ATVPDKIKX0DER"),
    _advertiser(36712345678901204, "CA", "CAD", "America/Los_Angeles", "A2EUQ1WTGCTBG2"),
    _advertiser(36712345678901205, "UK", "GBP", "Europe/London", "A1F83G8C2ARO7P"),
    _advertiser(36712345678901206, "DE", "EUR", "Europe/Paris", "A1PA6795UKMFR9"),
    _advertiser(36712345678901207, "JP", "JPY", "Asia/Tokyo", "A1VC38T7YXB528"),
    _profile(
        36712345678901208,
        "US",
        "USD",
        "America/Los_Angeles",
        "ATVPDKIKX0DER",
        "Sandbox Brand",
        "ENTITY3BRANDUS",
    ),
    _profile(
        36712345678901209,
        "CA",
        "CAD",
        "America/Los_Angeles",
        "A2EUQ1WTGCTBG2",
        "Sandbox Brand",
        "ENTITY3BRANDCA",
    ),
]


@blueprint.get("/v2/profiles")
def list_profiles():
    """Every sandbox profile."""
    return jsonify(PROFILES)
