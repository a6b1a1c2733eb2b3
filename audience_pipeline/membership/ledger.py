"""Per (destination, audience): the members a destination holds, as it confirmed receiving them.

One row per member:

    user_id      String  unique
    fingerprint  String  SHA-256 of the identities delivered (see `fingerprint`)
    payload      String  the identities as delivered, serialized (and possibly encrypted) by the
                         caller; the ledger stores it and never looks inside
    version      Int64   the ledger version at which the member was last added or changed

The rows live in parts, Parquet files in a `ParquetStore` folder beside the ledger's manifest
(`ledger_key`, parts under `<audience>@parts/`), split by the bucket of the user id
(`state.buckets`; the ledger's level follows its size, about 250k members a bucket):

- a base part per bucket: the bucket's members as of the version it was written at;
- a delta part per commit since: the members that commit added, changed or removed, by bucket.

A member's row is its newest delta row newer than its bucket's base, else its base row. Parts keep
a 64-bit hash of each fingerprint beside it, so a diff reads user ids and 8 bytes a member, and the
payloads only of the members that changed. A commit writes its changes as one delta part, as they
are confirmed, so it costs what changed, not the audience; it then folds deltas into the bases of
the buckets that gathered them longest (compaction), as few as keep the rows still read from deltas
under a fifth of the ledger, so each change is rewritten a bounded number of times. A commit that
takes the ledger past twice its level's size writes every bucket again at the next level, as a hash
table grows. Parts are never changed: they are written under new names, named by the manifest,
which is replaced atomically (that is the commit), and deleted once no manifest names them.

The manifest's metadata keeps the ledger version, so it survives a commit that only removes
members, and how many members the ledger holds, so that counting them reads no part. A delivery
loads the ledger, diffs the snapshot against it, sends, and commits only what the destination
confirmed; whatever was not confirmed is still missing from the ledger, so the next diff finds it
again. A crash between sending and committing leaves the ledger where it was, and the
re-run sends the same changes with the same message ids.

The metadata also keeps the ledger's epoch: a random id drawn when the ledger is created
(`Ledger.start`, before anything is sent from it) and kept for its life. Message ids include it, so
a ledger deleted and started again (the recovery for a lost ledger key or a damaged file) sends
ids never seen before, while a re-run after a crash, which loads the same epoch, sends the same ones.
Ledgers written before epochs existed have the empty epoch.

Concurrency: ledgers of different audiences are different files and never touch each other. The
pipeline runs one delivery per audience partition at a time, so two runs of the same ledger only
meet when that is bypassed (a manual re-run next to a scheduled one); then the later commit fails
with `LedgerConflict` instead of overwriting the other run's commit, and so does a run still reading
parts that the other run's commit replaced. The check is a conditional write of the manifest: S3
`If-Match`/`If-None-Match` on the revision loaded, or a lock file for a local folder.

A ledger written before parts existed (one Parquet file of every member, at the manifest's key) is
read as it is, and written in parts by its next commit.
"""

import secrets
from abc import abstractmethod
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, replace
from urllib.parse import quote

import polars as pl

from audience_pipeline.membership.diff import FINGERPRINT_HASH, MEMBER_COLUMNS, fingerprint_hash
from audience_pipeline.state import ParquetStore, RevisionConflict, StoreError, UnreadableFile
from audience_pipeline.state.buckets import (
    Bucketed,
    BucketedFile,
    BucketedWriter,
    Spill,
    bucket_of,
    grown_bits,
    split,
)
from audience_pipeline.state.store import StoredFile

