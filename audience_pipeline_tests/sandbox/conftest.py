"""Helpers and fixtures for the sandbox's AMC tests: datasets, files in the sandbox's S3, waiting on jobs."""

import gzip
import hashlib
import io
import time

import boto3
import polars as pl
import pytest

from audience_pipeline.clients.amc import AmcClient, is_final


@pytest.fixture
def amc(ads_client) -> AmcClient:
    """An AMC client for the sandbox's instance and account."""
    return AmcClient(ads_client, INSTANCE, "ENTITY1SANDBOX", "ATVPDKIKX0DER")


INSTANCE = "amcsandbox01"
BUCKET = "amc-uploads"
EMAIL = {"hashedPii": "EMAIL"}


def sha(value: str) -> str:
    return hashlib.sha256(value.encode()).hexdigest()


def fact_dataset(dataset_id: str = "purchases") -> dict:
    return {
        "dataSetId": dataset_id,
        "period": "P1D",
        "countryCode": "US",
        "columns": [
            {"name": "email", "columnType": "DIMENSION", "dataType": "STRING", "externalUserIdType": EMAIL},
            {
                "name": "purchase_time",
                "columnType": "DIMENSION",
                "dataType": "TIMESTAMP",
                "isMainEventTime": True,
            },
            {"name": "amount", "columnType": "METRIC", "dataType": "DECIMAL", "nullable": False},
        ],
    }


def dimension_dataset(dataset_id: str = "customers") -> dict:
    return {
        "dataSetId": dataset_id,
        "columns": [
            {"name": "email", "columnType": "DIMENSION", "dataType": "STRING", "externalUserIdType": EMAIL},
            {"name": "tier", "columnType": "DIMENSION", "dataType": "STRING"},
        ],
    }


def purchases(n: int, day: str = "2025-03-01", start: int = 0) -> pl.DataFrame:
    return pl.DataFrame(
        {
            "email": [sha(f"user{i}@example.com") for i in range(start, start + n)],
            "purchase_time": [f"{day}T10:00:{i % 60:02d}Z" for i in range(n)],
            "amount": [f"{i}.5" for i in range(n)],
            "ignored_extra": ["x"] * n,
        }
    )


def s3_client(sandbox):
    """Plain boto3 S3 at the sandbox: objects are stored as the call says, untagged (and SSE-S3
    encrypted unless the call names another encryption, as S3 does)."""
    return boto3.client(
        "s3",
        endpoint_url=sandbox.aws_url,
        aws_access_key_id="sandbox",
        aws_secret_access_key="sandbox",
        region_name="us-east-1",
    )


def _readable_by_amc(params, **kwargs) -> None:
    params.setdefault("Tagging", f"instanceId={INSTANCE}")
    params.setdefault("ServerSideEncryption", "AES256")


@pytest.fixture
def s3(sandbox):
    """boto3 S3 at the sandbox, with the upload bucket created.

    Objects it puts are ones AMC may read, unless the call says otherwise: tagged with the sandbox's
    instance and encrypted server-side.
    """
    client = s3_client(sandbox)
    client.meta.events.register("before-parameter-build.s3.PutObject", _readable_by_amc)
    client.create_bucket(Bucket=BUCKET)
    return client


def gzip_csv(frame: pl.DataFrame) -> bytes:
    return gzip.compress(frame.write_csv().encode())


def parquet(frame: pl.DataFrame) -> bytes:
    buffer = io.BytesIO()
    frame.write_parquet(buffer)
    return buffer.getvalue()


def wait(fetch, seconds: float = 30.0) -> dict:
    """Poll until the job is final (the session sandbox moves jobs every 0.05 s and poll); a deadline
    in seconds rather than a number of polls, so a loaded machine does not fail a test."""
    deadline = time.monotonic() + seconds
    while True:
        job = fetch()
        if is_final(job["status"]):
            return job
        if time.monotonic() > deadline:
            raise AssertionError(f"job never finished: {job}")
        time.sleep(0.03)


def upload_and_wait(amc: AmcClient, dataset_id: str, **kwargs) -> dict:
    upload_id = amc.start_upload(dataset_id, bucket=BUCKET, **kwargs)
    return wait(lambda: amc.get_upload(dataset_id, upload_id))


def stored_rows(sandbox, dataset_id: str) -> pl.DataFrame:
    state = sandbox.ads.state
    table = state.family("amc")["instances"][INSTANCE]["dataSets"][dataset_id]["_table"]
    return state.cursor().sql(f"SELECT * FROM {table}").pl()


# --- datasets -----------------------------------------------------------------------------------------
