import hashlib
from pathlib import Path

import dagster as dg
import duckdb
import polars as pl
import pytest
from pydantic import ValidationError

import audience_pipeline
from audience_pipeline.components.audiences import (
    SNAPSHOT_ASSET_KEY,
    Audience,
    AudiencesComponent,
    find_audiences,
    snapshot_state_key,
)
from audience_pipeline.components.setting_errors import SettingError
from audience_pipeline.resources.duckdb_source import DuckDBSource
from audience_pipeline.resources.state_store import StateStore

PROFILES = [
    # user_id, email, phone, country_code
    ("u1", "Alice.Smith@Example.com", "(206) 555-0100", "US"),
    ("u2", "bob.jones@example.org", "020 7946 0958", "GB"),
    ("u3", "not-an-email", "+1 206 555 0199", None),
    ("u3", "carol.white@example.net", None, None),
    (None, "dave.black@example.com", "(206) 555-0142", "US"),
]
RAW_VALUES = [raw for row in PROFILES for raw in row[1:3] if raw]


def sha256(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


@pytest.fixture
def source(tmp_path) -> DuckDBSource:
    path = tmp_path / "tiny.duckdb"
    with duckdb.connect(str(path)) as conn:
        conn.execute(
            "CREATE TABLE profiles (user_id VARCHAR, email VARCHAR, phone VARCHAR, country_code VARCHAR, "
            "ip_address VARCHAR, signup_order INTEGER)"
        )
        conn.executemany(
            "INSERT INTO profiles VALUES (?, ?, ?, ?, '192.0.2.7', ?)",
            [(*row, i) for i, row in enumerate(PROFILES)],
        )
    return DuckDBSource(database=str(path))


def component(*audiences: dict, **settings) -> AudiencesComponent:
    return AudiencesComponent(audiences=[Audience(**a) for a in audiences], **settings)


def materialize(component: AudiencesComponent, partition_key: str, source, tmp_path, instance=None):
    definitions = dg.build_defs_for_component(component)
    return dg.materialize(
        [definitions.get_assets_def(SNAPSHOT_ASSET_KEY)],
        partition_key=partition_key,
        resources={"source": source, "state_store": StateStore(root=str(tmp_path / "state"))},
        instance=instance,
        raise_on_error=False,
    )


EVERYONE = {"id": 7, "name": "everyone", "sql": "SELECT * FROM profiles ORDER BY signup_order"}


def test_snapshot_persists_hashes_and_reports_counts(source, tmp_path, capfd):
    home = tmp_path / "dagster_home"
    home.mkdir()
    with dg.DagsterInstance.local_temp(tempdir=str(home)) as instance:
        result = materialize(component(EVERYONE, country_code="US"), "7", source, tmp_path, instance)
        event_log = dg.serialize_value(instance.all_logs(result.run_id))
    assert result.success
    # The snapshot goes to the state store only: no IO manager pickled the frame.
    assert not list(home.rglob("audience_snapshot*"))

    snapshot = pl.read_parquet(tmp_path / "state" / snapshot_state_key("7"))
    assert snapshot.columns == ["user_id", "email", "phone", "country_code"]
    assert snapshot["user_id"].to_list() == ["u1", "u2", "u3"]
    assert snapshot["email"].to_list() == [
        sha256("alice.smith@example.com"),
        sha256("bob.jones@example.org"),
        None,
    ]
    # u3's first row wins; its phone has an international prefix, so it needs no country.
    assert snapshot["phone"].to_list() == [
        sha256("12065550100"),
        sha256("442079460958"),
        sha256("12065550199"),
    ]
    cells = [str(v) for column in snapshot.drop("user_id", "country_code").iter_columns() for v in column]
    assert not any(raw in cell for raw in RAW_VALUES for cell in cells)

    metadata = {
        k: v.value for k, v in result.asset_materializations_for_node("audience_snapshot")[0].metadata.items()
    }
    assert metadata["rows"] == 5
    assert metadata["members"] == 3
    assert metadata["dagster/row_count"] == 3
    assert metadata["values_by_field"] == {"email": 2, "phone": 3}
    assert metadata["values_hashed"] == 5
    assert metadata["rejects"] == {
        "user_id": {"missing_user_id": 1, "duplicate_user_id": 1},
        "email": {"invalid_email": 1},
    }
    assert metadata["rejects_total"] == 3
    assert metadata["dropped_columns"] == ["ip_address", "signup_order"]

    printed = capfd.readouterr()
    for raw in RAW_VALUES:
        assert raw not in event_log
        assert raw not in printed.out + printed.err
    assert "192.0.2.7" not in event_log


def test_one_partition_per_audience_and_each_runs_its_own_sql(source, tmp_path):
    audiences = component(
        EVERYONE,
        {
            "id": "gb_only",
            "name": "GB",
            "sql": "SELECT user_id, email FROM profiles WHERE country_code = 'GB'",
        },
    )
    assert audiences.partitions_def.get_partition_keys() == ["7", "gb_only"]

    assert materialize(audiences, "gb_only", source, tmp_path).success

    store = StateStore(root=str(tmp_path / "state"))
    assert store.store.read(snapshot_state_key("gb_only"))["user_id"].to_list() == ["u2"]
    assert store.store.read(snapshot_state_key("7")) is None


def test_the_audience_country_overrides_the_component_country(source, tmp_path):
    national_phone = {
        "id": 1,
        "name": "bob",
        "sql": "SELECT user_id, '020 7946 0958' AS phone FROM profiles WHERE user_id = 'u1'",
    }

    assert materialize(
        component({**national_phone, "country_code": "GB"}, country_code="US"), "1", source, tmp_path
    ).success

    snapshot = StateStore(root=str(tmp_path / "state")).store.read(snapshot_state_key("1"))
    assert snapshot["phone"].to_list() == [sha256("442079460958")]


def test_a_query_without_user_id_fails_naming_the_audience(source, tmp_path):
    result = materialize(
        component({"id": 3, "name": "no ids", "sql": "SELECT email FROM profiles"}), "3", source, tmp_path
    )

    assert not result.success
    message = result.failure_data_for_node("audience_snapshot").error.message
    assert "audience '3' (no ids)" in message
    assert "user_id" in message


def test_a_data_error_does_not_quote_the_data(source, tmp_path):
    broken = {"id": 4, "name": "broken", "sql": "SELECT email::INTEGER AS user_id FROM profiles"}

    with dg.DagsterInstance.ephemeral() as instance:
        result = materialize(component(broken), "4", source, tmp_path, instance)
        event_log = dg.serialize_value(instance.all_logs(result.run_id))

    assert not result.success
    assert "ConversionException" in result.failure_data_for_node("audience_snapshot").error.message
    for raw in RAW_VALUES:
        assert raw not in event_log


def test_an_sql_error_is_reported_with_its_message(source, tmp_path):
    result = materialize(
        component({"id": 5, "name": "typo", "sql": "SELECT * FROM profilez"}), "5", source, tmp_path
    )

    assert "profilez" in result.failure_data_for_node("audience_snapshot").error.message


def audiences_yaml(second_audience: str, extra: str = "") -> str:
    first_audience = "{id: 7, name: a, sql: SELECT user_id FROM profiles}"
    return f"audiences:\n  - {first_audience}\n  - {second_audience}\n{extra}"


def test_duplicate_audience_ids_fail_naming_the_setting():
    with pytest.raises(
        ValidationError,
        match=r"audiences\[1\]\.id: duplicate audience id '7', already used by audiences\[0\]",
    ):
        AudiencesComponent.resolve_from_yaml(audiences_yaml('{id: "7", name: b, sql: SELECT 1}'))


@pytest.mark.parametrize(
    ("second_audience", "expected"),
    [
        ('{id: "a/b", name: b, sql: SELECT 1}', r"1\.id.*audience id 'a/b' is invalid"),
        ("{id: -1, name: b, sql: SELECT 1}", r"1\.id.*audience id -1 is invalid"),
        ("{id: true, name: b, sql: SELECT 1}", r"1\.id.*audience id True is invalid"),
        ("{id: 8, name: b, sql: '  '}", r"1\.sql.*must not be empty"),
        ("{id: 8, sql: SELECT 1}", r"1\.name.*Field required"),
        (
            "{id: 8, name: b, sql: SELECT 1, country_code: Atlantis}",
            r"1\.country_code.*unknown country 'Atlantis'",
        ),
    ],
)
def test_bad_audience_settings_fail_naming_the_setting(second_audience, expected):
    with pytest.raises(ValidationError, match=rf"(?s)audiences.*{expected}"):
        AudiencesComponent.resolve_from_yaml(audiences_yaml(second_audience))


def test_bad_component_settings_fail_naming_the_setting():
    with pytest.raises(ValidationError, match=r"(?s)country_code.*unknown country 'Atlantis'"):
        AudiencesComponent.resolve_from_yaml(
            audiences_yaml("{id: 8, name: b, sql: SELECT 1}", "country_code: Atlantis")
        )
    with pytest.raises(ValidationError, match=r"(?s)audiences.*at least 1 item"):
        AudiencesComponent.resolve_from_yaml("audiences: []")


def test_countries_are_kept_as_alpha_2():
    audiences = AudiencesComponent.resolve_from_yaml(
        audiences_yaml("{id: 8, name: b, sql: SELECT 1, country_code: United Kingdom}", "country_code: usa")
    )

    assert (audiences.country_code, audiences.audiences[1].country_code) == ("US", "GB")


def test_destinations_get_the_name_to_send_and_find_the_project_audiences():
    tree = dg.ComponentTree.for_project(Path(audience_pipeline.__file__))
    audiences = find_audiences(tree.load_context)

    assert audiences.partitions_def.get_partition_keys() == [a.partition_key for a in audiences.audiences]
    cart = audiences.audience("1001")
    assert (cart.name, cart.destination_name) == ("cart_abandoners_30d", "Cart Abandoners (30 days)")
    assert Audience(id=1, name="plain", sql="SELECT 1").destination_name == "plain"


def test_a_bad_setting_in_the_yaml_is_the_error_dagster_shows(tmp_path, monkeypatch):
    # Dagster passes a SettingError on as it is: `dg check defs` shows its message first, once.
    (tmp_path / "pyproject.toml").write_text(
        '[tool.dg]\ndirectory_type = "project"\n\n'
        '[tool.dg.project]\nroot_module = "bad_project"\ndefs_module = "bad_project_defs"\n'
    )
    folder = tmp_path / "bad_project_defs" / "audiences"
    folder.mkdir(parents=True)
    (folder / "defs.yaml").write_text(
        "type: audience_pipeline.components.audiences.AudiencesComponent\n"
        "attributes:\n"
        '  refresh_schedule: "every hour"\n'
        "  country_code: Atlantis\n"
        "  audiences: [{id: 7, name: a, sql: SELECT 1 AS user_id}]\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))

    with pytest.raises(SettingError) as error:
        dg.load_from_defs_folder(path_within_project=tmp_path / "bad_project_defs")

    assert str(error.value) == (
        "bad_project_defs/audiences/defs.yaml: country_code: unknown country 'Atlantis' "
        "(use an ISO 3166-1 code such as 'US' or 'GB'); "
        "refresh_schedule: 'every hour' is not a cron schedule such as '0 3 * * *' (minute hour day-of-month "
        "month day-of-week), '@hourly', '@daily' or '@monthly'"
    )
    assert error.value.__cause__ is None and error.value.__suppress_context__


def test_a_destination_routing_an_unknown_audience_fails_with_a_setting_error():
    audiences = component({"id": 7, "name": "a", "sql": "SELECT 1"})

    with pytest.raises(SettingError, match=r"^Firehose s: `audiences` lists 8, which the audiences"):
        audiences.routed([7, 8], "Firehose s")
