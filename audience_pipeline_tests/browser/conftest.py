"""The Dagster UI over the example project and the sandbox, and headless Chromium to drive it.

The UI is a real `dagster dev`, as `audience-pipeline dev` starts it: the webserver, and the daemon that
runs backfills, sensors and queued runs with the project's `dagster.yaml`. Runs launched from the UI
run in their own subprocesses and reach the sandbox over loopback, exactly as they would reach Amazon.
"""

import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests
from cryptography.fernet import Fernet
from playwright.sync_api import Error as PlaywrightError
from playwright.sync_api import Page, sync_playwright

from audience_pipeline.cli.dev import provision_example
from audience_pipeline.membership.payload_crypto import LEDGER_KEY_ENV_VAR
from audience_pipeline.resources.amazon_ads import (
    CLIENT_ID_ENV_VAR,
    CLIENT_SECRET_ENV_VAR,
    REFRESH_TOKEN_ENV_VAR,
)
from audience_pipeline.resources.duckdb_source import SOURCE_ENV_VAR
from audience_pipeline.resources.state_store import STATE_ENV_VAR
from audience_pipeline.sample_data import write_sample_data
from audience_pipeline.sandbox.server import RunningSandbox, start_sandbox

from ..conftest import stop_group

CHROMIUM = Path("/usr/bin/chromium")
# Set by `.ci/run`, which installs Chromium: there a missing browser fails the test instead of skipping it.
REQUIRE_BROWSER_ENV_VAR = "AUDIENCE_PIPELINE_REQUIRE_BROWSER"
# Without the background-networking flags Chromium keeps calling Google's hosts, and the closed
# network of CI refuses those connections; the other flags keep a headless root run quiet and stable.
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
ARTIFACTS = Path(__file__).parent / "artifacts"
PROJECT_ROOT = Path(__file__).parents[2]
STARTUP_TIMEOUT_SECONDS = 90
LOCATIONS = """
{ workspaceOrError { ... on Workspace { locationEntries {
  loadStatus locationOrLoadError { ... on PythonError { message } }
} } } }
"""


@dataclass
class Webserver:
    """A running `dagster dev`: the webserver's address, the log it writes (with the daemon's), the
    sample data it reads and the sandbox its runs send to."""

    url: str
    log: Path
    source: Path
    sandbox: RunningSandbox

    def graphql(self, query: str, **variables) -> dict:
        """The `data` of a GraphQL query against the webserver; fails on GraphQL errors."""
        response = requests.post(
            f"{self.url}/graphql", json={"query": query, "variables": variables}, timeout=30
        )
        response.raise_for_status()
        body = response.json()
        assert not body.get("errors"), body["errors"]
        return body["data"]

    def log_tail(self, lines: int = 40) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _wait_for_webserver(process: subprocess.Popen, url: str, log: Path) -> None:
    """Until the webserver answers and has loaded the code location: before that, its pages and API
    show an empty or half-loaded workspace."""
    deadline = time.monotonic() + STARTUP_TIMEOUT_SECONDS
    while True:
        if process.poll() is not None:
            raise AssertionError(f"dagster dev exited with {process.returncode}:\n{log.read_text()}")
        try:
            response = requests.post(f"{url}/graphql", json={"query": LOCATIONS}, timeout=5)
            entries = response.json()["data"]["workspaceOrError"]["locationEntries"]
        except (requests.RequestException, ValueError, KeyError, TypeError):
            entries = []
        errors = [e["locationOrLoadError"].get("message") for e in entries if e["locationOrLoadError"]]
        if any(errors):
            raise AssertionError(f"the code location failed to load: {errors}\n{log.read_text()}")
        if entries and all(e["loadStatus"] == "LOADED" for e in entries):
            return
        if time.monotonic() > deadline:
            raise AssertionError(
                f"dagster dev did not load the project within {STARTUP_TIMEOUT_SECONDS} s:\n{log.read_text()}"
            )
        time.sleep(0.25)


