"""The one place resources are wired; every asset gets its resources from here."""

import os

import dagster as dg

from audience_pipeline.membership.payload_crypto import LEDGER_KEY_ENV_VAR
from audience_pipeline.resources.amazon_ads import (
    API_URL_ENV_VAR,
    CLIENT_ID_ENV_VAR,
    CLIENT_SECRET_ENV_VAR,
    REFRESH_TOKEN_ENV_VAR,
    REGION_ENV_VAR,
    TOKEN_URL_ENV_VAR,
    AmazonAdsApi,
)
from audience_pipeline.resources.aws import ENDPOINT_ENV_VAR, FirehoseResource, S3Resource
from audience_pipeline.resources.duckdb_source import DEFAULT_SOURCE, SOURCE_ENV_VAR, DuckDBSource
from audience_pipeline.resources.ledger_cipher import LedgerCipher
from audience_pipeline.resources.state_store import DEFAULT_STATE, STATE_ENV_VAR, StateStore


@dg.definitions
def resources() -> dg.Definitions:
    """`source` (read-only DuckDB), `state_store` (Parquet state), `amazon_ads` (API credentials, typed
    clients), `s3` and `firehose` (AWS through dagster-aws) and `ledger_cipher` (the ledger key).

    Locations come from env vars; secrets only through `dg.EnvVar`. AWS credentials are boto3's default
    chain here; a destination with keys or a role of its own names them in its YAML, and its component
    hands them to the resource (`resources.aws.AwsConnection`). `state_store` is an `S3Resource` too: an
    `s3://` root gets its client the same way.
    """
    # Unset, boto3 reads AWS_ENDPOINT_URL itself; wired here so the UI shows where AWS calls go.
    aws_endpoint = os.environ.get(ENDPOINT_ENV_VAR)
    return dg.Definitions(
        resources={
            "source": DuckDBSource(database=os.environ.get(SOURCE_ENV_VAR, DEFAULT_SOURCE)),
            "state_store": StateStore(
                root=os.environ.get(STATE_ENV_VAR, DEFAULT_STATE), endpoint_url=aws_endpoint
            ),
            "amazon_ads": AmazonAdsApi(
                client_id=dg.EnvVar(CLIENT_ID_ENV_VAR),
                client_secret=dg.EnvVar(CLIENT_SECRET_ENV_VAR),
                refresh_token=dg.EnvVar(REFRESH_TOKEN_ENV_VAR),
                # NA, EU or FE: where the advertiser's account lives (DSP components name their own).
                region=os.environ.get(REGION_ENV_VAR, "NA"),
                base_url=os.environ.get(API_URL_ENV_VAR),
                token_url=os.environ.get(TOKEN_URL_ENV_VAR),
            ),
            "s3": S3Resource(endpoint_url=aws_endpoint),
            "firehose": FirehoseResource(endpoint_url=aws_endpoint),
            "ledger_cipher": LedgerCipher(key=dg.EnvVar(LEDGER_KEY_ENV_VAR)),
        }
    )
