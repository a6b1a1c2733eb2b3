import boto3
import dagster as dg
import duckdb
import polars as pl
import pytest

from audience_pipeline.clients.adm import AdmClient
from audience_pipeline.clients.amc import AmcClient
from audience_pipeline.clients.dsp import DspClient
from audience_pipeline.defs.resources import resources as wired_resources
from audience_pipeline.resources.amazon_ads import AmazonAdsApi
from audience_pipeline.resources.aws import AwsConnection, FirehoseResource, S3Resource
from audience_pipeline.resources.duckdb_source import DuckDBSource, SourceNotFoundError
from audience_pipeline.resources.state_store import STATE_ENV_VAR, StateStore
from audience_pipeline.sandbox.server import DUMMY_AWS_KEYS
from audience_pipeline.state import StoreError


@pytest.fixture
def source_file(tmp_path):
    path = tmp_path / "source.duckdb"
    with duckdb.connect(str(path)) as conn:
        conn.execute(
            "CREATE TABLE profiles AS SELECT * FROM (VALUES ('u1', 'US'), ('u2', 'GB')) t(user_id, cc)"
        )
    return path


def test_query_returns_a_polars_frame(source_file):
    frame = DuckDBSource(database=str(source_file)).query("SELECT user_id FROM profiles ORDER BY user_id")

    assert isinstance(frame, pl.DataFrame)
    assert frame["user_id"].to_list() == ["u1", "u2"]


def test_the_source_cannot_be_written(source_file):
    source = DuckDBSource(database=str(source_file))

    with pytest.raises(duckdb.Error, match="read-only"):
        source.query("INSERT INTO profiles VALUES ('u3', 'FR')")
    assert source.query("SELECT count(*) AS n FROM profiles")["n"].item() == 2


def test_setup_statements_add_views_next_to_the_source_tables(source_file, tmp_path):
    events = tmp_path / "events.parquet"
    pl.DataFrame({"user_id": ["u1", "u1", "u2"], "event_type": ["a", "b", "a"]}).write_parquet(events)
    source = DuckDBSource(
        database=str(source_file),
        setup=[f"CREATE VIEW events AS SELECT * FROM read_parquet('{events}')"],
    )

    frame = source.query(
        "SELECT p.cc, count(*) AS n FROM profiles p JOIN events USING (user_id) GROUP BY 1 ORDER BY 1"
    )

    assert frame.rows() == [("GB", 1), ("US", 2)]


def test_a_source_can_be_made_of_setup_statements_alone(tmp_path):
    members = tmp_path / "members.csv"
    members.write_text("user_id,email\nu1,a@x.com\n")
    source = DuckDBSource(setup=[f"CREATE VIEW members AS SELECT * FROM read_csv('{members}')"])

    assert source.query("SELECT user_id FROM members")["user_id"].to_list() == ["u1"]


def test_a_missing_source_file_names_the_setting_and_how_to_make_sample_data(tmp_path):
    source = DuckDBSource(database=str(tmp_path / "nowhere.duckdb"))

    with pytest.raises(SourceNotFoundError) as raised:
        source.query("SELECT 1")

    message = str(raised.value)
    assert "nowhere.duckdb" in message
    assert "AUDIENCE_PIPELINE_SOURCE" in message
    assert "audience-pipeline sample-data --profiles 100000 --out data" in message


def test_state_store_round_trips_and_replaces(tmp_path):
    state = StateStore(root=str(tmp_path / "state"))
    assert state.store.read("snapshots/1.parquet") is None

    state.store.write("snapshots/1.parquet", pl.DataFrame({"user_id": ["a", "b"]}))
    state.store.write("snapshots/1.parquet", pl.DataFrame({"user_id": ["c"]}))

    path = state.path("snapshots/1.parquet")
    assert path == tmp_path / "state" / "snapshots" / "1.parquet"
    assert state.store.read("snapshots/1.parquet")["user_id"].to_list() == ["c"]
    assert [p.name for p in path.parent.iterdir()] == ["1.parquet"]


