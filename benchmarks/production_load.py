"""Load on the production deployment: many audiences of mixed sizes in one backfill, through the daemon.

    python benchmarks/production_load.py [--audiences 500] [--smallest 1000] [--largest 1000000]
                                         [--skew 20] [--workdir DIR]

Starts what the production suite (`audience_pipeline_tests/production`) starts, with the same
`deploy/` files: a throwaway PostgreSQL cluster, the sandbox (in this process), and the code server,
webserver and daemon as processes of their own, over a project of `--audiences` audiences at Firehose,
ADM and DSP (the project's AMC upload, of every profile, is not part of this backfill). Audience k of
n has `smallest * (largest / smallest) ** ((k / (n - 1)) ** skew)` members: most are small, a few are
large, and the last has `largest`.

One backfill of every audience is launched as the UI does, and followed to its end. Meanwhile a thread
samples every process the code server started (the run workers) twice a second for its peak RSS
(`VmHWM`): a worker that ends between samples loses at most its last half second. A child process
drains the stream's bucket as the stream's consumer would, counting each audience's messages.

Prints JSON lines: progress each minute (runs by status), then the figures: total time, runs and
runs/minute, run durations, peak RSS of the run workers (overall and of the largest audiences' runs)
and of the long-lived processes, the instance database's event log, the state store's objects, and
whether every destination holds exactly each audience.
"""

import argparse
import contextlib
import json
import logging
import signal
import statistics
import sys
import tempfile
import threading
import time
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

import psycopg2
from scale import drained, emit, let_go, status_mib

# The production suite's harness (the benchmark runs from a checkout, with the dev extra installed).
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from audience_pipeline.membership.dsp_audiences import dsp_audience_name  # noqa: E402
from audience_pipeline.sandbox.server import start_sandbox  # noqa: E402
from audience_pipeline_tests.conftest import wait_for  # noqa: E402
from audience_pipeline_tests.production.deployment import FINISHED, Deployment  # noqa: E402
from audience_pipeline_tests.production.environment import (  # noqa: E402
    STATE_BUCKET,
    deployment_env,
    destination_ids,
    provision,
    sandbox_client,
)
from audience_pipeline_tests.production.postgres import server_binaries, throwaway_cluster  # noqa: E402
from audience_pipeline_tests.production.project import ASSETS, STREAM, Source, write_project  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--audiences", type=int, default=500)
    parser.add_argument("--smallest", type=int, default=1_000)
    parser.add_argument("--largest", type=int, default=1_000_000)
    parser.add_argument("--skew", type=float, default=20.0)
    parser.add_argument("--workdir", type=Path, help="default: a temporary folder")
    args = parser.parse_args()
    if args.audiences < 2 or not 0 < args.smallest <= args.largest:
        parser.error("--audiences must be at least 2, and 0 < --smallest <= --largest")
    binaries = server_binaries()
    if binaries is None:
        sys.exit("PostgreSQL's server is not installed (Debian: apt-get install postgresql)")
    sizes = audience_sizes(args.audiences, args.smallest, args.largest, args.skew)
    # Stopped, it still stops the deployment, the sandbox and PostgreSQL (`finally` below).
    signal.signal(signal.SIGTERM, lambda *_: sys.exit("stopped"))
    with tempfile.TemporaryDirectory() as scratch:
        run(args.workdir or Path(scratch), sizes, binaries)


def audience_sizes(count: int, smallest: int, largest: int, skew: float) -> dict[int, int]:
    """Audience ids 1..count and their sizes, from `smallest` up to `largest`."""
    ratio = largest / smallest
    return {k + 1: round(smallest * ratio ** ((k / (count - 1)) ** skew)) for k in range(count)}


def run(workdir: Path, sizes: dict[int, int], binaries: Path) -> None:
    workdir.mkdir(parents=True, exist_ok=True)
    emit({"audiences": len(sizes), "members": sum(sizes.values()), "largest": max(sizes.values())})
    # One access-log line per call would bury the figures.
    logging.getLogger("werkzeug").setLevel(logging.WARNING)
    with throwaway_cluster(binaries) as postgres:
        sandbox = start_sandbox()
        try:
            let_go(sandbox)
            provision(sandbox, list(sizes))
            source = Source(workdir / "source.duckdb", sizes)
            started = time.perf_counter()
            source.write()
            emit({"step": "source", "seconds": round(time.perf_counter() - started, 1)})
            folder = workdir / "deployment"
            module = write_project(folder / "project", list(sizes))
            env = deployment_env(postgres, sandbox, source)
            deployment = Deployment(folder, env, folder / "project", module)
            deployment.set_pools()
            deployment.start()
            try:
                backfilled(deployment, sandbox, sizes, postgres.env())
            finally:
                deployment.stop()
            emit({"process": "sandbox", "peak_rss_mib": status_mib("VmHWM")})
        finally:
            sandbox.stop()


def backfilled(deployment: Deployment, sandbox, sizes: dict[int, int], database: dict[str, str]) -> None:
    """One backfill of every audience, measured; its figures and checks emitted."""
    sampler = WorkerSampler(deployment.processes["code_server"].pid)
    sampler.start()
    with drained(f"{STREAM}-bucket", deployment.env, count=True) as drain:
        started = time.time()
        backfill = deployment.backfill(ASSETS, [str(a) for a in sizes])
        status = wait_for(Progress(deployment, backfill, started), 6 * 3600, "the backfill", every=10)
        seconds = time.time() - started
    sampler.stop()
    runs = deployment.runs()
    emit({"backfill": status, "seconds": round(seconds, 1), **run_figures(runs, seconds)})
    emit(worker_figures(deployment, sampler.peaks, runs, sizes))
    emit({f"{name}_peak_rss_mib": status_mib("VmHWM", p.pid) for name, p in deployment.processes.items()})
    emit(storage_figures(sandbox, database))
    emit(held(sandbox, sizes, drain["members"]))


