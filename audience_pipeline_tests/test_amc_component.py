"""The AMC component end to end against the sandbox: what the datasets hold, what the sensor records."""

import gzip
import hashlib
import time

import boto3
import dagster as dg
import duckdb
import pytest
from moto.sts.models import sts_backends
from pydantic import ValidationError

from audience_pipeline.amc.jobs import AmcJob
from audience_pipeline.clients.amc import AmcClient
from audience_pipeline.components.amc import (
    AmazonMarketingCloudComponent,
    DatasetUpload,
    IdentityDeletion,
    RuleBasedAudience,
)
from audience_pipeline.components.amc_status import AUDIENCE_SIZE_CHECK, JOB_CHECK, JOB_METADATA_KEY
from audience_pipeline.resources.duckdb_source import DuckDBSource
from audience_pipeline.sandbox.aws import create_amc_bucket

from .conftest import add_fault, amazon_ads_resource, clear_faults, journal, wired_resources

INSTANCE = "amcsandbox01"
BUCKET = "amc-test-uploads"
EMAIL = {"hashedPii": "EMAIL"}
CUSTOMERS = {
    "dataSetId": "customers",
    "columns": [
        {"name": "customer_id", "columnType": "DIMENSION", "dataType": "STRING", "nullable": False},
        {"name": "email", "columnType": "DIMENSION", "dataType": "STRING", "externalUserIdType": EMAIL},
        {"name": "tier", "columnType": "DIMENSION", "dataType": "STRING"},
    ],
}
PURCHASES = {
    "dataSetId": "purchases",
    "period": "P1D",
    "columns": [
        {"name": "email", "columnType": "DIMENSION", "dataType": "STRING", "externalUserIdType": EMAIL},
        {
            "name": "purchase_time",
            "columnType": "DIMENSION",
            "dataType": "TIMESTAMP",
            "isMainEventTime": True,
            "nullable": False,
        },
        {"name": "amount", "columnType": "METRIC", "dataType": "DECIMAL", "nullable": False},
    ],
}
CUSTOMERS_SQL = "SELECT customer_id, email, tier FROM customers"


def sha(value: str) -> str:
    return hashlib.sha256(value.encode()).hexdigest()


def raw_email(i: int) -> str:
    # Mixed case and spaces: what arrives must be the hash of the normalized address.
    return f"  User{i}@Example.COM "


def write_source(path, customers: int) -> None:
    with duckdb.connect(str(path)) as conn:
        conn.execute("DROP TABLE IF EXISTS customers")
        conn.execute(
            "CREATE TABLE customers AS SELECT 'c' || i AS customer_id, "
            "'  User' || i || '@Example.COM ' AS email, CASE WHEN i % 2 = 0 THEN 'gold' END AS tier "
            f"FROM range({customers}) t(i)"
        )
        conn.execute("DROP TABLE IF EXISTS purchases")
        conn.execute(
            "CREATE TABLE purchases AS SELECT '  User' || (i % 50) || '@Example.COM ' AS email, "
            "TIMESTAMP '2025-03-01 10:00:00' + INTERVAL (i) MINUTE AS purchase_time, "
            f"i * 1.5 AS amount FROM range({customers}) t(i)"
        )


