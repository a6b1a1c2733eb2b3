"""Change-driven refresh: a change to a source table refreshes exactly the audiences whose SQL reads it.

A real source: a DuckDB database file (`profiles`, `purchases`) and Parquet files under `events/`
that setup statements turn into views (`events`, and `app_events` over it). The sensor is evaluated
as the daemon would, on an ephemeral instance, its cursor carried from one evaluation to the next.
"""

from pathlib import Path

import dagster as dg
import duckdb
import pytest

from audience_pipeline.components.audiences import SNAPSHOT_ASSET_KEY, Audience, AudiencesComponent
from audience_pipeline.components.setting_errors import SettingError, yaml_setting_errors
from audience_pipeline.components.source import SourceTable, SourceTablesComponent
from audience_pipeline.components.source_changes import CHANGED_TABLES_TAG, SENSOR_NAME
from audience_pipeline.definitions import defs
from audience_pipeline.resources.duckdb_source import DuckDBSource
from audience_pipeline.resources.state_store import StateStore
from audience_pipeline.source_changes import NoChangeMarkerError

AUDIENCES = [
    {"id": "everyone", "name": "everyone", "sql": "SELECT * FROM profiles"},
    {
        "id": "clickers",
        "name": "clickers",
        "sql": "SELECT p.* FROM profiles p WHERE user_id IN (SELECT user_id FROM events)",
    },
    {
        "id": "app_users",
        "name": "app_users",
        "sql": "SELECT p.* FROM profiles p WHERE user_id IN (SELECT user_id FROM app_events)",
    },
    {
        "id": "buyers",
        "name": "buyers",
        "sql": "SELECT p.* FROM profiles p WHERE user_id IN (SELECT user_id FROM purchases)",
    },
]


class Source:
    """The source's files in `folder`, and the changes a data team makes to them."""

    def __init__(self, folder: Path):
        self.database, self.events = folder / "warehouse.duckdb", folder / "events"
        self.events.mkdir()
        with duckdb.connect(str(self.database)) as conn:
            conn.execute(
                "CREATE TABLE profiles AS SELECT 'u' || i AS user_id, 'user' || i || '@example.com' AS email "
                "FROM range(1, 6) t(i)"
            )
            conn.execute("CREATE TABLE purchases AS SELECT 'u1' AS user_id, 9.99::DOUBLE AS amount")
        self.add_events("part-0", [("u1", "web"), ("u2", "app")])

    def resource(self) -> DuckDBSource:
        """The `source` resource over the database file, with the Parquet files as views."""
        return DuckDBSource(
            database=str(self.database),
            setup=[
                f"CREATE VIEW events AS SELECT * FROM read_parquet('{self.events}/*.parquet')",
                "CREATE VIEW app_events AS SELECT * FROM events WHERE channel = 'app'",
            ],
        )

    def add_events(self, part: str, rows: list[tuple[str, str]]) -> None:
        """A new Parquet file of (user id, channel) events."""
        values = ", ".join(f"('{user}', '{channel}')" for user, channel in rows)
        with duckdb.connect() as conn:
            rows_sql = f"SELECT * FROM (VALUES {values}) t(user_id, channel)"
            conn.execute(f"COPY ({rows_sql}) TO '{self.events / part}.parquet'")

    def write(self, sql: str) -> None:
        """One statement on the database file, by another process as it were."""
        with duckdb.connect(str(self.database)) as conn:
            conn.execute(sql)


