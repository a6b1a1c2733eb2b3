"""The source's tables as assets: where audiences and AMC uploads read from, at the head of the graph.

They are observable, not materialized: this project never writes the source. Observing them (from
the UI, or on a schedule) records each table's row count and its version (`source_changes`), the
version the change-driven refresh of the audiences records too (`components/source_changes.py`), so
the UI plots the source's growth and shows which audiences and uploads read a table that changed.
"""

import dagster as dg
from pydantic import Field, field_validator

from audience_pipeline.components.setting_errors import CheckedSettings
from audience_pipeline.components.ui import OWNERS
from audience_pipeline.resources.duckdb_source import DuckDBSource, source_query_errors
from audience_pipeline.source_changes import SourceCatalog, parse_error

# The asset metadata that holds a table's `change_query`, where the change-driven refresh finds it.
CHANGE_QUERY_METADATA = "change_query"


def source_table_key(table: str) -> dg.AssetKey:
    """`source/<table>`: the asset of a source table, which assets reading it depend on."""
    return dg.AssetKey(["source", table])


class SourceTable(dg.Model, dg.Resolvable):
    """One table (or view) of the source."""

    name: str = Field(min_length=1, description="The table's name as SQL names it.")
    description: str | None = Field(default=None, description="What a row is, shown in the UI.")
    change_query: str | None = Field(
        default=None,
        description="A cheap SELECT whose result changes whenever the table does (e.g. `SELECT count(*), "
        "max(updated_at) FROM profiles`), telling its changes apart from those of other tables in the "
        "same database file; required where no file shows them (an attached Postgres table).",
    )


class SourceTablesComponent(CheckedSettings, dg.Component, dg.Model, dg.Resolvable):
    """Declares the source's tables (group `ingest`); assets whose SQL reads them depend on them."""

    tables: list[SourceTable] = Field(min_length=1, description="The tables audience and upload SQL reads.")

    @field_validator("tables")
    @classmethod
    def _check_unique(cls, tables: list[SourceTable]) -> list[SourceTable]:
        names = [t.name for t in tables]
        repeated = sorted({n for n in names if names.count(n) > 1})
        if repeated:
            raise ValueError(f"tables listed more than once: {', '.join(repeated)}")
        return tables

    @field_validator("tables")
    @classmethod
    def _check_change_queries(cls, tables: list[SourceTable]) -> list[SourceTable]:
        for table in tables:
            problem = None if table.change_query is None else parse_error(table.change_query)
            if problem is not None:
                raise ValueError(
                    f"the `change_query` of table `{table.name}` is not a SELECT DuckDB can parse: {problem}"
                )
        return tables

    def build_defs(self, context: dg.ComponentLoadContext) -> dg.Definitions:
        """One observable asset per table; observing records its row count and version."""
        specs = [
            dg.AssetSpec(
                source_table_key(table.name),
                description=table.description or f"Source table `{table.name}`.",
                group_name="ingest",
                kinds={"duckdb"},
                owners=OWNERS,
                metadata={
                    "dagster/table_name": table.name,
                    **({CHANGE_QUERY_METADATA: table.change_query} if table.change_query else {}),
                },
            )
            for table in self.tables
        ]

        @dg.multi_observable_source_asset(
            specs=specs, name="source_tables", required_resource_keys={"source"}
        )
        def source_tables(context: dg.AssetExecutionContext):
            """Counts each table's rows in the `source` resource and reads its version."""
            source: DuckDBSource = context.resources.source
            with source.catalog() as catalog:
                versions = {t.name: table_version(catalog, t.name, t.change_query) for t in self.tables}
            for table in self.tables:
                rows = source.query(f'SELECT count(*) AS n FROM "{table.name}"').item()
                yield dg.ObserveResult(
                    asset_key=source_table_key(table.name),
                    metadata={"rows": rows},
                    data_version=dg.DataVersion(versions[table.name]),
                )

        return dg.Definitions(assets=[source_tables])


def table_version(catalog: SourceCatalog, table: str, change_query: str | None) -> str:
    """A table's version: its `change_query`'s result, whose errors name the setting, or what shows its
    changes without one (`SourceCatalog.version`)."""
    if change_query is None:
        return catalog.version(table)
    with source_query_errors(f"source table `{table}`", "change_query"):
        return catalog.version(table, change_query)