LEDGER_SCHEMA = pl.Schema(
    {"user_id": pl.String, "fingerprint": pl.String, "payload": pl.String, "version": pl.Int64}
)
_MEMBER_SCHEMA = {name: LEDGER_SCHEMA[name] for name in MEMBER_COLUMNS}
REMOVED = "removed"
# Parts keep each fingerprint's 64-bit hash beside it: a diff reads 8 bytes a member, not 64.
_PART_SCHEMA = pl.Schema({**LEDGER_SCHEMA, FINGERPRINT_HASH: pl.UInt64})
_KEY_COLUMNS = ["user_id", FINGERPRINT_HASH]
# A delta part's rows: upserts, and removals (`removed`, without identities).
_DELTA_SCHEMA = pl.Schema({**_PART_SCHEMA, REMOVED: pl.Boolean})
_CHANGE_SCHEMA = pl.Schema({**_MEMBER_SCHEMA, REMOVED: pl.Boolean})
_MANIFEST_SCHEMA = pl.Schema(
    {
        "file": pl.String,
        "bucket": pl.Int64,
        "version": pl.Int64,
        "rows": pl.Int64,
        "bucket_rows": pl.List(pl.Int64),
    }
)
_VERSION_KEY, _EPOCH_KEY, _FORMAT_KEY, _BITS_KEY, _MEMBERS_KEY = (
    "ledger_version",
    "ledger_epoch",
    "ledger_format",
    "ledger_bits",
    "ledger_members",
)
_FORMAT = "2"
# Compaction keeps the rows still read from delta parts under this share of the ledger's rows, and
# the delta parts still read at most this many.
_DELTA_SHARE, _MAX_DELTAS = 0.2, 16
# A ledger in one file (from before parts) is set aside this finely: it may hold a whole audience.
_SINGLE_FILE_BITS = 8


class LedgerConflict(RuntimeError):
    """Another run committed the same ledger after this one loaded it; load and diff again."""


class LedgerDamaged(RuntimeError):
    """A stored ledger cannot be read as one; the message names the file and how to recover."""


@dataclass(frozen=True)
class Part:
    """A file of a ledger (`key`; None for a bucket without members): a bucket's base as of `version`,
    or (`bucket` None) the delta of the commit that made `version`, with its rows by bucket."""

    key: str | None
    version: int
    rows: int
    bucket: int | None = None
    bucket_rows: tuple[int, ...] = ()


@dataclass(frozen=True)
class LedgerState:
    """A ledger as loaded or committed: its version (0 before the first commit), the store revision a
    commit must still find, its epoch (empty before `Ledger.start`), its level (`bits`) and parts.
    `single_file` marks a ledger written before parts existed, whose one part is the manifest's key.
    `members` is how many members it holds: None for a ledger in parts written before the count was
    kept, until a commit leaves it without delta parts."""

    version: int
    revision: str | None
    epoch: str = ""
    bits: int = 0
    parts: tuple[Part, ...] = ()
    single_file: bool = False
    members: int | None = None

    @property
    def rows(self) -> int:
        """The rows of its parts: the members, plus members changed or removed since their base."""
        return sum(part.rows for part in self.parts)


