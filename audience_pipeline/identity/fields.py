"""The identity columns the engine knows, by how each is treated.

Column names are the canonical ones of `shared/spec/destinations.md`; every destination maps its
own identity names onto these.
"""

# Normalized by their field rule, then SHA-256 hashed (or passed through when already hashed).
HASHED_FIELDS: tuple[str, ...] = (
    "email",
    "phone",
    "first_name",
    "last_name",
    "address",
    "city",
    "state",
    "zip",
    "country_code",
)

# Mobile advertising IDs: validated as UUIDs and canonicalized, never hashed.
MAID_FIELDS: tuple[str, ...] = ("idfa", "gaid", "idfv", "fire_adid", "microsoft_adid", "roku_adid")

# Partner, customer and social IDs: trimmed, otherwise sent as given.
PASSTHROUGH_FIELDS: tuple[str, ...] = (
    "customer_id",
    "mpid",
    "android_id",
    "roku_publisher_id",
    "facebook_id",
    "google_id",
    "microsoft_id",
    "twitter_id",
    "yahoo_id",
    "other",
    *(f"other_{i}" for i in range(2, 11)),
    "live_ramp_id",
    "experian_id",
    "kantar_id",
    "merkle_id",
    "neustar_id",
    "real_id",
    "samba_tv_id",
)

IDENTITY_FIELDS: tuple[str, ...] = HASHED_FIELDS + MAID_FIELDS + PASSTHROUGH_FIELDS

# Consent signals and network data travel with a member but are not identities.
CONSENT_FIELDS: tuple[str, ...] = ("amzn_ad_storage", "amzn_user_data", "tcf_string", "gpp_string")