class Amc:
    """One AMC component over a small source, materialized on an ephemeral instance against the sandbox."""

    def __init__(self, tmp_path, sandbox, customers: int = 20, **settings):
        self.sandbox = sandbox
        self.source_path = tmp_path / "source.duckdb"
        write_source(self.source_path, customers)
        defaults = {
            "instance_id": INSTANCE,
            "bucket": BUCKET,
            "path_prefix": "amc/",
            "file_name_prefix": "test-",
            "poll_interval_seconds": 0.05,
        }
        self.component = AmazonMarketingCloudComponent(**{**defaults, **settings})
        self.instance = dg.DagsterInstance.ephemeral()
        self.s3 = boto3.client("s3", endpoint_url=sandbox.aws_url, region_name="us-east-1")
        create_amc_bucket(self.s3, BUCKET, INSTANCE)
        self.cursor: str | None = None
        self.resources = {
            "source": DuckDBSource(database=str(self.source_path)),
            "amazon_ads": amazon_ads_resource(),
            **wired_resources("s3"),
        }
        self.defs = dg.Definitions.merge(
            dg.build_defs_for_component(self.component), dg.Definitions(resources=self.resources)
        )

    def run(self, key: dg.AssetKey, dry_run: bool = False, raise_on_error: bool = True):
        assets_def = self.defs.resolve_assets_def(key)
        return dg.materialize(
            [assets_def],
            instance=self.instance,
            run_config={"ops": {assets_def.op.name: {"config": {"dry_run": dry_run}}}},
            raise_on_error=raise_on_error,
        )

    def tick(self):
        sensor = self.defs.resolve_sensor_def(f"amc_{INSTANCE}_job_status")
        context = dg.build_sensor_context(
            instance=self.instance,
            cursor=self.cursor,
            resources={key: self.resources[key] for key in ("amazon_ads", "s3")},
        )
        result = sensor.evaluate_tick(context)
        self.cursor = result.cursor
        return result

    def follow(self, ticks: int = 200) -> list:
        """Sensor ticks until every job the sensor knows of is final; the events it recorded."""
        events = []
        for _ in range(ticks):
            result = self.tick()
            events += result.asset_events
            if '"pending": []' in (self.cursor or ""):
                return events
            time.sleep(0.03)
        raise AssertionError("the sensor never saw the AMC work finish")

    def stored_rows(self, dataset_id: str):
        state = self.sandbox.ads.state
        table = state.family("amc")["instances"][INSTANCE]["dataSets"][dataset_id]["_table"]
        return state.cursor().sql(f"SELECT * FROM {table}").pl()

    def objects(self) -> list[str]:
        return [o["Key"] for o in self.s3.list_objects_v2(Bucket=BUCKET).get("Contents", [])]

    def calls(self, method: str, fragment: str) -> list[dict]:
        return [e for e in journal(self.sandbox.ads_url) if e["method"] == method and fragment in e["path"]]


def metadata(result: dg.ExecuteInProcessResult, key: dg.AssetKey) -> dict:
    [event] = [e for e in result.get_asset_materialization_events() if e.asset_key == key]
    return {k: getattr(v, "value", v) for k, v in event.materialization.metadata.items()}


def checks(result_or_events) -> dict[str, dg.AssetCheckEvaluation]:
    if isinstance(result_or_events, dg.ExecuteInProcessResult):
        found = result_or_events.get_asset_check_evaluations()
    else:
        found = [e for e in result_or_events if isinstance(e, dg.AssetCheckEvaluation)]
    return {e.check_name: e for e in found}


@pytest.fixture(autouse=True)
def environment(sandbox_env):
    return sandbox_env


def customers_upload(**settings) -> DatasetUpload:
    return DatasetUpload(
        **{
            "dataset_id": "customers",
            "query": CUSTOMERS_SQL,
            "create_dataset": True,
            "dataset_definition": CUSTOMERS,
            **settings,
        }
    )


# --- uploads ------------------------------------------------------------------------------------------


def test_upload_creates_the_dataset_once_and_the_sensor_records_its_success(tmp_path, sandbox):
    amc = Amc(
        tmp_path,
        sandbox,
        uploads=[customers_upload(update_strategy="FULL_REPLACE", clean_uploaded_files=True)],
    )
    key = dg.AssetKey(["amc", "dataset", "customers"])

    first = metadata(amc.run(key), key)
    assert first["rows_written"] == 20 and first["dataset_created"] is True
    assert first[JOB_METADATA_KEY]["final"] is False
    assert amc.objects(), "the parts and manifest wait in S3 until AMC has read them"

    events = amc.follow()
    [observation] = [e for e in events if isinstance(e, dg.AssetObservation)]
    assert observation.metadata["amc_status"].value == "SUCCESS"
    assert observation.metadata["output_row_count"].value == 20
    assert checks(events)[JOB_CHECK].passed
    assert amc.objects() == [], "clean_uploaded_files deletes parts and manifest after success"

    rows = amc.stored_rows("customers").sort("customer_id")
    assert rows.height == 20
    by_id = dict(zip(rows["customer_id"], rows["email"], strict=True))
    assert by_id["c7"] == sha("user7@example.com")
    assert rows.filter(rows["customer_id"] == "c1")["tier"].item() is None

    amc.run(key)
    amc.follow()
    assert len(amc.calls("POST", "/dataSets")) == 1, "the dataset is reused after the first run"
    assert amc.stored_rows("customers").height == 20, "FULL_REPLACE replaced the rows"


