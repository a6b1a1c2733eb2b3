"""Forgetting a person everywhere: deletion requests, the keys that find them, suppression, receipts.

A deletion request is rows of a query naming a person by any identity column (`user_id`, `email`,
`phone`, mobile ad IDs, partner IDs, and names or addresses for AMC) under a `request_id`, with an
optional `withdrawn` flag. The identity engine normalizes and hashes them at once, so what this module
keeps and hands on is hashes only:

- **keys** `(request_id, kind, hash)`: the SHA-256 of each value that singles a person out (`user_id`,
  `email`, `phone`, mobile ad IDs, partner IDs). Names, addresses, cities, ZIPs and countries never
  match on their own: a first name shared by thousands would forget them all. Once a request found its
  person in a snapshot, the keys of every identity the snapshot held for them join it (`resolve`): a
  person asked for by e-mail is then found by user id and mobile ad ID too, in ledgers and queues that
  keep nothing else, on this run and on every later one.
- **hashed identities** per request: what Amazon's identity deletions take (AMC, Ads Data Manager).

The keys of the open requests are the **suppression list** (`SUPPRESSED_KEY` in the state store): a
snapshot leaves out every member matching one (`matches`), so a forgotten person does not come back
on the next refresh until the request is withdrawn. **Receipts** (`RECEIPTS_KEY`) record per request
and destination what was done: Amazon's request ids, the final state, how many members, when.

No Dagster here.
"""

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import polars as pl

from audience_pipeline.identity import (
    HASHED_FIELDS,
    IDENTITY_FIELDS,
    MAID_FIELDS,
    PASSTHROUGH_FIELDS,
    normalize_identities,
)
from audience_pipeline.identity.hashing import sha256_hex
from audience_pipeline.membership.delivery import USER_ID, BucketedMembers, Members, MemberSource
from audience_pipeline.membership.ledger import LedgerReader, LedgerState
from audience_pipeline.state import ParquetStore

REQUEST_ID, WITHDRAWN = "request_id", "withdrawn"
MATCH_FIELDS: tuple[str, ...] = (USER_ID, "email", "phone", *MAID_FIELDS, *PASSTHROUGH_FIELDS)
"""The identity columns that single a person out: a member matching one of their hashes is the person."""
KEYS_SCHEMA = pl.Schema({REQUEST_ID: pl.String, "kind": pl.String, "hash": pl.String})
RECEIPT_SCHEMA = pl.Schema(
    {
        REQUEST_ID: pl.String,
        "destination": pl.String,
        "amazon_ids": pl.List(pl.String),
        "state": pl.String,
        "final": pl.Boolean,
        "members": pl.Int64,
        "at": pl.Int64,
    }
)
SUPPRESSED_KEY = "privacy/suppressed.parquet"
RECEIPTS_KEY = "privacy/receipts.parquet"
# Receipt states besides Amazon's own: the work is done, it failed (tried again by the next run), or a
# destination that failed before held nothing of the person when tried again (or is gone from the project).
DONE, FAILED, NOT_HELD = "DONE", "FAILED", "NOT_HELD"


@dataclass(frozen=True)
class DeletionRequests:
    """A deletion-requests query's result, hashed: the keys and hashed identities of the open
    requests, the withdrawn ones, and counts (never a value)."""

    keys: pl.DataFrame
    """`KEYS_SCHEMA`: the open requests' keys."""
    hashed: pl.DataFrame
    """`request_id` and the hashed identity columns (`HASHED_FIELDS` the query returned), per row."""
    open: tuple[str, ...]
    withdrawn: tuple[str, ...]
    rows_without_request_id: int
    rejects: dict[str, dict[str, int]]


def key_hash(kind: str, values: pl.Expr) -> pl.Expr:
    """The hash a key of `kind` is matched on, from a normalized value (a snapshot's, a ledger's user id
    or MAID): hashed fields are hashes already, the others are hashed here."""
    if kind in HASHED_FIELDS:
        return values
    return sha256_hex(values.cast(pl.String).str.strip_chars())


