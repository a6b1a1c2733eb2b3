"""Read-only DuckDB access to the data audiences are selected from."""

import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import dagster as dg
import duckdb
import polars as pl
from pydantic import Field

from audience_pipeline.batches import frames
from audience_pipeline.source_changes import SourceCatalog, sql_reads

SOURCE_ENV_VAR = "AUDIENCE_PIPELINE_SOURCE"
DEFAULT_SOURCE = "data/sample.duckdb"
# DuckDB's default limit (80% of RAM) lets its buffer pool keep every block a query reads: streaming
# 2M profiles held 0.4 GB more at the end than at the start, and that grows with the source. Past this
# limit DuckDB evicts blocks, and spills a large join or aggregate to the connection's temporary folder.
MEMORY_LIMIT = "256MB"
# These DuckDB errors describe the SQL text; any other kind may quote a source value.
_SQL_ERRORS = (duckdb.ParserException, duckdb.CatalogException, duckdb.BinderException)


class SourceNotFoundError(FileNotFoundError):
    """The configured source database file does not exist."""


class DuckDBSource(dg.ConfigurableResource):
    """The audience source: a DuckDB database attached read-only, plus optional setup statements.

    Queries run on a fresh in-memory DuckDB connection per call. `database` is attached read-only
    as catalog `source`, and name lookup searches the in-memory catalog first, then `source`, so
    setup statements can add views (over Parquet, CSV, `s3://` paths, an ATTACHed postgres
    database) next to the source's tables or in place of them, while the source itself cannot be
    written. A connection uses at most `MEMORY_LIMIT` (a setup statement may set another
    `memory_limit`) and spills to a temporary folder of its own past it.
    """

    database: str | None = Field(
        default=None,
        description=(
            "DuckDB database file (local path or URL DuckDB can read) attached read-only as the "
            "source; None when the setup statements alone define the source."
        ),
    )
    setup: list[str] = Field(
        default_factory=list,
        description="SQL run on each new connection before queries, e.g. INSTALL/LOAD, ATTACH, CREATE VIEW.",
    )

    def query(self, sql: str) -> pl.DataFrame:
        """Run one query against the source and return its result as a polars frame."""
        with self._connect() as conn:
            return conn.sql(sql).pl()

    @contextmanager
    def stream(self, sql: str, rows: int = 250_000) -> Iterator["QueryStream"]:
        """Run one query and read its result a frame of about `rows` rows at a time.

        For results that need not fit in memory (AMC uploads): the connection stays open while the
        caller iterates `QueryStream.frames`, inside the `with` block.
        """
        with self._connect() as conn:
            reader = conn.sql(sql).to_arrow_reader(rows)
            yield QueryStream(pl.from_arrow(reader.schema.empty_table()).schema, frames(reader, rows))

    @contextmanager
    def catalog(self) -> Iterator[SourceCatalog]:
        """The source's tables and views on one connection, for reading their versions (which tables
        changed) inside the `with` block."""
        with self._connect() as conn:
            yield SourceCatalog(conn)

    @contextmanager
    def _connect(self) -> Iterator[duckdb.DuckDBPyConnection]:
        # An in-memory database would spill to `.tmp` in the working directory.
        with (
            tempfile.TemporaryDirectory(prefix="audience_pipeline-duckdb-") as spill,
            duckdb.connect(":memory:") as conn,
        ):
            conn.execute(f"SET temp_directory = '{spill}'")
            conn.execute(f"SET memory_limit = '{MEMORY_LIMIT}'")
            # Its bar would be drawn into the run's captured output, a line per redraw.
            conn.execute("SET enable_progress_bar = false")
            self._prepare(conn)
            yield conn

    def _prepare(self, conn: duckdb.DuckDBPyConnection) -> None:
        if self.database is not None:
            if "://" not in self.database and not Path(self.database).exists():
                raise SourceNotFoundError(
                    f"Audience source database {self.database!r} does not exist "
                    f"(resource `source`, setting `database`, env var {SOURCE_ENV_VAR}; "
                    f"resolved from {Path.cwd()}). Create sample data with "
                    "`audience-pipeline sample-data --profiles 100000 --out data`, or set "
                    f"{SOURCE_ENV_VAR} to your DuckDB file."
                )
            escaped = self.database.replace("'", "''")
            conn.execute(f"ATTACH '{escaped}' AS source (READ_ONLY)")
            conn.execute("SET search_path = 'memory.main,source.main'")
        for statement in self.setup:
            conn.execute(statement)


@contextmanager
def source_query_errors(where: str, setting: str) -> Iterator[None]:
    """DuckDB errors of a query on the source as a `dg.Failure` naming `where` and its `setting`.

    Errors about the SQL text are shown; other kinds (conversion, constraint, ...) may quote a source
    value, i.e. PII, so only their kind is.
    """
    try:
        yield
    except _SQL_ERRORS as e:
        # DuckDB spreads its message over lines (a hint, the query line, a caret under the error);
        # a run's failure is one line.
        lines = [line.strip() for line in str(e).splitlines() if line.strip() not in ("", "^")]
        raise dg.Failure(f"{where}: its `{setting}` failed: {' '.join(lines)}") from None
    except duckdb.Error as e:
        raise dg.Failure(
            f"{where}: its `{setting}` failed with {type(e).__name__} "
            "(message withheld: it may quote source data)"
        ) from None


class QueryStream:
    """A query's result schema, and its rows as an iterator of polars frames."""

    def __init__(self, schema: pl.Schema, frames: Iterator[pl.DataFrame]):
        self.schema, self.frames = schema, frames


def source_tables(sql: str) -> list[str]:
    """The tables a query reads, by name, as DuckDB's own parser sees them (CTEs left out).

    Parsing only, no binding: the SQL is never run, so this works at definition load time without a
    database. SQL that does not parse reads no known table (running it reports the error).
    """
    return sorted({table.name for table in sql_reads(sql).tables})