def test_additive_appends_while_full_replace_replaces(tmp_path, sandbox):
    key = dg.AssetKey(["amc", "dataset", "customers"])
    additive = Amc(
        tmp_path, sandbox, uploads=[customers_upload(update_strategy="ADDITIVE", wait_until_finish=True)]
    )
    for expected in (20, 40):
        result = additive.run(key)
        assert metadata(result, key)["output_row_count"] == 20
        assert checks(result)[JOB_CHECK].passed
        assert additive.stored_rows("customers").height == expected

    (tmp_path / "replace").mkdir()
    # Seed 003 spells the strategies with a space.
    replace = Amc(
        tmp_path / "replace",
        sandbox,
        uploads=[customers_upload(update_strategy="FULL REPLACE", wait_until_finish=True)],
    )
    result = replace.run(key)
    assert metadata(result, key)["update_strategy"] == "FULL_REPLACE"
    assert replace.stored_rows("customers").height == 20


def test_a_schema_mismatch_fails_before_anything_is_written(tmp_path, sandbox):
    # The FACT dataset's main event time is missing from the query, and amount is text.
    upload = DatasetUpload(
        dataset_id="purchases",
        query="SELECT email, CAST(amount AS VARCHAR) AS amount FROM purchases",
        create_dataset=True,
        dataset_definition=PURCHASES,
    )
    amc = Amc(tmp_path, sandbox, uploads=[upload])
    result = amc.run(upload.asset_key, raise_on_error=False)

    assert not result.success
    message = str(result.get_step_failure_events()[0].event_specific_data.error)
    assert "purchase_time: missing from the query" in message and "main event time" in message
    assert "amount" in message and "DECIMAL" in message
    assert amc.objects() == []
    assert amc.calls("POST", "/dataSets") == [] and amc.calls("POST", "/uploads") == []


def test_overlap_strategies_are_refused_for_a_dimension_dataset(tmp_path, sandbox, ads_client):
    with pytest.raises(ValidationError, match="update_strategy: OVERLAP_REPLACE .* DIMENSION"):
        customers_upload(update_strategy="OVERLAP_REPLACE")

    # Without a configured definition the refusal comes from the dataset AMC holds, before writing.
    AmcClient(ads_client, INSTANCE, "ENTITY1SANDBOX", "ATVPDKIKX0DER").create_dataset(CUSTOMERS)
    upload = DatasetUpload(dataset_id="customers", query=CUSTOMERS_SQL, update_strategy="OVERLAP_KEEP")
    amc = Amc(tmp_path, sandbox, uploads=[upload])
    result = amc.run(upload.asset_key, raise_on_error=False)
    assert not result.success
    assert "OVERLAP_KEEP" in str(result.get_step_failure_events()[0].event_specific_data.error)
    assert amc.objects() == [] and amc.calls("POST", "/uploads") == []


def test_overlap_replace_replaces_the_days_of_a_fact_dataset(tmp_path, sandbox):
    upload = DatasetUpload(
        dataset_id="purchases",
        query="SELECT email, purchase_time, amount FROM purchases",
        create_dataset=True,
        dataset_definition=PURCHASES,
        update_strategy="OVERLAP_REPLACE",
        wait_until_finish=True,
    )
    amc = Amc(tmp_path, sandbox, uploads=[upload])
    amc.run(upload.asset_key)
    amc.run(upload.asset_key)
    rows = amc.stored_rows("purchases")
    assert rows.height == 20, "the second upload replaced the day the first one filled"
    assert set(rows["email"]) == {sha(f"user{i}@example.com") for i in range(20)}


