"""AMC advertiser data upload against the sandbox over real HTTP: datasets, uploads from S3, deletion."""

import bz2
import gzip

import polars as pl
import pytest

from audience_pipeline.clients.ads_api import AmazonAdsApiError
from audience_pipeline.clients.amc import JSON_LINES, PARQUET, UPLOAD_MEDIA_TYPE, csv_format, succeeded

from ..conftest import add_fault, journal
from .conftest import (
    BUCKET,
    INSTANCE,
    dimension_dataset,
    fact_dataset,
    gzip_csv,
    parquet,
    purchases,
    s3_client,
    sha,
    stored_rows,
    upload_and_wait,
    wait,
)


def test_dataset_create_get_list_and_delete(amc, ads_client):
    for i in range(3):
        assert amc.create_dataset(dimension_dataset(f"customers_{i}")) == {
            "dataSetId": f"customers_{i}",
            "instanceId": INSTANCE,
        }
    assert amc.create_dataset(fact_dataset())["dataSetId"] == "purchases"
    got = amc.get_dataset("purchases")
    assert got["period"] == "P1D"
    # Columns default to nullable.
    assert [c["nullable"] for c in got["columns"]] == [True, True, False]
    assert [d["dataSetId"] for d in amc.list_datasets()] == [
        *(f"customers_{i}" for i in range(3)),
        "purchases",
    ]
    first = ads_client.request(
        "POST",
        f"/amc/advertiserData/{INSTANCE}/dataSets/list",
        params={"maxResults": 3},
        headers=amc._upload_headers,
    )
    assert len(first["dataSets"]) == 3 and first["nextToken"]
    last = ads_client.request(
        "POST",
        f"/amc/advertiserData/{INSTANCE}/dataSets/list",
        params={"maxResults": 3, "nextToken": first["nextToken"]},
        headers=amc._upload_headers,
    )
    # Amazon's uploader pages `while 'nextToken' in response`: the last page has no such key.
    assert len(last["dataSets"]) == 1 and "nextToken" not in last
    amc.delete_dataset("customers_1")
    assert amc.get_dataset("customers_1") is None
    assert len(amc.list_datasets()) == 3


@pytest.mark.parametrize(
    "change",
    [
        {"dataSetId": "Bad-Id"},
        {"columns": []},
        {"columns": [{"name": f"c{i}", "columnType": "DIMENSION", "dataType": "STRING"} for i in range(101)]},
        {"columns": [{"name": "c", "columnType": "DIMENSION", "dataType": "TEXT"}]},
        {"columns": [{"name": "c", "columnType": "DIMENSION", "dataType": "STRING", "consentType": "NOPE"}]},
        {
            "columns": [
                {"name": "c", "columnType": "DIMENSION", "dataType": "STRING", "externalUserIdType": {}}
            ]
        },
        {"period": "P1D"},
        {"countryCode": "usa"},
    ],
)
def test_invalid_datasets_are_400(amc, change):
    with pytest.raises(AmazonAdsApiError) as error:
        amc.create_dataset({**dimension_dataset(), **change})
    assert error.value.status == 400
    assert set(error.value.body) >= {"code", "details", "errors", "requestId"}


def test_fact_period_must_be_known_and_duplicates_are_400(amc):
    with pytest.raises(AmazonAdsApiError, match="period"):
        amc.create_dataset({**fact_dataset(), "period": "P1W"})
    amc.create_dataset(fact_dataset())
    with pytest.raises(AmazonAdsApiError, match="already exists") as error:
        amc.create_dataset(fact_dataset())
    assert error.value.status == 400


def test_account_headers_are_required(sandbox, ads_client):
    with pytest.raises(AmazonAdsApiError, match="AdvertiserId") as error:
        ads_client.request("POST", f"/amc/advertiserData/{INSTANCE}/dataSets/list")
    assert error.value.status == 400


# --- uploads ------------------------------------------------------------------------------------------


