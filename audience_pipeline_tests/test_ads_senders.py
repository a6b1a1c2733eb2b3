"""The ADM and DSP senders over real HTTP against the sandbox: at a rate, several requests at once,
committing to the ledger exactly what arrived, and losing nothing when a request fails."""

import collections
import hashlib
import statistics
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import polars as pl
import pytest
import requests

from audience_pipeline.clients import dsp as dsp_client
from audience_pipeline.clients.accounts import find_profile
from audience_pipeline.clients.adm import MEMBERS_MEDIA_TYPE, AdmClient, members_body
from audience_pipeline.clients.ads_api import AdsApiClient
from audience_pipeline.clients.concurrency import RequestPace
from audience_pipeline.clients.dsp import DspClient
from audience_pipeline.clients.rate_limit import RateLimit
from audience_pipeline.membership import adm_delivery
from audience_pipeline.membership.adm_delivery import AdmAdapter, MemberRules, adm_members
from audience_pipeline.membership.delivery import USER_ID, DeliveryInterrupted, Members, Outcome, deliver
from audience_pipeline.membership.dsp_audiences import DspAudienceRecord
from audience_pipeline.membership.dsp_delivery import DspAdapter, DspTarget
from audience_pipeline.membership.fingerprints import fingerprint
from audience_pipeline.membership.ledger import Ledger
from audience_pipeline.state import ParquetStore

from .conftest import add_fault, journal, sandbox_ads_client
from .sandbox.test_ads_quotas import MEMBERS_ROUTE, PATCH_ROUTE, quota_counts, set_quota

# Small requests, so that a few thousand members make the dozens of requests a rate shows over.
PER_REQUEST = 200
RATE = 20


@pytest.fixture(autouse=True)
def small_requests(monkeypatch):
    monkeypatch.setattr(adm_delivery, "RECOMMENDED_MEMBERS_PER_REQUEST", PER_REQUEST)
    monkeypatch.setattr(dsp_client, "MAX_PATCHES_PER_REQUEST", PER_REQUEST)


@pytest.fixture
def api(sandbox) -> AdsApiClient:
    """A client as the pipeline makes it: it waits out `Retry-After` for real."""
    return sandbox_ads_client(sandbox)


@dataclass
class Sender:
    """One destination's sender, delivering `count` members into a ledger of its own, and what the
    sandbox received and holds."""

    route: str
    members: Members
    adapter: Callable[[RequestPace], Any]
    sent: Callable[[dict], list[str]]  # the members one journaled request carried
    held: Callable[[], set[str]]
    ledger: Ledger

    def deliver(self, pace: RequestPace) -> Outcome:
        return deliver(self.ledger, lambda state, held: self.members, self.adapter(pace))

    def requests(self, sandbox) -> list[dict]:
        """The requests of this sender's route that the sandbox received, in order."""
        method, _, prefix = self.route.partition(" ")
        return [e for e in journal(sandbox.ads_url) if e["method"] == method and e["path"].startswith(prefix)]

    def delivered(self, sandbox) -> collections.Counter[str]:
        """How many accepted requests carried each member."""
        return collections.Counter(
            member
            for entry in self.requests(sandbox)
            if entry["status"] == 200
            for member in self.sent(entry)
        )

    def committed(self) -> set[str]:
        return set(self.ledger.read()[USER_ID])


@dataclass
class DspAccess:
    """The `amazon_ads` resource's DSP calls, on one client."""

    api: AdsApiClient

    def dsp_profile(self, profile_name: str, marketplace: str, region: str | None = None) -> dict:
        return find_profile(self.api, profile_name, marketplace)

    def dsp(self, profile_id: int, region: str | None = None) -> DspClient:
        return DspClient(self.api, profile_id)


def adm_sender(sandbox, api, store: ParquetStore, count: int) -> Sender:
    user_ids = [f"u{i:06d}" for i in range(count)]
    emails = [hashlib.sha256(f"{user}@example.com".encode()).hexdigest() for user in user_ids]
    members = adm_members(
        pl.DataFrame({USER_ID: user_ids, "email": emails}), MemberRules(("email_lc_sha256",), "GRANTED", "US")
    )
    adm = AdmClient(api, "amzn1.ads-account.senders")

    def held() -> set[str]:
        [data_set_id] = sandbox.ads.state.family("adm")["datasets"]
        return set(sandbox.ads.state.members("adm", data_set_id))

    return Sender(
        MEMBERS_ROUTE,
        members,
        lambda pace: AdmAdapter("Senders_Test", "US", "senders test", adm, pace),
        lambda entry: [member["externalUserId"] for member in entry["body"]["members"]],
        held,
        Ledger(store, "ads_data_manager/senders", "7"),
    )


def dsp_sender(sandbox, api, store: ParquetStore, count: int) -> Sender:
    frame = pl.DataFrame({USER_ID: [str(uuid.UUID(int=i + 1, version=4)) for i in range(count)]})
    members = Members(
        frame.with_columns(fingerprint(frame, [USER_ID]), payload=pl.lit(None, dtype=pl.String))
    )
    target = DspTarget(1, "Sandbox Advertiser US", "US", "7", "Senders test audience", "NA")
    record = DspAudienceRecord(store, "dsp/NA/1", "7")

    def held() -> set[str]:
        [audience_id] = sandbox.ads.state.family("dsp")["audiences"]
        return sandbox.ads.state.members("dsp", audience_id).get("MAID", set())

    return Sender(
        PATCH_ROUTE,
        members,
        lambda pace: DspAdapter(target, record, time.time, DspAccess(api), pace),
        lambda entry: [
            patch["path"].removeprefix("/MAID-").removesuffix("/audiences")
            for patch in entry["body"]["patches"]
        ],
        held,
        Ledger(store, "dsp/NA/1", "7"),
    )


