"""The sandbox's hot paths: what a DSP PATCH costs as the audience grows, and a Firehose batch's CPU.

    python benchmarks/sandbox_throughput.py [--batches 100] [--batch-size 10000] [--firehose-calls 200]

Starts `audience-pipeline sandbox` in a child process, whose CPU time is read from /proc (so Linux),
then measures over loopback:

- DSP: one audience grown by `--batches` batches of `--batch-size` new MAIDs, each batch sent by the
  pipeline's DSP client as PATCH requests of up to 2,000 patches; once with the emulator's records in
  memory and once kept on disk (`--state`, as `audience-pipeline dev` runs it). Prints the wall time
  and the sandbox's CPU time per batch over the first and the last ten batches, and last / first: about
  1 when a PATCH costs O(batch), growing with the audience when it costs O(audience).
- Firehose: `--firehose-calls` PutRecordBatch calls of 500 membership messages, sent by the pipeline's
  sender, with the client's and the sandbox's CPU time per call, their ratio and messages per second.

Figures are printed, never asserted.
"""

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import boto3
from botocore.config import Config

from audience_pipeline.clients.ads_api import AdsApiClient
from audience_pipeline.clients.dsp import DspClient, maid_patch, patch_batches
from audience_pipeline.clients.firehose import send_records
from audience_pipeline.sandbox.aws import create_firehose_stream
from audience_pipeline.sandbox.profiles import PROFILES
from audience_pipeline.sandbox.server import DUMMY_AWS_KEYS

# What the sandbox command prints once both servers answer.
READY = {"AMAZON_ADS_API_URL", "AMAZON_ADS_TOKEN_URL", "AWS_ENDPOINT_URL", *DUMMY_AWS_KEYS}
WINDOW = 10
FIREHOSE_BATCH = 500


@contextmanager
def sandbox(state_dir: Path | None) -> Iterator[tuple[dict[str, str], Callable[[], float]]]:
    """A sandbox in a child process: its environment, and a function giving its CPU seconds so far."""
    state = ["--state", str(state_dir)] if state_dir else []
    child = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "audience_pipeline.cli",
            "sandbox",
            "--ads-port",
            "0",
            "--aws-port",
            "0",
            *state,
        ],
        stdout=subprocess.PIPE,
        # Its request log: one line a request.
        stderr=subprocess.DEVNULL,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    try:
        env = {}
        assert child.stdout is not None
        while not env.keys() >= READY:
            line = child.stdout.readline()
            if not line:
                raise RuntimeError("the sandbox ended before it was ready")
            if line.startswith("export "):
                name, _, value = line.removeprefix("export ").strip().partition("=")
                env[name] = value
        ticks = os.sysconf("SC_CLK_TCK")

        def cpu_seconds() -> float:
            # utime and stime: the 14th and 15th fields, counted after the command's closing parenthesis.
            fields = Path(f"/proc/{child.pid}/stat").read_text().rsplit(")", 1)[1].split()
            return (int(fields[11]) + int(fields[12])) / ticks

        yield env, cpu_seconds
    finally:
        child.terminate()
        child.wait()


def ads_client(env: dict[str, str]) -> AdsApiClient:
    """An Amazon Ads API client at the sandbox whose `env` is given (it takes any credentials)."""
    return AdsApiClient(
        "sandbox-client",
        "sandbox-secret",
        "sandbox-refresh",
        base_url=env["AMAZON_ADS_API_URL"],
        token_url=env["AMAZON_ADS_TOKEN_URL"],
    )


def maids(count: int, rng: random.Random) -> list[str]:
    return [str(uuid.UUID(int=rng.getrandbits(128), version=4)) for _ in range(count)]


def dsp_growth(label: str, state_dir: Path | None, batches: int, batch_size: int) -> None:
    """Grow one DSP audience batch by batch; print the first and last windows' cost per batch."""
    with sandbox(state_dir) as (env, cpu_seconds):
        api = ads_client(env)
        dsp = DspClient(api, PROFILES[0]["profileId"])
        audience = dsp.create_audience("Benchmark MAID audience", "throughput", 1, "benchmark", ["US"])
        rng = random.Random(0)
        costs = []
        for _ in range(batches):
            patches = [maid_patch("add", maid, audience.id) for maid in maids(batch_size, rng)]
            requests = list(patch_batches(patches))
            started, cpu = time.perf_counter(), cpu_seconds()
            for request in requests:
                dsp.patch_audiences(request)
            costs.append((time.perf_counter() - started, cpu_seconds() - cpu))
        size = dsp.get_audience(audience.id).metadata.audience_size.received_record_size

    window = min(WINDOW, batches)
    (first_wall, first_cpu), (last_wall, last_cpu) = (
        [sum(values) / window for values in zip(*part, strict=True)]
        for part in (costs[:window], costs[-window:])
    )
    print(f"DSP PATCH, records {label}: {batches} batches of {batch_size:,} MAIDs, audience {size:,}")
    for name, wall, cpu in (
        (f"batches 1-{window}", first_wall, first_cpu),
        (f"batches {batches - window + 1}-{batches}", last_wall, last_cpu),
    ):
        print(f"  {name:<16} {wall:.3f} s wall, sandbox CPU {cpu:.3f} s per batch")
    print(
        f"  {'last / first':<16} {last_wall / first_wall:.2f}x wall, {last_cpu / first_cpu:.2f}x sandbox CPU"
    )


def firehose_cost(calls: int) -> None:
    """Send `calls` full batches of membership messages; print client and sandbox CPU per call."""
    with sandbox(None) as (env, cpu_seconds):
        keys = {
            "endpoint_url": env["AWS_ENDPOINT_URL"],
            "aws_access_key_id": env["AWS_ACCESS_KEY_ID"],
            "aws_secret_access_key": env["AWS_SECRET_ACCESS_KEY"],
            "region_name": env["AWS_DEFAULT_REGION"],
        }
        # The sender retries by itself: the client must not (see `resources.aws.FirehoseResource`).
        once = Config(retries={"total_max_attempts": 1, "mode": "standard"})
        firehose = boto3.client("firehose", config=once, **keys)
        create_firehose_stream(firehose, boto3.client("s3", **keys), "benchmark", "benchmark-deliveries")
        messages = [
            json.dumps(
                {"MessageId": f"m-{i}", "AudienceId": "7", "UserId": f"user-{i}", "IsMember": True}
            ).encode()
            + b"\n"
            for i in range(calls * FIREHOSE_BATCH)
        ]
        started, client, server = time.perf_counter(), time.process_time(), cpu_seconds()
        result = send_records(firehose, "benchmark", messages)
        seconds = time.perf_counter() - started
        client, server = time.process_time() - client, cpu_seconds() - server

    print(f"Firehose PutRecordBatch: {result.calls} calls of {FIREHOSE_BATCH} messages")
    print(f"  client CPU   {1000 * client / result.calls:.1f} ms per call")
    print(
        f"  sandbox CPU  {1000 * server / result.calls:.1f} ms per call ({server / client:.2f}x the client's)"
    )
    print(f"  throughput   {result.sent / seconds:,.0f} messages/s, one sender")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--batches", type=int, default=100)
    parser.add_argument("--batch-size", type=int, default=10_000)
    parser.add_argument("--firehose-calls", type=int, default=200)
    args = parser.parse_args()

    dsp_growth("in memory", None, args.batches, args.batch_size)
    with tempfile.TemporaryDirectory(prefix="sandbox-state-") as state_dir:
        dsp_growth("kept on disk", Path(state_dir), args.batches, args.batch_size)
    firehose_cost(args.firehose_calls)


if __name__ == "__main__":
    main()
