"""Per (destination, audience): the members a destination holds, as it confirmed receiving them.

One Parquet file per ledger in a `ParquetStore`, replaced atomically on every commit:

    user_id      String  unique
    fingerprint  String  SHA-256 of the identities delivered (see `fingerprint`)
    payload      String  the identities as delivered, serialized (and possibly encrypted) by the
                         caller; the ledger stores it and never looks inside
    version      Int64   the ledger version at which the member was last added or changed

The ledger version itself is kept in the file's metadata, so it survives a commit that only
removes members. A delivery loads the ledger, diffs the snapshot against it, sends, and commits
only what the destination confirmed; whatever was not confirmed is still missing from the ledger,
so the next diff finds it again. A crash between sending and committing leaves the ledger where it
was, and the re-run sends the same changes with the same message ids.

The file's metadata also keeps the ledger's epoch: a random id drawn when the ledger is created
(`Ledger.start`, before anything is sent from it) and kept for its life. Message ids include it, so
a ledger deleted and started again (the recovery for a lost ledger key or a damaged file) sends
ids never seen before, while a re-run after a crash, which loads the same epoch, sends the same ones.
Ledgers written before epochs existed have the empty epoch.

Concurrency: ledgers of different audiences are different files and never touch each other. The
pipeline runs one delivery per audience partition at a time, so two runs of the same ledger only
meet when that is bypassed (a manual re-run next to a scheduled one); then the later commit fails
with `LedgerConflict` instead of overwriting the other run's commit. The check is a conditional
write: S3 `If-Match`/`If-None-Match` on the revision loaded, or a lock file for a local folder.
"""

import secrets
from dataclasses import dataclass
from urllib.parse import quote

import polars as pl

from audience_pipeline.membership.diff import MEMBER_COLUMNS
from audience_pipeline.state import ParquetStore, RevisionConflict, UnreadableFile

LEDGER_SCHEMA = pl.Schema(
    {"user_id": pl.String, "fingerprint": pl.String, "payload": pl.String, "version": pl.Int64}
)
_MEMBER_SCHEMA = {name: LEDGER_SCHEMA[name] for name in MEMBER_COLUMNS}
_VERSION_KEY = "ledger_version"
_EPOCH_KEY = "ledger_epoch"


class LedgerConflict(RuntimeError):
    """Another run committed the same ledger after this one loaded it; load and diff again."""


class LedgerDamaged(RuntimeError):
    """A stored ledger cannot be read as one; the message names the file and how to recover."""


@dataclass(frozen=True)
class LedgerState:
    """A ledger as loaded or committed: its members, its version (0 before the first commit), its
    epoch (empty before `Ledger.start`) and the store revision a commit must still find."""

    frame: pl.DataFrame
    version: int
    revision: str | None
    epoch: str = ""


