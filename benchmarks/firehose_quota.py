"""The Firehose sender against a stream quota in the sandbox, and without one.

    python benchmarks/firehose_quota.py [--messages 60000] [--mib 1] [--requests 1000] [--records 100000]

Starts a sandbox in a process of its own (as AWS is elsewhere: the sender's threads do not share
an interpreter with the server), gives its stream the quota (default: the smaller regions' Direct
PUT defaults, 1 MiB/s, 1,000 requests/s, 100,000 records/s), and sends `--messages` membership-change
messages of the pipeline's size with the sender held to that quota (`RateLimit`, 4 calls in flight).
Prints the rate achieved as a share of the binding quota and the calls the sandbox throttled. Then
the same messages again to a stream without a quota, at several concurrencies, in messages per
second. Figures are printed, never asserted.
"""

import argparse
import json
import time

import boto3
import requests

# The benchmarks' folder is the script's: its sandbox-in-a-process helper is shared.
from sandbox_throughput import sandbox

from audience_pipeline.clients.firehose import send_records
from audience_pipeline.clients.rate_limit import RateLimit
from audience_pipeline.resources.aws import FirehoseResource
from audience_pipeline.sandbox.aws import create_firehose_stream

QUOTA_STREAM, OPEN_STREAM = "quota-stream", "open-stream"


def messages(count: int) -> list[bytes]:
    """Messages shaped and sized like the pipeline's (an add with e-mail, customer id and IDFA)."""
    return [
        json.dumps(
            {
                "MessageId": f"scale/{i:012d}-add-0123456789abcdef0123456789abcdef",
                "AudienceId": 1001,
                "AudienceName": "Cart Abandoners (30 days)",
                "IsMember": True,
                "MembershipChangedTimestamp": 1764806400,
                "UserIdentities": [
                    {"Type": "email", "Encoding": "raw", "Value": f"user{i}@example.com"},
                    {"Type": "customerid", "Encoding": "raw", "Value": f"c-{i:09d}"},
                    {"Type": "ios_idfa", "Encoding": "raw", "Value": "6D92078A-8246-4BA4-AE5B-76104861E7DC"},
                ],
            }
        ).encode()
        + b"\n"
        for i in range(count)
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=60_000)
    parser.add_argument("--mib", type=float, default=1.0)
    parser.add_argument("--requests", type=int, default=1_000)
    parser.add_argument("--records", type=int, default=100_000)
    args = parser.parse_args()
    with sandbox(state_dir=None) as (env, _):
        aws_url = env["AWS_ENDPOINT_URL"]
        session = boto3.Session(
            aws_access_key_id=env["AWS_ACCESS_KEY_ID"],
            aws_secret_access_key=env["AWS_SECRET_ACCESS_KEY"],
            region_name="us-east-1",
        )
        s3, admin = (session.client(kind, endpoint_url=aws_url) for kind in ("s3", "firehose"))
        for stream in (QUOTA_STREAM, OPEN_STREAM):
            create_firehose_stream(admin, s3, stream, f"{stream}-bucket")
        client = FirehoseResource(
            region_name="us-east-1",
            endpoint_url=aws_url,
            aws_access_key_id=env["AWS_ACCESS_KEY_ID"],
            aws_secret_access_key=env["AWS_SECRET_ACCESS_KEY"],
        ).get_client()
        records = messages(args.messages)
        quota = {"records": args.records, "requests": args.requests, "bytes": int(args.mib * 1024 * 1024)}
        _post(aws_url, {"stream": QUOTA_STREAM, **{f"{k}_per_second": v for k, v in quota.items()}})

        started = time.perf_counter()
        result = send_records(client, QUOTA_STREAM, records, rate_limit=RateLimit(quota), max_in_flight=4)
        seconds = time.perf_counter() - started
        sent_bytes = sum(map(len, records))
        shares = {
            "records": len(records) / seconds / quota["records"],
            "requests": result.calls / seconds / quota["requests"],
            "bytes": sent_bytes / seconds / quota["bytes"],
        }
        binding = max(shares, key=shares.get)
        counts = _counts(aws_url)[QUOTA_STREAM]
        print(
            json.dumps(
                {
                    "run": "at_quota",
                    "quota": quota,
                    "messages": result.sent,
                    "calls": result.calls,
                    "seconds": round(seconds, 2),
                    "binding": binding,
                    "share_of_quota": round(shares[binding], 4),
                    "throttled_calls": counts["throttled"],
                }
            ),
            flush=True,
        )
        for in_flight in (1, 2, 4, 8):
            started = time.perf_counter()
            result = send_records(client, OPEN_STREAM, records, max_in_flight=in_flight)
            seconds = time.perf_counter() - started
            rate = round(result.sent / seconds)
            line = {"run": "no_quota", "max_in_flight": in_flight, "messages": result.sent}
            print(json.dumps({**line, "seconds": round(seconds, 2), "messages_per_second": rate}), flush=True)


def _post(aws_url: str, body: dict) -> None:
    requests.post(f"{aws_url}/_sandbox/firehose-quotas", json=body, timeout=10).raise_for_status()


def _counts(aws_url: str) -> dict:
    return requests.get(f"{aws_url}/_sandbox/firehose-quotas", timeout=10).json()


if __name__ == "__main__":
    main()
