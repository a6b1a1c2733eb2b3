"""The sandbox's members on disk: ADM dataset members and DSP audience records as DuckDB op logs.

An audience may hold ten million members; held in Python they would not fit in memory. So each
family's members are an append-only table of ops in the state's DuckDB database (on disk, see
`SandboxState`): one row per member a request adds or removes, all the rows of one request under one
batch number (`SandboxState.next_batch`; requests append under the state's lock, so batches are in
the order the requests were applied), so a request costs O(its members) whatever the audience's size. Within
a request only a member's last op is logged (callers keep the last one), so (collection, key, batch)
is unique, and a member is held when its latest op is an add.

Reads are SQL over the log (`MemberLog.live`): the latest batch of each member, joined back for the
row. They cost O(log); the log grows by what is sent, which the pipeline keeps near the audience's
size (it sends changes only), so there is no compaction.

`create` makes the logs when the state opens and after a reset, under the state's lock: DuckDB
refuses concurrent `CREATE ... IF NOT EXISTS` of one table, and reads run outside the lock.
`members` reads one collection into Python: for tests and small audiences only.
"""

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import duckdb
import pyarrow as pa


@dataclass(frozen=True)
class MemberLog:
    """One family's log: `collection` (a dataset or audience id), the key columns that single out a
    member in it, `added`, and the columns an add keeps with the member (empty on a removal)."""

    table: str
    keys: tuple[str, ...]
    payload: tuple[tuple[str, str], ...] = ()

    def create(self, cursor: duckdb.DuckDBPyConnection) -> None:
        """Create the log if it is missing."""
        columns = ", ".join(
            [
                "batch BIGINT",
                "collection VARCHAR",
                *(f"{key} VARCHAR" for key in self.keys),
                "added BOOLEAN",
                *(f"{name} {sql_type}" for name, sql_type in self.payload),
            ]
        )
        cursor.execute(f"CREATE TABLE IF NOT EXISTS {self.table} ({columns})")

    def append(self, cursor: duckdb.DuckDBPyConnection, ops: pa.Table, batch: int) -> None:
        """Log one request's ops, at most one per member (`collection`, the keys, `added`, the
        payload, by name), under its batch number. O(ops)."""
        if not ops.num_rows:
            return
        columns = ", ".join(["collection", *self.keys, "added", *(name for name, _ in self.payload)])
        cursor.register("member_ops", ops)
        try:
            cursor.execute(
                f"INSERT INTO {self.table} (batch, {columns}) SELECT ?, {columns} FROM member_ops", [batch]
            )
        finally:
            cursor.unregister("member_ops")

    def live(self, columns: Sequence[str] = ()) -> str:
        """SQL of the members held in the collections the named query parameter `collections` lists:
        `collection`, the keys and the payload `columns` as each member's latest op left them. One
        hash aggregate over the log, reading only these columns."""
        keys = ", ".join(["collection", *self.keys])
        latest = "".join(f", arg_max({column}, batch) AS {column}" for column in columns)
        return (
            f"SELECT {keys}{latest} FROM {self.table} WHERE list_contains($collections, collection) "
            "GROUP BY ALL HAVING arg_max(added, batch)"
        )

    def count(self, cursor: duckdb.DuckDBPyConnection, collection: str) -> int:
        """How many members the collection holds."""
        [(count,)] = cursor.execute(
            f"SELECT count(*) FROM ({self.live()})", {"collections": [collection]}
        ).fetchall()
        return count

    def changes(self, cursor: duckdb.DuckDBPyConnection) -> int:
        """How many ops the log holds, over every collection."""
        [(count,)] = cursor.execute(f"SELECT count(*) FROM {self.table}").fetchall()
        return count


# A userIdentity as sent (validated: each entry a non-empty object of strings), in DuckDB's types: a
# kind not sent is null. Converted from the request's dicts by Arrow, and back by `members`, exactly.
IDENTITY = pa.struct(
    [(kind, pa.list_(pa.map_(pa.string(), pa.string()))) for kind in ("hashedPiis", "externalIdentities")]
)
IDENTITY_SQL = "STRUCT(hashedPiis MAP(VARCHAR, VARCHAR)[], externalIdentities MAP(VARCHAR, VARCHAR)[])"
IDENTITY_PAIRS_SQL = (
    "flatten(list_transform(coalesce(identity.hashedPiis, []) || coalesce(identity.externalIdentities, []), "
    "lambda entry: map_entries(entry)))"
)
"""SQL of an ADM member's identity pairs: a list of STRUCT(key, value), as `identity_pairs` gives them."""

