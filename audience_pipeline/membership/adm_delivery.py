"""The Amazon Ads Data Manager adapter of the delivery core (`membership.delivery`).

    snapshot (hashed identities + consent) ─► one member object per user (`userIdentity`, `userConsent`)
        ─ core: diff vs ledger, guard ─► removed ─► DELETE;  added / identity changed ─► CREATE
        ─► the dataset found by name or created ─► requests of ≤5,000 members and ≤10 MB
        ─► core: ledger commit of the accepted

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
- An audience's dataset is found by its name (`dataset_name`), so a renamed audience gets a new
  dataset, and a ledger of its own that sends it every member.

No Dagster here, and nothing returned holds identity values: only counts and Amazon's reasons.
"""

import re
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Protocol

import polars as pl
import requests

from audience_pipeline.clients.adm import (
    MAX_REQUEST_BYTES,
    RECOMMENDED_MEMBERS_PER_REQUEST,
    AdmAudience,
    AdmClient,
    members_body,
)
from audience_pipeline.clients.ads_api import AmazonAdsApiError
from audience_pipeline.clients.concurrency import RequestPace
from audience_pipeline.identity.countries import alpha2
from audience_pipeline.membership.delivery import (
    ADDED,
    CHANGED,
    ITEM,
    KIND,
    REMOVED,
    USER_ID,
    Answer,
    Members,
)
from audience_pipeline.membership.diff import MembershipDiff
from audience_pipeline.membership.fingerprints import fingerprint
from audience_pipeline.membership.ledger import LedgerState

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
# A SHA-256 digest in hex.
_DIGEST_LENGTH = 64
# What JSON escapes or the encoder may write otherwise: all but printable ASCII, and `"` and `\`.
_ESCAPED = r'[^\x20-\x7e]|["\\]'
_SLICE_ROWS = 50_000
# Consent strings that travel with a member, by their key in `consent`.
_SIGNALS = {"tcf": "tcf_string", "gpp": "gpp_string"}
CONSENT_VALUES = ("GRANTED", "DENIED", "NOT_APPLICABLE", "UNKNOWN")
CREATE, DELETE = "CREATE", "DELETE"
_ENVELOPE_BYTES = len(members_body([]))
# Amazon's dataset name pattern with its minLength 5 folded in.
_DATASET_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_-]{4,99}")


class Named(Protocol):
    """An audience as far as a dataset name goes."""

    @property
    def destination_name(self) -> str: ...


def dataset_name(audience: Named) -> str:
    """The ADM audience dataset name of an audience: its destination name made valid for Amazon's
    `^[A-Za-z][A-Za-z0-9_-]{0,99}$` of 5 to 100 characters (other characters become `_`; too short or
    not starting with a letter gets an `audience_` prefix)."""
    name = re.sub(r"[^A-Za-z0-9_-]+", "_", audience.destination_name).strip("_")
    if not _DATASET_NAME.fullmatch(name[:100]):
        name = f"audience_{name}"
    return name[:100]


@dataclass(frozen=True)
class MemberRules:
    """What goes into each member: the chosen target identities, the consent the component asserts
    for every member, and the country of members whose own country is unknown (for `geo`)."""

    identities: tuple[str, ...]
    consent: str
    country_code: str


def _text(*parts: str | pl.Expr) -> pl.Expr:
    """Literal text and string expressions concatenated (null if any expression is null)."""
    return pl.concat_str([pl.lit(part) if isinstance(part, str) else part for part in parts])


def _value(snapshot: pl.DataFrame, names: tuple[str, ...]) -> pl.Series:
    """The first non-null of the columns, as text."""
    present = [snapshot.get_column(name).cast(pl.String) for name in names if name in snapshot.columns]
    if not present:
        return pl.repeat(None, snapshot.height, dtype=pl.String, eager=True)
    return pl.select(pl.coalesce(present)).to_series()