class Pipeline:
    """The audiences and source components with their resources, and the sensor's evaluations."""

    def __init__(
        self,
        source: DuckDBSource,
        state: Path,
        audiences: list[dict] = AUDIENCES,
        change_queries: dict[str, str] | None = None,
    ):
        queries = change_queries or {}
        tables = [
            SourceTable(name=name, change_query=queries.get(name)) for name in ("profiles", "purchases")
        ]
        self.definitions = dg.Definitions.merge(
            dg.build_defs_for_component(AudiencesComponent(audiences=[Audience(**a) for a in audiences])),
            dg.build_defs_for_component(SourceTablesComponent(tables=tables)),
            dg.Definitions(resources={"source": source, "state_store": StateStore(root=str(state))}),
        )
        self.instance = dg.DagsterInstance.ephemeral()
        self.cursor: str | None = None

    def evaluate(self) -> dg.SensorResult:
        """One tick of the sensor; the next starts from the cursor this one left."""
        sensor = self.definitions.resolve_sensor_def(SENSOR_NAME)
        with dg.build_sensor_context(
            instance=self.instance,
            cursor=self.cursor,
            definitions=self.definitions,
            resources=self.definitions.resources,
        ) as context:
            result = sensor(context)
        self.cursor = result.cursor
        return result

    def refreshed(self) -> list[str]:
        """The audiences one tick asks to refresh."""
        return [request.partition_key for request in self.evaluate().run_requests]

    def refresh(self, audiences: list[str]) -> dict[str, int]:
        """Runs the snapshots of `audiences`, as the requested runs do; their member counts."""
        snapshot = self.definitions.get_assets_def(SNAPSHOT_ASSET_KEY)
        members = {}
        for audience in audiences:
            result = dg.materialize(
                [snapshot],
                partition_key=audience,
                resources=self.definitions.resources,
                instance=self.instance,
            )
            [materialization] = result.asset_materializations_for_node("audience_snapshot")
            members[audience] = materialization.metadata["members"].value
        return members


def data_versions(result: dg.SensorResult) -> dict[str, str]:
    """The data version each observation of a tick records, by table."""
    return {event.asset_key.path[-1]: event.data_version for event in result.asset_events}


@pytest.fixture
def source(tmp_path) -> Source:
    return Source(tmp_path)


def test_new_events_refresh_exactly_the_audiences_reading_them_directly_or_through_a_view(source, tmp_path):
    pipeline = Pipeline(source.resource(), tmp_path / "state")
    assert pipeline.refreshed() == [], "the first look records the versions"
    assert pipeline.refresh(["clickers", "app_users"]) == {"clickers": 2, "app_users": 1}

    source.add_events("part-1", [("u3", "app")])
    result = pipeline.evaluate()

    assert [r.partition_key for r in result.run_requests] == ["clickers", "app_users"]
    changed = {r.partition_key: r.tags[CHANGED_TABLES_TAG] for r in result.run_requests}
    assert changed == {"clickers": "events", "app_users": "app_events"}
    # The new member arrives with the refresh the change asked for.
    assert pipeline.refresh(["clickers", "app_users"]) == {"clickers": 3, "app_users": 2}
    assert pipeline.refreshed() == [], "the change is seen once"


def test_an_unchanged_source_refreshes_nothing(source, tmp_path):
    pipeline = Pipeline(source.resource(), tmp_path / "state")
    first = pipeline.evaluate()
    pipeline.refresh(["everyone", "buyers"])  # reading the source changes nothing

    assert pipeline.refreshed() == []
    second = pipeline.evaluate()
    assert second.run_requests == []
    # The first look records every table's version on its asset, for the UI; later looks add nothing.
    assert set(data_versions(first)) == {"profiles", "purchases", "events", "app_events"}
    assert second.asset_events == []


def test_a_write_to_the_database_file_refreshes_the_audiences_reading_its_tables(source, tmp_path):
    pipeline = Pipeline(source.resource(), tmp_path / "state")
    before = data_versions(pipeline.evaluate())

    source.write("INSERT INTO purchases VALUES ('u4', 25.0)")
    result = pipeline.evaluate()

    # DuckDB keeps no version per table: a write to the file is a change of every table it holds.
    assert [r.partition_key for r in result.run_requests] == ["everyone", "clickers", "app_users", "buyers"]
    after = data_versions(result)
    assert set(after) == {"profiles", "purchases"}
    assert after["purchases"] != before["purchases"]
    [purchases] = [event for event in result.asset_events if event.asset_key.path[-1] == "purchases"]
    assert purchases.metadata["audiences_refreshed"].value == ["buyers"]
    assert pipeline.refreshed() == []


