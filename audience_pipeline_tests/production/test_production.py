"""The production deployment on real parts: PostgreSQL instance storage, a code server, the webserver
and the daemon as processes of their own, queued runs within the API pools, the state store on S3."""

import hashlib
import json
import os
import signal
import time
from collections import defaultdict
from dataclasses import dataclass

import pytest
import requests

from audience_pipeline.membership.dsp_audiences import dsp_audience_name
from audience_pipeline.membership.ledger import Ledger
from audience_pipeline.resources.state_store import StateStore
from audience_pipeline.sandbox.faults import Faults

from ..conftest import add_fault, clear_faults, wait_for
from .conftest import AUDIENCES
from .deployment import FINISHED, RUN_ENDED, Deployment
from .environment import STATE_BUCKET, destination_ids, sandbox_client
from .project import (
    ADVERTISER,
    AMC_DATASET,
    AMC_INSTANCE,
    AMC_UPLOAD,
    ASSETS,
    MANAGER_ACCOUNT,
    STREAM,
    members,
)

# One deployment for these tests (session fixtures), on one xdist worker, in this order: its processes
# use both cores already, and each test starts from what the one before left.
pytestmark = pytest.mark.xdist_group("production")

# deploy/pools.sh's defaults.
POOL_LIMITS = {"amazon_ads_api": 2, "amazon_ads_dsp": 2}
# The step of a run that uploads ADM members.
ADM_STEP = "__".join(ASSETS[2])


def held_in_upload(deployment: Deployment, faults: Faults) -> tuple[str, int] | None:
    """A run whose worker waits on its ADM member upload, held at a sandbox barrier, and the worker's
    pid: a run provably mid-step (one past its last step is still STARTED, and its death leaves nothing
    to retry). Every run in the ADM step is held when as many requests are held as there are such runs,
    the same before and after: none can leave the step before the barrier lets it on."""
    held = faults.held()
    uploading = deployment.in_step(ADM_STEP)
    if not held or len(uploading) != held or faults.held() != held:
        return None
    run_id = min(uploading)
    pid = deployment.worker_pids().get(run_id)
    return (run_id, pid) if pid else None


def most_at_once(intervals: list[tuple[float, float]]) -> int:
    """The most intervals (start, end) that overlap at one instant."""
    events = sorted([(start, 1) for start, _ in intervals] + [(end, -1) for _, end in intervals])
    current = peak = 0
    for _, step in events:
        current += step
        peak = max(peak, current)
    return peak


@dataclass
class Backfilled:
    """The first backfill of every audience: its final status, the run whose worker was killed, and
    every run and Ads API request by then."""

    status: str
    killed_run: str
    runs: list[dict]
    journal: list[dict]
    sizes: dict[int, int]


@pytest.fixture(scope="session")
def backfilled(deployment, prod_sandbox, source) -> Backfilled:
    """Every audience delivered by one backfill through the daemon, during which a run's worker and
    the daemon die (SIGKILL), as on a crashed host, and the daemon comes back."""
    backfill = deployment.backfill([*ASSETS, AMC_UPLOAD], [str(a) for a in AUDIENCES])
    wait_for(lambda: sum(r["status"] == "SUCCESS" for r in deployment.runs()) >= 3, 600, "the first runs")
    # More places than the API pool lets runs in at once: the barrier holds each upload until cleared.
    add_fault(prod_sandbox.ads_url, route="POST /adm/audiences/", barrier=POOL_LIMITS["amazon_ads_api"] + 1)
    faults = prod_sandbox.ads.faults
    killed_run, pid = wait_for(
        lambda: held_in_upload(deployment, faults), 300, "a run held in its upload", every=0.2
    )
    os.kill(pid, signal.SIGKILL)
    # The held uploads go on (the killed worker's too: it reaches ADM, and the ledger never hears).
    clear_faults(prod_sandbox.ads_url)
    deployment.kill("daemon")
    time.sleep(3)
    deployment.start("daemon")
    status = wait_for(
        lambda: (s := deployment.backfill_status(backfill)) in FINISHED and s, 1200, "the backfill", every=5
    )
    journal = prod_sandbox.ads.journal.snapshot()
    return Backfilled(status, killed_run, deployment.runs(), journal, dict(source.sizes))


