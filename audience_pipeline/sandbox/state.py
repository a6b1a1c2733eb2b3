"""Sandbox state: each API family's records, optionally kept across restarts.

Families keep small JSON-able dicts under `state.data[family]`, in memory (and in `state.json` when
the sandbox keeps state). AMC rows and the ADM and DSP members (`member_store`) live in DuckDB, in a
database file: in the state directory when the sandbox keeps state, else in a scratch directory the
state removes when it is closed or collected. On disk and with a memory limit, so the sandbox's
memory stays bounded however many members arrive: table data is read back from the file, and
queries spill past the limit to `<database>.tmp`. Handlers hold `state.lock` while they change
records, and call `state.save()` after a change to the families.
"""

import itertools
import json
import os
import shutil
import tempfile
import threading
import weakref
from pathlib import Path
from typing import Any

import duckdb

from audience_pipeline.sandbox import member_store

FAMILIES = ("lwa", "amc", "adm", "dsp")
# DuckDB's share of the sandbox's memory; past it, queries spill and table data is read from disk.
DUCKDB_MEMORY_LIMIT = "512MB"
# Members arrive a few thousand a request. DuckDB's default, a checkpoint every 16 MB of WAL, rewrites
# the table's last, partly filled row group each time: 5,000 ADM members took 80 ms to log, not 30.
DUCKDB_CHECKPOINT_THRESHOLD = "256MB"
# No fsync on commit: each member request commits, and waiting for the disk made logging a 200-member
# upload cost about 7 ms rather than 2.5. The file survives the sandbox's process, not a machine crash.
DUCKDB_FSYNC_MODE = "NONE"


class SandboxState:
    """All records the Amazon Ads API emulator holds."""

    def __init__(self, directory: Path | None = None):
        self.directory = directory
        self.lock = threading.RLock()
        self.data: dict[str, dict[str, Any]] = {family: {} for family in FAMILIES}
        scratch = None
        if directory is not None:
            directory.mkdir(parents=True, exist_ok=True)
            saved = directory / "state.json"
            if saved.exists():
                self.data.update(json.loads(saved.read_text()))
            # Named for what it first held; it keeps the members too.
            self.database = directory / "amc.duckdb"
        else:
            scratch = Path(tempfile.mkdtemp(prefix="audience-pipeline-sandbox-"))
            self.database = scratch / "sandbox.duckdb"
        self.db = duckdb.connect(
            str(self.database),
            config={
                "memory_limit": DUCKDB_MEMORY_LIMIT,
                "checkpoint_threshold": DUCKDB_CHECKPOINT_THRESHOLD,
                "fsync_mode": DUCKDB_FSYNC_MODE,
            },
        )
        self._close = weakref.finalize(self, _close, self.db, scratch)
        cursor = self.cursor()
        member_store.create(cursor)
        self._batches = itertools.count(member_store.last_batch(cursor) + 1)

    def family(self, name: str) -> dict[str, Any]:
        """The records of one API family (create keys with `setdefault`)."""
        return self.data[name]

    def cursor(self) -> duckdb.DuckDBPyConnection:
        """A DuckDB cursor for this thread over the AMC tables and the member logs."""
        return self.db.cursor()

    def next_batch(self) -> int:
        """The number of the next member request, above any logged (see `member_store`); taken
        under `lock`, where the request appends its changes."""
        return next(self._batches)

    def members(self, family: str, collection: str) -> dict[str, Any]:
        """What an ADM dataset (externalUserId → userIdentity) or a DSP audience (record type → set
        of record ids) holds, read whole: for tests and small audiences."""
        return member_store.members(self.cursor(), family, collection)

    def save(self) -> None:
        """Write the records to disk, atomically, when the sandbox keeps state."""
        if self.directory is None:
            return
        with self.lock:
            partial = self.directory / ".state.json.partial"
            partial.write_text(json.dumps(self.data))
            os.replace(partial, self.directory / "state.json")

    def reset(self) -> None:
        """Forget everything: records, AMC tables and members."""
        with self.lock:
            self.data = {family: {} for family in FAMILIES}
            cursor = self.cursor()
            for (table,) in cursor.execute("SELECT table_name FROM duckdb_tables()").fetchall():
                cursor.execute(f'DROP TABLE "{table}"')
            member_store.create(cursor)
            self.save()

    def close(self) -> None:
        """Close the database; without a state directory, remove it. Also done when collected."""
        self._close()


def _close(db: duckdb.DuckDBPyConnection, scratch: Path | None) -> None:
    db.close()
    if scratch is not None:
        shutil.rmtree(scratch, ignore_errors=True)