def test_a_change_query_tells_apart_the_tables_of_one_database_file(source, tmp_path):
    pipeline = Pipeline(
        source.resource(),
        tmp_path / "state",
        change_queries={
            "profiles": "SELECT count(*), max(email) FROM profiles",
            "purchases": "SELECT count(*), sum(amount) FROM purchases",
        },
    )
    pipeline.evaluate()

    source.write("INSERT INTO purchases VALUES ('u4', 25.0)")
    assert pipeline.refreshed() == ["buyers"]
    assert pipeline.refresh(["buyers"]) == {"buyers": 2}
    assert pipeline.refreshed() == []

    source.write("UPDATE profiles SET email = 'zoe@example.com' WHERE user_id = 'u5'")
    assert pipeline.refreshed() == ["everyone", "clickers", "app_users", "buyers"]


def test_a_failing_change_query_names_the_table_and_the_setting(source, tmp_path):
    pipeline = Pipeline(
        source.resource(),
        tmp_path / "state",
        change_queries={"purchases": "SELECT max(price) FROM purchases"},
    )

    with pytest.raises(dg.Failure, match=r"source table `purchases`: its `change_query` failed: .*price"):
        pipeline.evaluate()


def test_a_table_no_file_shows_the_changes_of_asks_for_its_change_query(source, tmp_path):
    resource = source.resource()
    resource = DuckDBSource(
        database=resource.database, setup=[*resource.setup, "CREATE TABLE vips AS SELECT 'u1' AS user_id"]
    )
    vips = {"id": "vips", "name": "vips", "sql": "SELECT p.* FROM profiles p JOIN vips USING (user_id)"}
    pipeline = Pipeline(resource, tmp_path / "state", audiences=[vips])

    with pytest.raises(NoChangeMarkerError, match=r"source table `vips`.*set its `change_query`"):
        pipeline.evaluate()


def test_the_example_project_follows_its_source_from_the_first_dev():
    sensor = defs().resolve_sensor_def(SENSOR_NAME)

    assert sensor.default_status == dg.DefaultSensorStatus.RUNNING
    assert sensor.minimum_interval_seconds == 5


def test_change_driven_refresh_can_be_turned_off():
    audiences = AudiencesComponent(audiences=[Audience(**AUDIENCES[0])], refresh_on_source_change=False)
    assert SENSOR_NAME not in {sensor.name for sensor in dg.build_defs_for_component(audiences).sensors}


@pytest.mark.parametrize(
    ("component", "attributes", "message"),
    [
        (
            "audiences.AudiencesComponent",
            "  source_check_interval_seconds: 1\n"
            "  audiences: [{id: 7, name: a, sql: SELECT * FROM profiles}]\n",
            "project_defs/change/defs.yaml: source_check_interval_seconds: Input should be greater than or "
            "equal to 5",
        ),
        (
            "source.SourceTablesComponent",
            "  tables: [{name: profiles, change_query: SELEC max(updated_at) FROM profiles}]\n",
            "project_defs/change/defs.yaml: tables: the `change_query` of table `profiles` is not a SELECT "
            'DuckDB can parse: syntax error at or near "SELEC"',
        ),
    ],
)
def test_settings_fail_naming_the_setting(component, attributes, message, tmp_path, monkeypatch):
    (tmp_path / "pyproject.toml").write_text(
        '[tool.dg]\ndirectory_type = "project"\n\n'
        '[tool.dg.project]\nroot_module = "project"\ndefs_module = "project_defs"\n'
    )
    folder = tmp_path / "project_defs" / "change"
    folder.mkdir(parents=True)
    (folder / "defs.yaml").write_text(
        f"type: audience_pipeline.components.{component}\nattributes:\n{attributes}"
    )
    monkeypatch.syspath_prepend(str(tmp_path))

    with pytest.raises(SettingError) as error, yaml_setting_errors(tmp_path):
        dg.load_from_defs_folder(path_within_project=tmp_path / "project_defs")

    assert str(error.value) == message
