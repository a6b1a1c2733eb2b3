"""One audience's members to an Amazon Ads Data Manager audience dataset, committed only when accepted.

    snapshot (hashed identities + consent) ─► one member object per user (`userIdentity`, `userConsent`)
        ─ diff vs ledger ─► added / identity changed ─► CREATE;  removed ─► DELETE
        ─► requests of ≤5,000 members and ≤10 MB (the caller's `send`) ─► ledger commit of the accepted

- The snapshot's identities are already normalized and hashed by the identity engine.
- The seed's `country` target identity has no key in Amazon's `hashedPiis` (`ad, cty, em, fn, ln,
  ph, st, zip`): the member's country travels as `userConsent.geo.countryCode` (every member,
  whatever identities are chosen), and the dataset's `countryCode` is the component's country.
- A member's payload is the JSON object sent for it, minus `externalUserId` and `action`: hashes,
  partner IDs and consent signals only, so the ledger keeps it in plain text. A removal sends the
  payload the dataset was given, with `DELETE`. The fingerprint covers the whole payload, so a
  consent change is re-sent as a CREATE (an upsert by `externalUserId`) like an identity change.
- Consent: the component's `consent` stands for both Amazon signals; a row's `amzn_ad_storage` /
  `amzn_user_data` override them where present (a value Amazon does not know becomes `UNKNOWN`,
  never the default), and `tcf_string` / `gpp_string` travel as `tcf` / `gpp`.
- Amazon ignores a DELETE unless the member carries a GRANTED `amznUserData` signal. Such a DELETE is
  still sent (it is the truthful request; nothing else could remove the member) and its removal
  committed, since Amazon accepted the request and re-sending could never change the outcome.
- A member Amazon refuses is a reject with Amazon's reason; its change stays out of the ledger, so
  it is sent again on the next run. The accepted ones are committed.
- A member with no identity to send is not a member for this dataset: it is counted as skipped, and
  one the dataset already holds is deleted.

No Dagster here, and nothing returned holds identity values: only counts and Amazon's reasons.
"""

import json
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import polars as pl

from audience_pipeline.clients.adm import MAX_REQUEST_BYTES, RECOMMENDED_MEMBERS_PER_REQUEST, MembersResult
from audience_pipeline.identity.countries import alpha2
from audience_pipeline.membership.diff import MembershipDiff, diff
from audience_pipeline.membership.fingerprints import fingerprint
from audience_pipeline.membership.ledger import Ledger, LedgerState

USER_ID = "user_id"

# The seed's target identities: each maps to (ADM key, snapshot columns, first non-null).
HASHED_PII: dict[str, tuple[str, tuple[str, ...]]] = {
    "phone_sha256": ("ph", ("phone",)),
    "email_lc_sha256": ("em", ("email",)),
    "firstName": ("fn", ("first_name",)),
    "lastName": ("ln", ("last_name",)),
    "street": ("ad", ("address",)),
    "city": ("cty", ("city",)),
    "state": ("st", ("state",)),
    "zip": ("zip", ("zip",)),
}
# A target identity of the seed that Amazon's member schema has no key for (see the module docstring).
COUNTRY = "country"
EXTERNAL_IDENTITIES: dict[str, tuple[str, tuple[str, ...]]] = {
    "experianId": ("experianId", ("experian_id",)),
    "kantarId": ("kantarId", ("kantar_id",)),
    "liveRampId": ("liveRampId", ("live_ramp_id",)),
    "maId": ("maId", ("idfa", "gaid")),
    "merkleId": ("merkleId", ("merkle_id",)),
    "neustarId": ("neustarId", ("neustar_id",)),
    "realId": ("realId", ("real_id",)),
    "sambaTvId": ("sambaTvId", ("samba_tv_id",)),
}
TARGET_IDENTITIES: tuple[str, ...] = (*HASHED_PII, COUNTRY, *EXTERNAL_IDENTITIES)
# The target identities that put something in `userIdentity`.
SENT_IDENTITIES: tuple[str, ...] = (*HASHED_PII, *EXTERNAL_IDENTITIES)
CONSENT_VALUES = ("GRANTED", "DENIED", "NOT_APPLICABLE", "UNKNOWN")
CREATE, DELETE = "CREATE", "DELETE"
_ENVELOPE_BYTES = len('{"members": []}')


@dataclass(frozen=True)
class MemberRules:
    """What goes into each member: the chosen target identities, the consent the component asserts
    for every member, and the country of members whose own country is unknown (for `geo`)."""

    identities: tuple[str, ...]
    consent: str
    country_code: str


@dataclass(frozen=True)
class Members:
    """An audience's members for one dataset: `user_id, fingerprint, payload` (the member JSON without
    `externalUserId` and `action`), and how many members had no identity to send."""

    frame: pl.DataFrame
    skipped: int


def _text(*parts: str | pl.Expr) -> pl.Expr:
    """Literal text and string expressions concatenated (null if any expression is null)."""
    return pl.concat_str([pl.lit(part) if isinstance(part, str) else part for part in parts])