class LedgerChanges:
    """The confirmed changes of one commit of `ledger` loaded as `state`, batch after batch, written as
    they come into the file that becomes the commit's delta part (or that the commit reads once, when
    it writes every bucket anew), so memory holds one batch. `upserts` is about how many members the
    commit will add or change (it sets the ledger's level before anything is written). Use it as a
    context manager: a commit that does not happen leaves nothing behind."""

    def __init__(self, ledger: "Ledger", state: LedgerState, upserts: int):
        self.bits = grown_bits(state.bits, state.rows + upserts)
        self.version = state.version + 1
        self.key = f"{ledger.parts_folder}/{self.version:010d}-delta-{secrets.token_hex(4)}.parquet"
        self.store = ledger.store
        self.bucket_rows = [0] * (1 << self.bits)
        self.net_members = 0
        self._stack: ExitStack | None = ExitStack()
        self._staged = self._stack.enter_context(self.store.replacing(self.key))
        self._writer: BucketedWriter | None = BucketedWriter(self._staged.path, _DELTA_SCHEMA)

    def __enter__(self) -> "LedgerChanges":
        return self

    def __exit__(self, *exc: object) -> None:
        self.finish(keep=False)

    @property
    def rows(self) -> int:
        """How many changes were added."""
        return sum(self.bucket_rows)

    def add(
        self,
        *,
        added: pl.DataFrame | None = None,
        removed: pl.DataFrame | None = None,
        changed: pl.DataFrame | None = None,
    ) -> None:
        """Add confirmed changes: `added` and `changed` need `user_id, fingerprint, payload` (the
        frames of a `MembershipDiff`, filtered to what was confirmed, fit as they are), `removed` needs
        `user_id`. As in a diff against the ledger, `added` are members it does not hold and `removed`
        members it holds: the ledger's member count follows them. Batches must come in the order of
        their buckets (one bucket of a plan after another, or everything at once). Raises ValueError
        when a member is in a batch twice."""
        parts = [
            frame.select(MEMBER_COLUMNS).cast(_MEMBER_SCHEMA).with_columns(pl.lit(False).alias(REMOVED))
            for frame in (added, changed)
            if frame is not None
        ]
        if removed is not None:
            parts.append(
                removed.select(
                    pl.col("user_id").cast(pl.String),
                    pl.lit(None, pl.String).alias("fingerprint"),
                    pl.lit(None, pl.String).alias("payload"),
                    pl.lit(True).alias(REMOVED),
                )
            )
        rows = pl.concat([_CHANGE_SCHEMA.to_frame(), *parts])
        if rows.get_column("user_id").n_unique() != rows.height:
            raise ValueError("A confirmed member may be added, changed or removed only once per commit")
        rows = rows.with_columns(
            pl.lit(self.version, pl.Int64).alias("version"),
            fingerprint_hash(pl.col("fingerprint")).alias(FINGERPRINT_HASH),
        ).select(_DELTA_SCHEMA.names())
        for bucket, part in sorted(split(rows, "user_id", self.bits).items()):
            self._writer.write(bucket, part)
            self.bucket_rows[bucket] += part.height
        self.net_members += 0 if added is None else added.height
        self.net_members -= 0 if removed is None else removed.height

    @contextmanager
    def written(self) -> Iterator[BucketedFile]:
        """The changes as written so far, a bucket at a time."""
        self._close_writer()
        with open(self._staged.path, "rb") as file:
            yield BucketedFile(StoredFile(self.store, self.key, file, ""))

    def finish(self, *, keep: bool) -> None:
        """Store the changes as the delta part at `key` (`keep`), or drop them; once."""
        if self._stack is None:
            return
        self._close_writer()
        self._staged.discard = not keep
        self._stack.close()
        self._stack = None

    def _close_writer(self) -> None:
        if self._writer is not None:
            self._writer.close(self.bits)
            self._writer = None