def _encoded(key: str, value: pl.Series) -> pl.Series:
    """`"key":<value as JSON>`, or null where the value is null or blank (so it can be left out)."""
    # Only the rows holding a value are encoded: most partner IDs are missing from most members.
    rows = value.is_not_null().arg_true()
    given = value.gather(rows).to_frame(key)
    if given.select(pl.col(key).str.contains(_ESCAPED).any()).item():
        # JSON-encoding `{"key":value}` escapes the value; the braces come off.
        encoded = pl.struct(key).struct.json_encode().str.slice(1).str.head(-1)
    else:
        # Printable ASCII but `"` and `\` (partner IDs, consent strings) is its own JSON text.
        encoded = _text(f'"{key}":"', pl.col(key), '"')
    text = given.select(pl.when(pl.col(key).str.strip_chars() != "").then(encoded)).to_series()
    return pl.repeat(None, value.len(), dtype=pl.String, eager=True).scatter(rows, text)


def _digests(values: dict[str, pl.Series]) -> bool:
    """Whether the values look as the identity engine writes hashed PII (64 hex digits): 64 bytes
    each, no `"` or `\\` (which JSON escapes) and no space (a blank value is absent). One parallel
    pass; control characters, which no hash holds either, would make the JSON invalid."""
    if not values:
        return True
    length, odd = pl.all().str.len_bytes(), pl.all().str.contains_any(['"', "\\", " "])
    return all(pl.DataFrame(values).select((length == _DIGEST_LENGTH).all() & ~odd.any()).row(0))


def _members_of(
    name: str, values: dict[str, pl.Series], hashes: bool
) -> tuple[dict[str, pl.Series], list[pl.Expr], pl.Expr]:
    """The columns an object of `values` needs, the pieces of the list `name` holding it, and whether
    a member has any value. Concatenated skipping nulls, the pieces are `"name":[{`, the non-null
    values as `"key":value` joined by commas, and `}]`; nothing where every value is null.

    Where the values are `hashes` as the identity engine writes them (`_digests`), each goes in
    between quotes as it is (`_raw_list`); otherwise each value is JSON-encoded on its own, and the
    texts joined by a separator that skips nulls."""
    if not values:
        return values, [], pl.lit(False)
    if hashes and _digests(values):
        return values, *_raw_list(name, list(values))
    encoded = {key: _encoded(key, value) for key, value in values.items()}
    pairs = pl.concat_str([pl.col(key) for key in encoded], separator=",", ignore_nulls=True)
    given = pl.any_horizontal(pl.col(key).is_not_null() for key in encoded)
    return encoded, [pl.when(given).then(_text(f'"{name}":[{{', pairs, "}]"))], given


def _raw_list(name: str, keys: list[str]) -> tuple[list[pl.Expr], pl.Expr]:
    """The pieces of the list `name` (`_members_of`) for values that go in between quotes as they
    are, and whether a member has any: each value, with the text before it (the list's opening before
    a member's first value, a comma before the others) and the list's end. The payload's one
    concatenation copies each digest once (digests are most of a payload's bytes), where joining
    `"key":value` texts would first copy it into a text of its own."""
    pieces, before = [], None
    for key in keys:
        present = pl.col(key).is_not_null()
        opening, comma = pl.lit(f'"{name}":[{{"{key}":"'), pl.lit(f'","{key}":"')
        lead = opening if before is None else pl.when(before).then(comma).otherwise(opening)
        pieces += [pl.when(present).then(lead), pl.col(key)]
        before = present if before is None else before | present
    return [*pieces, pl.when(before).then(pl.lit('"}]'))], before


def _each_distinct(values: pl.Series, expr: pl.Expr) -> pl.Series:
    """`expr` of each of `values` (`pl.col` of its name), computed once per distinct value."""
    distinct = values.unique()
    return values.replace_strict(distinct, distinct.to_frame().select(expr).to_series(), default=None)


def _consent(snapshot: pl.DataFrame, column: str, default: str) -> pl.Series:
    """Each member's signal in `column`: a known value as given, another one `UNKNOWN`, none `default`."""
    if column not in snapshot.columns:
        return pl.repeat(default, snapshot.height, dtype=pl.String, eager=True)
    given = pl.col(column).str.strip_chars().str.to_uppercase()
    known = pl.when(given.is_in(CONSENT_VALUES)).then(given).otherwise(pl.lit("UNKNOWN"))
    signal = pl.when(given.is_null() | (given == "")).then(pl.lit(default)).otherwise(known)
    return _each_distinct(snapshot.get_column(column).cast(pl.String), signal)