class Ledger:
    """The ledger of one destination and audience in `store`."""

    def __init__(self, store: ParquetStore, destination: str, audience_id: str | int):
        self.store = store
        self.key = ledger_key(destination, audience_id)

    def load(self) -> LedgerState:
        """The stored ledger, or an empty one at version 0 when nothing was committed yet.

        Raises `LedgerDamaged` when the file is not Parquet, lacks the ledger's columns or its
        version: a guess there could re-send or drop a destination's members."""
        try:
            stored = self.store.read_stored(self.key)
        except UnreadableFile:
            raise self._damaged("is not a readable Parquet file") from None
        if stored is None:
            return LedgerState(LEDGER_SCHEMA.to_frame(), 0, None)
        version = stored.metadata.get(_VERSION_KEY, "")
        if not version.isdigit():
            raise self._damaged(f"has no ledger version in its metadata ({_VERSION_KEY})")
        try:
            frame = stored.frame.select(LEDGER_SCHEMA.names()).cast(LEDGER_SCHEMA)
        except pl.exceptions.PolarsError:
            columns = ", ".join(LEDGER_SCHEMA.names())
            raise self._damaged(f"does not hold the ledger columns {columns}") from None
        return LedgerState(frame, int(version), stored.revision, stored.metadata.get(_EPOCH_KEY, ""))

    def start(self, state: LedgerState) -> LedgerState:
        """The state to send from: `state` when the ledger is stored, else a new, empty ledger written
        now with a fresh epoch, so that a re-run after a crash finds the epoch its ids were made with.
        Raises `LedgerConflict` when another run created the ledger meanwhile."""
        if state.revision is not None:
            return state
        epoch = secrets.token_hex(8)
        frame = LEDGER_SCHEMA.to_frame()
        return LedgerState(frame, 0, self._write(frame, state, 0, epoch), epoch)

    def commit(
        self,
        state: LedgerState,
        *,
        added: pl.DataFrame | None = None,
        removed: pl.DataFrame | None = None,
        changed: pl.DataFrame | None = None,
    ) -> LedgerState:
        """Record what the destination confirmed since `state` was loaded, as the next version.

        `added` and `changed` need `user_id, fingerprint, payload` (the frames of a
        `MembershipDiff`, filtered to what was confirmed, fit as they are); `removed` needs
        `user_id`. Confirmed members are upserted at the new version, removed ones dropped, all
        others kept as they were. With nothing confirmed, nothing is written and `state` returned.
        Raises `LedgerConflict` when the stored ledger moved on since `state` was loaded.
        """
        confirmed = [
            frame.select(MEMBER_COLUMNS).cast(_MEMBER_SCHEMA)
            for frame in (added, changed)
            if frame is not None
        ]
        upserts = pl.concat([pl.DataFrame(schema=_MEMBER_SCHEMA), *confirmed])
        touched = upserts.select("user_id")
        if removed is not None:
            touched = pl.concat([touched, removed.select(pl.col("user_id").cast(pl.String))])
        if touched.is_empty():
            return state
        if touched.get_column("user_id").n_unique() != touched.height:
            raise ValueError("A confirmed member may be added, changed or removed only once per commit")

        version = state.version + 1
        frame = pl.concat(
            [
                # A set lookup of the few touched ids; an anti join would hash all members instead.
                state.frame.filter(~pl.col("user_id").is_in(touched.get_column("user_id").implode())),
                upserts.with_columns(version=pl.lit(version, dtype=pl.Int64)),
            ]
        )
        return LedgerState(frame, version, self._write(frame, state, version, state.epoch), state.epoch)

    def _write(self, frame: pl.DataFrame, loaded: LedgerState, version: int, epoch: str) -> str:
        """Write `frame` as `version` while the file is still at `loaded`'s revision."""
        metadata = {_VERSION_KEY: str(version), **({_EPOCH_KEY: epoch} if epoch else {})}
        try:
            return self.store.write_if(self.key, frame, loaded.revision, metadata=metadata)
        except RevisionConflict:
            raise LedgerConflict(
                f"Ledger {self.store.uri(self.key)} was committed by another run after this one loaded "
                f"version {loaded.version}; nothing was recorded. Load it again and diff again."
            ) from None

    def _damaged(self, problem: str) -> LedgerDamaged:
        return LedgerDamaged(
            f"Ledger {self.store.uri(self.key)} {problem}; nothing was sent. Restore the file from a "
            "backup of the state store, or delete it: the next run then sends every current member "
            "again as an addition (members that left meanwhile stay at the destination)"
        )


def ledger_key(destination: str, audience_id: str | int) -> str:
    """The store key of a ledger: `ledgers/<destination>/<audience_id>.parquet`.

    `destination` may have `/`-separated parts (`firehose/my_stream`); every part and the audience
    id are percent-encoded, leading dots included, so no name can escape the ledgers folder, hide as
    a dot file or collide with another name.
    """
    parts = [_escaped(part) for part in destination.split("/")]
    return "/".join(["ledgers", *parts, f"{_escaped(str(audience_id))}.parquet"])


def _escaped(name: str) -> str:
    if not name:
        raise ValueError("Ledger destination parts and audience ids must not be empty")
    escaped = quote(name, safe="")
    return "%2E" + escaped[1:] if escaped.startswith(".") else escaped