class Ledger:
    """The ledger of one destination and audience in `store`."""

    def __init__(self, store: ParquetStore, destination: str, audience_id: str | int):
        self.store = store
        self.key = ledger_key(destination, audience_id)
        self.parts_folder = self.key.removesuffix(".parquet") + "@parts"

    def load(self) -> LedgerState:
        """The stored ledger, or an empty one at version 0 when nothing was committed yet.

        Raises `LedgerDamaged` when the manifest is not Parquet, lacks the ledger's version or (a
        single-file ledger) its columns: a guess there could re-send or drop a destination's members."""
        try:
            with self.store.open(self.key) as stored:
                if stored is None:
                    return LedgerState(0, None, members=0)
                return self._state(stored)
        except UnreadableFile:
            raise self._damaged("is not a readable Parquet file") from None

    def _state(self, stored: StoredFile) -> LedgerState:
        version = stored.metadata.get(_VERSION_KEY, "")
        if not version.isdigit():
            raise self._damaged(f"has no ledger version in its metadata ({_VERSION_KEY})")
        epoch, layout = stored.metadata.get(_EPOCH_KEY, ""), stored.metadata.get(_FORMAT_KEY)
        if layout is None:
            try:
                stored.schema.to_frame().select(LEDGER_SCHEMA.names()).cast(LEDGER_SCHEMA)
            except pl.exceptions.PolarsError:
                columns = ", ".join(LEDGER_SCHEMA.names())
                raise self._damaged(f"does not hold the ledger columns {columns}") from None
            part = Part(self.key, int(version), stored.rows, 0)
            return LedgerState(
                int(version), stored.revision, epoch, 0, (part,), single_file=True, members=stored.rows
            )
        if layout != _FORMAT:
            raise LedgerDamaged(
                f"Ledger {self.store.uri(self.key)} was written in ledger layout {layout} by a newer "
                "audience_pipeline; nothing was sent. Run that version or a newer one"
            )
        try:
            rows = stored.read().select(_MANIFEST_SCHEMA.names()).cast(_MANIFEST_SCHEMA)
        except pl.exceptions.PolarsError:
            raise self._damaged("does not list the ledger's parts") from None
        parts = tuple(
            Part(
                None if file is None else f"{self.parts_folder}/{file}",
                version_,
                rows_,
                bucket,
                tuple(bucket_rows or ()),
            )
            for file, bucket, version_, rows_, bucket_rows in rows.iter_rows()
        )
        bits = int(stored.metadata.get(_BITS_KEY, "0"))
        members = stored.metadata.get(_MEMBERS_KEY, "")
        counted = int(members) if members.isdigit() else None
        return LedgerState(int(version), stored.revision, epoch, bits, parts, members=counted)

    def start(self, state: LedgerState) -> LedgerState:
        """The state to send from: `state` when the ledger is stored, else a new, empty ledger written
        now with a fresh epoch, so that a re-run after a crash finds the epoch its ids were made with.
        Raises `LedgerConflict` when another run created the ledger meanwhile."""
        if state.revision is not None:
            return state
        started = LedgerState(0, None, secrets.token_hex(8), members=0)
        return replace(started, revision=self._write_manifest(state, started))

    @contextmanager
    def reader(self, state: LedgerState) -> Iterator["LedgerReader"]:
        """The members of the ledger as loaded in `state`, a bucket at a time (`LedgerReader`).

        Raises `LedgerConflict` when another run's commit replaced parts while they were read, and
        `LedgerDamaged` when a part is missing or unreadable."""
        with ExitStack() as stack:
            if state.single_file:
                yield self._single_file(state, stack)
            else:
                yield _Parts(self, state, stack)

    def read(self, state: LedgerState | None = None) -> pl.DataFrame:
        """Every member of the ledger (as loaded in `state`, else as stored now) in one frame: for small
        ledgers, tools and tests; deliveries read a bucket at a time (`reader`)."""
        state = self.load() if state is None else state
        with self.reader(state) as held:
            frames = [held.rows(bucket, held.bits) for bucket in range(1 << held.bits)]
        return pl.concat([LEDGER_SCHEMA.to_frame(), *frames])

    def commit(
        self,
        state: LedgerState,
        *,
        added: pl.DataFrame | None = None,
        removed: pl.DataFrame | None = None,
        changed: pl.DataFrame | None = None,
    ) -> LedgerState:
        """`commit_changes` of the frames given (see `LedgerChanges.add`)."""
        upserts = sum(frame.height for frame in (added, changed) if frame is not None)
        with LedgerChanges(self, state, upserts) as changes:
            changes.add(added=added, removed=removed, changed=changed)
            return self.commit_changes(state, changes)

    def members_where(self, state: LedgerState, keep: Callable[[pl.Series], pl.Series]) -> pl.Series:
        """The user ids of the ledger (as loaded in `state`) for which `keep` (user ids → booleans)
        holds, read a bucket of user ids at a time: finding a few members without reading payloads."""
        with self.reader(state) as held:
            found = [
                ids.filter(keep(ids))
                for ids in (held.bucket(b).get_column("user_id") for b in range(1 << held.bits))
            ]
        return pl.concat([pl.Series("user_id", [], pl.String), *found])

    def purge(self, state: LedgerState, user_ids: pl.Series) -> LedgerState:
        """Commit the removal of members the ledger (as loaded in `state`) holds, with nothing sent: for
        members the destination let go by other means (an identity deletion). `LedgerConflict` when
        another run committed meanwhile."""
        return self.commit(state, removed=pl.DataFrame({"user_id": user_ids.cast(pl.String)}))

    def commit_changes(self, state: LedgerState, changes: LedgerChanges) -> LedgerState:
        """Record what the destination confirmed since `state` was loaded (`changes`, gathered for
        `state`), as the next version.

        Confirmed members are upserted at the new version, removed ones dropped, all others kept as
        they were. With nothing confirmed, nothing is written and `state` returned. Raises
        `LedgerConflict` when the stored ledger moved on since `state` was loaded; nothing is
        recorded then.
        """
        if not changes.rows:
            changes.finish(keep=False)
            return state
        rebuilt = state.single_file or changes.bits != state.bits
        compacted = set(range(1 << changes.bits)) if rebuilt else _compacted(state, changes.bucket_rows)
        written: list[str] = []
        try:
            parts = self._write_parts(state, changes, () if rebuilt else state.parts, compacted, written)
            members = None if state.members is None else state.members + changes.net_members
            if all(part.bucket is not None for part in parts):
                # Bases only: their rows are the members (a ledger from before the count gets one).
                members = sum(part.rows for part in parts)
            committed = LedgerState(changes.version, None, state.epoch, changes.bits, parts, members=members)
            committed = replace(committed, revision=self._write_manifest(state, committed))
        except BaseException:
            self._delete(written)
            raise
        self._sweep(state, committed)
        return committed

    def _write_parts(
        self,
        state: LedgerState,
        changes: LedgerChanges,
        kept: tuple[Part, ...],
        compacted: set[int],
        written: list[str],
    ) -> tuple[Part, ...]:
        """The parts of the commit's version: `kept` (parts of `state` at the same level), new bases for
        the `compacted` buckets, and the changes as a delta part unless every bucket was compacted;
        deltas that no bucket reads any more are left out. Every file stored is listed in `written`."""
        bits, version = changes.bits, changes.version
        token = secrets.token_hex(4)
        bases = {part.bucket: part for part in kept if part.bucket is not None}
        with self.reader(state) as held, changes.written() as confirmed:
            for bucket in sorted(compacted):
                rows = confirmed.bucket(bucket)
                members = pl.concat(
                    [
                        held.rows(bucket, bits).join(rows.select("user_id"), on="user_id", how="anti"),
                        rows.filter(~pl.col(REMOVED)).select(LEDGER_SCHEMA.names()),
                    ]
                )
                key = None
                if members.height:
                    key = f"{self.parts_folder}/{version:010d}-base-{bits}-{bucket}-{token}.parquet"
                    written.append(key)
                    hashed = fingerprint_hash(pl.col("fingerprint")).alias(FINGERPRINT_HASH)
                    self.store.write(key, members.with_columns(hashed))
                bases[bucket] = Part(key, version, members.height, bucket)
        deltas = [part for part in kept if part.bucket is None]
        keep = any(n for bucket, n in enumerate(changes.bucket_rows) if bucket not in compacted)
        if keep:
            written.append(changes.key)
            deltas.append(Part(changes.key, version, changes.rows, None, tuple(changes.bucket_rows)))
        changes.finish(keep=keep)

        def read_by_a_bucket(part: Part) -> bool:
            return any(
                n and part.version > (bases[b].version if b in bases else 0)
                for b, n in enumerate(part.bucket_rows)
            )

        return (*(bases[b] for b in sorted(bases)), *filter(read_by_a_bucket, deltas))

    def _write_manifest(self, loaded: LedgerState, state: LedgerState) -> str:
        """Write the manifest of `state` while the stored one is still at `loaded`'s revision."""
        rows = [
            (
                None if part.key is None else part.key.rsplit("/", 1)[1],
                part.bucket,
                part.version,
                part.rows,
                list(part.bucket_rows) if part.bucket is None else None,
            )
            for part in state.parts
        ]
        manifest = pl.DataFrame(rows, schema=_MANIFEST_SCHEMA, orient="row")
        metadata = {
            _FORMAT_KEY: _FORMAT,
            _VERSION_KEY: str(state.version),
            _BITS_KEY: str(state.bits),
            **({_EPOCH_KEY: state.epoch} if state.epoch else {}),
            **({_MEMBERS_KEY: str(state.members)} if state.members is not None else {}),
        }
        try:
            return self.store.write_if(self.key, manifest, loaded.revision, metadata=metadata)
        except RevisionConflict:
            raise self._conflict(loaded, "after this one loaded") from None

    def _sweep(self, old: LedgerState, new: LedgerState) -> None:
        """Delete the parts `new` no longer names, and those of commits that never happened (a run that
        crashed or lost a conflict) up to `new`'s version; parts of later versions may be a concurrent
        run's, still being written."""
        named = {part.key for part in new.parts}
        try:
            stored = self.store.keys(self.parts_folder)
        except StoreError:
            stored = []
        stale = {part.key for part in old.parts if part.key not in named and part.key != self.key}
        stale |= {key for key in stored if key not in named and _version_of(key) <= new.version}
        self._delete(sorted(stale - {None}))

    def _delete(self, keys: list[str]) -> None:
        # Best effort: a part left behind is only wasted space, and the next commit sweeps it.
        for key in keys:
            try:
                self.store.delete(key)
            except StoreError:
                continue

    def _single_file(self, state: LedgerState, stack: ExitStack) -> "LedgerReader":
        """A ledger written before parts existed, read a row group at a time into a spill by bucket."""
        spill = stack.enter_context(Spill(LEDGER_SCHEMA, _SINGLE_FILE_BITS))
        with self.store.open(self.key) as stored:
            if stored is None or stored.revision != state.revision:
                raise self._conflict(state, "while this one read")
            for row_group in range(stored.row_groups):
                spill.add(
                    stored.read(range(row_group, row_group + 1))
                    .select(LEDGER_SCHEMA.names())
                    .cast(LEDGER_SCHEMA)
                )
        return _SingleFile(spill)

    def _missing(self, loaded: LedgerState, key: str) -> RuntimeError:
        """The error for a part the manifest names but the store lacks: another run's commit replaced it
        (the manifest moved on), or the ledger is damaged."""
        try:
            with self.store.open(self.key) as stored:
                current = None if stored is None else stored.revision
        except StoreError:
            current = loaded.revision
        if current != loaded.revision:
            return self._conflict(loaded, "while this one read")
        return self._damaged(f"names the part {self.store.uri(key)}, which is missing")

    def _conflict(self, loaded: LedgerState, when: str) -> LedgerConflict:
        return LedgerConflict(
            f"Ledger {self.store.uri(self.key)} was committed by another run {when} version "
            f"{loaded.version}; nothing was recorded. Load it again and diff again."
        )

    def _damaged(self, problem: str) -> LedgerDamaged:
        return LedgerDamaged(
            f"Ledger {self.store.uri(self.key)} {problem}; nothing was sent. Restore the file and its "
            f"parts ({self.store.uri(self.parts_folder)}) from a backup of the state store, or delete both: "
            "the next run then sends every current member again as an addition (members that left "
            "meanwhile stay at the destination)"
        )


