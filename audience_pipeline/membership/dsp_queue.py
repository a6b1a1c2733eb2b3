"""The durable queue of one audience's mobile ad id changes for Amazon DSP (bulk forwarding).

    snapshot MAIDs ─ diff vs ledger + pending queue ─► add / remove rows appended to the queue
    queue ─(flush: when the upload interval passed or the size limit is reached)─► PATCH ─► ledger

- A member is one MAID (IDFA or GAID), so a user whose MAID changed is a removal of the old MAID
  and an addition of the new one, and two users sharing a MAID are one member.
- The queue holds at most one pending change per MAID, relative to the ledger: a change undone
  before it was flushed (added, then removed again) leaves the queue instead of being sent twice.
- One Parquet file per queue in the state store (`maid, op, queued_at`), replaced atomically and
  only at the revision loaded (the queue asset and a flush may meet); its metadata keeps the time
  of the last upload and what the flush sensor needs to know (how many changes, since when), so the
  sensor reads no rows.
- MAIDs are worked through in buckets (`state.buckets`): the queue file is bucketed by MAID, as the
  DSP ledger is (its members are MAIDs), so an audience of millions of MAIDs is queued, flushed and
  saved a bucket at a time.

No Dagster here.
"""

import json
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass

import polars as pl

from audience_pipeline.clients.dsp import maid_patch
from audience_pipeline.identity import normalize_identities
from audience_pipeline.identity.rules import ZEROED_MAID
from audience_pipeline.membership.ledger import Ledger, ledger_key
from audience_pipeline.state import ParquetStore, RevisionConflict
from audience_pipeline.state.buckets import Bucketed, BucketedFile, BucketedWriter, Spill, bits_for

MAID = "maid"
MAID_COLUMNS = ("idfa", "gaid")
QUEUE_SCHEMA = pl.Schema({MAID: pl.String, "op": pl.String, "queued_at": pl.Int64})
ADD, REMOVE = "add", "remove"
_LAST_UPLOAD_KEY, _ADDS_KEY, _REMOVES_KEY, _OLDEST_KEY = (
    "last_upload_at",
    "adds",
    "removes",
    "oldest_queued_at",
)
# A patch's size as sent, with the widest audience id (19 digits): the queue size is what a flush sends.
_PATCH_BYTES = {op: len(json.dumps(maid_patch(op, ZEROED_MAID, 10**18)).encode()) + 2 for op in (ADD, REMOVE)}
# MAIDs of unknown number are set aside finely: 256 buckets hold 64M MAIDs at the usual bucket size.
_SPILL_BITS = 8


class QueueConflict(RuntimeError):
    """Another run replaced the queue after this one loaded it; nothing was written."""


@dataclass(frozen=True)
class AudienceMaids:
    """An audience's distinct MAIDs (`maid`) and the MAIDs left out, counted by reason."""

    maids: pl.Series
    rejects: dict[str, int]


def audience_maids(snapshot: pl.DataFrame) -> AudienceMaids:
    """The IDFAs and GAIDs of a snapshot (or of a bucket of one), one row per distinct MAID.

    The identity engine already canonicalized them; a value that is still not a canonical UUID, or is
    the all-zero id of limited ad tracking, is a reject (`invalid_maid`, `zeroed_maid`), never sent.
    """
    columns = [c for c in MAID_COLUMNS if c in snapshot.columns]
    values = pl.concat(
        [pl.Series(MAID, [], pl.String), *(snapshot.get_column(c).cast(pl.String) for c in columns)]
    ).drop_nulls()
    # The identity engine's own mobile-ad-ID rule decides what is valid, so both agree by construction.
    checked = normalize_identities(pl.DataFrame({"idfa": values}), fields=["idfa"])
    rejects = dict(checked.reject_counts().get("idfa", {}))
    maids = checked.frame.get_column("idfa").drop_nulls().unique(maintain_order=True).alias(MAID)
    return AudienceMaids(maids, rejects)


@dataclass(frozen=True)
class QueueState:
    """A queue as loaded or saved: how many additions and removals wait, when the oldest was queued
    (None when none waits), when it was last uploaded (Unix seconds, None before the first upload)
    and the store revision a save must still find."""

    adds: int = 0
    removes: int = 0
    oldest_queued_at: int | None = None
    last_upload_at: int | None = None
    revision: str | None = None

    @property
    def changes(self) -> int:
        """How many changes wait."""
        return self.adds + self.removes

    @property
    def size_bytes(self) -> int:
        """The bytes the pending patches take in PATCH requests."""
        return self.adds * _PATCH_BYTES[ADD] + self.removes * _PATCH_BYTES[REMOVE]

    def due(self, now: float, interval_seconds: float, limit_bytes: int) -> str | None:
        """Why the queue must be flushed now, or None: it is empty, or neither the upload interval
        (since the last upload, or before the first one since the oldest change) has passed nor
        the size limit is reached."""
        if not self.changes:
            return None
        size = self.size_bytes
        if size >= limit_bytes:
            return f"queue size {size} bytes reached the limit of {limit_bytes}"
        since = self.last_upload_at if self.last_upload_at is not None else self.oldest_queued_at
        if now - since >= interval_seconds:
            what = "last upload" if self.last_upload_at is not None else "oldest queued change"
            return f"{int(now - since)} s since the {what}, interval {int(interval_seconds)} s"
        return None