def test_a_backfill_of_50_audiences_survives_a_killed_daemon_and_run_worker_and_delivers_each_exactly(
    backfilled, source, prod_sandbox
):
    runs = backfilled.runs
    assert backfilled.status in {"COMPLETED", "COMPLETED_SUCCESS"}, sorted(r["status"] for r in runs)
    # The killed run failed (its code server saw its process die) and its retry delivered.
    by_id = {r["runId"]: r for r in runs}
    assert by_id[backfilled.killed_run]["status"] == "FAILURE"
    [retry] = [
        r for r in runs if {"key": "dagster/parent_run_id", "value": backfilled.killed_run} in r["tags"]
    ]
    assert retry["status"] == "SUCCESS"

    assert_destinations_hold(prod_sandbox, source.sizes)
    # AMC has the profiles as the backfill read them (later tests change the source).
    assert_amc_holds(prod_sandbox, backfilled.sizes)

    # The pools held: never more ADM datasets or DSP audiences being written at once than their limit.
    for pool, written in (("amazon_ads_api", adm_dataset), ("amazon_ads_dsp", dsp_audience)):
        spans: dict[str, list[float]] = {}
        for entry in backfilled.journal:
            key = written(entry)
            if key is not None:
                first, last = spans.get(key, [entry["started"], entry["ended"]])
                spans[key] = [min(first, entry["started"]), max(last, entry["ended"])]
        assert len(spans) == len(AUDIENCES), pool
        assert most_at_once([(first, last) for first, last in spans.values()]) <= POOL_LIMITS[pool], pool


def assert_destinations_hold(sandbox, sizes: dict[int, int]) -> None:
    """Every destination holds exactly each audience (`members(audience, size)`): nothing lost, nothing
    extra, one ADM dataset and one DSP audience per audience."""
    state = sandbox.ads.state
    datasets, dsp_audiences = defaultdict(list), defaultdict(list)
    for dataset in state.family("adm")["datasets"].values():
        datasets[dataset["name"]].append(dataset["dataSetId"])
    for audience_id, audience in state.family("dsp")["audiences"].items():
        dsp_audiences[audience["name"]].append(audience_id)
    assert len(datasets) == len(dsp_audiences) == len(sizes)
    messages = firehose_messages(sandbox)
    for audience, size in sizes.items():
        expected = members(audience, size)
        [dataset_id] = datasets[f"segment_{audience}"]
        assert set(state.members("adm", dataset_id)) == {m[0] for m in expected}, audience
        [dsp_id] = dsp_audiences[dsp_audience_name(f"segment_{audience}")]
        assert {m.lower() for m in state.members("dsp", dsp_id).get("MAID", ())} == {m[3] for m in expected}
        # Firehose keeps every message: members are those added and never removed since.
        said = defaultdict(list)
        for message in messages:
            if message["AudienceId"] == audience:
                said[message["UserIdentities"]["Email"]].append(message)
        held = {
            email
            for email, about in said.items()
            if max(about, key=lambda m: int(m["MembershipChangedTimestamp"]))["IsMember"]
        }
        assert held == {m[1] for m in expected}, audience


def assert_amc_holds(sandbox, sizes: dict[int, int]) -> None:
    """AMC's dataset holds every profile's hashed identities, once its upload (which the backfill's run
    handed to AMC) succeeded: the sandbox moves an upload on only when polled, here by the daemon's job
    status sensor."""
    instance = sandbox.ads.state.family("amc")["instances"][AMC_INSTANCE]

    def succeeded() -> list[dict]:
        with sandbox.ads.state.lock:
            uploads = [u for u in instance["uploads"].values() if u["dataSetId"] == AMC_DATASET]
        return [u for u in uploads if u["status"] == "SUCCESS"]

    wait_for(succeeded, 300, "the AMC job status sensor to follow the upload to SUCCESS", every=2)
    table = instance["dataSets"][AMC_DATASET]["_table"]
    stored = sandbox.ads.state.cursor().sql(f"SELECT customer_id, email FROM {table}").fetchall()
    profiles = [m for audience, size in sizes.items() for m in members(audience, size)]
    assert sorted(stored) == sorted((m[0], hashlib.sha256(m[1].encode()).hexdigest()) for m in profiles)


def adm_dataset(entry: dict) -> str | None:
    """The ADM dataset a journaled member upload wrote to."""
    if entry["method"] == "POST" and entry["path"].startswith("/adm/audiences/"):
        return entry["path"].split("/")[3]
    return None


