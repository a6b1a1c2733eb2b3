"""Sandbox state: each API family's records, in memory, optionally kept on disk across restarts.

Families keep JSON-able dicts under `state.data[family]`; AMC rows live in DuckDB. Handlers hold
`state.lock` while they read and change records and call `state.save()` after a change.
"""

import json
import os
import threading
from pathlib import Path
from typing import Any

import duckdb

FAMILIES = ("lwa", "amc", "adm", "dsp")


class SandboxState:
    """All records the Amazon Ads API emulator holds."""

    def __init__(self, directory: Path | None = None):
        self.directory = directory
        self.lock = threading.RLock()
        self.data: dict[str, dict[str, Any]] = {family: {} for family in FAMILIES}
        if directory is not None:
            directory.mkdir(parents=True, exist_ok=True)
            saved = directory / "state.json"
            if saved.exists():
                self.data.update(json.loads(saved.read_text()))
        self.db = duckdb.connect(str(directory / "amc.duckdb") if directory else ":memory:")

    def family(self, name: str) -> dict[str, Any]:
        """The records of one API family (create keys with `setdefault`)."""
        return self.data[name]

    def cursor(self) -> duckdb.DuckDBPyConnection:
        """A DuckDB cursor for this thread over the AMC tables."""
        return self.db.cursor()

    def save(self) -> None:
        """Write the records to disk, atomically, when the sandbox keeps state."""
        if self.directory is None:
            return
        with self.lock:
            partial = self.directory / ".state.json.partial"
            partial.write_text(json.dumps(self.data))
            os.replace(partial, self.directory / "state.json")

    def reset(self) -> None:
        """Forget everything: records and AMC tables."""
        with self.lock:
            self.data = {family: {} for family in FAMILIES}
            cursor = self.cursor()
            for (table,) in cursor.execute("SELECT table_name FROM duckdb_tables()").fetchall():
                cursor.execute(f'DROP TABLE "{table}"')
            self.save()
