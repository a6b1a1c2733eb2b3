"""Amazon-authored AMC requests replayed exactly as written against the sandbox, with plain `requests`.

Sources (quoted in the conformance notes): the AWS Marketing Cloud uploader
(aws-solutions/amazon-marketing-cloud-uploader-from-aws: `share/tasks.py` headers,
`tests/integration_test/test_api_integration.py` dataset bodies, `amc_uploader.py` upload body,
`api/app.py` paging) and Amazon's Postman collection (amzn/ads-advanced-tools-docs) for rule-based
audiences.
"""

import gzip
import json

import polars as pl
import pytest
import requests

from ..sandbox.conftest import BUCKET, INSTANCE, s3_client, sha, wait

ADVERTISER, MARKETPLACE = "ENTITY1SANDBOX", "ATVPDKIKX0DER"


def uploader_headers(ads_client) -> dict[str, str]:
    """`AMCRequests.process_request`'s headers, as the uploader sends them on every ADU call."""
    return {
        "Amazon-Advertising-API-ClientId": ads_client.client_id,
        "Authorization": f"Bearer {ads_client.access_token()}",
        "Content-Type": "application/json",
        "x-amzn-service-name": "amazon-marketing-cloud-uploader-from-aws",
        "x-amzn-service-version": "v3.0.14",
        "Amazon-Advertising-API-AdvertiserId": ADVERTISER,
        "Amazon-Advertising-API-MarketplaceId": MARKETPLACE,
    }


def get_test_columns(is_dimension: bool) -> list[dict]:
    """The integration test's `get_test_columns`, with its `get_time_stamp_data_set_type`."""
    time_stamp = (
        {"dataType": "STRING"} if is_dimension else {"dataType": "TIMESTAMP", "isMainEventTime": True}
    )
    return [
        {
            "name": "user_id",
            "description": "The customer resolved id",
            "dataType": "STRING",
            "nullable": True,
            "isMainUserId": True,
            "columnType": "DIMENSION",
        },
        {
            "name": "user_type",
            "description": "The customer resolved type",
            "dataType": "STRING",
            "nullable": True,
            "isMainUserIdType": True,
            "columnType": "DIMENSION",
        },
        {
            "name": "first_name",
            "description": "hashed First name",
            "dataType": "STRING",
            "externalUserIdType": {"hashedPii": "FIRST_NAME"},
            "nullable": True,
            "columnType": "DIMENSION",
        },
        {
            "name": "last_name",
            "description": "hashed Last name",
            "dataType": "STRING",
            "externalUserIdType": {"hashedPii": "LAST_NAME"},
            "nullable": True,
            "columnType": "DIMENSION",
        },
        {
            "name": "email",
            "description": "hashed Email",
            "dataType": "STRING",
            "externalUserIdType": {"hashedPii": "EMAIL"},
            "nullable": True,
            "columnType": "DIMENSION",
        },
        {"name": "timestamp", "description": "Timestamp", "columnType": "DIMENSION", **time_stamp},
        {
            "name": "product_quantity",
            "description": "Product quantity",
            "dataType": "STRING",
            "columnType": "METRIC",
        },
        {
            "name": "product_name",
            "description": "Product name",
            "dataType": "STRING",
            "columnType": "DIMENSION",
        },
    ]


def create_data_set_body(data_set_id: str, is_dimension: bool) -> dict:
    """`test_create_data_set`'s `{"dataSet": {...}}`. `fileFormat` and `compressionFormat` are not in
    the definition's DataSet: Amazon ignores keys it does not define, and so does the sandbox."""
    return {
        "dataSet": {
            "dataSetId": data_set_id,
            "fileFormat": "CSV",
            "countryCode": "US",
            "compressionFormat": "GZIP",
            "columns": get_test_columns(is_dimension),
            "description": f"AMCUFA Integration Tests @ 2025-10-02 00:00:00 UTC for {data_set_id}.",
            **({} if is_dimension else {"period": "P1D"}),
        }
    }