def dsp_audience(entry: dict) -> str | None:
    """The DSP audience a journaled PATCH wrote to (a flush writes one)."""
    if entry["method"] == "PATCH" and entry["path"] == "/v2/dp/audience" and entry["body"]:
        return ",".join(sorted({str(v) for p in entry["body"]["patches"] for v in p["value"]}))
    return None


def firehose_messages(sandbox) -> list[dict]:
    """Every message the stream delivered to its bucket, in no particular order."""
    s3 = sandbox_client(sandbox, "s3")
    bucket = f"{STREAM}-bucket"
    pages = s3.get_paginator("list_objects_v2").paginate(Bucket=bucket)
    keys = [item["Key"] for page in pages for item in page.get("Contents", [])]
    return [
        json.loads(line)
        for key in keys
        for line in s3.get_object(Bucket=bucket, Key=key)["Body"].read().splitlines()
    ]


def test_two_deliveries_of_one_audience_at_once_commit_exactly_once(
    backfilled, deployment, source, prod_sandbox, monkeypatch
):
    """The state store's conditional writes: two runs of the same ADM delivery at once, from a shell
    (where no queue or pool holds one back), both upload, and the ledger takes exactly one commit: the
    run that lost the race fails, naming the other's commit. A sandbox barrier holds the first member
    upload until a second one arrives, so both runs are provably past loading the ledger and in flight
    together, however slowly the second starts."""
    for name, value in prod_sandbox.env().items():
        monkeypatch.setenv(name, value)
    ledger = Ledger(state_store(prod_sandbox), f"ads_data_manager/{MANAGER_ACCOUNT}/segment_1", "1")
    version = ledger.load().version
    source.sizes[1] += 5
    source.write()
    before = {r["runId"] for r in deployment.runs()}
    # Set before the snapshot: a delivery the automation sensor starts after it is held too.
    add_fault(prod_sandbox.ads_url, route="POST /adm/audiences/", barrier=2, barrier_timeout_s=300)
    since = time.monotonic()  # the sandbox runs in this process: its journal's clock
    snapshot = deployment.launch([ASSETS[0]], "1")
    assert wait_for(lambda: finished(deployment, snapshot), 300, "the snapshot") == "SUCCESS"
    shells = [deployment.materialize("/".join(ASSETS[2]), "1") for _ in range(2)]
    said = [shell.communicate(timeout=600)[0] for shell in shells]
    # The automation sensor may have started a delivery of its own after the snapshot: let it end.
    wait_for(lambda: all_finished(deployment, before), 300, "every run since the snapshot", every=2)
    clear_faults(prod_sandbox.ads_url)

    uploads = sorted(
        (e for e in prod_sandbox.ads.journal.snapshot() if e["started"] >= since and adm_dataset(e)),
        key=lambda e: e["started"],
    )
    first, second = uploads[:2]
    assert second["started"] <= first["ended"], "the first two uploads were not in flight together"
    assert ledger.load().version == version + 1
    # The runs from the shells and any of the automation's: those that lost failed, naming the commit.
    failed = [
        " ".join(deployment.outcome(r["runId"])[1])
        for r in deployment.runs()
        if r["runId"] not in before and r["status"] == "FAILURE"
    ]
    assert failed and all("another run" in text for text in failed), (failed, [text[-2000:] for text in said])
    # The other destinations catch up with the audience in one run.
    rest = deployment.launch(ASSETS[1:], "1")
    assert wait_for(lambda: finished(deployment, rest), 300, "the other destinations") == "SUCCESS"
    assert_destinations_hold(prod_sandbox, source.sizes)