def test_the_dataset_amc_holds_decides_what_is_hashed(tmp_path, sandbox, ads_client):
    # AMC's dataset hashes email; the configured definition forgot to say so. Raw PII must not go.
    AmcClient(ads_client, INSTANCE, "ENTITY1SANDBOX", "ATVPDKIKX0DER").create_dataset(CUSTOMERS)
    forgetful = {
        **CUSTOMERS,
        "columns": [{k: v for k, v in c.items() if k != "externalUserIdType"} for c in CUSTOMERS["columns"]],
    }
    upload = customers_upload(dataset_definition=forgetful, wait_until_finish=True)
    amc = Amc(tmp_path, sandbox, uploads=[upload])

    result = amc.run(upload.asset_key)
    assert checks(result)[JOB_CHECK].passed
    assert sha("user3@example.com") in set(amc.stored_rows("customers")["email"])


def test_a_raw_pii_upload_fails_in_amc_and_the_sensor_reports_amcs_message(tmp_path, sandbox, ads_client):
    upload = customers_upload()
    amc = Amc(tmp_path, sandbox, uploads=[upload])
    client = AmcClient(ads_client, INSTANCE, "ENTITY1SANDBOX", "ATVPDKIKX0DER")
    client.create_dataset(CUSTOMERS)
    # Files someone else wrote with raw emails, uploaded as if a run of this asset had started it.
    body = gzip.compress(b"customer_id,email,tier\nc1,user1@example.com,gold\n")
    amc.s3.put_object(
        Bucket=BUCKET,
        Key="raw/part.csv.gz",
        Body=body,
        Tagging=f"instanceId={INSTANCE}",
        ServerSideEncryption="AES256",
    )
    upload_id = client.start_upload(
        "customers",
        bucket=BUCKET,
        file_key="raw/part.csv.gz",
        compression="GZIP",
        file_format={"csvDataFormat": {"fieldDelimiter": ","}},
    )
    job = AmcJob("upload", (upload_id,), "customers")
    amc.instance.report_runless_asset_event(
        dg.AssetMaterialization(
            upload.asset_key,
            metadata={JOB_METADATA_KEY: dg.MetadataValue.json({**job.to_json(), "final": False})},
        )
    )

    events = amc.follow()
    check = checks(events)[JOB_CHECK]
    assert not check.passed
    assert "FAILED" in check.description and "email" in check.description
    assert "user1@example.com" not in check.description


def test_a_zero_row_query_uploads_nothing_and_says_so(tmp_path, sandbox):
    upload = customers_upload(query=f"{CUSTOMERS_SQL} WHERE false")
    amc = Amc(tmp_path, sandbox, uploads=[upload])
    result = amc.run(upload.asset_key)
    found = metadata(result, upload.asset_key)
    assert found["rows_in"] == 0 and found["uploaded"] is False
    assert amc.calls("POST", "/uploads") == [] and amc.objects() == []


# --- dry run ------------------------------------------------------------------------------------------


def test_a_dry_run_reports_rows_files_and_calls_without_writing_or_calling(tmp_path, sandbox):
    deletion = IdentityDeletion(name="leavers", query="SELECT email FROM customers")
    amc = Amc(tmp_path, sandbox, uploads=[customers_upload()], deletions=[deletion])
    upload_key = dg.AssetKey(["amc", "dataset", "customers"])

    found = metadata(amc.run(upload_key, dry_run=True), upload_key)
    assert found["dry_run"] is True and found["rows_written"] == 20 and found["parts"] == 1
    assert any("POST /uploads/customers" in call for call in found["planned_calls"])
    deleted = metadata(amc.run(deletion.asset_key, dry_run=True), deletion.asset_key)
    assert deleted["requests"] == 1

    assert amc.objects() == []
    assert journal(sandbox.ads_url) == [], "a dry run with a configured definition calls nothing"


# --- deletion -----------------------------------------------------------------------------------------


def test_a_deletion_goes_in_requests_of_1000_and_the_sensor_follows_it_to_succeeded(tmp_path, sandbox):
    deletion = IdentityDeletion(name="leavers", query="SELECT email FROM customers WHERE customer_id <> 'c0'")
    amc = Amc(
        tmp_path,
        sandbox,
        customers=2501,
        uploads=[customers_upload(wait_until_finish=True)],
        deletions=[deletion],
    )
    amc.run(dg.AssetKey(["amc", "dataset", "customers"]))
    assert amc.stored_rows("customers").height == 2501

    found = metadata(amc.run(deletion.asset_key), deletion.asset_key)
    assert found["requests"] == 3
    sent = amc.calls("POST", "/userDeletionRequest")
    assert [len(call["body"]["targetIdentities"]) for call in sent] == [1000, 1000, 500]
    assert "@" not in str(sent), "only hashes reach AMC"

    events = amc.follow()
    assert checks(events)[JOB_CHECK].passed
    [observation] = [e for e in events if isinstance(e, dg.AssetObservation)]
    assert observation.metadata["amc_status"].value == "SUCCEEDED"
    assert list(amc.stored_rows("customers")["customer_id"]) == ["c0"]