def _json_field(key: str, value: pl.Expr) -> pl.Expr:
    """`"key":<value as JSON>`, or null where the value is null (so it can be left out)."""
    encoded = pl.struct(value.alias(key)).struct.json_encode()
    return pl.when(value.is_not_null()).then(encoded.str.slice(1, encoded.str.len_chars() - 2))


def _json_object(fields: Sequence[pl.Expr]) -> pl.Expr:
    """A JSON object of the non-null `fields`; null when every one is null."""
    inner = pl.concat_str(list(fields), separator=",", ignore_nulls=True) if fields else pl.lit(None)
    return pl.when(inner.is_not_null() & (inner != "")).then(_text("{", inner, "}"))


def _column(snapshot: pl.DataFrame, names: tuple[str, ...]) -> pl.Expr:
    present = [pl.col(name).cast(pl.String) for name in names if name in snapshot.columns]
    blank = pl.lit(None, pl.String)
    value = pl.coalesce(present) if present else blank
    return pl.when(value.str.strip_chars() != "").then(value)


def _consent(snapshot: pl.DataFrame, column: str, default: str) -> pl.Expr:
    if column not in snapshot.columns:
        return pl.lit(default)
    given = pl.col(column).cast(pl.String).str.strip_chars().str.to_uppercase()
    known = pl.when(given.is_in(CONSENT_VALUES)).then(given).otherwise(pl.lit("UNKNOWN"))
    return pl.when(given.is_null() | (given == "")).then(pl.lit(default)).otherwise(known)


def adm_members(snapshot: pl.DataFrame, rules: MemberRules) -> Members:
    """Each snapshot member as the ADM member object it is sent as (vectorized JSON building)."""

    def entries(mapping: dict[str, tuple[str, tuple[str, ...]]]) -> pl.Expr:
        chosen = [(key, columns) for name, (key, columns) in mapping.items() if name in rules.identities]
        return _json_object([_json_field(key, _column(snapshot, columns)) for key, columns in chosen])

    hashed_piis, external = entries(HASHED_PII), entries(EXTERNAL_IDENTITIES)
    identity = _json_object(
        [
            pl.when(hashed_piis.is_not_null()).then(_text('"hashedPiis":[', hashed_piis, "]")),
            pl.when(external.is_not_null()).then(_text('"externalIdentities":[', external, "]")),
        ]
    )
    country = (
        alpha2(pl.col("country_code").cast(pl.String)) if "country_code" in snapshot.columns else pl.lit(None)
    )
    signals = [
        _text(
            '"amzn":{"amznAdStorage":"',
            _consent(snapshot, "amzn_ad_storage", rules.consent),
            '","amznUserData":"',
            _consent(snapshot, "amzn_user_data", rules.consent),
            '"}',
        ),
        _json_field("tcf", _column(snapshot, ("tcf_string",))),
        _json_field("gpp", _column(snapshot, ("gpp_string",))),
    ]
    consent = _text(
        '"userConsent":{"geo":{"countryCode":"',
        pl.coalesce(country, pl.lit(rules.country_code)),
        '"},"consent":',
        _json_object(signals),
        "}",
    )
    payload = pl.when(identity.is_not_null()).then(_text('{"userIdentity":', identity, ",", consent, "}"))
    built = snapshot.select(pl.col(USER_ID).cast(pl.String), payload.alias("payload"))
    sendable = built.filter(pl.col("payload").is_not_null())
    members = sendable.select(USER_ID, fingerprint(sendable, ["payload"]), "payload")
    return Members(members, built.height - sendable.height)


@dataclass(frozen=True)
class DeliveryPlan:
    """The changes found against a loaded ledger and the members to send.

    `outgoing` has one row per member: `user_id`, `kind` (added/removed/changed) and `member` (the
    JSON object sent: hashes, partner IDs and consent, never raw PII).
    """

    state: LedgerState
    diff: MembershipDiff
    outgoing: pl.DataFrame
    skipped: int

    @property
    def requests(self) -> int:
        """How many requests the plan needs (see `request_slices`)."""
        return len(request_slices(self.outgoing.get_column("member")))

    def counts(self) -> dict[str, int]:
        """The plan in numbers: changes, CREATEs and DELETEs, requests, members skipped."""
        return {
            "added": self.diff.added.height,
            "removed": self.diff.removed.height,
            "identity_changed": self.diff.changed.height,
            "creates": self.diff.added.height + self.diff.changed.height,
            "deletes": self.diff.removed.height,
            "requests": self.requests,
            "skipped": self.skipped,
        }


def _outgoing(frame: pl.DataFrame, kind: str, action: str) -> pl.DataFrame:
    head = _text('{"externalUserId":', _json_field_value(USER_ID), f',"action":"{action}",')
    member = pl.concat_str([head, pl.col("payload").str.slice(1)])
    return frame.select(USER_ID, pl.lit(kind).alias("kind"), member.alias("member"))


def _json_field_value(column: str) -> pl.Expr:
    """A string column as a JSON string literal (quoted and escaped)."""
    encoded = pl.struct(pl.col(column).alias("v")).struct.json_encode()
    return encoded.str.slice(5, encoded.str.len_chars() - 6)