def adu(sandbox, path: str) -> str:
    return f"{sandbox.ads_url}/amc/advertiserData/{INSTANCE}{path}"


@pytest.mark.parametrize("is_dimension", [True, False], ids=["DIMENSION", "FACT"])
def test_the_uploaders_dataset_is_created_as_written(sandbox, ads_client, is_dimension):
    data_set_id = "amcufa_dimension" if is_dimension else "amcufa_fact"
    response = requests.post(
        adu(sandbox, "/dataSets"),
        headers=uploader_headers(ads_client),
        data=json.dumps(create_data_set_body(data_set_id, is_dimension)),
        timeout=10,
    )
    # The uploader's UI counts creation as done only when the answer is exactly this.
    assert response.status_code == 200, response.text
    assert response.json() == {"dataSetId": data_set_id, "instanceId": INSTANCE}
    described = requests.get(
        adu(sandbox, f"/dataSets/{data_set_id}"), headers=uploader_headers(ads_client), timeout=10
    )
    columns = described.json()["dataSet"]["columns"]
    assert [c["name"] for c in columns][:2] == ["user_id", "user_type"]
    assert columns[0]["isMainUserId"] is True and columns[0]["description"] == "The customer resolved id"


def test_the_uploaders_upload_and_its_list_paging_run_as_written(sandbox, ads_client):
    headers = uploader_headers(ads_client)
    requests.post(
        adu(sandbox, "/dataSets"),
        headers=headers,
        data=json.dumps(create_data_set_body("amcufa_fact", False)),
        timeout=10,
    )
    for i in range(100):  # more than a page of datasets
        body = create_data_set_body(f"amcufa_dim_{i:03d}", True)
        assert requests.post(adu(sandbox, "/dataSets"), headers=headers, data=json.dumps(body), timeout=10).ok
    s3 = s3_client(sandbox)
    s3.create_bucket(Bucket=BUCKET)
    frame = pl.DataFrame(
        {
            "first_name": [sha(f"first{i}") for i in range(4)],
            "last_name": [sha(f"last{i}") for i in range(4)],
            "email": [sha(f"user{i}@example.com") for i in range(4)],
            "timestamp": ["2025-03-01T10:00:00Z"] * 4,
            "product_quantity": ["1"] * 4,
            "product_name": ["tea"] * 4,
        }
    )
    # Glue writes the files and the manifest without explicit SSE, then tags them for the instance.
    key = "amc/amcufa_fact/ADDITIVE/CSV/null/amcsandbox01/manifest.txt"
    s3.put_object(Bucket=BUCKET, Key="amc/part-0.csv.gz", Body=gzip.compress(frame.write_csv().encode()))
    s3.put_object(Bucket=BUCKET, Key=key, Body=f"s3://{BUCKET}/amc/part-0.csv.gz".encode())
    for tagged in ("amc/part-0.csv.gz", key):
        s3.put_object_tagging(
            Bucket=BUCKET, Key=tagged, Tagging={"TagSet": [{"Key": "instanceId", "Value": INSTANCE}]}
        )
    # `_start_upload`'s body; the key's country segment is "null", so `countryCode` is JSON null.
    data = {
        "countryCode": json.loads("null"),
        "updateStrategy": "ADDITIVE",
        "compressionFormat": "GZIP",
        "dataSource": {"sourceS3Bucket": BUCKET, "sourceManifestS3Key": key},
    }
    data["fileFormat"] = {"csvDataFormat": {"fieldDelimiter": ","}}
    started = requests.post(
        adu(sandbox, "/uploads/amcufa_fact"), headers=headers, data=json.dumps(data), timeout=10
    )
    assert started.status_code == 200, started.text
    upload_id = started.json()["uploadId"]
    status = wait(
        lambda: requests.get(
            adu(sandbox, f"/uploads/amcufa_fact/{upload_id}"), headers=headers, timeout=10
        ).json()["upload"]
    )
    assert status["status"] == "SUCCESS" and status["metrics"] == {"OutputRowCount": 4}, status

    # `list_datasets`: the first call without parameters, then `nextToken` as a query parameter,
    # `while 'nextToken' in response_json` (it ends only if the last page has no such key).
    response_json = requests.post(adu(sandbox, "/dataSets/list"), headers=headers, data="", timeout=10).json()
    datasets = response_json.get("dataSets", [])
    pages = 1
    while "nextToken" in response_json:
        response_json = requests.post(
            adu(sandbox, "/dataSets/list"),
            headers=headers,
            data="",
            params={"nextToken": response_json["nextToken"]},
            timeout=10,
        ).json()
        datasets.extend(response_json.get("dataSets", []))
        pages += 1
    assert (pages, len(datasets)) == (2, 101)
    uploads = requests.post(
        adu(sandbox, "/uploads/list"),
        headers=headers,
        data="",
        params={"dataSetId": "amcufa_fact"},
        timeout=10,
    ).json()
    assert [u["uploadId"] for u in uploads["uploads"]] == [upload_id] and "nextToken" not in uploads