def test_gzip_csv_single_key_reaches_success(sandbox, amc, s3):
    amc.create_dataset(fact_dataset())
    s3.put_object(Bucket=BUCKET, Key="p/part-0.csv.gz", Body=gzip_csv(purchases(25)))
    upload = upload_and_wait(
        amc, "purchases", file_key="p/part-0.csv.gz", file_format=csv_format(), compression="GZIP"
    )
    assert succeeded(upload["status"]), upload
    assert upload["metrics"]["OutputRowCount"] == 25
    assert upload["countryCode"] == "US"
    assert upload["dataSource"] == {"sourceS3Bucket": BUCKET, "sourceFileS3Key": "p/part-0.csv.gz"}
    rows = stored_rows(sandbox, "purchases")
    assert rows.columns == ["email", "purchase_time", "amount", "user_id"]
    assert rows["user_id"].str.len_chars().to_list() == [16] * 25


@pytest.mark.parametrize(
    ("compression", "compress"),
    [
        # Two gzip members back to back, as a parallel compressor writes them: all rows are read.
        ("GZIP", lambda body: gzip.compress(body[:1000]) + gzip.compress(body[1000:])),
        ("BZIP", bz2.compress),
    ],
)
def test_compressed_files_are_read_whole(sandbox, amc, s3, compression, compress):
    amc.create_dataset(fact_dataset())
    s3.put_object(Bucket=BUCKET, Key="c/part-0", Body=compress(purchases(40).write_csv().encode()))
    upload = upload_and_wait(
        amc, "purchases", file_key="c/part-0", file_format=csv_format(), compression=compression
    )
    assert succeeded(upload["status"]), upload
    assert upload["metrics"]["OutputRowCount"] == 40