def deletion_requests(frame: pl.DataFrame, default_country: str | None = None) -> DeletionRequests:
    """Normalize and hash a deletion-requests query's result (see the module docstring).

    A request is withdrawn when any of its rows has `withdrawn` true. Raises ValueError when there is
    no `request_id` column or no identity column (the message names columns, never values).
    """
    if REQUEST_ID not in frame.columns:
        raise ValueError(f"the deletion-requests query returns no `{REQUEST_ID}` column")
    identities = [c for c in frame.columns if c in IDENTITY_FIELDS or c == USER_ID]
    if not [c for c in identities if c != "country_code"]:
        raise ValueError(
            "the deletion-requests query returns no identity column: return at least one of "
            f"{', '.join(MATCH_FIELDS[:3])}, a mobile ad ID or a partner ID"
        )
    request_id = pl.col(REQUEST_ID).cast(pl.String).str.strip_chars()
    withdrawn = (
        pl.col(WITHDRAWN).cast(pl.Boolean).fill_null(False) if WITHDRAWN in frame.columns else pl.lit(False)
    )
    rows = frame.select(request_id.alias(REQUEST_ID), withdrawn.alias(WITHDRAWN), *identities)
    named = rows.filter(pl.col(REQUEST_ID).is_not_null() & (pl.col(REQUEST_ID) != ""))
    result = normalize_identities(named.drop(REQUEST_ID, WITHDRAWN, strict=False), None, default_country)
    normalized = result.frame.with_columns(named.get_column(REQUEST_ID), named.get_column(WITHDRAWN))
    by_request = normalized.group_by(REQUEST_ID, maintain_order=True).agg(pl.col(WITHDRAWN).any())
    withdrawn_ids = tuple(by_request.filter(WITHDRAWN).get_column(REQUEST_ID))
    open_rows = normalized.join(by_request.filter(~pl.col(WITHDRAWN)).select(REQUEST_ID), on=REQUEST_ID)
    if USER_ID in open_rows.columns:
        user_id = pl.col(USER_ID).cast(pl.String).str.strip_chars()
        open_rows = open_rows.with_columns(pl.when(user_id != "").then(user_id).alias(USER_ID))
    kinds = [kind for kind in MATCH_FIELDS if kind in open_rows.columns]
    keys = pl.concat(
        [
            KEYS_SCHEMA.to_frame(),
            *(
                open_rows.select(
                    REQUEST_ID, pl.lit(kind).alias("kind"), key_hash(kind, pl.col(kind)).alias("hash")
                ).drop_nulls("hash")
                for kind in kinds
            ),
        ]
    ).unique(maintain_order=True)
    hashed = open_rows.select(REQUEST_ID, *(f for f in HASHED_FIELDS if f in open_rows.columns))
    return DeletionRequests(
        keys=keys,
        hashed=hashed,
        open=tuple(by_request.filter(~pl.col(WITHDRAWN)).get_column(REQUEST_ID)),
        withdrawn=withdrawn_ids,
        rows_without_request_id=rows.height - named.height,
        rejects=result.reject_counts(),
    )


def matches(frame: pl.DataFrame, keys: pl.DataFrame) -> pl.Series:
    """Whether each row of `frame` (normalized identity columns, as in a snapshot) carries one of the
    `keys` (`KEYS_SCHEMA`, or `kind, hash`) in a column of the same kind."""
    found = pl.repeat(False, frame.height, eager=True, dtype=pl.Boolean)
    for (kind,), hashes in keys.partition_by("kind", as_dict=True).items():
        if kind in frame.columns:
            hashed = frame.select(key_hash(kind, pl.col(kind))).to_series()
            found = found | hashed.is_in(hashes.get_column("hash").implode()).fill_null(False)
    return found.alias("matches")


def resolve(members: pl.DataFrame, keys: pl.DataFrame) -> pl.DataFrame:
    """The keys (`KEYS_SCHEMA`) of every identity of `members` (normalized identity columns, as in a
    snapshot), each under the request (of `keys`) whose key the member carries."""
    kinds = [kind for kind in MATCH_FIELDS if kind in members.columns]
    rows = members.select(*(key_hash(kind, pl.col(kind)).alias(kind) for kind in kinds)).with_row_index("row")
    owned = pl.concat(
        [
            pl.DataFrame(schema={"row": pl.UInt32, REQUEST_ID: pl.String}),
            *(
                rows.select("row", pl.col(kind).alias("hash"))
                .join(keys.filter(pl.col("kind") == kind), on="hash")
                .select("row", REQUEST_ID)
                for kind in kinds
            ),
        ]
    ).unique()
    found = owned.join(rows, on="row")
    return (
        pl.concat(
            [
                KEYS_SCHEMA.to_frame(),
                *(
                    found.select(REQUEST_ID, pl.lit(kind).alias("kind"), pl.col(kind).alias("hash"))
                    for kind in kinds
                ),
            ]
        )
        .drop_nulls("hash")
        .unique(maintain_order=True)
    )


def finder(keys: pl.DataFrame, kinds: Sequence[str]) -> Callable[[pl.Series], pl.Series]:
    """Whether each of some values (a ledger's user ids or MAIDs, of one of `kinds`) carries one of `keys`."""
    hashes = keys.filter(pl.col("kind").is_in(kinds)).get_column("hash").implode()

    def found(values: pl.Series) -> pl.Series:
        return values.to_frame().select(key_hash(kinds[0], pl.col(values.name)).is_in(hashes)).to_series()

    return found


def held_per_request(values: pl.Series, keys: pl.DataFrame, kinds: Sequence[str]) -> dict[str, int]:
    """How many of `values` (user ids or MAIDs a destination holds, of one of `kinds`) each request of
    `keys` names."""
    hashed = values.unique().to_frame("value").with_columns(key_hash(kinds[0], pl.col("value")).alias("hash"))
    named = keys.filter(pl.col("kind").is_in(kinds)).select(REQUEST_ID, "hash").unique()
    owners = hashed.join(named, on="hash")
    return dict(owners.group_by(REQUEST_ID).agg(pl.col("value").n_unique()).iter_rows())