def member_payloads(snapshot: pl.DataFrame, rules: MemberRules) -> pl.DataFrame:
    """`user_id` and `payload` of each snapshot member: the JSON text of the ADM member object it is
    sent as, without `externalUserId` and `action`; null for a member with no identity to send."""
    # Polars releases the GIL while it computes: each core builds the payloads of a share of the
    # members (no fewer than `_SLICE_ROWS`, below which a thread of its own does not pay).
    cores = pl.thread_pool_size()
    rows = max(-(-snapshot.height // cores), _SLICE_ROWS)
    shares = [snapshot.slice(offset, rows) for offset in range(0, snapshot.height, rows)] or [snapshot]
    with ThreadPoolExecutor(max_workers=cores) as pool:
        return pl.concat(pool.map(lambda share: _payloads(share, rules), shares), rechunk=False)


def _payloads(snapshot: pl.DataFrame, rules: MemberRules) -> pl.DataFrame:
    """`member_payloads` of some members, built in two stages: each value once, then one concatenation
    of the values present and the literal JSON around them. (A single nested expression would be
    copied into every branch that uses a part of it, and compute it again there.)"""

    def chosen(mapping: dict[str, tuple[str, tuple[str, ...]]]) -> dict[str, pl.Series]:
        return {
            key: _value(snapshot, names) for name, (key, names) in mapping.items() if name in rules.identities
        }

    hashed, hashed_piis, any_hashed = _members_of("hashedPiis", chosen(HASHED_PII), hashes=True)
    external, external_identities, any_external = _members_of(
        "externalIdentities", chosen(EXTERNAL_IDENTITIES), hashes=False
    )
    signals = {key: _encoded(key, _value(snapshot, (column,))) for key, column in _SIGNALS.items()}
    country = (
        _each_distinct(snapshot.get_column("country_code").cast(pl.String), alpha2(pl.col("country_code")))
        if "country_code" in snapshot.columns
        else pl.repeat(None, snapshot.height, dtype=pl.String, eager=True)
    )
    frame = snapshot.select(pl.col(USER_ID).cast(pl.String)).with_columns(
        **hashed,
        **external,
        **signals,
        __country=country.fill_null(rules.country_code),
        __ad_storage=_consent(snapshot, "amzn_ad_storage", rules.consent),
        __user_data=_consent(snapshot, "amzn_user_data", rules.consent),
    )
    frame = frame.with_columns(__any_hashed=any_hashed, __any_external=any_external)
    any_hashed, any_external = pl.col("__any_hashed"), pl.col("__any_external")
    pieces = [
        pl.lit('{"userIdentity":{'),
        *hashed_piis,
        pl.when(any_hashed & any_external).then(pl.lit(",")),
        *external_identities,
        pl.lit('},"userConsent":{"geo":{"countryCode":"'),
        pl.col("__country"),
        pl.lit('"},"consent":{"amzn":{"amznAdStorage":"'),
        pl.col("__ad_storage"),
        pl.lit('","amznUserData":"'),
        pl.col("__user_data"),
        pl.lit('"}'),
        *(
            piece
            for key in signals
            for piece in (pl.when(pl.col(key).is_not_null()).then(pl.lit(",")), pl.col(key))
        ),
        pl.lit("}}}"),
    ]
    payload = pl.when(any_hashed | any_external).then(pl.concat_str(pieces, ignore_nulls=True))
    return frame.select(USER_ID, payload.alias("payload"))


def adm_members(snapshot: pl.DataFrame, rules: MemberRules) -> Members:
    """Each snapshot member as the ADM member object it is sent as (`member_payloads`), with the
    fingerprint of its payload; members with no identity to send are counted as skipped."""
    built = member_payloads(snapshot, rules)
    sendable = built.filter(pl.col("payload").is_not_null())
    members = sendable.select(USER_ID, fingerprint(sendable, ["payload"]), "payload")
    return Members(members, built.height - sendable.height)


def _outgoing(frame: pl.DataFrame, kind: str, action: str) -> pl.DataFrame:
    head = _text('{"externalUserId":', _json_field_value(USER_ID), f',"action":"{action}",')
    member = pl.concat_str([head, pl.col("payload").str.slice(1)])
    return frame.select(USER_ID, pl.lit(kind).alias(KIND), member.alias("member"))


def _json_field_value(column: str) -> pl.Expr:
    """A string column as a JSON string literal (quoted and escaped)."""
    encoded = pl.struct(pl.col(column).alias("v")).struct.json_encode()
    return encoded.str.slice(5, encoded.str.len_chars() - 6)


def request_slices(members: pl.Series) -> list[tuple[int, int]]:
    """`(offset, length)` of each request over the members' JSON texts, in order: at most the 5,000
    members Amazon recommends and at most its 10 MB per request (a member alone over 10 MB still
    goes alone, for Amazon to refuse).

    The texts go into the body as they are (`members_body`), so a request's size is exact: the
    envelope, and each member's bytes and a comma, less one comma. One cumulative sum, then a search
    per request, not a step per member."""
    if members.is_empty():
        return []
    ends = (members.str.len_bytes().cast(pl.Int64) + 1).cum_sum()  # bytes up to each member's comma
    room = MAX_REQUEST_BYTES - _ENVELOPE_BYTES + 1  # the last member has no comma
    slices, start = [], 0
    while start < members.len():
        before = ends[start - 1] if start else 0
        fits = ends.search_sorted(before + room, side="right") - start
        length = max(1, min(RECOMMENDED_MEMBERS_PER_REQUEST, fits))
        slices.append((start, length))
        start += length
    return slices


class AdmAdapter:
    """Members of one audience to its dataset of one manager account (see the module docstring).

    `adm` is None in a dry run. The dataset is found or created on the first request (`dataset`),
    so a dry run or a stopped delivery creates none. Uploads go at `pace` (default: one at a time,
    unlimited): several at once, each attempt taking its request from the pace's rate limit.
    """

    noun = "members"
    request_errors = (AmazonAdsApiError, requests.RequestException)

    def __init__(
        self,
        name: str,
        country_code: str,
        description: str,
        adm: AdmClient | None = None,
        pace: RequestPace | None = None,
    ):
        self.name, self.country_code, self.description, self.adm = name, country_code, description, adm
        self.pace = pace or RequestPace()
        self._dataset: AdmAudience | None = None

    def dataset(self) -> AdmAudience:
        """The audience's dataset, found by name or created."""
        if self._dataset is None:
            self._dataset = self.adm.ensure_audience(
                self.name, self.country_code, description=self.description
            )
        return self._dataset

    def items(self, changes: MembershipDiff, state: LedgerState) -> pl.DataFrame:
        """Removals first (DELETE with the payload the dataset was given), then additions and identity
        changes (CREATE with the new payload)."""
        return pl.concat(
            [
                _outgoing(changes.removed, REMOVED, DELETE),
                _outgoing(changes.added, ADDED, CREATE),
                _outgoing(changes.changed, CHANGED, CREATE),
            ]
        )

    def requests(self, items: pl.DataFrame) -> int:
        """See `request_slices`."""
        return len(request_slices(items.get_column("member")))

    def send(self, items: pl.DataFrame) -> Iterator[Answer]:
        """One upload per request slice, as they complete; members Amazon refuses are rejects with its
        reason. The dataset is found first, once, before any upload starts."""
        data_set_id = self.dataset().data_set_id
        members = items.get_column("member")
        chunks = (items.slice(offset, length) for offset, length in request_slices(members))
        yield from self.pace.results(chunks, lambda chunk: self._upload(data_set_id, chunk))

    def _upload(self, data_set_id: str, chunk: pl.DataFrame) -> Answer:
        """One upload of `chunk`'s members, their JSON texts sent as they are."""
        retries = self.adm.api.thread_retries
        result = self.adm.upload_members(
            data_set_id, chunk.get_column("member").to_list(), rate_limit=self.pace.rate_limit
        )
        numbers = chunk.get_column(ITEM).to_list()
        refused = {error.index: error.reason for error in result.errors}
        return Answer(
            confirmed=[number for index, number in enumerate(numbers) if index not in refused],
            rejected={numbers[index]: reason for index, reason in refused.items()},
            retries=self.adm.api.thread_retries - retries,
        )

    def stored(self, confirmed: pl.DataFrame) -> pl.DataFrame:
        """As sent: hashes, partner IDs and consent are no raw PII."""
        return confirmed