ADM = MemberLog(
    "adm_member_ops",
    ("user_id",),
    (("identity", IDENTITY_SQL), ("with_identity", "BOOLEAN"), ("resolved", "BOOLEAN")),
)
"""ADM: collection = dataSetId, user_id = externalUserId, identity = its userIdentity, with_identity =
whether that holds any identity, resolved = whether the identity graph knew it when it arrived (all
null on removal). The flags are what metrics count, without reading identities."""

DSP = MemberLog("dsp_member_ops", ("record_type", "record_id"))
"""DSP: collection = str(audience id); a record is its type (MAID, COOKIE, EXTERNAL_USER_ID) and id."""

LOGS = {"adm": ADM, "dsp": DSP}


def create(cursor: duckdb.DuckDBPyConnection) -> None:
    """Create the logs where missing."""
    for log in LOGS.values():
        log.create(cursor)


def last_batch(cursor: duckdb.DuckDBPyConnection) -> int:
    """The highest batch number logged, 0 if none."""
    union = " UNION ALL ".join(f"SELECT max(batch) AS batch FROM {log.table}" for log in LOGS.values())
    [(batch,)] = cursor.execute(f"SELECT coalesce(max(batch), 0) FROM ({union})").fetchall()
    return batch


def identity_pairs(identity: dict[str, Any]) -> list[tuple[str, str]]:
    """The (key, value) pairs of a userIdentity: its hashed PIIs and external identities."""
    entries = [*identity.get("hashedPiis", []), *identity.get("externalIdentities", [])]
    return [(key, value) for entry in entries for key, value in entry.items()]


def adm_ops(data_set_id: str, last: dict[str, dict[str, Any] | None], resolved: Sequence[bool]) -> pa.Table:
    """An ADM request's ops: externalUserId → its userIdentity when added, None when removed, and
    whether each resolves in the identity graph."""
    identities = list(last.values())
    removed = [identity is None for identity in identities]
    with_identity = [identity is not None and bool(identity_pairs(identity)) for identity in identities]
    return pa.table(
        {
            "collection": pa.array([data_set_id] * len(last), pa.string()),
            "user_id": pa.array(list(last), pa.string()),
            "added": pa.array([not gone for gone in removed], pa.bool_()),
            "identity": pa.array(identities, IDENTITY),
            "with_identity": pa.array(with_identity, pa.bool_(), mask=removed),
            "resolved": pa.array(resolved, pa.bool_(), mask=removed),
        }
    )


def dsp_ops(last: dict[tuple[str, str, str], bool]) -> pa.Table:
    """A DSP request's ops: (audience id, record type, record id) → whether added."""
    collections, record_types, record_ids = zip(*last, strict=True) if last else ((), (), ())
    return pa.table(
        {
            "collection": pa.array(collections, pa.string()),
            "record_type": pa.array(record_types, pa.string()),
            "record_id": pa.array(record_ids, pa.string()),
            "added": pa.array(list(last.values()), pa.bool_()),
        }
    )


def members(cursor: duckdb.DuckDBPyConnection, family: str, collection: str) -> dict[str, Any]:
    """What one dataset or audience holds, read into Python: for ADM externalUserId → userIdentity,
    for DSP record type → the set of record ids. O(log): for tests and small audiences."""
    log = LOGS[family]
    query = (
        f"SELECT user_id, identity FROM ({log.live(['identity'])})"
        if log is ADM
        else (f"SELECT record_type, record_id FROM ({log.live()})")
    )
    rows = cursor.execute(query, {"collections": [collection]}).fetchall()
    if log is ADM:
        return {
            user_id: {
                kind: [dict(entry) for entry in entries]
                for kind, entries in identity.items()
                if entries is not None
            }
            for user_id, identity in rows
        }
    held: dict[str, set[str]] = {}
    for record_type, record_id in rows:
        held.setdefault(record_type, set()).add(record_id)
    return held
