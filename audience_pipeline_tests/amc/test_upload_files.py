"""Upload files against the sandbox: what arrives in S3 and in the AMC dataset, not what the writer meant."""

import gzip
import hashlib
import io
import json
import zlib
from datetime import UTC, date, datetime
from decimal import Decimal

import polars as pl
import pyarrow.parquet as pq
import pytest
from botocore.exceptions import ClientError

from audience_pipeline.amc.compatibility import SchemaMismatch, check_query_schema
from audience_pipeline.amc.definitions import DatasetDefinition
from audience_pipeline.amc.upload_files import (
    NoRowsToUpload,
    S3Location,
    check_file_name_prefix,
    check_key_prefix,
    delete_upload_files,
    prepare_batch,
    write_upload_files,
)

from ..sandbox import conftest as sandbox_helpers
from ..sandbox.conftest import BUCKET, INSTANCE, s3_client, stored_rows, upload_and_wait

# The sandbox package's fixtures: an AMC client for its instance, and S3 with the upload bucket made.
amc = sandbox_helpers.amc
s3 = sandbox_helpers.s3


def sha(value: str) -> str:
    return hashlib.sha256(value.encode()).hexdigest()


def column(name: str, data_type: str = "STRING", **flags) -> dict:
    return {"name": name, "columnType": "DIMENSION", "dataType": data_type, **flags}


PURCHASES = {
    "dataSetId": "purchases",
    "period": "P1D",
    "countryCode": "US",
    "columns": [
        column("email", externalUserIdType={"hashedPii": "EMAIL"}),
        column("phone", externalUserIdType={"hashedPii": "PHONE"}),
        column("purchase_time", "TIMESTAMP", isMainEventTime=True),
        column("purchase_date", "DATE"),
        column("amount", "DECIMAL", columnType="METRIC", nullable=False),
        column("quantity", "INTEGER", columnType="METRIC"),
        column("order_id", "LONG"),
        column("sku"),
        column("country", isCountryCode=True),
    ],
}
CUSTOMERS = {
    "dataSetId": "customers",
    "columns": [
        column("email", externalUserIdType={"hashedPii": "EMAIL"}, nullable=False),
        column("work_email", externalUserIdType={"hashedPii": "EMAIL"}),
        column("zip", externalUserIdType={"hashedPii": "ZIP"}),
        column("country_code", externalUserIdType={"hashedPii": "COUNTRY_CODE"}),
        column("tier"),
    ],
}
SMALL = {
    "dataSetId": "small",
    "columns": [column("email", externalUserIdType={"hashedPii": "EMAIL"}), column("n", "LONG")],
}


def purchases(**columns) -> pl.DataFrame:
    """Purchase rows under the query's own names: `Amount` matches ignoring case, `note` matches nothing."""
    rows = len(next(iter(columns.values())))
    defaults = {
        "quantity": pl.Series([1] * rows, dtype=pl.Int16),
        "order_id": [2**40 + i for i in range(rows)],
        "sku": [f"S-{i}" for i in range(rows)],
        "country": [None] * rows,
        "note": ["internal"] * rows,
    }
    frame = pl.DataFrame({**defaults, **columns}, schema_overrides={"phone": pl.String, "country": pl.String})
    return frame.select("email", "phone", "purchase_time", "purchase_date", "Amount", *defaults)


def parse(definition: dict, frame: pl.DataFrame):
    parsed = DatasetDefinition.parse(definition)
    return parsed, check_query_schema(parsed, frame.schema)


def location(**changes) -> S3Location:
    settings = {
        "bucket": BUCKET,
        "path_prefix": "amc/uploads/",
        "file_name_prefix": "acme-",
        "instance_id": INSTANCE,
    }
    return S3Location(**{**settings, **changes})


@pytest.fixture
def plain_s3(sandbox, s3):
    """The writer's client: plain boto3 (the bucket made by `s3`), so tags and encryption are its own."""
    return s3_client(sandbox)