def _wire_bytes(members: pl.Series) -> list[int]:
    """At least the bytes each member's JSON takes in the request: it is sent as `json.dumps` writes
    it, with a space after every `:` and `,` and non-ASCII characters as `\\uXXXX` escapes (up to
    12 bytes for a 4-byte character), and a separator after it."""
    frame = pl.DataFrame({"m": members})
    size = (
        pl.col("m").str.len_bytes()
        + pl.col("m").str.count_matches("[:,]")
        + 8 * pl.col("m").str.count_matches(r"[^\x00-\x7f]")
        + 2
    )
    return frame.select(size.cast(pl.Int64)).to_series().to_list()


def request_slices(members: pl.Series) -> list[tuple[int, int]]:
    """`(offset, length)` of each request over the members' JSON texts, in order: at most the 5,000
    members Amazon recommends and at most its 10 MB per request (a member alone over 10 MB still
    goes alone, for Amazon to refuse)."""
    slices, start, size = [], 0, _ENVELOPE_BYTES
    for index, member_size in enumerate(_wire_bytes(members)):
        full = index - start >= RECOMMENDED_MEMBERS_PER_REQUEST or size + member_size > MAX_REQUEST_BYTES
        if index > start and full:
            slices.append((start, index - start))
            start, size = index, _ENVELOPE_BYTES
        size += member_size
    if start < members.len():
        slices.append((start, members.len() - start))
    return slices


def plan_delivery(members: Members, state: LedgerState) -> DeliveryPlan:
    """Diff `members` against the ledger `state`: removals first (DELETE with the payload the dataset
    was given), then additions and identity changes (CREATE with the new payload)."""
    found = diff(members.frame, state.frame)
    outgoing = pl.concat(
        [
            _outgoing(found.removed, "removed", DELETE),
            _outgoing(found.added, "added", CREATE),
            _outgoing(found.changed, "changed", CREATE),
        ]
    )
    return DeliveryPlan(state, found, outgoing, members.skipped)


@dataclass(frozen=True)
class DeliveryOutcome:
    """What a delivery did, in numbers and Amazon's reasons only."""

    counts: dict[str, int]
    members_sent: int
    rejected: int
    rejects: dict[str, int]
    requests: int
    ledger_version: int
    seconds: float


@dataclass
class _Progress:
    accepted: list[str] = field(default_factory=list)
    rejects: Counter = field(default_factory=Counter)
    sent: int = 0
    requests: int = 0


class DeliveryInterrupted(RuntimeError):
    """A request failed for good; what Amazon accepted before it is committed (see `outcome`)."""

    def __init__(self, outcome: DeliveryOutcome):
        super().__init__(f"{outcome.requests} requests sent before the failure")
        self.outcome = outcome


def deliver(
    plan: DeliveryPlan, ledger: Ledger, send: Callable[[list[dict]], MembersResult]
) -> DeliveryOutcome:
    """Send the plan's members with `send` in requests (`request_slices`) and commit every member
    Amazon accepted; refused members are counted by Amazon's reason and stay pending.

    `send` is `AdmClient.upload_members` bound to the dataset. When a request fails for good, what
    was accepted so far is committed and `DeliveryInterrupted` raised from the error. Raises
    `LedgerConflict` (nothing committed) when another run committed this ledger since the plan's
    state was loaded.
    """
    started = time.perf_counter()
    progress = _Progress()
    try:
        for offset, length in request_slices(plan.outgoing.get_column("member")):
            chunk = plan.outgoing.slice(offset, length)
            # One JSON parse per request: the members were built as JSON text, column-wise.
            result = send(json.loads("[" + ",".join(chunk.get_column("member")) + "]"))
            progress.requests += 1
            progress.sent += chunk.height
            refused = {error.index for error in result.errors}
            progress.rejects.update(error.reason for error in result.errors)
            user_ids = chunk.get_column(USER_ID).to_list()
            progress.accepted += [user for index, user in enumerate(user_ids) if index not in refused]
    except Exception as error:
        raise DeliveryInterrupted(_commit(plan, ledger, progress, started)) from error
    return _commit(plan, ledger, progress, started)


def _commit(plan: DeliveryPlan, ledger: Ledger, progress: _Progress, started: float) -> DeliveryOutcome:
    accepted = pl.DataFrame({USER_ID: progress.accepted}, schema={USER_ID: pl.String})

    def confirmed(frame: pl.DataFrame) -> pl.DataFrame:
        return frame.join(accepted, on=USER_ID, how="semi")

    state = ledger.commit(
        plan.state,
        added=confirmed(plan.diff.added),
        removed=confirmed(plan.diff.removed),
        changed=confirmed(plan.diff.changed),
    )
    return DeliveryOutcome(
        counts=plan.counts(),
        members_sent=progress.sent,
        rejected=sum(progress.rejects.values()),
        rejects=dict(progress.rejects),
        requests=progress.requests,
        ledger_version=state.version,
        seconds=round(time.perf_counter() - started, 3),
    )