class LedgerReader(Bucketed):
    """A loaded ledger's members a bucket at a time: `read` gives their user ids and fingerprint hashes
    (what a diff compares), `rows` whole rows, of every member of a bucket or of the few asked for."""

    def bucket(self, bucket: int) -> pl.DataFrame:
        """The user ids and fingerprint hashes of the members of `bucket` at the ledger's level."""
        return self.rows_of(bucket, _KEY_COLUMNS)

    def rows(self, bucket: int, level: int, user_ids: pl.Series | None = None) -> pl.DataFrame:
        """The rows (`LEDGER_SCHEMA`) of the members of `bucket` at `level`, or of those among them whose
        user id is in `user_ids`."""
        if level < self.bits:
            width = 1 << (self.bits - level)
            return pl.concat(
                [self.rows(b, self.bits, user_ids) for b in range(bucket * width, (bucket + 1) * width)]
            )
        rows = self.rows_of(bucket >> (level - self.bits), LEDGER_SCHEMA.names(), user_ids)
        if user_ids is None and level > self.bits:
            rows = rows.filter(bucket_of("user_id", level) == bucket)
        return rows

    @abstractmethod
    def rows_of(self, bucket: int, columns: list[str], user_ids: pl.Series | None = None) -> pl.DataFrame:
        """The `columns` of the members of `bucket` at the ledger's level (those in `user_ids`, if given)."""


