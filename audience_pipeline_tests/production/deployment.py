"""The production shape on this machine: PostgreSQL, a code server, the webserver and the daemon as
processes of their own, configured by the project's `deploy/` files, against the sandbox.

Each process writes its output to a file in the deployment's folder (read them when a test fails). The
tests drive the deployment as an operator does: through the webserver's GraphQL API, with signals, and
by restarting processes.
"""

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import requests

import audience_pipeline

from ..conftest import stop_group, wait_for

DEPLOY = Path(audience_pipeline.__file__).resolve().parents[1] / "deploy"
BIN = Path(sys.executable).parent
LOCATION = "audience_pipeline"
# A backfill's statuses once it has ended, and a run's.
FINISHED = {"COMPLETED", "COMPLETED_SUCCESS", "COMPLETED_FAILED", "FAILED", "CANCELED"}
RUN_ENDED = {"SUCCESS", "FAILURE", "CANCELED"}


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@dataclass
class Deployment:
    """The Dagster processes of one deployment in `folder`, with `env` (the instance, the sandbox, the
    state store, the source, the secrets) and the project in `project` loading `module`."""

    folder: Path
    env: dict[str, str]
    project: Path
    module: str
    processes: dict[str, subprocess.Popen] = field(default_factory=dict)
    server_errors: int = 0

    def __post_init__(self) -> None:
        self.home = self.folder / "dagster_home"
        self.home.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(DEPLOY / "dagster.yaml", self.home / "dagster.yaml")
        self.code_port, self.web_port = free_port(), free_port()
        self.env = {
            **os.environ,
            **self.env,
            "DAGSTER_HOME": str(self.home),
            "AUDIENCE_PIPELINE_CODE_SERVER_HOST": "127.0.0.1",
            "AUDIENCE_PIPELINE_CODE_SERVER_PORT": str(self.code_port),
            "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
        }
        self.url = f"http://127.0.0.1:{self.web_port}"

    def commands(self) -> dict[str, list[str]]:
        workspace = str(DEPLOY / "workspace.yaml")
        return {
            "code_server": [
                str(BIN / "dagster"),
                "code-server",
                "start",
                "--host",
                "127.0.0.1",
                "--port",
                str(self.code_port),
                "--module-name",
                self.module,
                "--working-directory",
                str(self.project),
                "--location-name",
                LOCATION,
            ],
            "webserver": [
                str(BIN / "dagster-webserver"),
                "-h",
                "127.0.0.1",
                "-p",
                str(self.web_port),
                "-w",
                workspace,
            ],
            "daemon": [str(BIN / "dagster-daemon"), "run", "-w", workspace],
        }

    def set_pools(self) -> None:
        """`deploy/pools.sh`, as the deployment's first step (it also creates the instance's tables)."""
        done = subprocess.run(
            ["sh", str(DEPLOY / "pools.sh")], env=self.env, capture_output=True, text=True, timeout=120
        )
        assert done.returncode == 0, f"pools.sh failed: {done.stderr[-3000:]}"

    def start(self, *names: str) -> None:
        """Start the processes named (all by default), each in a process group of its own."""
        for name in names or tuple(self.commands()):
            log = (self.folder / f"{name}.log").open("ab")
            self.processes[name] = subprocess.Popen(
                self.commands()[name],
                env=self.env,
                cwd=self.project,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        wait_for(self._location_loaded, 180, "the webserver to load the code location")

    def kill(self, name: str) -> None:
        """SIGKILL the process `name` and everything in its group (as a crashed host would)."""
        process = self.processes.pop(name)
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=30)

    def stop(self) -> None:
        for name in list(self.processes):
            stop_group(self.processes.pop(name), timeout=30)

    def graphql(self, query: str, variables: dict[str, Any] | None = None) -> dict[str, Any]:
        """The answer's data. A 5xx is asked again, up to 5 times over 10 s, and counted in
        `server_errors`: the webserver answers one while its database restarts."""
        for attempt in range(5):
            response = requests.post(
                f"{self.url}/graphql", json={"query": query, "variables": variables or {}}, timeout=60
            )
            if response.status_code < 500 or attempt == 4:
                break
            self.server_errors += 1
            time.sleep(2)
        response.raise_for_status()
        body = response.json()
        assert "errors" not in body, body["errors"]
        return body["data"]

    def backfill(self, assets: list[list[str]], partitions: list[str]) -> str:
        """Launch a backfill of `assets` over `partitions` as the UI does; its id."""
        data = self.graphql(
            """mutation ($params: LaunchBackfillParams!) { launchPartitionBackfill(backfillParams: $params) {
                 __typename ... on LaunchBackfillSuccess { backfillId } ... on PythonError { message } } }""",
            {"params": {"assetSelection": [{"path": key} for key in assets], "partitionNames": partitions}},
        )["launchPartitionBackfill"]
        assert data["__typename"] == "LaunchBackfillSuccess", data
        return data["backfillId"]

    def backfill_status(self, backfill_id: str) -> str:
        data = self.graphql(
            """query ($id: String!) { partitionBackfillOrError(backfillId: $id) {
                 __typename ... on PartitionBackfill { status } ... on PythonError { message } } }""",
            {"id": backfill_id},
        )["partitionBackfillOrError"]
        assert data["__typename"] == "PartitionBackfill", data
        return data["status"]

    def launch(self, assets: list[list[str]], partition: str) -> str:
        """Launch one run of `assets` for `partition` as the UI's Materialize does; its id."""
        params = {
            "selector": {
                "repositoryLocationName": LOCATION,
                "repositoryName": "__repository__",
                "jobName": "__ASSET_JOB",
                "assetSelection": [{"path": key} for key in assets],
            },
            "executionMetadata": {"tags": [{"key": "dagster/partition", "value": partition}]},
        }
        data = self.graphql(
            """mutation ($params: ExecutionParams!) { launchRun(executionParams: $params) {
                 __typename ... on LaunchRunSuccess { run { runId } } ... on PythonError { message } } }""",
            {"params": params},
        )["launchRun"]
        assert data["__typename"] == "LaunchRunSuccess", data
        return data["run"]["runId"]

    def materialize(self, asset: str, partition: str) -> subprocess.Popen:
        """`dagster asset materialize` of `asset` for `partition` in a process of its own, as an operator
        runs one from a shell: a run of the same instance that no queue or pool holds back."""
        return subprocess.Popen(
            [str(BIN / "dagster"), "asset", "materialize", "--select", asset, "--partition", partition]
            + ["--module-name", self.module, "--working-directory", str(self.project)],
            env=self.env,
            cwd=self.project,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )

    def run_status(self, run_id: str) -> str:
        return self.graphql(
            """query ($id: ID!) { runOrError(runId: $id) { ... on Run { status } } }""", {"id": run_id}
        )["runOrError"]["status"]

    def outcome(self, run_id: str) -> tuple[list[dict[str, Any]], list[str]]:
        """What a run recorded: each materialization's metadata (label → value) and each error message."""
        data = self.graphql(
            """query ($id: ID!) { logsForRun(runId: $id) { ... on EventConnection { events {
                 __typename
                 ... on MaterializationEvent { metadataEntries { label
                     ... on IntMetadataEntry { intValue } ... on TextMetadataEntry { text } } }
                 ... on ExecutionStepFailureEvent { error { message } }
                 ... on RunFailureEvent { message }
               } } } }""",
            {"id": run_id},
        )["logsForRun"]["events"]
        materialized = [
            {e["label"]: e.get("intValue", e.get("text")) for e in event["metadataEntries"]}
            for event in data
            if event["__typename"] == "MaterializationEvent"
        ]
        errors = [
            (event.get("error") or {}).get("message") or event.get("message") or ""
            for event in data
            if event["__typename"] in ("ExecutionStepFailureEvent", "RunFailureEvent")
        ]
        return materialized, errors

    def runs(self) -> list[dict[str, Any]]:
        """Every run: id, status, tags, start and end (Unix seconds)."""
        data = self.graphql(
            """{ runsOrError { ... on Runs { results { runId status startTime endTime
                 tags { key value } } } } }"""
        )
        return data["runsOrError"]["results"]

    def in_step(self, step_key: str) -> set[str]:
        """The started runs whose step `step_key` is in progress."""
        data = self.graphql(
            """{ runsOrError(filter: {statuses: [STARTED]}) { ... on Runs { results { runId
                 stepStats { stepKey status } } } } }"""
        )
        return {
            run["runId"]
            for run in data["runsOrError"]["results"]
            if {"stepKey": step_key, "status": "IN_PROGRESS"} in run["stepStats"]
        }

    def worker_pids(self) -> dict[str, int]:
        """Each run the code server started: its worker process's pid, as its RUN_START event says."""
        log = (self.folder / "code_server.log").read_text(errors="replace")
        started = re.findall(r" - ([0-9a-f-]{36}) - (\d+) - RUN_START - ", log)
        return {run_id: int(pid) for run_id, pid in started}

    def _location_loaded(self) -> bool:
        try:
            data = self.graphql(
                """{ workspaceOrError { ... on Workspace { locationEntries { name
                     locationOrLoadError { __typename } } } } }"""
            )
        except requests.RequestException:
            return False
        entries = data["workspaceOrError"]["locationEntries"]
        return any(
            e["name"] == LOCATION and e["locationOrLoadError"]["__typename"] == "RepositoryLocation"
            for e in entries
        )
