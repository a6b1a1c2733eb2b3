"""Which source tables changed, told cheaply, and which audiences read them.

A table's version is a short digest that changes whenever the table's data can have changed, read
without scanning the table:

- a table in a DuckDB database file: the size and modification time of the file and of its
  write-ahead log. Any write to the database changes them, so every table the file holds counts as
  changed (DuckDB keeps no version per table: its blocks are reused, so their ids could come back);
- a view: its SQL and the versions of everything it reads, followed through other views;
- a file DuckDB reads (`read_parquet('events/*.parquet')`, `FROM 'profiles.csv'`, `s3://` paths): the
  name, size and modification time of every file its pattern matches, from a listing (no file is
  opened);
- a table's `change_query` when one is set (`SELECT count(*), max(updated_at) FROM profiles`): its
  result. It is the only way for what has no file to look at (an attached Postgres table, a table a
  setup statement creates), and makes a table in a shared database file precise.

Dagster-free: the sensor that refreshes audiences on a change lives in `components/source_changes.py`.
"""

import functools
import hashlib
import json
import threading
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import duckdb

# DuckDB's table functions whose first argument is a file pattern or a list of them.
_FILE_READERS = frozenset(
    {
        "read_parquet",
        "parquet_scan",
        "read_csv",
        "read_csv_auto",
        "read_json",
        "read_json_auto",
        "read_ndjson",
        "read_ndjson_auto",
        "read_json_objects",
        "read_json_objects_auto",
        "read_ndjson_objects",
        "read_text",
        "read_blob",
    }
)
_VERSION_CHARS = 16


class NoChangeMarkerError(ValueError):
    """A table whose changes no file shows (an attached Postgres table, a table made by a setup
    statement, an unknown table function): it needs a `change_query`."""


@dataclass(frozen=True)
class TableRef:
    """A table or view as a query names it; `catalog` and `schema` are empty where it leaves them out."""

    catalog: str
    schema: str
    name: str


@dataclass(frozen=True)
class SqlReads:
    """What a query reads, as DuckDB's parser sees it (CTEs left out): tables and views by name, the
    file patterns of file-reading table functions, and any other table function by name."""

    tables: list[TableRef]
    files: list[str]
    functions: list[str]


def parse_error(sql: str) -> str | None:
    """DuckDB's parser error for `sql`, or None when it is one or more SELECT statements."""
    tree = _parse(sql)
    return tree["error_message"] if tree.get("error") else None


def sql_reads(sql: str) -> SqlReads:
    """What `sql` reads, parsed only (never bound or run): SQL that does not parse reads nothing."""
    tree = _parse(sql)
    if tree.get("error"):
        return SqlReads([], [], [])
    tables: list[TableRef] = []
    files: list[str] = []
    functions: list[str] = []
    ctes: set[str] = set()
    pending: list[Any] = [tree]
    while pending:
        node = pending.pop()
        if isinstance(node, list):
            pending.extend(node)
            continue
        if not isinstance(node, dict):
            continue
        if node.get("type") == "BASE_TABLE" and node.get("table_name"):
            tables.append(TableRef(node["catalog_name"], node["schema_name"], node["table_name"]))
        elif node.get("type") == "TABLE_FUNCTION":
            function = node["function"]
            patterns = _file_patterns(function) if function["function_name"] in _FILE_READERS else None
            if patterns is None:
                functions.append(function["function_name"])
            else:
                files.extend(patterns)
        for entry in (node.get("cte_map") or {}).get("map") or []:
            ctes.add(entry["key"])
        pending.extend(node.values())
    # A CTE is named like a table where it is read, and is not one.
    return SqlReads([t for t in tables if t.catalog or t.schema or t.name not in ctes], files, functions)


def changed_tables(previous: Mapping[str, str], current: Mapping[str, str]) -> set[str]:
    """The tables whose version differs from the one observed before; a table not observed before
    has no earlier version to differ from."""
    return {table for table, version in current.items() if table in previous and previous[table] != version}


def audiences_reading(reads: Mapping[str, Iterable[str]], tables: set[str]) -> list[str]:
    """The audiences (keys of `reads`, in its order) that read any of `tables`."""
    return [audience for audience, read in reads.items() if tables.intersection(read)]


