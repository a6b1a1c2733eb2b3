"""An audience snapshot: one row per member with normalized, hashed identities, and its counts.

Built as the query's result streams in, so memory does not grow with the audience: each batch's rows
are set aside by the bucket of their user id (`set_aside`; `state.buckets`, encrypted, since they hold
raw identities), then each bucket in turn keeps one row per user, goes through the identity engine and
is written to the snapshot file, a bucketed Parquet file sorted by user id within each bucket.

Pure polars: the Dagster asset that persists snapshots lives in `components/audiences.py`.
"""

from collections import Counter
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import polars as pl

from audience_pipeline.identity import CONSENT_FIELDS, HASHED_FIELDS, IDENTITY_FIELDS, normalize_identities
from audience_pipeline.privacy import matches
from audience_pipeline.state.buckets import BucketedFile, BucketedWriter, Spill, bits_for

USER_ID = "user_id"
# Rows of unknown number are set aside finely: 256 buckets hold 64M rows at the usual bucket size.
_SPILL_BITS = 8
# Batches are set aside this many rows at a time: each bucket's share is sealed as one chunk (a small
# Parquet file), whose fixed cost would dominate with the small batches a stream comes in; more rows
# at a time would hold more (1M rows of 48 columns: ~0.9 GiB at 100k, ~1.4 GiB at 250k).
_GATHER_ROWS = 100_000


class MissingUserIdError(ValueError):
    """The query result has no `user_id` column."""


@dataclass(frozen=True)
class Snapshot:
    """What a snapshot holds, in numbers: the rows the query returned, the members kept, the rejects
    by field and reason, the values kept by field and the query's columns that were dropped."""

    rows: int
    members: int
    rejects: dict[str, dict[str, int]]
    values_out: dict[str, int]
    dropped_columns: tuple[str, ...]
    suppressed: int = 0
    """Members left out because they match the suppression list (forgotten people)."""

    @property
    def values_hashed(self) -> int:
        """Hashed PII values kept, over all hashed fields."""
        return sum(n for field, n in self.values_out.items() if field in HASHED_FIELDS)


@dataclass
class QueryRows:
    """The rows of a query's result that have a user id (trimmed text), set aside by bucket (`spill`,
    keyed by `user_id`), with how many rows the query returned and how many had no user id."""

    spill: Spill
    returned: int = 0
    missing: int = 0


@contextmanager
def set_aside(batches: Iterable[pl.DataFrame], columns: list[str], schema: pl.Schema) -> Iterator[QueryRows]:
    """Set aside the `columns` of the rows of `batches` (of `schema`) that have a user id, until the
    `with` block ends. A blank user id is none. Raises MissingUserIdError when there is no `user_id`."""
    if USER_ID not in schema:
        raise MissingUserIdError(
            f"the query returned no `{USER_ID}` column (it returned: {', '.join(schema) or 'none'})"
        )
    user_id = pl.col(USER_ID).cast(pl.String).str.strip_chars()
    rows_schema = pl.Schema({**{c: schema[c] for c in columns}, USER_ID: pl.String})
    with Spill(rows_schema, _SPILL_BITS) as spill:
        found = QueryRows(spill)
        gathered: list[pl.DataFrame] = []
        for batch in batches:
            frame = batch.select(columns).with_columns(pl.when(user_id != "").then(user_id).alias(USER_ID))
            present = frame.filter(pl.col(USER_ID).is_not_null())
            found.returned += batch.height
            found.missing += frame.height - present.height
            gathered.append(present)
            if sum(part.height for part in gathered) >= _GATHER_ROWS:
                spill.add(pl.concat(gathered))
                gathered = []
        if gathered:
            spill.add(pl.concat(gathered))
        yield found


def build_snapshot(
    batches: Iterable[pl.DataFrame],
    schema: pl.Schema,
    path: str,
    default_country: str | None = None,
    suppressed: pl.DataFrame | None = None,
) -> Snapshot:
    """Write the snapshot of an audience query's result (`batches` of `schema`) at `path`.

    The file holds `user_id` (text, unique, never null), the identity columns the query returned,
    normalized (hashed PII, canonical device IDs, trimmed partner IDs), and any consent columns. A null
    or blank `user_id` rejects its row (`missing_user_id`); a `user_id` seen before keeps the first row
    the query returned and rejects the others (`duplicate_user_id`). Columns that are neither identities
    nor consent signals are dropped, because nothing downstream needs them and they may hold raw PII.
    Members carrying a key of `suppressed` (`kind, hash`: the suppression list of `privacy`) are left
    out and counted, so that a person forgotten everywhere is not delivered again.
    Raises MissingUserIdError, before writing anything, when the result has no `user_id` column.
    """
    kept = [USER_ID, *(c for c in schema if c in IDENTITY_FIELDS or c in CONSENT_FIELDS)]
    with set_aside(batches, kept, schema) as found:
        out_schema = normalize_identities(
            found.spill.schema.to_frame(), default_country=default_country
        ).frame.schema
        writer = BucketedWriter(path, out_schema)
        # A profile of many identities takes the identity engine a few KB while it works: a snapshot's
        # buckets are a quarter of the usual size. On 4M sample profiles (48 columns) the buckets' work
        # then peaks at ~1.0 GiB, against 1.3-2.0 GiB at half the size, for about a tenth more time.
        bits = bits_for(4 * found.spill.rows)
        rejects: Counter[tuple[str, str]] = Counter()
        values_out: Counter[str] = Counter()
        left_out = 0
        for bucket in range(1 << bits):
            unique = found.spill.read(bucket, bits).unique(USER_ID, keep="first", maintain_order=True)
            identities = normalize_identities(unique, default_country=default_country)
            members = identities.frame
            if suppressed is not None and suppressed.height:
                members = members.filter(~matches(members, suppressed))
                left_out += identities.frame.height - members.height
            writer.write(bucket, members.sort(USER_ID).cast(out_schema))
            rejects.update(
                {
                    (f, reason): n
                    for f, reasons in identities.reject_counts().items()
                    for reason, n in reasons.items()
                }
            )
            values_out.update(identities.values_out())
        writer.close(bits)

    user_rejects = {
        "missing_user_id": found.missing,
        "duplicate_user_id": found.spill.rows - writer.rows - left_out,
    }
    by_field: dict[str, dict[str, int]] = {USER_ID: {r: n for r, n in user_rejects.items() if n}}
    for (field, reason), n in sorted(rejects.items()):
        by_field.setdefault(field, {})[reason] = n
    return Snapshot(
        rows=found.returned,
        members=writer.rows,
        rejects={field: reasons for field, reasons in by_field.items() if reasons},
        values_out={f: values_out[f] for f in out_schema if f in values_out},
        dropped_columns=tuple(c for c in schema if c not in kept),
        suppressed=left_out,
    )


def drop_members(snapshot: BucketedFile, path: str, keys: pl.DataFrame) -> pl.DataFrame:
    """Write at `path` the stored `snapshot` without the members carrying one of `keys` (`kind, hash`),
    a bucket at a time; the members dropped (their every column, hashes and MAIDs only)."""
    writer = BucketedWriter(path, snapshot.stored.schema)
    dropped = [snapshot.stored.schema.to_frame()]
    for bucket in range(1 << snapshot.bits):
        members = snapshot.bucket(bucket)
        found = matches(members, keys)
        dropped.append(members.filter(found))
        writer.write(bucket, members.filter(~found))
    writer.close(snapshot.bits)
    return pl.concat(dropped)
