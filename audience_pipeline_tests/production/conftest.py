"""The production suite's real parts, started by the tests: PostgreSQL, the sandbox (Amazon, S3 for the
state store and Firehose), and the deployment's Dagster processes."""

import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import boto3
import pytest
from cryptography.fernet import Fernet

from audience_pipeline.components.firehose import FirehoseComponent
from audience_pipeline.sandbox.provision import provision_sandbox
from audience_pipeline.sandbox.server import RunningSandbox, start_sandbox

from .deployment import Deployment, free_port
from .postgres import Postgres, server_binaries
from .project import STREAM, Source, write_project

STATE_BUCKET = "audience-pipeline-prod-state"
# Audiences of every size class the suite needs: small enough that 50 deliveries stay a CI minute.
AUDIENCES = {audience: 20 + 7 * audience for audience in range(1, 51)}


@pytest.fixture(scope="session")
def postgres() -> Iterator[Postgres]:
    binaries = server_binaries()
    if binaries is None and os.environ.get("AUDIENCE_PIPELINE_REQUIRE_POSTGRES"):
        pytest.fail("PostgreSQL's server is not installed (Debian: apt-get install postgresql)")
    if binaries is None:
        pytest.skip("PostgreSQL's server is not installed (Debian: apt-get install postgresql)")
    # Not under pytest's temporary folder: its parents are closed to the `postgres` user (see Postgres).
    folder = Path(tempfile.mkdtemp(prefix="audience-pipeline-postgres-"))
    server = Postgres(folder, free_port(), binaries)
    server.init()
    yield server
    server.stop("immediate")
    shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture(scope="session")
def prod_sandbox() -> Iterator[RunningSandbox]:
    """A sandbox of these tests' own, with the stream and the state store's bucket."""
    sandbox = start_sandbox()
    s3, firehose = (sandbox_client(sandbox, kind) for kind in ("s3", "firehose"))
    stream = FirehoseComponent(delivery_stream_name=STREAM, audiences=list(AUDIENCES))
    provision_sandbox(s3, firehose, [stream], [])
    s3.create_bucket(Bucket=STATE_BUCKET)
    yield sandbox
    sandbox.stop()


def sandbox_client(sandbox: RunningSandbox, kind: str):
    """A boto3 client of `kind` on the sandbox's AWS, with its credentials."""
    env = sandbox.env()
    session = boto3.Session(
        aws_access_key_id=env["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=env["AWS_SECRET_ACCESS_KEY"],
        region_name="us-east-1",
    )
    return session.client(kind, endpoint_url=sandbox.aws_url)


@pytest.fixture(scope="session")
def source(tmp_path_factory) -> Source:
    """The source every run reads: `AUDIENCES` at first."""
    written = Source(tmp_path_factory.mktemp("source") / "source.duckdb", dict(AUDIENCES))
    written.write()
    return written


@pytest.fixture(scope="session")
def deployment(tmp_path_factory, postgres, prod_sandbox, source) -> Iterator[Deployment]:
    """The deployment, started: pools set, then the code server, the webserver and the daemon."""
    folder = tmp_path_factory.mktemp("deployment")
    project = folder / "project"
    module = write_project(project, list(AUDIENCES))
    env = {
        **postgres.env(),
        **prod_sandbox.env(),
        "AWS_DEFAULT_REGION": "us-east-1",
        "AUDIENCE_PIPELINE_STATE": f"s3://{STATE_BUCKET}/prod",
        "AUDIENCE_PIPELINE_SOURCE": str(source.path),
        "AUDIENCE_PIPELINE_LEDGER_KEY": Fernet.generate_key().decode(),
        "AMAZON_ADS_CLIENT_ID": "prod-test",
        "AMAZON_ADS_CLIENT_SECRET": "prod-test",
        "AMAZON_ADS_REFRESH_TOKEN": "prod-test",
    }
    running = Deployment(folder, env, project, module)
    running.set_pools()
    running.start()
    yield running
    running.stop()
