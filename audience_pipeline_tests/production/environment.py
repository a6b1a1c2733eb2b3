"""What a deployment runs against: the sandbox provisioned for its project (the stream, the state
store's bucket) and the environment its processes get."""

import boto3
from cryptography.fernet import Fernet

from audience_pipeline.components.firehose import FirehoseComponent
from audience_pipeline.sandbox.aws import create_amc_bucket
from audience_pipeline.sandbox.provision import provision_sandbox
from audience_pipeline.sandbox.server import RunningSandbox

from .postgres import Postgres
from .project import AMC_BUCKET, AMC_INSTANCE, STREAM, Source

STATE_BUCKET = "audience-pipeline-prod-state"


def sandbox_client(sandbox: RunningSandbox, kind: str):
    """A boto3 client of `kind` on the sandbox's AWS, with its credentials."""
    env = sandbox.env()
    session = boto3.Session(
        aws_access_key_id=env["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=env["AWS_SECRET_ACCESS_KEY"],
        region_name="us-east-1",
    )
    return session.client(kind, endpoint_url=sandbox.aws_url)


def provision(sandbox: RunningSandbox, audiences: list[int]) -> None:
    """The stream the project's Firehose destination sends to, the AMC instance's upload bucket, and
    the state store's bucket."""
    s3, firehose = (sandbox_client(sandbox, kind) for kind in ("s3", "firehose"))
    stream = FirehoseComponent(delivery_stream_name=STREAM, audiences=audiences)
    provision_sandbox(s3, firehose, [stream], [])
    create_amc_bucket(s3, AMC_BUCKET, AMC_INSTANCE)
    s3.create_bucket(Bucket=STATE_BUCKET)


def deployment_env(postgres: Postgres, sandbox: RunningSandbox, source: Source) -> dict[str, str]:
    """The variables `deploy/env.example` lists, for this machine's parts."""
    return {
        **postgres.env(),
        **sandbox.env(),
        "AWS_DEFAULT_REGION": "us-east-1",
        "AUDIENCE_PIPELINE_STATE": f"s3://{STATE_BUCKET}/prod",
        "AUDIENCE_PIPELINE_SOURCE": str(source.path),
        "AUDIENCE_PIPELINE_LEDGER_KEY": Fernet.generate_key().decode(),
        "AMAZON_ADS_CLIENT_ID": "prod-test",
        "AMAZON_ADS_CLIENT_SECRET": "prod-test",
        "AMAZON_ADS_REFRESH_TOKEN": "prod-test",
    }


def destination_ids(sandbox: RunningSandbox) -> tuple[dict[str, str], dict[str, str]]:
    """The sandbox's ADM dataset ids and DSP audience ids, by name."""
    state = sandbox.ads.state
    datasets = {d["name"]: d["dataSetId"] for d in state.family("adm")["datasets"].values()}
    return datasets, {a["name"]: i for i, a in state.family("dsp")["audiences"].items()}