def check_chromium(chromium: Path, environ: Mapping[str, str]) -> None:
    """Nothing when `chromium` is there; else skip the test, or fail it where the browser is required."""
    if chromium.exists():
        return
    reason = (
        f"{chromium} is missing: the browser tests need Debian's `chromium` package, which `.ci/run` "
        "installs with apt-get (locally: `sudo apt-get install chromium`)"
    )
    if environ.get(REQUIRE_BROWSER_ENV_VAR):
        pytest.fail(f"{reason}; {REQUIRE_BROWSER_ENV_VAR} is set, so the browser tests must run")
    pytest.skip(reason)


@pytest.fixture(scope="module")
def chromium() -> Path:
    """Debian's Chromium, checked before anything is started for it."""
    check_chromium(CHROMIUM, os.environ)
    return CHROMIUM


@pytest.fixture(scope="module")
def webserver(chromium: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Webserver]:
    """`dagster dev` over the example project, its sample data and a sandbox of its own, with the
    Firehose streams and AMC buckets made; stopped with every process and run it launched."""
    work = tmp_path_factory.mktemp("dagster_ui")
    source = write_sample_data(work / "data", profiles=2000)
    home = work / "dagster_home"
    home.mkdir()
    # The instance a newcomer gets from `audience-pipeline dev`: the project's settings.
    shutil.copyfile(PROJECT_ROOT / "dagster.yaml", home / "dagster.yaml")
    sandbox = start_sandbox()
    try:
        provision_example(sandbox)
        yield from _serve(work, sandbox, source, home)
    finally:
        sandbox.stop()


def _serve(work: Path, sandbox: RunningSandbox, source: Path, home: Path) -> Iterator[Webserver]:
    """`dagster dev` on a free port with the environment the example needs; its process group is ended
    when the generator is closed."""
    env = {
        **os.environ,
        **sandbox.env(),
        # The sandbox accepts any Login with Amazon credentials; the resource insists they are set.
        **dict.fromkeys((CLIENT_ID_ENV_VAR, CLIENT_SECRET_ENV_VAR, REFRESH_TOKEN_ENV_VAR), "browser-test"),
        SOURCE_ENV_VAR: str(source),
        STATE_ENV_VAR: str(work / "state"),
        LEDGER_KEY_ENV_VAR: Fernet.generate_key().decode(),
        "DAGSTER_HOME": str(home),
    }
    port = _free_port()
    log = work / "dagster_dev.log"
    command = [
        str(Path(sys.executable).parent / "dagster"),
        *("dev", "-m", "audience_pipeline.definitions", "-h", "127.0.0.1", "-p", str(port)),
    ]
    with log.open("w") as out:
        # Its own process group, so that teardown also ends the webserver, daemon, code servers and runs.
        process = subprocess.Popen(
            command, cwd=PROJECT_ROOT, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
    try:
        url = f"http://127.0.0.1:{port}"
        _wait_for_webserver(process, url, log)
        webserver = Webserver(url, log, source, sandbox)
        # A new instance greets the first page with a "Join the Dagster community" modal, a second after
        # it loads, over whatever menu or dialog is open: marked seen for the instance, it never shows.
        webserver.graphql("mutation { setNuxSeen }")
        assert webserver.graphql("{ shouldShowNux }") == {"shouldShowNux": False}
        yield webserver
    finally:
        stop_group(process)


@contextmanager
def chromium_page(name: str) -> Iterator[Page]:
    """A page in Debian's headless Chromium, driven by Playwright (whose own browser download is blocked
    here); if the block fails, a screenshot of the page goes to `artifacts/<name>-failure.png`."""
    check_chromium(CHROMIUM, os.environ)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1600, "height": 1000})
            try:
                yield page
            except BaseException:
                ARTIFACTS.mkdir(exist_ok=True)
                # A page that crashed cannot be photographed; the test's own error is the one to see.
                with suppress(PlaywrightError):
                    page.screenshot(path=ARTIFACTS / f"{name}-failure.png")
                raise
        finally:
            browser.close()
