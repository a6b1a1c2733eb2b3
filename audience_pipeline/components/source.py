"""The source's tables as assets: where audiences and AMC uploads read from, at the head of the graph.

They are observable, not materialized: this project never writes the source. Observing them (from
the UI, or on a schedule) records each table's row count, so the UI plots the source's growth and
shows which audiences and uploads read a table that changed.
"""

import dagster as dg
from pydantic import Field, field_validator

from audience_pipeline.components.setting_errors import CheckedSettings
from audience_pipeline.components.ui import OWNERS
from audience_pipeline.resources.duckdb_source import DuckDBSource


def source_table_key(table: str) -> dg.AssetKey:
    """`source/<table>`: the asset of a source table, which assets reading it depend on."""
    return dg.AssetKey(["source", table])


class SourceTable(dg.Model, dg.Resolvable):
    """One table (or view) of the source."""

    name: str = Field(min_length=1, description="The table's name as SQL names it.")
    description: str | None = Field(default=None, description="What a row is, shown in the UI.")


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

    def build_defs(self, context: dg.ComponentLoadContext) -> dg.Definitions:
        """One observable asset per table; observing records its row count."""
        specs = [
            dg.AssetSpec(
                source_table_key(table.name),
                description=table.description or f"Source table `{table.name}`.",
                group_name="ingest",
                kinds={"duckdb"},
                owners=OWNERS,
                metadata={"dagster/table_name": table.name},
            )
            for table in self.tables
        ]

        @dg.multi_observable_source_asset(
            specs=specs, name="source_tables", required_resource_keys={"source"}
        )
        def source_tables(context: dg.AssetExecutionContext):
            """Counts each table's rows in the `source` resource."""
            source: DuckDBSource = context.resources.source
            for table in self.tables:
                rows = source.query(f'SELECT count(*) AS n FROM "{table.name}"').item()
                yield dg.ObserveResult(
                    asset_key=source_table_key(table.name),
                    metadata={"rows": rows},
                    data_version=dg.DataVersion(str(rows)),
                )

        return dg.Definitions(assets=[source_tables])
