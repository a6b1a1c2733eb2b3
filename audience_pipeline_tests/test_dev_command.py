"""`audience-pipeline dev` as a user runs it: real processes on loopback, the UI's GraphQL API, Ctrl-C."""

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests
from click.testing import CliRunner

from audience_pipeline.cli import main

# The example project's audience snapshot and every destination asset (defs/*/defs.yaml).
EXAMPLE_ASSETS = {
    ("audience_snapshot",),
    ("firehose", "audience_changes"),
    ("ads_data_manager", "amzn1_ads_account_sandbox"),
    ("dsp", "advertiser_5551234567890"),
    ("dsp", "advertiser_5551234567890", "flush"),
    ("amc", "dataset", "sample_customer_identities"),
    ("amc", "dataset", "sample_purchases"),
    ("amc", "deletion", "amazon_user_data_denied"),
    ("amc", "audience", "sample_repeat_purchasers"),
}
EXAMPLE_SENSORS = {"dsp_advertiser_5551234567890_flush", "amc_amcsandbox01_job_status"}
REPOSITORIES = """{ repositoriesOrError { ... on RepositoryConnection { nodes {
  name assetNodes { assetKey { path } } sensors { name sensorState { status } } } } } }"""
# Variables a developer's shell may hold that would make the command skip what it should set up here.
OWN_VARIABLES = (
    "DAGSTER_HOME",
    "AUDIENCE_PIPELINE_LEDGER_KEY",
    "AMAZON_ADS_CLIENT_ID",
    "AMAZON_ADS_CLIENT_SECRET",
    "AMAZON_ADS_REFRESH_TOKEN",
)
STARTUP_TIMEOUT = 120
STOP_TIMEOUT = 30


class Dev:
    """`audience-pipeline dev` running in the background, its output going to files in `logs`."""

    def __init__(self, workdir: Path, logs: Path, port: int):
        logs.mkdir()
        self.stdout, self.stderr = logs / "stdout.txt", logs / "stderr.txt"
        env = {k: v for k, v in os.environ.items() if k not in OWN_VARIABLES}
        with self.stdout.open("wb") as out, self.stderr.open("wb") as err:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "audience_pipeline.cli", "dev", "--workdir", str(workdir)]
                + ["--profiles", "300", "--port", str(port)],
                stdout=out,
                stderr=err,
                env=env,
            )

    def output(self) -> str:
        """What the command printed so far, both streams."""
        return self.stdout.read_text() + self.stderr.read_text()

    def wait_for_ui(self) -> str:
        """The address in the `Dagster UI:` line, once printed (on stdout)."""
        deadline = time.monotonic() + STARTUP_TIMEOUT
        while time.monotonic() < deadline:
            for line in self.stdout.read_text().splitlines():
                if line.startswith("Dagster UI: "):
                    return line.removeprefix("Dagster UI: ")
            assert self.process.poll() is None, f"exited with {self.process.returncode}:\n{self.output()}"
            time.sleep(0.5)
        raise AssertionError(f"no UI address after {STARTUP_TIMEOUT} s:\n{self.output()}")

    def interrupt(self) -> tuple[int, dict[int, tuple[str, int]]]:
        """Ctrl-C; the exit code, and the processes the command had started (see `started_by`)."""
        started = started_by(self.process.pid)
        self.process.send_signal(signal.SIGINT)
        try:
            return self.process.wait(timeout=STOP_TIMEOUT), started
        except subprocess.TimeoutExpired:
            self.process.kill()
            raise AssertionError(f"still running {STOP_TIMEOUT} s after Ctrl-C:\n{self.output()}") from None