def test_a_damaged_gzip_file_fails_the_upload_naming_the_key(sandbox, amc, s3):
    amc.create_dataset(fact_dataset())
    body = gzip_csv(purchases(25))
    s3.put_object(Bucket=BUCKET, Key="c/part-0.csv.gz", Body=body[: len(body) // 2])
    upload = upload_and_wait(
        amc, "purchases", file_key="c/part-0.csv.gz", file_format=csv_format(), compression="GZIP"
    )
    assert upload["status"] == "FAILED"
    assert f"s3://{BUCKET}/c/part-0.csv.gz is not valid GZIP data" in upload["message"]
    assert stored_rows(sandbox, "purchases").height == 0


def test_json_lines_under_a_prefix_skip_hidden_files(sandbox, amc, s3):
    amc.create_dataset(fact_dataset())
    for i in range(2):
        body = purchases(10, start=10 * i).write_ndjson().encode()
        s3.put_object(Bucket=BUCKET, Key=f"json/part-{i}.json", Body=body)
    s3.put_object(Bucket=BUCKET, Key="json/_SUCCESS", Body=b"")
    s3.put_object(Bucket=BUCKET, Key="json/.hidden.json", Body=b"not json")
    upload = upload_and_wait(amc, "purchases", prefix="json/", file_format=JSON_LINES)
    assert upload["status"] == "SUCCESS", upload
    assert upload["metrics"]["OutputRowCount"] == 20


def test_parquet_through_a_manifest(sandbox, amc, s3):
    amc.create_dataset(fact_dataset())
    frame = purchases(12).with_columns(pl.col("amount").cast(pl.Float64))
    s3.put_object(Bucket=BUCKET, Key="pq/a.parquet", Body=parquet(frame.head(5)))
    s3.put_object(Bucket=BUCKET, Key="pq/b.parquet", Body=parquet(frame.tail(7)))
    manifest = f"s3://{BUCKET}/pq/a.parquet\ns3://{BUCKET}/pq/b.parquet\n"
    s3.put_object(Bucket=BUCKET, Key="pq/manifest.txt", Body=manifest.encode())
    upload = upload_and_wait(amc, "purchases", manifest_key="pq/manifest.txt", file_format=PARQUET)
    assert upload["status"] == "SUCCESS", upload
    assert upload["metrics"]["OutputRowCount"] == 12


@pytest.mark.parametrize(
    ("put_args", "message"),
    [
        ({"ServerSideEncryption": "AES256"}, f"is not tagged instanceId={INSTANCE}"),
        ({"ServerSideEncryption": "AES256", "Tagging": "instanceId=someoneelse"}, "is not tagged"),
    ],
)
@pytest.mark.parametrize("bad_object", ["data file", "manifest"])
def test_objects_amc_may_not_read_fail_the_upload_naming_the_key(
    sandbox, amc, s3, put_args, message, bad_object
):
    amc.create_dataset(fact_dataset())
    # `s3` tags and encrypts what it puts; the plain client stores exactly what the call says.
    bad_key = "m/part-0.csv" if bad_object == "data file" else "m/manifest"
    bodies = {
        "m/part-0.csv": purchases(3).write_csv().encode(),
        "m/manifest": f"s3://{BUCKET}/m/part-0.csv\n".encode(),
    }
    for key, body in bodies.items():
        if key == bad_key:
            s3_client(sandbox).put_object(Bucket=BUCKET, Key=key, Body=body, **put_args)
        else:
            s3.put_object(Bucket=BUCKET, Key=key, Body=body)
    upload = upload_and_wait(amc, "purchases", manifest_key="m/manifest", file_format=csv_format())
    assert upload["status"] == "FAILED"
    assert f"s3://{BUCKET}/{bad_key} {message}" in upload["message"]
    assert stored_rows(sandbox, "purchases").height == 0


def test_objects_written_without_encryption_are_stored_sse_s3_and_read(sandbox, amc, s3):
    # S3 encrypts every new object with SSE-S3 unless told otherwise (since January 2023).
    amc.create_dataset(fact_dataset())
    plain = s3_client(sandbox)
    tagging = f"instanceId={INSTANCE}"
    plain.put_object(Bucket=BUCKET, Key="plain.csv", Body=purchases(2).write_csv().encode(), Tagging=tagging)
    plain.copy_object(Bucket=BUCKET, Key="copy.csv", CopySource={"Bucket": BUCKET, "Key": "plain.csv"})
    multipart = plain.create_multipart_upload(Bucket=BUCKET, Key="multi.csv", Tagging=tagging)
    part = plain.upload_part(
        Bucket=BUCKET, Key="multi.csv", UploadId=multipart["UploadId"], PartNumber=1, Body=b"x"
    )
    plain.complete_multipart_upload(
        Bucket=BUCKET,
        Key="multi.csv",
        UploadId=multipart["UploadId"],
        MultipartUpload={"Parts": [{"ETag": part["ETag"], "PartNumber": 1}]},
    )
    for key in ("plain.csv", "copy.csv", "multi.csv"):
        assert plain.head_object(Bucket=BUCKET, Key=key)["ServerSideEncryption"] == "AES256", key
    upload = upload_and_wait(amc, "purchases", file_key="plain.csv", file_format=csv_format())
    assert upload["status"] == "SUCCESS", upload


def test_a_tagged_object_encrypted_with_kms_is_read(sandbox, amc, s3):
    amc.create_dataset(fact_dataset())
    s3.put_object(
        Bucket=BUCKET,
        Key="kms.csv",
        Body=purchases(2).write_csv().encode(),
        ServerSideEncryption="aws:kms",
        SSEKMSKeyId="alias/amc",
    )
    upload = upload_and_wait(amc, "purchases", file_key="kms.csv", file_format=csv_format())
    assert upload["status"] == "SUCCESS", upload


def test_raw_pii_in_a_hashed_column_fails_the_upload_naming_the_column(sandbox, amc, s3):
    amc.create_dataset(fact_dataset())
    frame = purchases(3).with_columns(pl.lit("someone@example.com").alias("email"))
    s3.put_object(Bucket=BUCKET, Key="raw.csv", Body=frame.write_csv().encode())
    upload = upload_and_wait(amc, "purchases", file_key="raw.csv", file_format=csv_format())
    assert upload["status"] == "FAILED"
    assert "email" in upload["message"] and "someone" not in upload["message"]
    assert stored_rows(sandbox, "purchases").height == 0


def test_invalid_values_and_nulls_in_non_nullable_columns_are_dropped_and_counted(sandbox, amc, s3):
    amc.create_dataset(fact_dataset())
    csv = (
        "email;purchase_time;amount\n"
        f"{sha('a')};2025-03-01T10:00:00Z;1.5\n"
        f"{sha('b')};2025-03-01T10:00:00.250Z;2\n"
        f"{sha('c')};2025-03-01 10:00:00;3\n"  # no T and Z: not AMC's timestamp format
        f"{sha('d')};2025-03-01T10:00:00Z;\n"  # amount is not nullable
        f";2025-03-01T10:00:00Z;abc\n"  # not a decimal
        f";2025-03-01T11:00:00Z;4\n"  # email is nullable: kept, without a user id
    )
    s3.put_object(Bucket=BUCKET, Key="mixed.csv", Body=csv.encode())
    upload = upload_and_wait(
        amc, "purchases", file_key="mixed.csv", file_format=csv_format(field_delimiter=";")
    )
    assert upload["status"] == "SUCCESS", upload
    assert upload["metrics"] == {"OutputRowCount": 3}
    assert "3 rows dropped" in upload["message"]
    assert stored_rows(sandbox, "purchases")["user_id"].null_count() == 1


def test_full_replace_replaces_and_additive_appends(sandbox, amc, s3):
    amc.create_dataset(dimension_dataset())
    frame = pl.DataFrame({"email": [sha(f"u{i}") for i in range(5)], "tier": ["gold"] * 5})
    s3.put_object(Bucket=BUCKET, Key="c.csv", Body=frame.write_csv().encode())
    for strategy, expected in (("ADDITIVE", 5), ("ADDITIVE", 10), ("FULL_REPLACE", 5)):
        upload = upload_and_wait(
            amc, "customers", file_key="c.csv", file_format=csv_format(), update_strategy=strategy
        )
        assert upload["metrics"]["OutputRowCount"] == 5
        assert stored_rows(sandbox, "customers").height == expected


def test_overlap_strategies_work_on_fact_partitions(sandbox, amc, s3):
    amc.create_dataset(fact_dataset())
    files = {
        "d1.csv": pl.concat([purchases(2, "2025-03-01"), purchases(2, "2025-03-02")]),
        "d2.csv": purchases(1, "2025-03-02"),
        "d23.csv": pl.concat([purchases(3, "2025-03-02"), purchases(4, "2025-03-03")]),
    }
    for key, frame in files.items():
        s3.put_object(Bucket=BUCKET, Key=key, Body=frame.write_csv().encode())
    for key, strategy, added, total in (
        ("d1.csv", "ADDITIVE", 4, 4),
        ("d2.csv", "OVERLAP_REPLACE", 1, 3),  # day 2 replaced by its one new row
        ("d23.csv", "OVERLAP_KEEP", 4, 7),  # day 2 is present: only day 3 is added
    ):
        upload = upload_and_wait(
            amc, "purchases", file_key=key, file_format=csv_format(), update_strategy=strategy
        )
        assert upload["metrics"]["OutputRowCount"] == added
        assert stored_rows(sandbox, "purchases").height == total


def test_overlap_strategies_on_a_dimension_dataset_are_400(amc):
    amc.create_dataset(dimension_dataset())
    with pytest.raises(AmazonAdsApiError, match="DIMENSION") as error:
        amc.start_upload(
            "customers",
            bucket=BUCKET,
            file_key="c.csv",
            file_format=csv_format(),
            update_strategy="OVERLAP_KEEP",
        )
    assert error.value.status == 400


@pytest.mark.parametrize(
    "change",
    [
        {"dataSource": {"sourceS3Bucket": BUCKET, "sourceFileS3Key": "a", "sourceS3Prefix": "b/"}},
        {"dataSource": {"sourceFileS3Key": "a"}},
        {"fileFormat": {**csv_format(), **JSON_LINES}},
        {"fileFormat": {"jsonDataFormat": "XML"}},
        # ZIP is in the definition's enum (deprecated since 2025-01-01): accepted, then the upload fails.
        {"compressionFormat": "LZ4"},
        {"updateStrategy": "MERGE"},
    ],
)
def test_invalid_uploads_are_400(amc, ads_client, change):
    amc.create_dataset(dimension_dataset())
    body = {
        "updateStrategy": "ADDITIVE",
        "compressionFormat": "NONE",
        "dataSource": {"sourceS3Bucket": BUCKET, "sourceFileS3Key": "c.csv"},
        "fileFormat": csv_format(),
        **change,
    }
    with pytest.raises(AmazonAdsApiError) as error:
        amc._data("POST", "/uploads/customers", UPLOAD_MEDIA_TYPE, json_body=body, idempotent=False)
    assert error.value.status == 400


def test_uploads_are_listed_by_dataset_and_status(sandbox, amc, s3):
    amc.create_dataset(dimension_dataset())
    s3.put_object(Bucket=BUCKET, Key="c.csv", Body=b"email,tier\n")
    done = upload_and_wait(amc, "customers", file_key="c.csv", file_format=csv_format())
    missing = upload_and_wait(amc, "customers", file_key="nope.csv", file_format=csv_format())
    assert missing["status"] == "FAILED" and "S3" in missing["message"]
    pending = amc.start_upload("customers", bucket=BUCKET, file_key="c.csv", file_format=csv_format())
    assert len(amc.list_uploads("customers")) == 3
    assert [u["uploadId"] for u in amc.list_uploads(status="SUBMITTED")] == [pending]
    assert [u["uploadId"] for u in amc.list_uploads(status="SUCCESS")] == [done["uploadId"]]


def test_throttling_and_server_errors_on_the_status_route_are_ridden_out(sandbox, amc, s3):
    amc.create_dataset(dimension_dataset())
    s3.put_object(Bucket=BUCKET, Key="c.csv", Body=b"email,tier\n")
    route = f"GET /amc/advertiserData/{INSTANCE}/uploads/customers/"
    add_fault(sandbox.ads_url, route=route, status=429, count=2, retry_after=0)
    add_fault(sandbox.ads_url, route=route, status=500, count=1)
    upload = upload_and_wait(amc, "customers", file_key="c.csv", file_format=csv_format())
    assert upload["status"] == "SUCCESS"
    statuses = [e["status"] for e in journal(sandbox.ads_url) if e["path"].startswith(route[4:])]
    assert statuses[:4] == [429, 429, 500, 200]


# --- user deletion ------------------------------------------------------------------------------------


def test_user_deletion_succeeds_and_removes_the_rows(sandbox, amc, s3):
    amc.create_dataset(fact_dataset())
    amc.create_dataset(dimension_dataset())
    s3.put_object(Bucket=BUCKET, Key="p.csv", Body=purchases(4).write_csv().encode())
    customers = pl.DataFrame({"email": [sha(f"user{i}@example.com") for i in range(3)], "tier": ["a"] * 3})
    s3.put_object(Bucket=BUCKET, Key="c.csv", Body=customers.write_csv().encode())
    upload_and_wait(amc, "purchases", file_key="p.csv", file_format=csv_format())
    upload_and_wait(amc, "customers", file_key="c.csv", file_format=csv_format())
    gone = [sha("user0@example.com"), sha("user3@example.com")]
    request_id = amc.request_user_deletion(
        [{"hashedIdentity": {"EMAIL": gone[0]}}, {"hashedIdentity": {"EMAIL": gone[1], "PHONE": sha("1")}}]
    )
    deletion = wait(lambda: amc.get_user_deletion(request_id))
    assert deletion["status"] == "SUCCEEDED"
    assert deletion["identityCount"] == 2 and deletion["creationDateTime"].endswith("Z")
    assert set(stored_rows(sandbox, "purchases")["email"]) == {sha(f"user{i}@example.com") for i in (1, 2)}
    assert stored_rows(sandbox, "customers").height == 2


@pytest.mark.parametrize(
    "identities",
    [
        [],
        [{"hashedIdentity": {"EMAIL": "someone@example.com"}}],
        [{"hashedIdentity": {"SHOE_SIZE": sha("42")}}],
        [{"externalIdentity": {"type": "COOKIE", "value": "x"}}],
        [{"hashedIdentity": {"EMAIL": sha(str(i))}} for i in range(1001)],
    ],
)
def test_invalid_user_deletions_are_400(amc, identities):
    with pytest.raises(AmazonAdsApiError) as error:
        amc.request_user_deletion(identities)
    assert error.value.status == 400


def test_unknown_ids_are_404(amc):
    with pytest.raises(AmazonAdsApiError) as error:
        amc.get_upload("purchases", "nope")
    assert error.value.status == 404
    with pytest.raises(AmazonAdsApiError) as error:
        amc.get_user_deletion("nope")
    assert error.value.status == 404
