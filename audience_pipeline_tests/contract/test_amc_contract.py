"""AmcClient and the sandbox held to Amazon's AMC definitions: every data upload, rule-based audience
and account operation, recorded over real HTTP and checked with closed schemas both ways."""

import json
from dataclasses import replace

import pytest

from audience_pipeline.clients.ads_api import AmazonAdsApiError
from audience_pipeline.clients.amc import AmcClient, csv_format, list_amc_accounts

from ..sandbox.conftest import (
    BUCKET,
    INSTANCE,
    dimension_dataset,
    fact_dataset,
    purchases,
    s3_client,
    sha,
    upload_and_wait,
    wait,
)
from .openapi import family_operations, operation_of, problems

WINDOW = {"time_window_start": "2025-01-01T00:00:00Z", "time_window_end": "2025-03-31T00:00:00Z"}
GOOD = "SELECT user_id FROM dsp_impressions_for_audiences"


@pytest.fixture
def amc(recorded) -> AmcClient:
    return AmcClient(recorded.api, INSTANCE, "ENTITY1SANDBOX", "ATVPDKIKX0DER")


@pytest.fixture
def s3(sandbox):
    """The sandbox's S3, writing objects as AMC reads them (tagged with the instance)."""
    client = s3_client(sandbox)
    client.create_bucket(Bucket=BUCKET)
    return client


def covered(recorded, family: str) -> set[str]:
    """The operations of `family` no exchange exercised."""
    seen = {op.key for e in recorded.exchanges if (op := operation_of(e.method, e.path))}
    return family_operations(family) - seen


def test_data_upload_conforms_over_every_operation(recorded, amc, s3):
    for i in range(101):  # more than a page of datasets
        amc.create_dataset(dimension_dataset(f"customers_{i:03d}"))
    amc.create_dataset(fact_dataset())
    assert len(amc.list_datasets()) == 102
    lists = [e for e in recorded.exchanges if e.path.endswith("/dataSets/list")]
    assert len(lists) == 2 and "nextToken" not in json.loads(lists[-1].response_body)
    assert amc.get_dataset("purchases")["dataSetId"] == "purchases"
    assert amc.get_dataset("nope") is None  # a documented 404
    s3.put_object(
        Bucket=BUCKET, Key="p.csv", Body=purchases(3).write_csv().encode(), Tagging=f"instanceId={INSTANCE}"
    )
    upload = upload_and_wait(amc, "purchases", file_key="p.csv", file_format=csv_format(), country_code="US")
    assert upload["status"] == "SUCCESS", upload
    assert [u["uploadId"] for u in amc.list_uploads("purchases")] == [upload["uploadId"]]
    request_id = amc.request_user_deletion([{"hashedIdentity": {"EMAIL": sha("user1@example.com")}}])
    assert wait(lambda: amc.get_user_deletion(request_id))["status"] == "SUCCEEDED"
    amc.delete_dataset("customers_000")
    assert problems(recorded.exchanges) == []
    assert covered(recorded, "amc_data_upload") == set()


def test_rule_based_audiences_conform_over_every_operation(recorded, amc):
    ids = [
        amc.create_audience(f"audience_{i:03d}", advertiser_id="123", query=GOOD, **WINDOW)
        for i in range(101)
    ]
    assert len(amc.list_audiences()) == 101
    lists = [e for e in recorded.exchanges if e.method == "GET" and e.path == "/amc/audiences/query"]
    assert len(lists) == 2 and "nextToken" not in json.loads(lists[-1].response_body)
    done = wait(lambda: amc.get_audience(ids[0]))
    assert done["status"] == "SUCCEEDED" and done["audienceCount"] == 5000
    with pytest.raises(AmazonAdsApiError) as error:  # a documented 400: only FAILED ones go
        amc.delete_audience(ids[0])
    assert error.value.status == 400
    broken = amc.create_audience("broken", advertiser_id="123", query="SELECT user_id FROM nope", **WINDOW)
    assert wait(lambda: amc.get_audience(broken))["status"] == "FAILED"
    amc.update_audience(broken, "broken", advertiser_id="123", query=GOOD, **WINDOW)
    assert wait(lambda: amc.get_audience(broken))["status"] == "SUCCEEDED"
    failing = amc.create_audience("small", advertiser_id="123", query="SELECT user_id FROM nope", **WINDOW)
    wait(lambda: amc.get_audience(failing))
    amc.delete_audience(failing)
    assert problems(recorded.exchanges) == []
    assert covered(recorded, "amc_rule_based_audiences") == set()


def test_accounts_conform(recorded, sandbox):
    many = [
        {"accountId": f"E{i}", "accountName": f"A {i}", "marketplaceId": "ATVPDKIKX0DER"} for i in range(150)
    ]
    sandbox.ads.state.family("amc")["accounts"] = many
    assert list_amc_accounts(recorded.api) == many
    assert "nextToken" not in json.loads(recorded.exchanges[-1].response_body)
    assert problems(recorded.exchanges) == []
    assert "GET /amc/accounts" not in covered(recorded, "amc_administration")


def test_a_missing_required_field_in_a_request_is_reported(recorded, amc):
    amc.create_dataset(fact_dataset())
    sent = next(e for e in recorded.exchanges if e.path.endswith("/dataSets"))
    body = json.loads(sent.request_body)
    del body["dataSet"]["columns"]
    found = problems([replace(sent, request_body=json.dumps(body).encode())])
    assert any("request" in p and "'columns' is a required property" in p for p in found), found


def test_an_unknown_field_in_an_answer_is_reported(recorded, amc):
    execution_id = amc.create_audience("x", advertiser_id="1", query=GOOD, **WINDOW)
    amc.get_audience(execution_id)
    answer = recorded.exchanges[-1]
    body = {**json.loads(answer.response_body), "invented": 1}
    found = problems([replace(answer, response_body=json.dumps(body).encode())])
    assert any("Additional properties are not allowed ('invented'" in p for p in found), found