def objects(s3) -> dict[str, dict]:
    """Every object in the bucket as S3 holds it: key → size, tags, encryption and bytes."""
    found = {}
    for item in s3.list_objects_v2(Bucket=BUCKET).get("Contents", []):
        key = item["Key"]
        response = s3.get_object(Bucket=BUCKET, Key=key)
        tags = s3.get_object_tagging(Bucket=BUCKET, Key=key)["TagSet"]
        found[key] = {
            "size": item["Size"],
            "tags": {t["Key"]: t["Value"] for t in tags},
            "sse": response.get("ServerSideEncryption"),
            "kms_key": response.get("SSEKMSKeyId"),
            "body": response["Body"].read(),
        }
    return found


def upload(amc, dataset_id: str, files) -> dict:
    return upload_and_wait(
        amc,
        dataset_id,
        manifest_key=files.manifest_key,
        compression=files.compression,
        file_format=files.file_format,
    )


def many(rows: int, start: int = 0) -> pl.DataFrame:
    return pl.DataFrame(
        {
            "email": [f"user{i}@example.com" for i in range(start, start + rows)],
            "n": range(start, start + rows),
        }
    )


def large(rows: int, start: int = 0) -> pl.DataFrame:
    """`many`'s rows built by polars: at about 38 bytes a row, 600,000 pass S3's multipart threshold."""
    n = pl.int_range(start, start + rows, eager=True).alias("n")
    return pl.DataFrame(n).select(email=pl.format("user{}@example.com", "n"), n="n")


# --- end to end ---------------------------------------------------------------------------------------


def test_fact_rows_arrive_hashed_and_formatted_with_skips_and_rejects_counted(sandbox, amc, plain_s3):
    amc.create_dataset(PURCHASES)
    naive = purchases(
        email=["  Ann@Example.COM ", sha("bob@example.com").upper(), "not an email", "dee@example.com"],
        phone=["(206) 555-0100", "020 7946 0958", "2065550100", None],
        purchase_time=[
            datetime(2025, 3, 1, 10),
            datetime(2025, 3, 1, 23, 59, 59, 900_000),
            datetime(2025, 3, 1, 12),
            None,
        ],
        purchase_date=[date(2025, 3, 1)] * 4,
        Amount=[1.5, 2.25, 3.0, 4.0],
        sku=["A-1", 'B,"2"', None, "D"],
        country=["us", "United Kingdom", "Atlantis", "us"],
    )
    # Berlin is UTC+2 in summer: 01:00 on 1 July there is still 30 June in UTC, for the date too.
    berlin = [datetime(2025, 3, 2, 1, 30), datetime(2025, 7, 1, 1, 0)]
    aware = purchases(
        email=["eve@example.com", "fay@example.com"],
        phone=["+1 206 555 0101", None],
        purchase_time=pl.Series(berlin).dt.replace_time_zone("Europe/Berlin"),
        purchase_date=pl.Series(berlin).dt.replace_time_zone("Europe/Berlin"),
        Amount=[None, 5.0],
    )
    epoch = purchases(
        email=["gus@example.com", "hal@example.com"],
        phone=["2065550102", None],
        # The second is in milliseconds by mistake: year 57,000 is no AMC timestamp.
        purchase_time=[1_741_000_000, 1_741_000_000_000],
        purchase_date=[1_741_000_000, 1_741_000_000],
        Amount=[6.0, 7.0],
    )
    definition, check = parse(PURCHASES, naive)
    assert check.case_insensitive_matches == {"Amount": "amount"} and check.ignored == ["note"]

    files = write_upload_files(
        [naive, aware, epoch], definition, check, s3_client=plain_s3, location=location(), upload_name="run1"
    )
    result = upload(amc, "purchases", files)
    assert result["status"] == "SUCCESS", result
    assert result["metrics"] == {"OutputRowCount": 5}

    stats = files.stats
    assert (stats.rows_in, stats.rows_written, stats.rows_skipped) == (8, 5, 3)
    assert stats.skipped_null == {"purchase_time": 2, "amount": 1}
    assert stats.rejects == {
        "email": {"invalid_email": 1},
        # Atlantis is no country, so the national number on that row cannot be read.
        "phone": {"phone_needs_country": 1},
        "country": {"unknown_country": 1},
        "purchase_time": {"out_of_range": 1},
    }

    gus_time = datetime.fromtimestamp(1_741_000_000, UTC).replace(tzinfo=None)
    expected = [
        # email, phone, purchase_time, purchase_date, amount, sku, country
        (
            sha("ann@example.com"),
            sha("12065550100"),
            datetime(2025, 3, 1, 10),
            date(2025, 3, 1),
            1.5,
            "A-1",
            "US",
        ),
        (None, None, datetime(2025, 3, 1, 12), date(2025, 3, 1), 3.0, None, None),
        # AMC's format has whole seconds.
        (
            sha("bob@example.com"),
            sha("442079460958"),
            datetime(2025, 3, 1, 23, 59, 59),
            date(2025, 3, 1),
            2.25,
            'B,"2"',
            "GB",
        ),
        (sha("gus@example.com"), sha("12065550102"), gus_time, gus_time.date(), 6.0, "S-0", None),
        (sha("fay@example.com"), None, datetime(2025, 6, 30, 23), date(2025, 6, 30), 5.0, "S-1", None),
    ]
    rows = stored_rows(sandbox, "purchases").sort("purchase_time")
    assert (
        rows.select("email", "phone", "purchase_time", "purchase_date", "amount", "sku", "country").rows()
        == expected
    )
    assert rows["quantity"].to_list() == [1] * 5
    assert sorted(rows["order_id"]) == [2**40, 2**40, 2**40 + 1, 2**40 + 1, 2**40 + 2]

    # No raw identity reached S3: no e-mail address, no phone number as written.
    parts = [o["body"] for key, o in objects(plain_s3).items() if key.endswith(".csv.gz")]
    text = b"".join(gzip.decompress(part) for part in parts)
    assert b"@" not in text and b"+44" not in text and b"(206)" not in text