@pytest.fixture(params=["adm", "dsp"])
def sender(request, sandbox, api, tmp_path) -> Callable[[int], Sender]:
    """The ADM or the DSP sender of `count` members."""
    make = adm_sender if request.param == "adm" else dsp_sender
    return lambda count: make(sandbox, api, ParquetStore(str(tmp_path)), count)


def most_at_once(entries: list[dict]) -> int:
    """The most requests the sandbox was answering at one time."""
    events = sorted([(e["started"], 1) for e in entries] + [(e["ended"], -1) for e in entries])
    at_once = most = 0
    for _, change in events:
        at_once += change
        most = max(most, at_once)
    return most


def test_the_sender_holds_the_rate_without_a_429_and_delivers_every_member_once(sender, sandbox):
    chosen = sender(30 * PER_REQUEST)
    set_quota(sandbox, chosen.route, RATE)

    outcome = chosen.deliver(RequestPace(4, RateLimit({"requests": RATE})))

    assert quota_counts(sandbox)[chosen.route] == {"taken": 30, "throttled": 0}
    entries = chosen.requests(sandbox)
    assert [e["status"] for e in entries] == [200] * 30 and (outcome.requests, outcome.retries) == (30, 0)
    # As the sandbox saw it, the arrivals' rate: a least-squares fit of arrivals over time, which a
    # few requests delayed in transit do not decide (on a busy machine each thread's first request,
    # which opens a connection, can arrive 0.2 s late and bunch up with the next ones).
    arrived = sorted(e["started"] for e in entries)
    assert statistics.linear_regression(arrived, range(len(arrived))).slope <= RATE * 1.05
    members = set(chosen.members.frame[USER_ID])
    assert chosen.delivered(sandbox) == collections.Counter(members)
    assert chosen.held() == chosen.committed() == members


def test_without_the_limit_the_sender_is_throttled_and_still_delivers_every_member_once(sender, sandbox):
    chosen = sender(30 * PER_REQUEST)
    # Well below what the sandbox serves even on a busy machine, so the unpaced sender must meet it.
    set_quota(sandbox, chosen.route, RATE / 4)

    outcome = chosen.deliver(RequestPace(4))

    throttled = quota_counts(sandbox)[chosen.route]["throttled"]
    # Each request counts its own retries, whatever the other threads retried meanwhile.
    assert throttled > 0 and outcome.retries == throttled
    members = set(chosen.members.frame[USER_ID])
    assert chosen.delivered(sandbox) == collections.Counter(members)
    assert chosen.held() == chosen.committed() == members


def test_requests_overlap_and_the_ledger_is_what_the_sandbox_holds(sender, sandbox):
    chosen = sender(8 * PER_REQUEST)
    add_fault(sandbox.ads_url, route=chosen.route, latency_ms=100)

    outcome = chosen.deliver(RequestPace(4))

    assert 2 <= most_at_once(chosen.requests(sandbox)) <= 4
    assert outcome.confirmed == 8 * PER_REQUEST
    assert chosen.held() == chosen.committed() == set(chosen.members.frame[USER_ID])


def test_a_request_failing_midway_commits_what_the_others_confirmed_and_the_next_run_sends_the_rest(
    sender, sandbox
):
    chosen = sender(12 * PER_REQUEST)
    add_fault(sandbox.ads_url, route=chosen.route, latency_ms=50)
    add_fault(sandbox.ads_url, route=chosen.route, status=400, count=1)

    with pytest.raises(DeliveryInterrupted) as stopped:
        chosen.deliver(RequestPace(4))

    # The requests in flight with the failed one ended and were committed; none started after it.
    assert PER_REQUEST <= stopped.value.outcome.confirmed < 12 * PER_REQUEST
    assert chosen.held() == chosen.committed() and len(chosen.committed()) == stopped.value.outcome.confirmed
    outcome = chosen.deliver(RequestPace(4))
    members = set(chosen.members.frame[USER_ID])
    assert outcome.confirmed == len(members) - stopped.value.outcome.confirmed
    assert chosen.delivered(sandbox) == collections.Counter(members)
    assert chosen.held() == chosen.committed() == members


def test_members_built_as_json_text_go_in_the_body_as_they_are(sandbox):
    sent: list[tuple[str, bytes]] = []
    session = requests.Session()
    session.hooks["response"].append(
        lambda response, *args, **kwargs: sent.append(
            (response.request.headers.get("Content-Type"), response.request.body)
        )
    )
    api = AdsApiClient("c", "s", "r", base_url=sandbox.ads_url, token_url=sandbox.token_url, session=session)
    adm = AdmClient(api, "amzn1.ads-account.senders")
    data_set_id = adm.create_audience("Body_Test", "US").data_set_id
    digest = hashlib.sha256(b"x").hexdigest()
    # Not re-encoded: the user id's "ü" stays UTF-8, no `\u00fc` escape and no spaces are added.
    texts = [
        f'{{"externalUserId":"{user}","action":"CREATE","userIdentity":{{"hashedPiis":[{{"em":"{digest}"}}]}}}}'
        for user in ("ü1", "u2")
    ]

    assert adm.upload_members(data_set_id, texts).errors == []

    assert sent[-1] == (MEMBERS_MEDIA_TYPE, members_body(texts))
    assert set(sandbox.ads.state.members("adm", data_set_id)) == {"ü1", "u2"}