def free_port() -> int:
    """A loopback port nothing listens on."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def processes() -> dict[int, tuple[str, int, int, str]]:
    """Every process: pid -> (state, parent pid, process group, start time)."""
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:  # ended meanwhile
            continue
        # The command name (field 2) may hold spaces and parentheses; the fields after it do not.
        fields = stat[stat.rindex(")") + 2 :].split()
        found[int(entry.name)] = (fields[0], int(fields[1]), int(fields[2]), fields[19])
    return found


def started_by(root: int) -> dict[int, tuple[str, int]]:
    """The processes descending from `root`: pid -> (start time, which tells a reused pid apart;
    process group)."""
    table = processes()
    children: dict[int, list[int]] = {}
    for pid, (_, parent, _, _) in table.items():
        children.setdefault(parent, []).append(pid)
    found, todo = {}, list(children.get(root, []))
    while todo:
        pid = todo.pop()
        found[pid] = (table[pid][3], table[pid][2])
        todo += children.get(pid, [])
    return found


def left_running(started: dict[int, tuple[str, int]]) -> list[int]:
    """Those of `started`, and any process in their groups (a run launched later), still running.
    A zombie has ended: it only waits for a parent to collect it."""
    groups = {group for _, group in started.values()} - {os.getpgrp()}
    return [
        pid
        for pid, (state, _, group, start) in processes().items()
        if state != "Z" and (started.get(pid, (None,))[0] == start or group in groups)
    ]


def repositories(url: str) -> list[dict]:
    """The UI's repositories, once the code location has loaded."""
    deadline = time.monotonic() + STARTUP_TIMEOUT
    while True:
        answer = requests.post(f"{url}/graphql", json={"query": REPOSITORIES}, timeout=30).json()
        nodes = answer["data"]["repositoriesOrError"].get("nodes")
        if nodes:
            return nodes
        assert time.monotonic() < deadline, f"no repository after {STARTUP_TIMEOUT} s: {answer}"
        time.sleep(1)


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads processes from /proc (Linux)")
def test_dev_serves_the_example_and_ctrl_c_stops_everything_it_started(tmp_path):
    workdir, port = tmp_path / "work", free_port()
    dev = Dev(workdir, tmp_path / "first", port)
    try:
        url = dev.wait_for_ui()
        assert url == f"http://127.0.0.1:{port}"
        [repository] = repositories(url)
    finally:
        code, started = dev.interrupt()

    assets = {tuple(node["assetKey"]["path"]) for node in repository["assetNodes"]}
    assert assets >= EXAMPLE_ASSETS
    sensors = {sensor["name"]: sensor["sensorState"]["status"] for sensor in repository["sensors"]}
    assert {sensors.get(name) for name in EXAMPLE_SENSORS} == {"RUNNING"}, sensors
    assert code == 0, dev.output()
    assert len(started) >= 4, f"dg dev, its webserver, daemon and code server expected: {started}"
    assert left_running(started) == []
    output = dev.output()
    assert f"sample data: writing 300 profiles to {workdir / 'data' / 'sample.duckdb'}" in output
    assert "AUDIENCE_PIPELINE_LEDGER_KEY\n" in output
    assert "will not be used to configure Dagster" not in output, (
        "no warning about the project's dagster.yaml"
    )
    key = (workdir / ".ledger_key").read_text()
    assert key not in output, "the ledger key is never printed"
    assert (workdir / ".ledger_key").stat().st_mode & 0o777 == 0o600

    # A restart in the same folder starts on what the first run left there.
    again = Dev(workdir, tmp_path / "again", free_port())
    try:
        again.wait_for_ui()
    finally:
        code, started = again.interrupt()
    assert code == 0, again.output()
    assert left_running(started) == []
    assert f"sample data: reusing {workdir / 'data' / 'sample.duckdb'}" in again.output()
    assert (workdir / ".ledger_key").read_text() == key, "the ledger of the first run stays readable"


def test_a_busy_port_is_refused_before_anything_starts(tmp_path):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]

        result = CliRunner().invoke(main, ["dev", "--workdir", str(tmp_path / "work"), "--port", str(port)])

    assert result.exit_code == 2
    assert "--port" in result.output and f"127.0.0.1:{port} is already in use" in result.output
    assert not (tmp_path / "work").exists()
