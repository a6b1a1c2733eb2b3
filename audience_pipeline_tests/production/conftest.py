"""The production suite's real parts, started by the tests: PostgreSQL, the sandbox (Amazon, S3 for the
state store and Firehose), and the deployment's Dagster processes."""

import os
from collections.abc import Iterator

import pytest

from audience_pipeline.sandbox.server import RunningSandbox, start_sandbox

from .deployment import Deployment
from .environment import deployment_env, provision
from .postgres import Postgres, server_binaries, throwaway_cluster
from .project import Source, write_project

# Audiences of every size class the suite needs: small enough that 50 deliveries stay a CI minute.
AUDIENCES = {audience: 20 + 7 * audience for audience in range(1, 51)}


@pytest.fixture(scope="session")
def postgres() -> Iterator[Postgres]:
    binaries = server_binaries()
    if binaries is None and os.environ.get("AUDIENCE_PIPELINE_REQUIRE_POSTGRES"):
        pytest.fail("PostgreSQL's server is not installed (Debian: apt-get install postgresql)")
    if binaries is None:
        pytest.skip("PostgreSQL's server is not installed (Debian: apt-get install postgresql)")
    with throwaway_cluster(binaries) as server:
        yield server


@pytest.fixture(scope="session")
def prod_sandbox() -> Iterator[RunningSandbox]:
    """A sandbox of these tests' own, with the stream and the state store's bucket."""
    sandbox = start_sandbox()
    provision(sandbox, list(AUDIENCES))
    yield sandbox
    sandbox.stop()


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
    env = deployment_env(postgres, prod_sandbox, source)
    running = Deployment(folder, env, project, module)
    running.set_pools()
    running.start()
    yield running
    running.stop()