# Postman's "Create rule-based audience" body, as published. `advertiserType` is not in the POST
# definition (only v1.2 answers carry it) and is ignored; `timeWindowRelative` is the string "TRUE"
# although the definition types it boolean: Amazon's own sample, so the sandbox takes it.
POSTMAN_AUDIENCE = """{
    "audienceName": "AudienceDemo",
    "audienceDescription": "Audience created for Audience Demo",
    "advertiserId": "11111111",
    "advertiserType": "xxxxxx",
    "query": "SELECT user_id FROM amazon_attributed_events_by_conversion_time_for_audiences WHERE conversion_event_subtype = 'shoppingCart'",
    "timeWindowStart": "2024-05-25T00:00:00Z",
    "timeWindowEnd": "2024-05-27T01:00:00Z",
    "refreshRateDays": 1,
    "timeWindowRelative": "TRUE"
}"""  # noqa: E501 (verbatim)


def test_postmans_rule_based_audience_calls_run_as_written(sandbox, ads_client):
    url = f"{sandbox.ads_url}/amc/audiences/query"
    headers = {
        "Amazon-Advertising-API-ClientId": ads_client.client_id,
        "Amazon-Advertising-API-EntityId": "11111111",
        "Amazon-Marketing-Cloud-Audience-InstanceId": INSTANCE,
        "Authorization": f"Bearer {ads_client.access_token()}",
    }
    # Postman's raw JSON body goes with the Content-Type it sets itself.
    created = requests.post(
        url, headers={**headers, "Content-Type": "application/json"}, data=POSTMAN_AUDIENCE, timeout=10
    )
    assert created.status_code == 200, created.text
    assert created.json()["status"] == "PENDING"
    execution_id = created.json()["audienceExecutionId"]
    v1_2 = {**headers, "Accept": "application/vnd.amcquerybasedaudience.v1.2+json"}
    audience = wait(lambda: requests.get(f"{url}/{execution_id}", headers=v1_2, timeout=10).json())
    assert audience["timeWindowRelative"] is True and audience["audienceType"] == "RULE_BASED"
    # Few shoppingCart events in the synthetic window: FAILED, which is what DELETE removes.
    assert audience["status"] == "FAILED" and audience["deletable"] is True
    listed = requests.get(url, headers=v1_2, params={"maxResults": 100, "nextToken": ""}, timeout=10)
    assert listed.status_code == 200 and listed.headers["Content-Type"] == v1_2["Accept"]
    deleted = requests.delete(
        f"{url}/{execution_id}",
        headers={**headers, "Accept": "application/vnd.amcquerybasedaudience.v1+json"},
        timeout=10,
    )
    assert deleted.status_code == 204 and deleted.content == b""