class DspQueue:
    """The queue of one DSP destination and audience in `store`."""

    def __init__(self, store: ParquetStore, destination: str, audience_id: str | int):
        self.store = store
        # Same escaping as the ledger's key, under `queues/` instead of `ledgers/`.
        self.key = "queues/" + ledger_key(destination, audience_id).removeprefix("ledgers/")

    def load(self) -> QueueState:
        """The stored queue's state, or an empty one never uploaded."""
        with self.store.open(self.key) as stored:
            if stored is None:
                return QueueState()
            metadata = stored.metadata
            last = metadata.get(_LAST_UPLOAD_KEY)
            if _ADDS_KEY in metadata:
                oldest = metadata.get(_OLDEST_KEY)
                counts = (
                    int(metadata[_ADDS_KEY]),
                    int(metadata[_REMOVES_KEY]),
                    int(oldest) if oldest else None,
                )
            else:
                # A queue written before its counts were kept: small, as everything was then in memory.
                counts = _counts(stored.read().cast(QUEUE_SCHEMA))
            return QueueState(*counts, int(last) if last else None, stored.revision)

    @contextmanager
    def reader(self, state: QueueState) -> Iterator[Bucketed]:
        """The queue as loaded in `state`, a bucket of MAIDs at a time; `QueueConflict` when it was
        replaced since."""
        with self.store.open(self.key) as stored:
            if (None if stored is None else stored.revision) != state.revision:
                raise self._conflict()
            if stored is None:
                with Spill(QUEUE_SCHEMA, 0, key=MAID) as empty:
                    yield empty
            else:
                yield BucketedFile(stored, key=MAID)

    def save(
        self,
        state: QueueState,
        buckets: Iterable[tuple[int, pl.DataFrame]],
        bits: int,
        last_upload_at: int | None,
        *,
        dry_run: bool = False,
    ) -> QueueState:
        """Replace the queue loaded as `state` with the changes of `buckets` (bucket number and changes, in
        bucket order, at level `bits`); raises `QueueConflict` if it moved on. A dry run writes nothing
        and returns the state the queue would have."""
        adds = removes = 0
        oldest: int | None = None
        try:
            with ExitStack() as stack:
                if not dry_run:
                    staged = stack.enter_context(self.store.replacing(self.key, state.revision))
                    writer = BucketedWriter(staged.path, QUEUE_SCHEMA)
                for bucket, frame in buckets:
                    frame = frame.select(QUEUE_SCHEMA.names()).cast(QUEUE_SCHEMA)
                    if not dry_run:
                        writer.write(bucket, frame)
                    more_adds, more_removes, since = _counts(frame)
                    adds, removes = adds + more_adds, removes + more_removes
                    oldest = since if oldest is None else oldest if since is None else min(oldest, since)
                if not dry_run:
                    metadata = {_ADDS_KEY: str(adds), _REMOVES_KEY: str(removes)}
                    if oldest is not None:
                        metadata[_OLDEST_KEY] = str(oldest)
                    if last_upload_at is not None:
                        metadata[_LAST_UPLOAD_KEY] = str(last_upload_at)
                    writer.close(bits, metadata)
        except RevisionConflict:
            raise self._conflict() from None
        return QueueState(
            adds, removes, oldest, last_upload_at, state.revision if dry_run else staged.revision
        )

    def purge(self, match: Callable[[pl.Series], pl.Series]) -> int:
        """Take every pending change of the MAIDs that `match` (MAIDs → booleans) finds off the queue (a
        person forgotten: an addition must never reach DSP, and the removal is sent by whoever forgets
        them); how many were taken. The queue is rewritten only when it held one. Raises
        `QueueConflict` when it moved on meanwhile."""
        loaded = self.load()
        if loaded.revision is None:
            return 0
        with self.reader(loaded) as queued:
            numbers = range(1 << queued.bits)
            # Found first, a bucket at a time, so that a queue without them is not written again.
            found = {b: match(queued.bucket(b).get_column(MAID)) for b in numbers}
            taken = sum(int(hits.sum()) for hits in found.values())
            if taken:
                kept = ((b, queued.bucket(b).filter(~found[b])) for b in numbers)
                self.save(loaded, kept, queued.bits, loaded.last_upload_at)
        return taken

    def _conflict(self) -> QueueConflict:
        return QueueConflict(
            f"Queue {self.store.uri(self.key)} was replaced by another run after this one loaded it; "
            "nothing was written"
        )