class _Parts(LedgerReader):
    """A ledger's members from its base and delta parts."""

    def __init__(self, ledger: Ledger, state: LedgerState, stack: ExitStack):
        super().__init__(state.bits)
        self.ledger, self.state = ledger, state
        self._bases = {part.bucket: part for part in state.parts if part.bucket is not None}
        # Oldest first, so that of a member's delta rows the last one read is its newest.
        deltas = sorted((part for part in state.parts if part.bucket is None), key=lambda part: part.version)
        self._deltas = [(part, self._open(part, stack)) for part in deltas]

    def _open(self, part: Part, stack: ExitStack) -> StoredFile:
        try:
            stored = stack.enter_context(self.ledger.store.open(part.key))
        except UnreadableFile:
            raise self.ledger._damaged(
                f"has a part {self.ledger.store.uri(part.key)} that is not readable Parquet"
            ) from None
        if stored is None:
            raise self.ledger._missing(self.state, part.key)
        return stored

    def rows_of(self, bucket: int, columns: list[str], user_ids: pl.Series | None = None) -> pl.DataFrame:
        """The base's rows, with the newer deltas' changes applied."""
        where = None if user_ids is None else pl.col("user_id").is_in(user_ids.implode())
        base = self._bases.get(bucket)
        frame = _PART_SCHEMA.to_frame().select(columns)
        if base is not None and base.key is not None:
            with ExitStack() as stack:
                frame = self._open(base, stack).read(columns=columns, where=where)
        since = base.version if base is not None else 0
        newer = [
            BucketedFile(stored, columns=[*columns, REMOVED]).bucket(bucket)
            for part, stored in self._deltas
            if part.version > since and part.bucket_rows[bucket]
        ]
        if not newer:
            return frame
        latest = pl.concat(newer).unique("user_id", keep="last", maintain_order=True)
        if where is not None:
            latest = latest.filter(where)
        kept = frame.join(latest.select("user_id"), on="user_id", how="anti")
        return pl.concat([kept, latest.filter(~pl.col(REMOVED)).select(columns)])


