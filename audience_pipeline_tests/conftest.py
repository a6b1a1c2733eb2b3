"""Fixtures shared by every test package: the sandbox on loopback, started once per session."""

import pytest
import requests

from audience_pipeline.clients.ads_api import AdsApiClient
from audience_pipeline.sandbox.config import SandboxConfig
from audience_pipeline.sandbox.server import RunningSandbox, start_sandbox


@pytest.fixture(scope="session")
def sandbox_server() -> RunningSandbox:
    """Both sandbox servers on free loopback ports, with jobs that move fast enough for tests."""
    running = start_sandbox(
        config=SandboxConfig(job_step_seconds=0.05, job_step_polls=1, token_ttl_seconds=3600)
    )
    yield running
    running.stop()


@pytest.fixture
def sandbox(sandbox_server: RunningSandbox) -> RunningSandbox:
    """The sandbox, emptied before the test: no records, faults or journal entries left over."""
    for url in (sandbox_server.ads_url, sandbox_server.aws_url):
        requests.post(f"{url}/_sandbox/reset", timeout=10).raise_for_status()
    return sandbox_server


@pytest.fixture
def ads_client(sandbox: RunningSandbox) -> AdsApiClient:
    """An Amazon Ads API client pointed at the sandbox, retrying without real waits."""
    return AdsApiClient(
        "sandbox-client",
        "sandbox-secret",
        "sandbox-refresh",
        base_url=sandbox.ads_url,
        token_url=sandbox.token_url,
        sleep=lambda seconds: None,
    )


def add_fault(url: str, **rule) -> None:
    """Inject a fault into the sandbox server at `url` (see `audience_pipeline.sandbox.faults`)."""
    requests.post(f"{url}/_sandbox/faults", json=rule, timeout=10).raise_for_status()


def journal(url: str) -> list[dict]:
    """What the sandbox server at `url` received, in order."""
    return requests.get(f"{url}/_sandbox/journal", timeout=10).json()["entries"]
