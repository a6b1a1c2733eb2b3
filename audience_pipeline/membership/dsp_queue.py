"""The durable queue of one audience's mobile ad id changes for Amazon DSP (bulk forwarding).

    snapshot MAIDs ─ diff vs ledger + pending queue ─► add / remove rows appended to the queue
    queue ─(flush: when the upload interval passed or the size limit is reached)─► PATCH ─► ledger

- A member is one MAID (IDFA or GAID), so a user whose MAID changed is a removal of the old MAID
  and an addition of the new one, and two users sharing a MAID are one member.
- The queue holds at most one pending change per MAID, relative to the ledger: a change undone
  before it was flushed (added, then removed again) leaves the queue instead of being sent twice.
- One Parquet file per queue in the state store (`maid, op, queued_at`), replaced atomically and
  only at the revision loaded (the queue asset and a flush may meet); its metadata keeps the time
  of the last upload.

No Dagster here.
"""

import json
from dataclasses import dataclass

import polars as pl

from audience_pipeline.clients.dsp import maid_patch
from audience_pipeline.identity import normalize_identities
from audience_pipeline.identity.rules import ZEROED_MAID
from audience_pipeline.membership.ledger import ledger_key
from audience_pipeline.state import ParquetStore, RevisionConflict

MAID_COLUMNS = ("idfa", "gaid")
QUEUE_SCHEMA = pl.Schema({"maid": pl.String, "op": pl.String, "queued_at": pl.Int64})
ADD, REMOVE = "add", "remove"
_LAST_UPLOAD_KEY = "last_upload_at"
# A patch's size as sent, with the widest audience id (19 digits): the queue size is what a flush sends.
_PATCH_BYTES = {op: len(json.dumps(maid_patch(op, ZEROED_MAID, 10**18)).encode()) + 2 for op in (ADD, REMOVE)}


class QueueConflict(RuntimeError):
    """Another run replaced the queue after this one loaded it; nothing was written."""


@dataclass(frozen=True)
class AudienceMaids:
    """An audience's distinct MAIDs (`maid`) and the MAIDs left out, counted by reason."""

    maids: pl.Series
    rejects: dict[str, int]


def audience_maids(snapshot: pl.DataFrame) -> AudienceMaids:
    """The IDFAs and GAIDs of a snapshot, one row per distinct MAID.

    The identity engine already canonicalized them; a value that is still not a canonical UUID, or is
    the all-zero id of limited ad tracking, is a reject (`invalid_maid`, `zeroed_maid`), never sent.
    """
    columns = [c for c in MAID_COLUMNS if c in snapshot.columns]
    values = pl.concat(
        [pl.Series("maid", [], pl.String), *(snapshot.get_column(c).cast(pl.String) for c in columns)]
    ).drop_nulls()
    # The identity engine's own mobile-ad-ID rule decides what is valid, so both agree by construction.
    checked = normalize_identities(pl.DataFrame({"idfa": values}), fields=["idfa"])
    rejects = dict(checked.reject_counts().get("idfa", {}))
    maids = checked.frame.get_column("idfa").drop_nulls().unique(maintain_order=True).alias("maid")
    return AudienceMaids(maids, rejects)


@dataclass(frozen=True)
class QueueState:
    """A queue as loaded or saved: pending changes, when it was last uploaded (Unix seconds, None
    before the first upload) and the store revision a save must still find."""

    frame: pl.DataFrame
    last_upload_at: int | None
    revision: str | None

    @property
    def size_bytes(self) -> int:
        """The bytes the pending patches take in PATCH requests."""
        counts = self.frame.get_column("op").value_counts()
        return sum(_PATCH_BYTES[row["op"]] * row["count"] for row in counts.to_dicts())

    def due(self, now: float, interval_seconds: float, limit_bytes: int) -> str | None:
        """Why the queue must be flushed now, or None: it is empty, or neither the upload interval
        (since the last upload, or before the first one since the oldest change) has passed nor
        the size limit is reached."""
        if self.frame.is_empty():
            return None
        size = self.size_bytes
        if size >= limit_bytes:
            return f"queue size {size} bytes reached the limit of {limit_bytes}"
        since = self.last_upload_at
        if since is None:
            since = int(self.frame.get_column("queued_at").min())
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
        """The stored queue, or an empty one never uploaded."""
        stored = self.store.read_stored(self.key)
        if stored is None:
            return QueueState(QUEUE_SCHEMA.to_frame(), None, None)
        last = stored.metadata.get(_LAST_UPLOAD_KEY)
        return QueueState(stored.frame.cast(QUEUE_SCHEMA), int(last) if last else None, stored.revision)

    def save(self, state: QueueState, frame: pl.DataFrame, last_upload_at: int | None) -> QueueState:
        """Replace the queue loaded as `state` with `frame`; raises `QueueConflict` if it moved on."""
        metadata = {_LAST_UPLOAD_KEY: str(last_upload_at)} if last_upload_at is not None else {}
        frame = frame.select(QUEUE_SCHEMA.names()).cast(QUEUE_SCHEMA)
        try:
            revision = self.store.write_if(self.key, frame, state.revision, metadata=metadata)
        except RevisionConflict:
            raise QueueConflict(
                f"Queue {self.store.uri(self.key)} was replaced by another run after this one loaded it; "
                "nothing was written"
            ) from None
        return QueueState(frame, last_upload_at, revision)


def pending(queue: pl.DataFrame, delivered: pl.Series) -> pl.DataFrame:
    """The changes of `queue` still to send given the `delivered` MAIDs (the ledger's): the latest
    change per MAID, unless the destination already holds what it asks for."""
    latest = queue.unique("maid", keep="last", maintain_order=True)
    held = pl.col("maid").is_in(delivered.implode())
    return latest.filter(pl.when(pl.col("op") == ADD).then(~held).otherwise(held))


@dataclass(frozen=True)
class Enqueued:
    """A queue after new changes were appended, and how many additions and removals were new."""

    frame: pl.DataFrame
    added: int
    removed: int


def enqueue(queue: pl.DataFrame, delivered: pl.Series, maids: pl.Series, now: int) -> Enqueued:
    """Append to `queue` the changes that make the destination hold `maids`, given the `delivered`
    MAIDs and the changes already pending; pending changes keep their place and time."""
    queued = pending(queue, delivered)
    adds_pending = queued.filter(pl.col("op") == ADD).get_column("maid")
    removes_pending = queued.filter(pl.col("op") == REMOVE).get_column("maid")
    # What the destination will hold once the pending changes are flushed.
    expected = pl.concat([delivered.filter(~delivered.is_in(removes_pending.implode())), adds_pending])
    added = maids.filter(~maids.is_in(expected.implode()))
    removed = expected.filter(~expected.is_in(maids.implode()))
    appended = [
        pl.DataFrame({"maid": values.cast(pl.String)}).with_columns(
            op=pl.lit(op), queued_at=pl.lit(now, dtype=pl.Int64)
        )
        for values, op in ((added, ADD), (removed, REMOVE))
    ]
    frame = pending(pl.concat([queued, *appended]), delivered)
    return Enqueued(frame, added.len(), removed.len())