def _counts(queue: pl.DataFrame) -> tuple[int, int, int | None]:
    """Additions, removals and the time of the oldest change of `queue`."""
    adds = int((queue.get_column("op") == ADD).sum())
    oldest = queue.get_column("queued_at").min()
    return adds, queue.height - adds, None if oldest is None else int(oldest)


def pending(queue: pl.DataFrame, delivered: pl.Series) -> pl.DataFrame:
    """The changes of `queue` still to send given the `delivered` MAIDs (the ledger's): the latest
    change per MAID, unless the destination already holds what it asks for."""
    latest = queue.unique(MAID, keep="last", maintain_order=True)
    held = pl.col(MAID).is_in(delivered.implode())
    return latest.filter(pl.when(pl.col("op") == ADD).then(~held).otherwise(held))


@dataclass(frozen=True)
class Enqueued:
    """A queue after new changes were appended, and how many additions and removals were new."""

    frame: pl.DataFrame
    added: int
    removed: int


def enqueue(queue: pl.DataFrame, delivered: pl.Series, maids: pl.Series, now: int) -> Enqueued:
    """Append to `queue` the changes that make the destination hold `maids`, given the `delivered`
    MAIDs and the changes already pending; pending changes keep their place and time. (For the
    whole audience, or for one bucket of MAIDs of the queue, the ledger and the audience alike.)"""
    queued = pending(queue, delivered)
    adds_pending = queued.filter(pl.col("op") == ADD).get_column(MAID)
    removes_pending = queued.filter(pl.col("op") == REMOVE).get_column(MAID)
    # What the destination will hold once the pending changes are flushed.
    expected = pl.concat([delivered.filter(~delivered.is_in(removes_pending.implode())), adds_pending])
    added = maids.filter(~maids.is_in(expected.implode()))
    removed = expected.filter(~expected.is_in(maids.implode()))
    appended = [
        pl.DataFrame({MAID: values.cast(pl.String)}).with_columns(
            op=pl.lit(op), queued_at=pl.lit(now, dtype=pl.Int64)
        )
        for values, op in ((added, ADD), (removed, REMOVE))
    ]
    frame = pending(pl.concat([queued.select(QUEUE_SCHEMA.names()), *appended]), delivered)
    return Enqueued(frame, added.len(), removed.len())


@dataclass(frozen=True)
class Queued:
    """What `queue_audience` did: the audience's distinct MAIDs, the MAIDs left out by reason, the
    additions and removals newly queued, and the queue after them."""

    maids: int
    rejects: dict[str, int]
    added: int
    removed: int
    queue: QueueState


def queue_audience(
    queue: DspQueue, snapshot: Bucketed, ledger: Ledger, now: int, *, dry_run: bool = False
) -> Queued:
    """Queue the changes that make the destination hold the MAIDs of `snapshot` (an audience's, by
    bucket), given what `ledger` holds and what is queued already (`enqueue`), a bucket of MAIDs at a
    time. A dry run writes nothing."""
    rejects: Counter[str] = Counter()
    with Spill(pl.Schema({MAID: pl.String}), _SPILL_BITS, key=MAID) as found:
        for bucket in range(1 << snapshot.bits):
            maids = audience_maids(snapshot.read(bucket, snapshot.bits))
            found.add(maids.maids.to_frame())
            rejects.update(maids.rejects)
        loaded, delivered = queue.load(), ledger.load()
        totals = Counter()
        with queue.reader(loaded) as queued, ledger.reader(delivered) as held:
            level = max(bits_for(found.rows), queued.bits, held.bits)

            def buckets() -> Iterator[tuple[int, pl.DataFrame]]:
                for bucket in range(1 << level):
                    maids = found.read(bucket, level).get_column(MAID).unique(maintain_order=True)
                    done = enqueue(
                        queued.read(bucket, level), held.read(bucket, level).get_column("user_id"), maids, now
                    )
                    totals.update(maids=maids.len(), added=done.added, removed=done.removed)
                    yield bucket, done.frame

            saved = queue.save(loaded, buckets(), level, loaded.last_upload_at, dry_run=dry_run)
    return Queued(totals["maids"], dict(rejects), totals["added"], totals["removed"], saved)
