"""From a source change to the member in the sandbox: the latency of change-driven delivery in `dev`.

    python benchmarks/change_latency.py [--changes 3] [--profiles 300] [--workdir DIR]

Starts `audience-pipeline dev` (sample data, sandbox, Dagster webserver and daemon) with the project's
default intervals, waits until the change sensor has recorded the source's first versions, then
`--changes` times: adds a new customer who signs up for the newsletter to `data/sample.duckdb` (as
another process writing the source would), and polls the sandbox's request journal until an Ads Data
Manager member upload carrying that customer arrives. The first change includes the first delivery of
every example audience (datasets created, every member sent); the later ones are the steady state.

Prints one JSON line per change: the seconds from the write to the member's arrival, and the runs the
change caused (job, audience, when each was created, started and ended, in seconds after the write).
Figures are printed, never asserted. Linux or macOS (`dev` stops on SIGINT).
"""

import argparse
import json
import os
import re
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import duckdb
import requests

from audience_pipeline.components.source_changes import SENSOR_NAME

STARTUP_TIMEOUT = 180
ARRIVAL_TIMEOUT = 300
# The journal is served whole (every member upload so far): polling it often would load the machine
# whose latency is measured.
POLL_SECONDS = 1.0
SENSOR_CURSOR = """{ repositoriesOrError { ... on RepositoryConnection { nodes { sensors {
  name sensorState { typeSpecificData { ... on SensorData { lastCursor } } } } } } } }"""
RUNS = """query ($after: Float) { runsOrError(filter: {createdAfter: $after}) { ... on Runs { results {
  jobName status creationTime startTime endTime tags { key value } } } } }"""


class Dev:
    """`audience-pipeline dev` in the background, its output in files in `workdir`."""

    def __init__(self, workdir: Path, profiles: int):
        workdir.mkdir(parents=True, exist_ok=True)
        self.stdout, self.stderr = workdir / "dev.stdout", workdir / "dev.stderr"
        # Variables a developer's shell may hold that would make `dev` skip what it sets up itself.
        own = ("DAGSTER_HOME", "AUDIENCE_PIPELINE_LEDGER_KEY", "AMAZON_ADS_CLIENT_ID")
        env = {k: v for k, v in os.environ.items() if k not in own}
        with self.stdout.open("wb") as out, self.stderr.open("wb") as err:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "audience_pipeline.cli", "dev", "--workdir", str(workdir)]
                + ["--profiles", str(profiles), "--port", str(free_port())],
                stdout=out,
                stderr=err,
                env=env,
            )

    def line(self, prefix: str) -> str:
        """The rest of the first output line starting with `prefix`, once printed."""
        deadline = time.monotonic() + STARTUP_TIMEOUT
        while time.monotonic() < deadline:
            for line in (self.stdout.read_text() + self.stderr.read_text()).splitlines():
                if line.startswith(prefix):
                    return line.removeprefix(prefix)
            if self.process.poll() is not None:
                raise SystemExit(f"dev exited with {self.process.returncode}; see {self.stderr}")
            time.sleep(0.5)
        raise SystemExit(f"no `{prefix}` line after {STARTUP_TIMEOUT} s; see {self.stdout}")

    def stop(self) -> None:
        """Ctrl-C, as a developer stops it: `dev` stops everything it started."""
        self.process.send_signal(signal.SIGINT)
        self.process.wait(timeout=60)


def free_port() -> int:
    """A loopback port nothing listens on."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def graphql(ui: str, query: str, variables: dict | None = None) -> dict:
    """The answer of Dagster's GraphQL API at `ui`."""
    answer = requests.post(f"{ui}/graphql", json={"query": query, "variables": variables or {}}, timeout=30)
    return answer.json()["data"]


def wait_for_first_versions(ui: str) -> None:
    """Until the change sensor has a cursor: a change from then on is one it compares."""
    deadline = time.monotonic() + STARTUP_TIMEOUT
    while time.monotonic() < deadline:
        nodes = graphql(ui, SENSOR_CURSOR)["repositoriesOrError"].get("nodes") or []
        sensors = {s["name"]: s["sensorState"]["typeSpecificData"] for n in nodes for s in n["sensors"]}
        if (sensors.get(SENSOR_NAME) or {}).get("lastCursor"):
            return
        time.sleep(1)
    raise SystemExit(f"{SENSOR_NAME} recorded no versions after {STARTUP_TIMEOUT} s")