class Progress:
    """Called: the backfill's status once finished, else None, with a line of runs by status on stderr
    every minute."""

    def __init__(self, deployment: Deployment, backfill: str, started: float) -> None:
        self.deployment, self.backfill, self.started = deployment, backfill, started
        self.said = started

    def __call__(self) -> str | None:
        status = self.deployment.backfill_status(self.backfill)
        if time.time() - self.said >= 60:
            self.said = time.time()
            minute = round((self.said - self.started) / 60, 1)
            counts = Counter(r["status"] for r in self.deployment.runs())
            print(json.dumps({"minute": minute, **counts}), file=sys.stderr)
        return status if status in FINISHED else None


class WorkerSampler(threading.Thread):
    """Samples the peak RSS of every descendant of `root` twice a second into `peaks` (pid → MiB)."""

    def __init__(self, root: int) -> None:
        super().__init__(daemon=True)
        self.root = root
        self.peaks: dict[int, int] = {}
        self._halt = threading.Event()

    def run(self) -> None:
        while not self._halt.wait(0.5):
            for pid in descendants(self.root):
                with contextlib.suppress(OSError, RuntimeError):  # ended meanwhile
                    self.peaks[pid] = max(self.peaks.get(pid, 0), status_mib("VmHWM", pid))

    def stop(self) -> None:
        self._halt.set()
        self.join()


def descendants(root: int) -> list[int]:
    """The pids of every living process below `root`."""
    children = defaultdict(list)
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children[int(fields[1])].append(int(stat.parent.name))
    found, todo = [], [root]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def run_figures(runs: list[dict[str, Any]], seconds: float) -> dict[str, Any]:
    """Runs by status, runs a minute, and run durations (start to end)."""
    durations = sorted(r["endTime"] - r["startTime"] for r in runs if r["startTime"] and r["endTime"])
    return {
        "runs": dict(Counter(r["status"] for r in runs)),
        "runs_per_minute": round(len(runs) / seconds * 60, 1),
        "run_seconds_median": round(statistics.median(durations), 1),
        "run_seconds_p95": round(durations[int(len(durations) * 0.95)], 1),
        "run_seconds_max": round(durations[-1], 1),
    }


def worker_figures(
    deployment: Deployment, peaks: dict[int, int], runs: list[dict[str, Any]], sizes: dict[int, int]
) -> dict[str, Any]:
    """Peak RSS of the run workers: overall, and of the runs of the five largest audiences."""
    pids = deployment.worker_pids()
    partition = {
        r["runId"]: int(t["value"]) for r in runs for t in r["tags"] if t["key"] == "dagster/partition"
    }
    sampled = {run_id: peaks[pid] for run_id, pid in pids.items() if pid in peaks}
    largest = sorted(sizes, key=sizes.get)[-5:]
    return {
        "workers_sampled": len(sampled),
        "workers": len(pids),
        "worker_peak_rss_mib_median": statistics.median(sampled.values()),
        "worker_peak_rss_mib_max": max(sampled.values()),
        "largest_audiences_worker_peak_rss_mib": {
            sizes[a]: max((mib for run, mib in sampled.items() if partition.get(run) == a), default=None)
            for a in largest
        },
    }


def storage_figures(sandbox, database: dict[str, str]) -> dict[str, Any]:
    """The instance database's event log and size, and the state store's objects on S3."""
    conn = psycopg2.connect(
        host=database["DAGSTER_PG_HOST"],
        port=database["DAGSTER_PG_PORT"],
        user=database["DAGSTER_PG_USERNAME"],
        dbname=database["DAGSTER_PG_DB"],
    )
    try:
        with conn.cursor() as cursor:
            cursor.execute("SELECT count(*), pg_total_relation_size('event_logs') FROM event_logs")
            events, event_bytes = cursor.fetchone()
            cursor.execute("SELECT pg_database_size(current_database())")
            [database_bytes] = cursor.fetchone()
    finally:
        conn.close()
    pages = sandbox_client(sandbox, "s3").get_paginator("list_objects_v2").paginate(Bucket=STATE_BUCKET)
    objects = [item for page in pages for item in page.get("Contents", [])]
    return {
        "event_log_rows": events,
        "event_log_mib": round(event_bytes / 2**20, 1),
        "database_mib": round(database_bytes / 2**20, 1),
        "state_objects": len(objects),
        "state_mib": round(sum(o["Size"] for o in objects) / 2**20, 1),
    }


def held(sandbox, sizes: dict[int, int], streamed: dict[int, int]) -> dict[str, Any]:
    """Audiences whose destination holds another count of members than the audience has (by
    destination; empty when exact), from the sandbox's ADM and DSP and the stream's drained messages."""
    state = sandbox.ads.state
    datasets, dsp_ids = destination_ids(sandbox)
    wrong: dict[str, dict[int, int | None]] = defaultdict(dict)
    for audience, size in sizes.items():
        name = f"segment_{audience}"
        adm = len(state.members("adm", datasets[name])) if name in datasets else None
        dsp_id = dsp_ids.get(dsp_audience_name(name))
        dsp = len(state.members("dsp", dsp_id).get("MAID", ())) if dsp_id else None
        for destination, count in (("adm", adm), ("dsp", dsp), ("firehose", streamed.get(audience))):
            if count != size:
                wrong[destination][audience] = count
    return {"exact": not wrong, "wrong": dict(wrong)}


if __name__ == "__main__":
    main()