# --- rule-based audiences -----------------------------------------------------------------------------


def audience(name: str, **settings) -> RuleBasedAudience:
    return RuleBasedAudience(
        **{
            "audience_name": name,
            "advertiser_id": "5551234567890",
            "sql": "SELECT user_id FROM customers",
            "time_window_start": "2025-01-01T00:00:00",
            "time_window_end": "2025-06-01T00:00:00Z",
            "refresh_rate_days": 7,
            **settings,
        }
    )


@pytest.mark.parametrize(("customers", "big_enough"), [(2500, True), (1500, False)])
def test_an_audience_is_checked_against_dsps_2000_user_minimum(tmp_path, sandbox, customers, big_enough):
    target = audience("buyers")
    amc = Amc(
        tmp_path,
        sandbox,
        customers=customers,
        uploads=[customers_upload(wait_until_finish=True)],
        audiences=[target],
    )
    assert amc.defs.resolve_assets_def(target.asset_key).asset_deps[target.asset_key] == {
        dg.AssetKey(["amc", "dataset", "customers"])
    }, "the audience reads the dataset its SQL names"
    amc.run(dg.AssetKey(["amc", "dataset", "customers"]))

    found = metadata(amc.run(target.asset_key), target.asset_key)
    assert found["action"] == "created"
    results = checks(amc.follow())
    assert results[JOB_CHECK].passed is big_enough
    size = results[AUDIENCE_SIZE_CHECK]
    assert size.passed is big_enough
    if big_enough:
        assert size.metadata["audience_count"].value == 2500
    else:
        assert "2,000" in size.description and "minimum" in results[JOB_CHECK].description


def test_a_rerun_finds_the_audience_by_name_instead_of_making_another(tmp_path, sandbox):
    target = audience("buyers", wait_until_finish=True)
    amc = Amc(
        tmp_path,
        sandbox,
        customers=2100,
        uploads=[customers_upload(wait_until_finish=True)],
        audiences=[target],
    )
    amc.run(dg.AssetKey(["amc", "dataset", "customers"]))

    first = amc.run(target.asset_key)
    assert checks(first)[AUDIENCE_SIZE_CHECK].passed
    second = metadata(amc.run(target.asset_key), target.asset_key)
    assert second["action"] == "reused"
    assert len(amc.calls("POST", "/amc/audiences/query")) == 1


# --- faults -------------------------------------------------------------------------------------------


def test_lost_answers_neither_lose_nor_double_an_upload(tmp_path, sandbox):
    add_fault(sandbox.ads_url, route=f"POST /amc/advertiserData/{INSTANCE}/dataSets", status=503, count=1)
    add_fault(
        sandbox.ads_url, route=f"POST /amc/advertiserData/{INSTANCE}/uploads/customers", status=500, count=1
    )
    add_fault(
        sandbox.ads_url,
        route=f"GET /amc/advertiserData/{INSTANCE}/uploads",
        status=429,
        count=2,
        retry_after=0,
    )
    amc = Amc(
        tmp_path, sandbox, uploads=[customers_upload(update_strategy="ADDITIVE", wait_until_finish=True)]
    )

    result = amc.run(dg.AssetKey(["amc", "dataset", "customers"]))
    assert checks(result)[JOB_CHECK].passed
    assert amc.stored_rows("customers").height == 20, "uploaded exactly once"
    statuses = [call["status"] for call in amc.calls("POST", "/uploads/customers")]
    assert statuses == [500, 200]