def test_dimension_with_two_columns_of_one_type_and_a_hashed_country_as_parquet(sandbox, amc, plain_s3):
    amc.create_dataset(CUSTOMERS)
    frame = pl.DataFrame(
        {
            "email": ["a@x.com", "b@x.com", None, "bad", "d@x.com"],
            "work_email": ["A@Work.com", None, "c@work.com", None, "d@x.com"],
            "zip": ["75236-9599", "sw1a 1aa", "10115", None, "2134"],
            # The ZIPs are read in their row's country, taken from this column before it is hashed.
            "country_code": ["United States", "GB", "DE", None, "Narnia"],
            "tier": ["gold", None, "silver", None, "bronze"],
        }
    )
    definition, check = parse(CUSTOMERS, frame)
    files = write_upload_files(
        [frame],
        definition,
        check,
        s3_client=plain_s3,
        location=location(path_prefix=""),
        upload_name="customers",
        file_format="parquet",
    )
    assert (files.file_format, files.compression) == ({"parquetDataFormat": "PARQUET_DATA_FORMAT"}, "NONE")
    assert files.part_keys == ["acme-customers-part-00000.parquet"]
    result = upload(amc, "customers", files)
    assert result["status"] == "SUCCESS", result

    assert files.stats.skipped_null == {"email": 2}
    assert files.stats.rejects == {"email": {"invalid_email": 1}, "country_code": {"unknown_country": 1}}
    rows = stored_rows(sandbox, "customers").sort("tier", nulls_last=True)
    assert rows.select("email", "work_email", "zip", "country_code", "tier").rows() == [
        (sha("d@x.com"), sha("d@x.com"), sha("2134"), None, "bronze"),
        (sha("a@x.com"), sha("a@work.com"), sha("75236"), sha("us"), "gold"),
        (sha("b@x.com"), None, sha("SW1A1AA"), sha("gb"), None),
    ]
    stored = pq.read_table(io.BytesIO(objects(plain_s3)[files.part_keys[0]]["body"]))
    assert stored.column_names == ["email", "work_email", "zip", "country_code", "tier"]


