"""`GET /v2/profiles`: the advertiser profiles the DSP integration resolves names against."""

from flask import Blueprint, jsonify

blueprint = Blueprint("profiles", __name__)


def _profile(profile_id: int, country: str, currency: str, timezone: str, marketplace: str) -> dict:
    return {
        "profileId": profile_id,
        "countryCode": country,
        "currencyCode": currency,
        "timezone": timezone,
        "accountInfo": {
            "id": f"ENTITY2ABC0{country}",
            "name": f"Sandbox Advertiser {country}",
            "type": "agency",
            "marketplaceStringId": marketplace,
        },
    }


# Fixed sandbox profiles, one per marketplace, with ids above 2^53 as real ones can be.
PROFILES = [
    _profile(36712345678901203, "US", "USD", "America/Los_Angeles", "ATVPDKIKX0DER"),
    _profile(36712345678901204, "CA", "CAD", "America/Los_Angeles", "A2EUQ1WTGCTBG2"),
    _profile(36712345678901205, "UK", "GBP", "Europe/London", "A1F83G8C2ARO7P"),
    _profile(36712345678901206, "DE", "EUR", "Europe/Paris", "A1PA6795UKMFR9"),
    _profile(36712345678901207, "JP", "JPY", "Asia/Tokyo", "A1VC38T7YXB528"),
]


@blueprint.get("/v2/profiles")
def list_profiles():
    """Every sandbox profile."""
    return jsonify(PROFILES)