def test_runs_survive_a_postgres_restart_or_fail_saying_so_and_a_rerun_completes(
    backfilled, deployment, source, prod_sandbox, postgres, monkeypatch
):
    """PostgreSQL (the instance's storage) restarts while a backfill runs: runs carry on or fail with a
    database error; a backfill of what failed completes it, and no ledger claims what a destination lacks."""
    for name, value in prod_sandbox.env().items():
        monkeypatch.setenv(name, value)
    # Ten audiences lose three members each; the others stay as they are.
    changed = [audience for audience in source.sizes if audience > 40]
    source.sizes |= {audience: source.sizes[audience] - 3 for audience in changed}
    source.write()
    before = {r["runId"] for r in deployment.runs()}
    backfill = deployment.backfill(ASSETS, [str(a) for a in changed])
    wait_for(
        lambda: any(r["status"] == "SUCCESS" for r in deployment.runs() if r["runId"] not in before),
        600,
        "the first run",
    )
    postgres.restart()

    status = wait_for(
        lambda: (s := backfill_status(deployment, backfill)) in FINISHED and s, 1200, "the backfill", every=5
    )
    new = [r for r in deployment.runs() if r["runId"] not in before]
    failed = [r for r in new if r["status"] == "FAILURE"]
    for run in failed:
        _, errors = deployment.outcome(run["runId"])
        assert any(word in " ".join(errors).lower() for word in ("connection", "database", "postgres")), (
            errors
        )
    assert status in {"COMPLETED", "COMPLETED_SUCCESS"} or failed, status
    # Whatever failed, no ledger claims a member its destination lacks.
    for name, audience, claimed, held in ledger_claims(prod_sandbox, changed):
        assert claimed <= held, (name, audience, sorted(claimed - held)[:3])
    # What failed is delivered by a backfill of its audiences, as an operator would launch it. (A later
    # run that succeeded may have delivered part of it: the automation sensor re-runs a failed DSP
    # step, whose queue then waits for its flush.)
    again = sorted({tag["value"] for r in failed for tag in r["tags"] if tag["key"] == "dagster/partition"})
    if again:
        deliver(deployment, again)
    assert_destinations_hold(prod_sandbox, source.sizes)


def ledger_claims(sandbox, audiences: list[int]):
    """(destination, audience, what its ledger in the S3 state store claims, what it holds) for each
    destination and audience: ADM and Firehose by user id, DSP by MAID."""
    store = state_store(sandbox)
    state = sandbox.ads.state
    datasets, dsp_ids = destination_ids(sandbox)
    messages = firehose_messages(sandbox)
    for audience in audiences:
        everyone = members(audience, AUDIENCES[audience] + 5)
        email_of = {m[0]: m[1] for m in everyone}
        name = f"segment_{audience}"
        last: dict[str, dict] = {}
        for m in sorted(messages, key=lambda m: int(m["MembershipChangedTimestamp"])):
            if m["AudienceId"] == audience:
                last[m["UserIdentities"]["Email"]] = m
        streamed = {user for user, email in email_of.items() if last.get(email, {}).get("IsMember")}
        yield "firehose", audience, ledger_ids(store, f"firehose/us-east-1/{STREAM}", audience), streamed
        adm = f"ads_data_manager/{MANAGER_ACCOUNT}/{name}"
        yield "adm", audience, ledger_ids(store, adm, audience), set(state.members("adm", datasets[name]))
        maids = {m.lower() for m in state.members("dsp", dsp_ids[dsp_audience_name(name)]).get("MAID", ())}
        yield "dsp", audience, ledger_ids(store, f"dsp/NA/{ADVERTISER}", audience), maids


def state_store(sandbox):
    """The deployment's state store on the sandbox's S3, read from the test (AWS variables set)."""
    return StateStore(root=f"s3://{STATE_BUCKET}/prod", endpoint_url=sandbox.aws_url).store


def ledger_ids(store, destination: str, audience: int) -> set[str]:
    """The members (user ids, or MAIDs at DSP) a destination's ledger records for `audience`."""
    ledger = Ledger(store, destination, str(audience))
    loaded = ledger.load()
    if loaded.revision is None:
        return set()
    return set(ledger.members_where(loaded, lambda ids: ids.is_not_null()))


def all_finished(deployment: Deployment, before: set[str]) -> bool:
    """Whether every run started since `before` finished."""
    runs = [r for r in deployment.runs() if r["runId"] not in before]
    return all(r["status"] in RUN_ENDED for r in runs)


def finished(deployment: Deployment, run_id: str) -> str | None:
    status = deployment.run_status(run_id)
    return status if status in RUN_ENDED else None


def backfill_status(deployment: Deployment, backfill: str) -> str | None:
    """The backfill's status; None while the webserver cannot reach the database."""
    try:
        return deployment.backfill_status(backfill)
    except (AssertionError, requests.RequestException):
        return None


def deliver(deployment: Deployment, partitions: list[str]) -> None:
    """A backfill of `partitions` at every destination, finished successfully."""
    backfill = deployment.backfill(ASSETS, partitions)
    status = wait_for(
        lambda: (s := deployment.backfill_status(backfill)) in FINISHED and s, 1200, "the backfill", every=5
    )
    assert status in {"COMPLETED", "COMPLETED_SUCCESS"}, status