@pytest.mark.parametrize(("file_format", "max_part_bytes"), [("csv", 3_000), ("parquet", 12_000)])
def test_parts_stay_under_the_limit_and_every_object_is_tagged_and_encrypted(
    sandbox, amc, plain_s3, file_format, max_part_bytes
):
    amc.create_dataset(SMALL)
    batches = [many(120, start) for start in range(0, 600, 120)]
    definition, check = parse(SMALL, batches[0])
    files = write_upload_files(
        iter(batches),
        definition,
        check,
        s3_client=plain_s3,
        location=location(),
        upload_name="small",
        file_format=file_format,
        max_part_bytes=max_part_bytes,
    )
    stored = objects(plain_s3)
    assert set(stored) == {*files.part_keys, files.manifest_key}
    assert files.manifest_key == "amc/uploads/acme-small.manifest"
    suffix = ".csv.gz" if file_format == "csv" else ".parquet"
    assert files.part_keys == [
        f"amc/uploads/acme-small-part-{i:05d}{suffix}" for i in range(len(files.part_keys))
    ]
    assert len(files.part_keys) >= 4
    sizes = [stored[key]["size"] for key in files.part_keys]
    assert max(sizes) <= max_part_bytes
    assert files.stats.part_bytes == sizes
    # Parts are cut near the limit, not after every batch.
    assert sum(sizes) / len(sizes) > max_part_bytes / 2
    manifest = stored[files.manifest_key]["body"].decode()
    assert manifest == "".join(f"s3://{BUCKET}/{key}\n" for key in files.part_keys)
    for found in stored.values():
        assert found["tags"] == {"instanceId": INSTANCE}
        assert found["sse"] == "AES256"

    result = upload(amc, "small", files)
    assert result["status"] == "SUCCESS", result
    rows = stored_rows(sandbox, "small").sort("n")
    assert rows["n"].to_list() == list(range(600))
    assert rows["email"].to_list() == [sha(f"user{i}@example.com") for i in range(600)]


def test_a_large_part_streams_as_one_multipart_object_holding_one_gzip_stream(sandbox, plain_s3):
    batches = [large(200_000, start) for start in range(0, 600_000, 200_000)]
    definition, check = parse(SMALL, batches[0])
    files = write_upload_files(
        iter(batches), definition, check, s3_client=plain_s3, location=location(), upload_name="large"
    )
    [key] = files.part_keys
    stored = objects(plain_s3)[key]
    assert stored["size"] == files.stats.part_bytes[0] > 16 * 2**20
    assert "-" in plain_s3.head_object(Bucket=BUCKET, Key=key)["ETag"]
    assert (stored["tags"], stored["sse"]) == ({"instanceId": INSTANCE}, "AES256")
    # One gzip member, header to trailer (CRC and length checked), with nothing after it: blocks
    # compressed side by side still make the single stream every gzip reader takes.
    stream = zlib.decompressobj(wbits=31)
    lines = stream.decompress(stored["body"]).splitlines()
    assert stream.eof and stream.unused_data == b""
    assert len(lines) == 600_001
    assert lines[0] == b"email,n"
    assert lines[1] == f"{sha('user0@example.com')},0".encode()
    assert lines[-1] == f"{sha('user599999@example.com')},599999".encode()


def test_a_failure_while_a_large_part_streams_leaves_no_object_and_no_open_upload(sandbox, plain_s3):
    definition, check = parse(SMALL, many(1))

    def batches():
        yield large(600_000)
        raise RuntimeError("the source went away")

    with pytest.raises(RuntimeError, match="went away"):
        write_upload_files(
            batches(), definition, check, s3_client=plain_s3, location=location(), upload_name="x"
        )
    assert objects(plain_s3) == {}
    assert plain_s3.list_multipart_uploads(Bucket=BUCKET).get("Uploads", []) == []


@pytest.mark.parametrize("rows", [10, 600_000])
def test_an_s3_error_while_a_part_streams_is_raised_as_itself(sandbox, plain_s3, rows):
    frame = large(rows)
    definition, check = parse(SMALL, frame)
    # A small part fails when it is put whole, a large one when its multipart upload is created.
    with pytest.raises(ClientError, match="NoSuchBucket"):
        write_upload_files(
            [frame],
            definition,
            check,
            s3_client=plain_s3,
            location=location(bucket="no-such-bucket"),
            upload_name="x",
        )


def test_kms_encryption_is_asked_for_and_accepted(sandbox, amc, plain_s3):
    amc.create_dataset(SMALL)
    frame = many(10)
    definition, check = parse(SMALL, frame)
    where = location(sse="aws:kms", kms_key_id="alias/amc-uploads")
    files = write_upload_files(
        [frame], definition, check, s3_client=plain_s3, location=where, upload_name="kms"
    )
    for found in objects(plain_s3).values():
        assert (found["sse"], found["kms_key"]) == ("aws:kms", "alias/amc-uploads")
    assert upload(amc, "small", files)["metrics"]["OutputRowCount"] == 10