def load_keys(store: ParquetStore) -> pl.DataFrame:
    """The stored keys of the open requests (`KEYS_SCHEMA`), resolved ones included; empty without one."""
    frame = store.read(SUPPRESSED_KEY)
    return KEYS_SCHEMA.to_frame() if frame is None else frame.select(KEYS_SCHEMA.names()).cast(KEYS_SCHEMA)


def load_suppressed(store: ParquetStore) -> pl.DataFrame:
    """The suppression list: the keys (`kind, hash`) of every open deletion request; empty without one."""
    return load_keys(store).select("kind", "hash").unique()


def save_suppressed(store: ParquetStore, keys: pl.DataFrame) -> None:
    """Replace the suppression list with `keys` (`KEYS_SCHEMA`: the open requests'), hashes only."""
    store.write(SUPPRESSED_KEY, keys.select(KEYS_SCHEMA.names()).unique().sort(REQUEST_ID, "kind", "hash"))


@dataclass(frozen=True)
class Receipt:
    """What one destination did for one request, when (Unix seconds): the state (`DONE`, `FAILED` or
    Amazon's own, e.g. AMC's `SUCCEEDED`), whether it is final, how many members it concerned and
    Amazon's request ids where it gives any."""

    request_id: str
    destination: str
    state: str
    at: int
    final: bool = True
    members: int = 0
    amazon_ids: tuple[str, ...] = ()


def load_receipts(store: ParquetStore) -> pl.DataFrame:
    """Every receipt (`RECEIPT_SCHEMA`); empty before the first."""
    frame = store.read(RECEIPTS_KEY)
    return RECEIPT_SCHEMA.to_frame() if frame is None else frame.cast(RECEIPT_SCHEMA)


def receipts_frame(receipts: Iterable[Receipt]) -> pl.DataFrame:
    """Receipts as rows of `RECEIPT_SCHEMA`."""
    rows = [
        {
            REQUEST_ID: r.request_id,
            "destination": r.destination,
            "amazon_ids": list(r.amazon_ids),
            "state": r.state,
            "final": r.final,
            "members": r.members,
            "at": r.at,
        }
        for r in receipts
    ]
    return pl.DataFrame(rows, schema=RECEIPT_SCHEMA)


def save_receipts(store: ParquetStore, stored: pl.DataFrame, new: Sequence[Receipt]) -> pl.DataFrame:
    """The receipts `stored` with `new` ones replacing those of the same request and destination,
    written to the state store; what was written."""
    fresh = receipts_frame(new)
    kept = stored.join(fresh.select(REQUEST_ID, "destination"), on=[REQUEST_ID, "destination"], how="anti")
    merged = pl.concat([kept, fresh])
    store.write(RECEIPTS_KEY, merged)
    return merged


def to_process(requests: DeletionRequests, receipts: pl.DataFrame) -> list[str]:
    """The open requests to work on: those without a receipt, and those a destination failed."""
    failed = set(receipts.filter(pl.col("state") == FAILED).get_column(REQUEST_ID))
    seen = set(receipts.get_column(REQUEST_ID))
    return [r for r in requests.open if r not in seen or r in failed]


def settled(stored: pl.DataFrame, processed: Sequence[str], new: Sequence[Receipt], at: int) -> list[Receipt]:
    """`NOT_HELD` receipts for the failures (in `stored`) of requests this run `processed` that none of
    its `new` receipts replaces: the destination held nothing of the person when tried again, or is no
    longer in the project. Without them, the request would be tried again forever."""
    replaced = {(r.request_id, r.destination) for r in new}
    failed = stored.filter((pl.col("state") == FAILED) & pl.col(REQUEST_ID).is_in(list(processed)))
    return [
        Receipt(request_id, destination, NOT_HELD, at)
        for request_id, destination in failed.select(REQUEST_ID, "destination").iter_rows()
        if (request_id, destination) not in replaced
    ]


def without(user_ids: pl.Series) -> Callable[[LedgerState, LedgerReader], MemberSource]:
    """The members of the delivery core (`membership.delivery.deliver`) that a ledger holds, less
    `user_ids`: diffed against the ledger, the plan removes exactly them, sent as the destination's
    own removals and committed as they are confirmed."""
    gone = user_ids.cast(pl.String).implode()

    def members(state: LedgerState, held: LedgerReader) -> MemberSource:
        def bucket(number: int, level: int) -> Members:
            rows = held.rows(number, level).filter(~pl.col(USER_ID).is_in(gone))
            return Members(rows.select(USER_ID, "fingerprint", "payload"))

        return BucketedMembers(held.bits, bucket)

    return members
