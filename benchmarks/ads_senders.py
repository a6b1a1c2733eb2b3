"""The Ads Data Manager and DSP senders against the sandbox: who is the bottleneck, the client or Amazon.

    python benchmarks/ads_senders.py [--members 200000] [--maids 200000] [--in-flight 1 4]
                                     [--requests-per-second N]

For each `--in-flight` value, starts a sandbox in a process of its own (`sandbox_throughput.sandbox`,
so its CPU time is read from /proc: Linux) and runs, through the delivery core as the assets do:

- the first ADM delivery of `--members` members (hashed email, phone, first name and zip, a partner
  id, consent), into a new dataset and an empty ledger: 5,000 members a request;
- a DSP delivery of `--maids` MAIDs to a new DSP audience: 2,000 patches a request.

No rate limit unless `--requests-per-second` is given, so the figures say what the client and the
sandbox can do. Prints one JSON line per run: members (or MAIDs) per second, the client process's
CPU seconds (all its threads, planning and the ledger commit included) against the sandbox's, and
their ratio. Figures are printed, never asserted.
"""

import argparse
import hashlib
import json
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import polars as pl

# The benchmarks' folder is the script's: its sandbox-in-a-process helper is shared.
from sandbox_throughput import ads_client, sandbox

from audience_pipeline.clients.accounts import find_profile
from audience_pipeline.clients.adm import AdmClient
from audience_pipeline.clients.ads_api import AdsApiClient
from audience_pipeline.clients.concurrency import RequestPace
from audience_pipeline.clients.dsp import DspClient
from audience_pipeline.clients.rate_limit import RateLimit
from audience_pipeline.membership.adm_delivery import AdmAdapter, MemberRules, adm_members
from audience_pipeline.membership.delivery import USER_ID, Members, Outcome, deliver
from audience_pipeline.membership.dsp_audiences import DspAudienceRecord
from audience_pipeline.membership.dsp_delivery import DspAdapter, DspTarget
from audience_pipeline.membership.fingerprints import fingerprint
from audience_pipeline.membership.ledger import Ledger
from audience_pipeline.state import ParquetStore

ADM_RULES = MemberRules(
    ("email_lc_sha256", "phone_sha256", "firstName", "zip", "liveRampId"), "GRANTED", "US"
)


def digests(prefix: str, count: int) -> list[str]:
    return [hashlib.sha256(f"{prefix}{i}".encode()).hexdigest() for i in range(count)]


def adm_audience(count: int) -> Members:
    """Members as a snapshot of `count` users gives them to ADM (about 480 bytes each as sent)."""
    snapshot = pl.DataFrame(
        {
            USER_ID: [f"user-{i:09d}" for i in range(count)],
            "email": digests("email", count),
            "phone": digests("phone", count),
            "first_name": digests("first", count),
            "zip": digests("zip", count),
            "live_ramp_id": [f"LR-{i:012d}" for i in range(count)],
            "country_code": ["US"] * count,
        }
    )
    return adm_members(snapshot, ADM_RULES)


def dsp_audience(count: int) -> Members:
    """`count` MAIDs as a flush gives them to DSP."""
    frame = pl.DataFrame({USER_ID: [str(uuid.UUID(int=i + 1, version=4)) for i in range(count)]})
    return Members(frame.with_columns(fingerprint(frame, [USER_ID]), payload=pl.lit(None, dtype=pl.String)))


@dataclass
class DspAccess:
    """The `amazon_ads` resource's DSP calls, on one client."""

    api: AdsApiClient

    def dsp_profile(self, profile_name: str, marketplace: str, region: str | None = None) -> dict[str, Any]:
        return find_profile(self.api, profile_name, marketplace)

    def dsp(self, profile_id: int, region: str | None = None) -> DspClient:
        return DspClient(self.api, profile_id)


@contextmanager
def measured(cpu_seconds: Callable[[], float]) -> Iterator[dict[str, float]]:
    """Wall seconds, this process's CPU seconds and the sandbox's, of the `with` block."""
    figures: dict[str, float] = {}
    started, client, server = time.perf_counter(), time.process_time(), cpu_seconds()
    yield figures
    figures["seconds"] = time.perf_counter() - started
    figures["client_cpu_seconds"] = time.process_time() - client
    figures["sandbox_cpu_seconds"] = cpu_seconds() - server


def run(
    destination: str,
    members: Members,
    adapter: Callable[[AdsApiClient, ParquetStore, RequestPace], Any],
    in_flight: int,
    rate: float | None,
) -> None:
    """One delivery of `members` in a sandbox of its own; prints its JSON line."""
    pace = RequestPace(in_flight, RateLimit({"requests": rate}) if rate else None)
    with sandbox(None) as (env, cpu_seconds), tempfile.TemporaryDirectory(prefix="ads-senders-") as folder:
        api = ads_client(env)
        api.access_token()  # logged in before the clock starts
        store = ParquetStore(folder)
        ledger = Ledger(store, f"benchmark/{destination}", "1")
        with measured(cpu_seconds) as figures:
            outcome: Outcome = deliver(ledger, lambda state, held: members, adapter(api, store, pace))
    count = outcome.confirmed
    line = {
        "destination": destination,
        "members": count,
        "max_in_flight": in_flight,
        "requests_per_second": rate,
        "requests": outcome.requests,
        "retries": outcome.retries,
        "seconds": round(figures["seconds"], 2),
        "members_per_second": round(count / figures["seconds"]),
        "client_cpu_seconds": round(figures["client_cpu_seconds"], 2),
        "sandbox_cpu_seconds": round(figures["sandbox_cpu_seconds"], 2),
        "sandbox_cpu_per_client_cpu": round(
            figures["sandbox_cpu_seconds"] / figures["client_cpu_seconds"], 2
        ),
    }
    print(json.dumps(line), flush=True)


def adm_adapter(api: AdsApiClient, store: ParquetStore, pace: RequestPace) -> AdmAdapter:
    return AdmAdapter(
        "Benchmark_Audience", "US", "benchmark", AdmClient(api, "amzn1.ads-account.bench"), pace
    )


def dsp_adapter(api: AdsApiClient, store: ParquetStore, pace: RequestPace) -> DspAdapter:
    target = DspTarget(1, "Sandbox Advertiser US", "US", "1", "Benchmark MAID audience", "NA")
    record = DspAudienceRecord(store, "benchmark/dsp", "1")
    return DspAdapter(target, record, time.time, DspAccess(api), pace)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--members", type=int, default=200_000)
    parser.add_argument("--maids", type=int, default=200_000)
    parser.add_argument("--in-flight", type=int, nargs="+", default=[1, 4])
    parser.add_argument("--requests-per-second", type=float, default=None)
    args = parser.parse_args()

    adm, dsp = adm_audience(args.members), dsp_audience(args.maids)
    for in_flight in args.in_flight:
        run("adm", adm, adm_adapter, in_flight, args.requests_per_second)
        run("dsp", dsp, dsp_adapter, in_flight, args.requests_per_second)


if __name__ == "__main__":
    main()