def test_dry_run_measures_the_same_parts_and_writes_nothing(sandbox, plain_s3):
    batches = [many(200, start) for start in range(0, 1000, 200)]
    definition, check = parse(SMALL, batches[0])
    kwargs = {"location": location(), "upload_name": "dry", "max_part_bytes": 4_000}
    dry = write_upload_files(batches, definition, check, s3_client=None, dry_run=True, **kwargs)
    assert objects(plain_s3) == {}
    real = write_upload_files(batches, definition, check, s3_client=plain_s3, **kwargs)
    # gzip headers carry no time, so a dry run's sizes are exactly what a real run uploads.
    assert dry.stats == real.stats and dry.manifest_key == real.manifest_key
    assert json.loads(json.dumps(dry.stats.metadata())) == {
        "rows_in": 1000,
        "rows_written": 1000,
        "rows_skipped": 0,
        "skipped_null": {},
        "rejects": {},
        "rejected_values": 0,
        "parts": len(real.part_keys),
        "bytes": sum(o["size"] for k, o in objects(plain_s3).items() if k in real.part_keys),
        "largest_part_bytes": max(real.stats.part_bytes),
    }


def test_delete_upload_files_removes_parts_and_manifest(sandbox, plain_s3):
    frame = many(300)
    definition, check = parse(SMALL, frame)
    files = write_upload_files(
        [frame],
        definition,
        check,
        s3_client=plain_s3,
        location=location(),
        upload_name="gone",
        max_part_bytes=3_000,
    )
    assert len(objects(plain_s3)) == len(files.part_keys) + 1 > 2
    delete_upload_files(plain_s3, location(), files)
    assert objects(plain_s3) == {}


# --- refusals -----------------------------------------------------------------------------------------


def test_names_amc_would_skip_are_refused(sandbox, plain_s3):
    with pytest.raises(ValueError, match="file_name_prefix"):
        location(file_name_prefix="_tmp")
    with pytest.raises(ValueError, match="file_name_prefix"):
        location(file_name_prefix=".hidden-")
    frame = many(3)
    definition, check = parse(SMALL, frame)
    with pytest.raises(ValueError, match="file_name_prefix"):
        write_upload_files(
            [frame],
            definition,
            check,
            s3_client=plain_s3,
            location=location(file_name_prefix=""),
            upload_name="_x",
        )
    assert objects(plain_s3) == {}


def test_no_rows_left_is_an_error_and_writes_nothing(sandbox, plain_s3):
    frame = purchases(
        email=["a@example.com", "b@example.com"],
        phone=[None, None],
        purchase_time=[datetime(2025, 3, 1), None],
        purchase_date=[date(2025, 3, 1)] * 2,
        Amount=[None, 1.0],
    )
    definition, check = parse(PURCHASES, frame)
    with pytest.raises(NoRowsToUpload, match="no rows to upload") as error:
        write_upload_files(
            [frame], definition, check, s3_client=plain_s3, location=location(), upload_name="none"
        )
    assert "example" not in str(error.value)
    assert error.value.stats.skipped_null == {"amount": 1, "purchase_time": 1}
    assert isinstance(error.value, ValueError)
    assert objects(plain_s3) == {}


def test_a_failure_part_way_deletes_the_parts_already_uploaded(sandbox, plain_s3):
    definition, check = parse(SMALL, many(1))

    def batches():
        yield many(300)
        raise RuntimeError("the source went away")

    with pytest.raises(RuntimeError, match="went away"):
        write_upload_files(
            batches(),
            definition,
            check,
            s3_client=plain_s3,
            location=location(),
            upload_name="x",
            max_part_bytes=3_000,
        )
    assert objects(plain_s3) == {}


def test_a_row_larger_than_a_part_is_refused_without_its_values(sandbox, plain_s3):
    frame = many(2)
    definition, check = parse(SMALL, frame)
    with pytest.raises(ValueError, match="max_part_bytes") as error:
        write_upload_files(
            [frame],
            definition,
            check,
            s3_client=plain_s3,
            location=location(),
            upload_name="x",
            max_part_bytes=100,
        )
    assert "user" not in str(error.value)
    assert objects(plain_s3) == {}