def add_newsletter_subscriber(source: Path, user_id: str) -> float:
    """A new customer (a copy of a consenting one, with an e-mail of their own) and their newsletter
    sign-up, written in one transaction; the time it committed. Retried while a reader holds the file
    (DuckDB lets a writer in only when no other process has it open)."""
    while True:
        try:
            with duckdb.connect(str(source)) as conn:
                conn.execute("BEGIN")
                conn.execute(
                    "INSERT INTO profiles SELECT * REPLACE ($id AS user_id, $email AS email) FROM profiles "
                    "WHERE amzn_ad_storage IS DISTINCT FROM 'DENIED' "
                    "AND amzn_user_data IS DISTINCT FROM 'DENIED' LIMIT 1",
                    {"id": user_id, "email": f"{user_id}@example.com"},
                )
                conn.execute(
                    "INSERT INTO events SELECT max(event_id) + 1, $id, 'newsletter_signup', max(event_time), "
                    "NULL, NULL FROM events",
                    {"id": user_id},
                )
                conn.execute("COMMIT")
            return time.time()
        except duckdb.IOException as error:
            if "lock" not in str(error).lower():
                raise
            time.sleep(0.05)


def wait_for_member(ads_url: str, user_id: str) -> float:
    """The time an ADM member upload carrying `user_id` is first seen in the sandbox's journal."""
    deadline = time.monotonic() + ARRIVAL_TIMEOUT
    while time.monotonic() < deadline:
        entries = requests.get(f"{ads_url}/_sandbox/journal", timeout=30).json()["entries"]
        uploads = [
            entry["body"]["members"]
            for entry in entries
            if entry["method"] == "POST" and entry["path"].endswith("/members") and entry.get("body")
        ]
        if any(member.get("externalUserId") == user_id for members in uploads for member in members):
            return time.time()
        time.sleep(POLL_SECONDS)
    raise SystemExit(f"{user_id} did not arrive in the sandbox within {ARRIVAL_TIMEOUT} s")


def runs_since(ui: str, changed_at: float) -> list[dict]:
    """The runs created since the change: job, audience, and seconds after the change."""
    results = graphql(ui, RUNS, {"after": changed_at})["runsOrError"]["results"]

    def after(timestamp: float | None) -> float | None:
        return None if timestamp is None else round(timestamp - changed_at, 1)

    return sorted(
        (
            {
                "job": run["jobName"],
                "audience": {t["key"]: t["value"] for t in run["tags"]}.get("dagster/partition"),
                "created": after(run["creationTime"]),
                "started": after(run["startTime"]),
                "ended": after(run["endTime"]),
            }
            for run in results
        ),
        key=lambda run: run["created"],
    )


def main() -> None:
    """Measures `--changes` source changes in one `dev` session."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--changes", type=int, default=3)
    parser.add_argument("--profiles", type=int, default=300)
    parser.add_argument("--workdir", type=Path, default=None, help="default: a temporary folder")
    args = parser.parse_args()
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="change_latency-"))
    dev = Dev(workdir, args.profiles)
    try:
        ui = dev.line("Dagster UI: ")
        ads_url = re.match(r"Amazon Ads API (\S+),", dev.line("sandbox: ")).group(1)
        wait_for_first_versions(ui)
        latencies = []
        for change in range(1, args.changes + 1):
            # Unique across sessions on one `--workdir`; `u` and digits, as the sample's user ids.
            user_id = f"u{time.time_ns() // 1_000_000}"
            changed_at = add_newsletter_subscriber(workdir / "data" / "sample.duckdb", user_id)
            seconds = wait_for_member(ads_url, user_id) - changed_at
            latencies.append(seconds)
            runs = runs_since(ui, changed_at)
            print(json.dumps({"change": change, "seconds_to_sandbox": round(seconds, 1), "runs": runs}))
            # The next change starts from a quiet pipeline: every run this one caused has ended.
            while any(run["ended"] is None for run in runs_since(ui, changed_at)):
                time.sleep(1)
        summary = {"changes": len(latencies), "first": round(latencies[0], 1)}
        if len(latencies) > 1:
            summary["steady_median"] = round(statistics.median(latencies[1:]), 1)
            summary["steady_max"] = round(max(latencies[1:]), 1)
        print(json.dumps(summary))
    finally:
        dev.stop()


if __name__ == "__main__":
    main()