class SourceCatalog:
    """Table versions on one prepared source connection (the source's setup statements run)."""

    def __init__(self, conn: duckdb.DuckDBPyConnection):
        self._conn = conn
        self._databases = {
            name.lower(): (kind, path)
            for name, kind, path in self._rows("SELECT database_name, type, path FROM duckdb_databases()")
        }
        self._search_path = self._read_search_path()

    def version(self, table: str, change_query: str | None = None) -> str:
        """`table`'s version: a digest of `change_query`'s result when given, else of what shows a
        change of the table (module docstring); NoChangeMarkerError when nothing does."""
        if change_query is not None:
            signature: Any = ["change_query", change_query, self._rows(change_query)]
        else:
            signature = self._signature(TableRef("", "", table), home=None, seen=set(), table=table)
        encoded = json.dumps(signature, default=str, separators=(",", ":")).encode()
        return hashlib.sha256(encoded).hexdigest()[:_VERSION_CHARS]

    def _signature(self, ref: TableRef, home: tuple[str, str] | None, seen: set, table: str) -> Any:
        found = self._resolve(ref, home)
        if found is None:
            # Not in the catalog: DuckDB reads a name such as 'data/profiles.parquet' as that file.
            return ["files", self._files([ref.name])]
        database, schema, view_sql = found
        kind, path = self._databases[database.lower()]
        if kind != "duckdb":
            raise NoChangeMarkerError(
                f"source table `{table}` reads `{database}.{schema}.{ref.name}`, in a {kind} database, "
                "whose changes no file shows: set its `change_query` in the source component's `tables`"
            )
        if view_sql is None:
            if path is None:
                raise NoChangeMarkerError(
                    f"source table `{table}` reads `{database}.{schema}.{ref.name}`, a table made on "
                    "each connection (by a setup statement), whose changes no file shows: set its "
                    "`change_query` in the source component's `tables`"
                )
            # A database DuckDB attaches over HTTP or S3 is read-only: it has no write-ahead log.
            return ["database", self._files([path] if "://" in path else [path, f"{path}.wal"])]
        key = (database.lower(), schema.lower(), ref.name.lower())
        if key in seen:
            return ["view", view_sql]
        query = _view_query(view_sql)
        if query is None:
            raise NoChangeMarkerError(
                f"source table `{table}` reads the view `{database}.{schema}.{ref.name}`, whose query "
                "DuckDB's parser does not take apart: set its `change_query` in the source component's "
                "`tables`"
            )
        reads = sql_reads(query)
        if reads.functions:
            raise NoChangeMarkerError(
                f"source table `{table}` reads the table function {', '.join(sorted(set(reads.functions)))}, "
                "whose changes no file shows: set its `change_query` in the source component's `tables`"
            )
        inner = [self._signature(read, (database, schema), seen | {key}, table) for read in reads.tables]
        return ["view", view_sql, inner, self._files(reads.files) if reads.files else []]

    def _resolve(self, ref: TableRef, home: tuple[str, str] | None) -> tuple[str, str, str | None] | None:
        """(database, schema, view SQL or None for a table) of what DuckDB binds `ref` to; a view's
        own references are looked up in its own schema first."""
        candidates = self._rows(
            "SELECT database_name, schema_name, sql FROM duckdb_views() "
            "WHERE NOT internal AND lower(view_name) = lower($1) "
            "UNION ALL SELECT database_name, schema_name, NULL FROM duckdb_tables() "
            "WHERE lower(table_name) = lower($1)",
            [ref.name],
        )
        catalog, schema = ref.catalog.lower(), ref.schema.lower()

        def qualifies(database: str, in_schema: str) -> bool:
            database, in_schema = database.lower(), in_schema.lower()
            if catalog:
                return database == catalog and in_schema == schema
            # `a.t` is schema `a`, or else the default schema of database `a`.
            return not schema or in_schema == schema or (database == schema and in_schema == "main")

        order = ([(home[0].lower(), home[1].lower())] if home else []) + self._search_path
        rank = {entry: index for index, entry in reversed(list(enumerate(order)))}
        ranked = sorted(
            (c for c in candidates if qualifies(c[0], c[1])),
            key=lambda c: rank.get((c[0].lower(), c[1].lower()), len(order)),
        )
        return ranked[0] if ranked else None

    def _read_search_path(self) -> list[tuple[str, str]]:
        """(database, schema) in the order DuckDB looks up an unqualified name: temporary objects, the
        `search_path` setting, then the current schema."""
        setting, database, schema = self._rows(
            "SELECT current_setting('search_path'), current_database(), current_schema()"
        )[0]
        order = [("temp", "main")]
        for entry in filter(None, (part.strip() for part in setting.split(","))):
            names = [name.strip().strip('"').lower() for name in entry.split(".")]
            if len(names) == 2:
                order.append((names[0], names[1]))
            elif names[0] in self._databases:
                order.append((names[0], "main"))
            else:
                order.append((database.lower(), names[0]))
        return [*order, (database.lower(), schema.lower())]

    def _files(self, patterns: list[str]) -> list[list[Any]]:
        """Name, size and modification time of each file the patterns match (a listing: `read_blob`
        does not read a file whose content is not selected)."""
        return [
            list(row)
            for row in self._rows(
                "SELECT filename, size, last_modified FROM read_blob($1) ORDER BY filename", [patterns]
            )
        ]

    def _rows(self, sql: str, parameters: list[Any] | None = None) -> list[tuple]:
        return self._conn.execute(sql, parameters).fetchall()


@functools.cache
def _parser() -> duckdb.DuckDBPyConnection:
    # One in-memory database for every parse: opening one takes ~13 ms, far longer than parsing, and a
    # project loads (in every run worker) with each audience's query parsed.
    return duckdb.connect(":memory:")


_parser_lock = threading.Lock()


def _parse(sql: str) -> dict:
    with _parser_lock:  # a DuckDB connection is not for two threads at once
        return json.loads(_parser().execute("SELECT json_serialize_sql(?)", [sql]).fetchone()[0])


def _file_patterns(function: dict) -> list[str] | None:
    """The constant file pattern(s) in a file reader's first argument; None when it is computed."""
    positional = [argument["expression"] for argument in function["arguments"] if not argument["name"]]
    if not positional:
        return None
    first = positional[0]
    if first.get("function_name") == "list_value":
        values = [argument["expression"] for argument in first["arguments"]]
    else:
        values = [first]
    if not all(value.get("class") == "CONSTANT" and value["literal"]["kind"] == "STRING" for value in values):
        return None
    return [value["literal"]["text"] for value in values]


def _view_query(view_sql: str) -> str | None:
    """The query of DuckDB's `CREATE VIEW <name> [(<columns>)] AS <query>;`.

    The name and columns may hold ` AS ` themselves (quoted), so the query is what follows the first
    ` AS ` after which the rest parses.
    """
    parts = view_sql.split(" AS ")
    for index in range(1, len(parts)):
        query = " AS ".join(parts[index:])
        if parse_error(query) is None:
            return query
    return None