def test_a_schema_mismatch_is_refused_before_writing(sandbox, plain_s3):
    frame = many(2).with_columns(pl.col("n").cast(pl.String))
    definition, check = parse(SMALL, frame)
    with pytest.raises(SchemaMismatch, match="n: String cannot fill a LONG column"):
        write_upload_files(
            [frame], definition, check, s3_client=plain_s3, location=location(), upload_name="x"
        )
    assert objects(plain_s3) == {}


# --- pure parts ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(("prefix", "key"), [("", "f"), ("a/b", "a/b/f"), ("a/b/", "a/b/f"), ("/a/", "a/f")])
def test_keys_join_the_folder_with_one_slash(prefix, key):
    assert location(path_prefix=prefix).key("f") == key


def test_encryption_settings_are_checked():
    with pytest.raises(ValueError, match="sse"):
        location(sse="none")
    with pytest.raises(ValueError, match="kms_key_id"):
        location(kms_key_id="alias/x")
    assert location(sse="aws:kms", kms_key_id="k").extra_args() == {
        "Tagging": f"instanceId={INSTANCE}",
        "ServerSideEncryption": "aws:kms",
        "SSEKMSKeyId": "k",
    }


def test_values_amc_cannot_take_become_null_and_are_counted():
    definition = DatasetDefinition.parse(
        {
            "dataSetId": "numbers",
            "columns": [
                column("small", "INTEGER"),
                column("big", "LONG"),
                column("ratio", "DECIMAL"),
                column("exact", "DECIMAL"),
                column("day", "DATE"),
            ],
        }
    )
    frame = pl.DataFrame(
        {
            "small": [1, 2**31, None],
            "big": pl.Series([1, 2**64 - 1, 3], dtype=pl.UInt64),
            "ratio": [0.5, float("nan"), float("inf")],
            "exact": pl.Series([Decimal("1.50"), Decimal("-2.25"), None], dtype=pl.Decimal(10, 2)),
            "day": [date(2025, 1, 2), None, date(2025, 12, 31)],
        }
    )
    prepared = prepare_batch(frame, definition, check_query_schema(definition, frame.schema))
    assert prepared.rejects == {
        "small": {"out_of_range": 1},
        "big": {"out_of_range": 1},
        "ratio": {"not_finite": 2},
    }
    assert prepared.frame.to_dicts() == [
        {"small": 1, "big": 1, "ratio": 0.5, "exact": Decimal("1.50"), "day": "2025-01-02"},
        {"small": None, "big": None, "ratio": None, "exact": Decimal("-2.25"), "day": None},
        {"small": None, "big": 3, "ratio": None, "exact": None, "day": "2025-12-31"},
    ]
    assert prepared.frame.write_csv().splitlines()[1:3] == ["1,1,0.5,1.50,2025-01-02", ",,,-2.25,"]


def test_the_upload_country_reads_national_phones_unless_the_row_has_its_own():
    frame = purchases(
        email=["a@example.com", "b@example.com"],
        phone=["020 7946 0958", "(206) 555-0100"],
        purchase_time=[datetime(2025, 3, 1)] * 2,
        purchase_date=[date(2025, 3, 1)] * 2,
        Amount=[1.0, 2.0],
        country=[None, "USA"],
    )
    definition, check = parse(PURCHASES, frame)
    # The dataset's country is US; the upload's GB wins over it, the row's own country over both.
    prepared = prepare_batch(frame, definition, check, country_code="GB")
    assert prepared.frame["phone"].to_list() == [sha("442079460958"), sha("12065550100")]
    assert prepared.frame["country"].to_list() == [None, "US"]
    assert prepared.rejects == {}


@pytest.mark.parametrize("prefix", ["/uploads", "uploads/../other", ".."])
def test_a_prefix_must_stay_inside_the_bucket(prefix):
    with pytest.raises(ValueError, match="must be a relative path inside the bucket"):
        check_key_prefix(prefix)
    assert check_key_prefix("uploads/amc/") == "uploads/amc/"


@pytest.mark.parametrize("prefix", ["_tmp-", ".hidden-", "folder/_tmp-"])
def test_a_file_name_prefix_amc_would_skip_is_refused(prefix):
    with pytest.raises(ValueError, match="AMC skips files whose names start with '.' or '_'"):
        check_file_name_prefix(prefix)
    assert check_file_name_prefix("audience-pipeline-") == "audience-pipeline-"