def test_state_store_keeps_the_old_file_when_a_write_fails(tmp_path):
    store = StateStore(root=str(tmp_path)).store
    store.write("x.parquet", pl.DataFrame({"user_id": ["a"]}))
    unwritable = pl.DataFrame({"user_id": [object()]})

    with pytest.raises(StoreError, match=r"^State store .*: writing x\.parquet failed"):
        store.write("x.parquet", unwritable)

    assert store.read("x.parquet")["user_id"].to_list() == ["a"]
    assert [p.name for p in tmp_path.iterdir()] == ["x.parquet"]


def test_an_s3_state_store_wired_as_in_defs_reaches_the_sandbox(sandbox_env, monkeypatch):
    monkeypatch.setenv(STATE_ENV_VAR, "s3://state/pipeline")
    boto3.client("s3").create_bucket(Bucket="state")
    resources = wired_resources().resources

    @dg.asset
    def round_trip(state_store: StateStore) -> list[str]:
        state_store.store.write("snapshots/1.parquet", pl.DataFrame({"user_id": ["a"]}))
        return state_store.store.read("snapshots/1.parquet")["user_id"].to_list()

    result = dg.materialize([round_trip], resources=resources)

    assert resources["state_store"].endpoint_url == sandbox_env.aws_url
    assert result.output_for_node("round_trip") == ["a"]
    stored = boto3.client("s3").get_object(Bucket="state", Key="pipeline/snapshots/1.parquet")
    assert pl.read_parquet(stored["Body"].read())["user_id"].to_list() == ["a"]


def test_an_s3_state_store_gets_its_client_from_its_aws_settings(sandbox, monkeypatch):
    for name, value in DUMMY_AWS_KEYS.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)
    boto3.client("s3", endpoint_url=sandbox.aws_url).create_bucket(Bucket="state")
    store = StateStore(root="s3://state/p", endpoint_url=sandbox.aws_url)
    assert isinstance(store, S3Resource)

    store.store.write("x.parquet", pl.DataFrame({"user_id": ["a"]}))
    assert store.path("x.parquet") == "s3://state/p/x.parquet"
    assert store.store.read("x.parquet")["user_id"].to_list() == ["a"]


def test_a_destinations_own_aws_keys_and_region_take_precedence_over_the_resources():
    resource = S3Resource(region_name="eu-west-1", aws_access_key_id="RESOURCE", aws_secret_access_key="r")

    own = resource.session(
        AwsConnection(region_name="us-east-1", aws_access_key_id="OWN", aws_secret_access_key="o")
    )
    default = resource.session()

    assert (own.region_name, own.get_credentials().access_key) == ("us-east-1", "OWN")
    assert (default.region_name, default.get_credentials().access_key) == ("eu-west-1", "RESOURCE")


def test_seed_style_bare_endpoints_become_https_urls():
    client = FirehoseResource(region_name="us-east-1").get_client(
        AwsConnection(endpoint_url="firehose.us-east-1.amazonaws.com")
    )
    assert client.meta.endpoint_url == "https://firehose.us-east-1.amazonaws.com"
    # Firehose retries failed records itself, so botocore must not retry behind its back.
    assert client.meta.config.retries["total_max_attempts"] == 1


def test_the_amazon_ads_resource_hands_out_typed_clients_sharing_one_login():
    ads = AmazonAdsApi(client_id="id", client_secret="secret", refresh_token="token")

    amc = ads.amc("amc1", "ENTITY1", "ATVPDKIKX0DER")
    adm = ads.adm("amzn1.ads-account.g.x", "adv-1")
    dsp = ads.dsp(42)

    assert (type(amc), type(adm), type(dsp)) == (AmcClient, AdmClient, DspClient)
    assert amc.api is adm.api is dsp.api is ads.client()
    assert ads.dsp(42, region="EU").api is not dsp.api