def test_a_sensor_poll_that_fails_keeps_following_the_job(tmp_path, sandbox):
    amc = Amc(tmp_path, sandbox, uploads=[customers_upload()])
    amc.run(dg.AssetKey(["amc", "dataset", "customers"]))
    add_fault(sandbox.ads_url, route=f"GET /amc/advertiserData/{INSTANCE}/uploads", status=500)
    first = amc.tick()
    assert first.asset_events == [] and "customers" in amc.cursor
    assert first.skip_message == "waiting for amc/dataset/customers (upload: status poll failed)"
    clear_faults(sandbox.ads_url)
    assert checks(amc.follow())[JOB_CHECK].passed


# --- settings -----------------------------------------------------------------------------------------


def test_assume_role_authentication_reaches_the_bucket(tmp_path, sandbox):
    amc = Amc(
        tmp_path,
        sandbox,
        authentication={"method": "assume_role", "account_id": "123456789012", "role_name": "amc-upload"},
        uploads=[customers_upload(wait_until_finish=True)],
    )
    result = amc.run(dg.AssetKey(["amc", "dataset", "customers"]))
    assert checks(result)[JOB_CHECK].passed
    # moto serves STS in this process: the role assumed is the one the settings name.
    roles = [
        role
        for backend in sts_backends.values()
        for region in backend.values()
        for role in region.assumed_roles
    ]
    assert any(role.role_arn == "arn:aws:iam::123456789012:role/amc-upload" for role in roles)


@pytest.mark.parametrize(
    ("settings", "named"),
    [
        ({"uploads": [customers_upload()], "bucket": None}, "bucket"),
        (
            {"deletions": [IdentityDeletion(name="x", query="SELECT 1")], "file_name_prefix": "_hidden"},
            "file_name_prefix",
        ),
        ({"deletions": [IdentityDeletion(name="x", query="SELECT 1")], "s3_region": "mars"}, "s3_region"),
        ({}, "configure at least one target"),
        (
            {
                "deletions": [IdentityDeletion(name="x", query="SELECT 1")],
                "authentication": {"method": "assume_role"},
            },
            "account_id",
        ),
        (
            {
                "deletions": [IdentityDeletion(name="x", query="SELECT 1")],
                "authentication": {"access_key_id": "AKIAABCDEFGHIJKLMNOP", "secret_access_key": "S"},
            },
            "name of an environment variable",
        ),
    ],
)
def test_bad_settings_fail_at_load_time_naming_the_setting(settings, named):
    with pytest.raises(ValidationError, match=named):
        AmazonMarketingCloudComponent(**{"instance_id": INSTANCE, "bucket": BUCKET, **settings})


@pytest.mark.parametrize(
    ("settings", "named"),
    [
        ({"create_dataset": True, "dataset_definition": None}, "dataset_definition: required"),
        ({"dataset_definition": {**CUSTOMERS, "dataSetId": "other"}}, "dataSetId 'other' is not dataset_id"),
        ({"schedule": "every day"}, "cron"),
        ({"dataset_id": "Customers"}, "lowercase"),
        ({"country_code": "Narnia"}, "country"),
    ],
)
def test_bad_upload_settings_fail_at_load_time(settings, named):
    with pytest.raises(ValidationError, match=named):
        customers_upload(**settings)


def test_the_project_definitions_load_every_amc_target():
    from audience_pipeline.definitions import defs

    definitions = defs()
    keys = {key.to_user_string() for key in definitions.resolve_all_asset_keys()}
    assert {"amc/dataset/sample_customer_identities", "amc/dataset/sample_purchases"} <= keys
    assert {"amc/deletion/amazon_user_data_denied", "amc/audience/sample_repeat_purchasers"} <= keys
    assert (
        definitions.resolve_sensor_def(f"amc_{INSTANCE}_job_status").default_status
        == dg.DefaultSensorStatus.RUNNING
    )


def test_a_bucket_that_cannot_be_written_fails_the_run_naming_it(tmp_path, sandbox):
    amc = Amc(tmp_path, sandbox, bucket="no-such-bucket", uploads=[customers_upload()])
    result = amc.run(dg.AssetKey(["amc", "dataset", "customers"]), raise_on_error=False)
    message = str(result.get_step_failure_events()[0].event_specific_data.error)
    assert "writing the upload files to s3://no-such-bucket failed" in message
    assert amc.calls("POST", "/uploads") == []