class _SingleFile(LedgerReader):
    """A ledger written before parts existed: its one file read a row group at a time into a spill by
    bucket (encrypted, as its payloads may be raw identities)."""

    def __init__(self, spill: Spill):
        super().__init__(spill.bits)
        self.spill = spill

    def rows_of(self, bucket: int, columns: list[str], user_ids: pl.Series | None = None) -> pl.DataFrame:
        """The rows set aside for `bucket`."""
        rows = self.spill.bucket(bucket)
        rows = rows if user_ids is None else rows.filter(pl.col("user_id").is_in(user_ids.implode()))
        return rows.with_columns(fingerprint_hash(pl.col("fingerprint")).alias(FINGERPRINT_HASH)).select(
            columns
        )


def _compacted(state: LedgerState, changes: list[int]) -> set[int]:
    """The buckets whose bases a commit with `changes` rows by bucket rewrites: those whose deltas
    are oldest, as few as keep the delta rows under `_DELTA_SHARE` of all rows and `_MAX_DELTAS` parts."""
    base_version = dict.fromkeys(range(len(changes)), 0)
    base_rows = 0
    for part in state.parts:
        if part.bucket is not None:
            base_version[part.bucket] = part.version
            base_rows += part.rows
    pending = list(changes)
    deltas = [part for part in state.parts if part.bucket is None]
    for part in deltas:
        for bucket, n in enumerate(part.bucket_rows):
            if part.version > base_version[bucket]:
                pending[bucket] += n
    compacted: set[int] = set()

    def live() -> int:
        alive = {
            part.version
            for part in deltas
            for bucket, n in enumerate(part.bucket_rows)
            if n and bucket not in compacted and part.version > base_version[bucket]
        }
        return len(alive) + any(changes[b] for b in range(len(changes)) if b not in compacted)

    by_age = sorted(range(len(changes)), key=lambda b: (base_version[b], -pending[b]))
    for bucket in by_age:
        delta_rows = sum(pending[b] for b in range(len(changes)) if b not in compacted)
        if delta_rows <= _DELTA_SHARE * (base_rows + delta_rows) and live() <= _MAX_DELTAS:
            break
        if pending[bucket]:
            compacted.add(bucket)
    return compacted


def _version_of(key: str) -> int:
    name = key.rsplit("/", 1)[1]
    return int(name[:10]) if name[:10].isdigit() else 0


def ledger_key(destination: str, audience_id: str | int) -> str:
    """The store key of a ledger's manifest: `ledgers/<destination>/<audience_id>.parquet` (its parts
    are under `ledgers/<destination>/<audience_id>@parts/`).

    `destination` may have `/`-separated parts (`firehose/my_stream`); every part and the audience
    id are percent-encoded, leading dots included, so no name can escape the ledgers folder, hide as
    a dot file or collide with another name (`@` is always encoded, so no name ends in `@parts`).
    """
    parts = [_escaped(part) for part in destination.split("/")]
    return "/".join(["ledgers", *parts, f"{_escaped(str(audience_id))}.parquet"])


def _escaped(name: str) -> str:
    if not name:
        raise ValueError("Ledger destination parts and audience ids must not be empty")
    escaped = quote(name, safe="")
    return "%2E" + escaped[1:] if escaped.startswith(".") else escaped
