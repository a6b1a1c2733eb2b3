"""Fixtures shared by every test package: the sandbox on loopback, started once per session."""

import json
import os
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import dagster as dg
import pytest
import requests
from click.testing import CliRunner

from audience_pipeline.clients import ads_api
from audience_pipeline.clients.ads_api import AdsApiClient
from audience_pipeline.defs.resources import resources
from audience_pipeline.resources.amazon_ads import AmazonAdsApi
from audience_pipeline.sandbox.config import SandboxConfig
from audience_pipeline.sandbox.server import RunningSandbox, start_sandbox

# Fewer than the 2,000 repeat purchasers DSP needs: AMC fails the example's rule-based audience.
DEMO_PROFILES = 2000


@pytest.fixture(scope="session")
def sandbox_server() -> Iterator[RunningSandbox]:
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


def sandbox_ads_client(sandbox: RunningSandbox, **options: Any) -> AdsApiClient:
    """An Amazon Ads API client pointed at the sandbox (which takes any credentials)."""
    return AdsApiClient(
        "sandbox-client",
        "sandbox-secret",
        "sandbox-refresh",
        base_url=sandbox.ads_url,
        token_url=sandbox.token_url,
        **options,
    )


@pytest.fixture
def ads_client(sandbox: RunningSandbox) -> AdsApiClient:
    """An Amazon Ads API client pointed at the sandbox, retrying without real waits."""
    return sandbox_ads_client(sandbox, sleep=lambda seconds: None)


@pytest.fixture
def sandbox_env(sandbox: RunningSandbox, monkeypatch) -> RunningSandbox:
    """The sandbox, and the environment of a deployment pointed at it: its endpoints, throwaway Login
    with Amazon credentials; API backoff without real waits, so fault tests stay fast."""
    for name, value in sandbox.env().items():
        monkeypatch.setenv(name, value)
    for name in ("AMAZON_ADS_CLIENT_ID", "AMAZON_ADS_CLIENT_SECRET", "AMAZON_ADS_REFRESH_TOKEN"):
        monkeypatch.setenv(name, "dummy")
    monkeypatch.setattr(ads_api.random, "uniform", lambda low, high: 0.0)
    return sandbox


def amazon_ads_resource() -> AmazonAdsApi:
    """The `amazon_ads` resource wired as `defs/resources.py` wires it, from `sandbox_env`'s environment."""
    return AmazonAdsApi(
        client_id=dg.EnvVar("AMAZON_ADS_CLIENT_ID"),
        client_secret=dg.EnvVar("AMAZON_ADS_CLIENT_SECRET"),
        refresh_token=dg.EnvVar("AMAZON_ADS_REFRESH_TOKEN"),
        base_url=os.environ["AMAZON_ADS_API_URL"],
        token_url=os.environ["AMAZON_ADS_TOKEN_URL"],
    )


def wired_resources(*keys: str) -> dict[str, dg.ConfigurableResource]:
    """The resources named, wired by `defs/resources.py` itself from the current environment."""
    wired = resources().resources
    return {key: wired[key] for key in keys}


def add_fault(url: str, **rule) -> None:
    """Inject a fault into the sandbox server at `url` (see `audience_pipeline.sandbox.faults`)."""
    requests.post(f"{url}/_sandbox/faults", json=rule, timeout=10).raise_for_status()


def clear_faults(url: str) -> None:
    """Remove every fault of the sandbox server at `url`; requests held at its barriers go on."""
    requests.delete(f"{url}/_sandbox/faults", timeout=10).raise_for_status()


def wait_for(check: Callable[[], Any], timeout: float, what: str, every: float = 0.5) -> Any:
    """`check()`'s first truthy answer within `timeout` seconds; an AssertionError naming `what` else."""
    deadline = time.monotonic() + timeout
    while True:
        answer = check()
        if answer:
            return answer
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(every)


def journal(url: str) -> list[dict]:
    """What the sandbox server at `url` received, in order."""
    return requests.get(f"{url}/_sandbox/journal", timeout=10).json()["entries"]


@dataclass
class DemoRun:
    """`audience-pipeline demo --json` run once for the session, against a sandbox of its own that the
    environment names, with DAGSTER_HOME set to an empty folder: what it printed and left behind."""

    report: dict
    stderr: str
    workdir: Path
    dagster_home: Path
    sandbox: RunningSandbox


@pytest.fixture(scope="session")
def demo_run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DemoRun]:
    """The demo's one run, for the tests that only read what it did (it takes the longest of all).
    Its sandbox is not the session's: tests reset that one, and this one must keep what arrived."""
    from audience_pipeline.cli import main

    folder = tmp_path_factory.mktemp("demo")
    dagster_home, workdir = folder / "dagster_home", folder / "demo"
    dagster_home.mkdir()
    running = start_sandbox(config=SandboxConfig(job_step_seconds=0.05, job_step_polls=1))
    try:
        with pytest.MonkeyPatch.context() as environment:
            environment.setenv("DAGSTER_HOME", str(dagster_home))
            for name, value in running.env().items():
                environment.setenv(name, value)
            for name in ("AMAZON_ADS_CLIENT_ID", "AMAZON_ADS_CLIENT_SECRET", "AMAZON_ADS_REFRESH_TOKEN"):
                environment.setenv(name, "external-sandbox")
            result = CliRunner().invoke(
                main, ["demo", "--json", "--profiles", str(DEMO_PROFILES), "--workdir", str(workdir)]
            )
        assert result.exit_code == 0, result.output
        yield DemoRun(json.loads(result.stdout), result.stderr, workdir, dagster_home, running)
    finally:
        running.stop()


def stop_group(process: subprocess.Popen, timeout: float = 20) -> None:
    """End the process and everything in its group: politely, then not (after `timeout` seconds)."""
    # The group may be gone already when the process died on its own.
    with suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        with suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()
