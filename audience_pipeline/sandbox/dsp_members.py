"""The records of the sandbox's DSP audiences: held in memory, kept on disk as a log of changes.

`state.family("dsp")["members"]` maps str(audience id) → record type → {record id: True}, a JSON-able
set, so a patch costs O(1) per record. The state's `save()` writes every family whole, which after
each PATCH would cost O(audience) per PATCH, quadratic over a bulk upload. So when the sandbox keeps
state on disk, a PATCH instead appends its changes (the last op of each record) to the DuckDB table
`dsp_member_changes`, and `restore` applies the table when the sandbox starts again. The table lives
in the state's DuckDB database, so a reset drops it with everything else.
"""

from collections.abc import Iterable

import pyarrow as pa

from audience_pipeline.sandbox.state import SandboxState

Members = dict[str, dict[str, dict[str, bool]]]
Change = tuple[str, str, str, bool]
"""(audience id, record type, record id, whether the record is added rather than removed)."""

_TABLE = "dsp_member_changes"
# Orders the PATCHes: within one, a record's last op is all that is logged.
_BATCH = "dsp_member_change_batch"


def apply(state: SandboxState, members: Members, changes: Iterable[Change]) -> None:
    """Apply one PATCH's changes in order; with state kept on disk, log them too. O(changes)."""
    last: dict[tuple[str, str, str], bool] = {}
    for audience_id, record_type, record_id, added in changes:
        _change(members, audience_id, record_type, record_id, added)
        last[audience_id, record_type, record_id] = added
    if state.directory is not None and last:
        _log(state, last)


def restore(state: SandboxState, members: Members) -> None:
    """Apply the logged changes to the members read back from the saved state, in the order sent.

    The saved state holds the members as of some earlier save, which the log replays from the start:
    each record ends as its last logged op left it, and a record the log never touched stays.
    """
    if state.directory is None:
        return
    cursor = state.cursor()
    if not cursor.execute("SELECT 1 FROM duckdb_tables() WHERE table_name = ?", [_TABLE]).fetchall():
        return
    latest = cursor.execute(
        f"SELECT audience_id, record_type, record_id, added FROM {_TABLE} "
        "QUALIFY row_number() OVER (PARTITION BY audience_id, record_type, record_id ORDER BY batch DESC) = 1"
    ).fetchall()
    for audience_id, record_type, record_id, added in latest:
        _change(members, audience_id, record_type, record_id, added)


def _change(members: Members, audience_id: str, record_type: str, record_id: str, added: bool) -> None:
    held = members.setdefault(audience_id, {}).setdefault(record_type, {})
    if added:
        held[record_id] = True
    else:
        held.pop(record_id, None)


def _log(state: SandboxState, last: dict[tuple[str, str, str], bool]) -> None:
    cursor = state.cursor()
    cursor.execute(
        f"CREATE TABLE IF NOT EXISTS {_TABLE} "
        "(batch BIGINT, audience_id VARCHAR, record_type VARCHAR, record_id VARCHAR, added BOOLEAN)"
    )
    cursor.execute(f"CREATE SEQUENCE IF NOT EXISTS {_BATCH}")
    [(batch,)] = cursor.execute(f"SELECT nextval('{_BATCH}')").fetchall()
    audience_ids, record_types, record_ids = zip(*last, strict=True)
    changes = pa.table(
        {
            "audience_id": audience_ids,
            "record_type": record_types,
            "record_id": record_ids,
            "added": list(last.values()),
        }
    )
    cursor.register("changes", changes)
    try:
        cursor.execute(
            f"INSERT INTO {_TABLE} SELECT ?, audience_id, record_type, record_id, added FROM changes", [batch]
        )
    finally:
        cursor.unregister("changes")
