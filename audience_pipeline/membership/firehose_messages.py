"""Kinesis Data Firehose messages for membership changes, in the format of the destination spec.

One JSON object per change, followed by `\\n` so that delivered objects read as JSON Lines:

    {"MembershipChangedTimestamp": "1234565788", "AudienceId": 123123, "AudienceName": "LowEngagement",
     "IsMember": true, "MessageId": "…", "UserIdentities": {"CustomerId": "p.fogg138", …}}

Identities go as the source holds them (this is the customer's own stream), minus the ones the
settings do not forward. Everything is built with polars expressions, never row by row.
"""

import json
from collections.abc import Sequence
from dataclasses import dataclass

import polars as pl

# Canonical identity column -> the key Firehose consumers read (device IDs, then user IDs).
IDENTITY_KEYS: dict[str, str] = {
    "android_id": "AndroidId",
    "gaid": "GoogleAdvertisingIdentifier",
    "idfa": "AppleAdvertisingIdentifier",
    "idfv": "AppleVendorIdentifier",
    "fire_adid": "FireAdvertisingIdentifier",
    "microsoft_adid": "MicrosoftAdvertisingIdentifier",
    "roku_adid": "RokuAdvertisingIdentifier",
    "roku_publisher_id": "RokuPublisherIdentifier",
    "customer_id": "CustomerId",
    "email": "Email",
    "facebook_id": "FacebookId",
    "google_id": "GoogleId",
    "microsoft_id": "MicrosoftId",
    "mpid": "MPID",
    "other": "Other",
    **{f"other_{i}": f"Other{i}" for i in range(2, 11)},
    "twitter_id": "TwitterId",
    "yahoo_id": "YahooId",
}
ANONYMOUS_ID = "mpid"


@dataclass(frozen=True)
class ForwardingRules:
    """Which identities a stream receives: the seed's forwarding toggles and exclusion list."""

    forward_email_addresses: bool = True
    forward_customer_ids: bool = True
    forward_idfas: bool = True
    forward_google_advertising_ids: bool = True
    send_anonymous_users: bool = True
    identities_to_exclude: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        known = set(IDENTITY_KEYS) | set(IDENTITY_KEYS.values())
        unknown = [name for name in self.identities_to_exclude if name not in known]
        if unknown:
            raise ValueError(
                f"identities_to_exclude: {', '.join(unknown)} not identities "
                f"(use {', '.join(IDENTITY_KEYS.values())} or their column names)"
            )

    def forwarded(self, columns: Sequence[str]) -> dict[str, str]:
        """The identity columns among `columns` that are sent, with their Firehose keys."""
        toggled_off = {
            "email": not self.forward_email_addresses,
            "customer_id": not self.forward_customer_ids,
            "idfa": not self.forward_idfas,
            "gaid": not self.forward_google_advertising_ids,
        }
        excluded = set(self.identities_to_exclude)
        return {
            column: key
            for column, key in IDENTITY_KEYS.items()
            if column in columns
            and not toggled_off.get(column, False)
            and column not in excluded
            and key not in excluded
        }


def user_identities(frame: pl.DataFrame, rules: ForwardingRules) -> pl.Series:
    """Each member's `UserIdentities` JSON object; null when the member has nothing to send.

    Blank values are no identity. A member known only by MPID is anonymous: sent only when the
    rules send anonymous users.
    """
    forwarded = rules.forwarded(frame.columns)
    if not forwarded:
        return pl.Series("user_identities", [None] * frame.height, dtype=pl.String)
    values = {
        key: pl.when(pl.col(column).cast(pl.String).str.strip_chars() != "").then(
            pl.col(column).cast(pl.String)
        )
        for column, key in forwarded.items()
    }
    present = pl.sum_horizontal(value.is_not_null() for value in values.values())
    anonymous = (present == 1) & values["MPID"].is_not_null() if "MPID" in values else pl.lit(False)
    sendable = (present > 0) & (pl.lit(rules.send_anonymous_users) | ~anonymous)
    encoded = (
        pl.struct(**values)
        .struct.json_encode()
        # json_encode writes absent identities as null; an identity that is not there is left out.
        .str.replace_all(r'"[A-Za-z0-9]+":null,?', "")
        .str.replace(r",\}$", "}")
    )
    return frame.select(pl.when(sendable).then(encoded).alias("user_identities")).to_series()


def messages(
    changes: pl.DataFrame, *, audience_id: int | str, audience_name: str, changed_at: int
) -> pl.Series:
    """One JSON line per change of `changes` (`message_id`, `is_member`, `user_identities` columns)."""
    head = (
        f'{{"MembershipChangedTimestamp": {json.dumps(str(changed_at))}, '
        f'"AudienceId": {json.dumps(audience_id)}, "AudienceName": {json.dumps(audience_name)}, "IsMember": '
    )
    return changes.select(
        pl.concat_str(
            pl.lit(head),
            pl.when("is_member").then(pl.lit("true")).otherwise(pl.lit("false")),
            pl.lit(', "MessageId": "'),
            pl.col("message_id"),
            pl.lit('", "UserIdentities": '),
            pl.col("user_identities"),
            pl.lit("}\n"),
        ).alias("message")
    ).to_series()
