"""The delivery core with a fake adapter: no Dagster, no HTTP."""

import time
from collections.abc import Iterator

import polars as pl
import pytest

from audience_pipeline.clients.concurrency import RequestPace
from audience_pipeline.membership import Ledger
from audience_pipeline.membership.delivery import (
    ITEM,
    KIND,
    REJECT,
    USER_ID,
    Answer,
    BucketedMembers,
    DeliveryInterrupted,
    MassRemoval,
    Members,
    deliver,
)
from audience_pipeline.state import ParquetStore, buckets
from audience_pipeline.state.buckets import bits_for, bucket_of


class Refused(Exception):
    """The fake destination's failed request."""


class FakeAdapter:
    """One item per change (two for an identity change); the destination refuses `refuse`, fails
    `fail` and raises on the request holding `broken`; `too_big` can never be sent."""

    noun = "things"
    request_errors = (Refused,)

    def __init__(self, refuse=(), fail=(), broken=None, too_big=(), per_request=2):
        self.refuse, self.fail, self.broken, self.too_big = set(refuse), set(fail), broken, set(too_big)
        self.per_request = per_request
        self.sent: list[str] = []

    def items(self, changes, state) -> pl.DataFrame:
        parts = [changes.added.select(USER_ID, pl.lit("added").alias(KIND))]
        parts.append(changes.removed.select(USER_ID, pl.lit("removed").alias(KIND)))
        parts += [changes.changed.select(USER_ID, pl.lit("changed").alias(KIND))] * 2
        items = pl.concat(parts)
        return items.with_columns(
            pl.when(pl.col(USER_ID).is_in(list(self.too_big))).then(pl.lit("too big")).alias(REJECT)
        )

    def requests(self, items: pl.DataFrame) -> int:
        return -(-items.height // self.per_request)

    def send(self, items: pl.DataFrame) -> Iterator[Answer]:
        for chunk in items.iter_slices(self.per_request):
            users = chunk[USER_ID].to_list()
            if self.broken in users:
                raise Refused("503 from the fake")
            self.sent += users
            numbers = dict(zip(chunk[ITEM].to_list(), users, strict=True))
            yield Answer(
                confirmed=[n for n, u in numbers.items() if u not in self.refuse | self.fail],
                rejected={n: "refused" for n, u in numbers.items() if u in self.refuse},
                failed=[n for n, u in numbers.items() if u in self.fail],
                retries=1,
            )

    def stored(self, confirmed: pl.DataFrame) -> pl.DataFrame:
        return confirmed.with_columns(pl.col("payload").str.to_uppercase())


def members(*users: str, version: str = "") -> Members:
    frame = pl.DataFrame(
        {USER_ID: list(users), "fingerprint": [u + version for u in users], "payload": users}
    )
    return Members(frame.cast(pl.String), skipped=1)


@pytest.fixture
def ledger(tmp_path) -> Ledger:
    return Ledger(ParquetStore(str(tmp_path)), "fake/destination", 7)


def run(ledger, audience: Members, adapter=None, **options):
    return deliver(ledger, lambda state, held: audience, adapter or FakeAdapter(), **options)


def held(ledger) -> list[tuple[str, str]]:
    return sorted(ledger.read().select(USER_ID, "payload").rows())


def test_only_what_the_destination_confirmed_is_committed_in_one_metrics_shape(ledger):
    adapter = FakeAdapter(refuse={"u2"}, fail={"u3"}, too_big={"u4"})

    outcome = run(ledger, members("u1", "u2", "u3", "u4", "u5"), adapter)

    assert held(ledger) == [("u1", "U1"), ("u5", "U5")]  # stored as the adapter keeps them
    assert "u4" not in adapter.sent
    assert outcome.metadata() | {"seconds": 0} == {
        "dry_run": False,
        "added": 5,
        "removed": 0,
        "identity_changed": 0,
        "skipped": 1,
        "planned": 5,
        "requests": 2,
        "sent": 3,
        "confirmed": 2,
        "rejected": 2,
        "rejects": {"refused": 1, "too big": 1},
        "failed": 1,
        "retries": 2,
        "removal_share": 0.0,
        "ledger_version": 1,
        "seconds": 0,
    }
    # What was not confirmed is found again.
    assert run(ledger, members("u1", "u2", "u3", "u4", "u5"), FakeAdapter()).counts["added"] == 3


def test_a_change_is_committed_only_when_all_its_items_were_confirmed(ledger):
    run(ledger, members("u1", "u2"))
    adapter = FakeAdapter(fail={"u2"}, per_request=1)

    outcome = run(ledger, members("u1", "u2", version="-new"), adapter)

    assert outcome.counts["identity_changed"] == 2 and outcome.counts["planned"] == 4
    assert ledger.read().filter(pl.col(USER_ID) == "u2")["fingerprint"].item() == "u2"
    assert ledger.read().filter(pl.col(USER_ID) == "u1")["fingerprint"].item() == "u1-new"


def test_a_dry_run_counts_and_neither_sends_nor_writes(ledger):
    adapter = FakeAdapter(too_big={"u3"})

    outcome = run(ledger, members("u1", "u2", "u3"), adapter, dry_run=True)

    assert (outcome.dry_run, outcome.counts["planned"], outcome.requests, outcome.rejected) == (True, 3, 1, 1)
    assert adapter.sent == [] and ledger.store.read(ledger.key) is None


def test_a_failed_request_commits_what_came_before_and_says_so(ledger):
    adapter = FakeAdapter(broken="u3")

    with pytest.raises(DeliveryInterrupted) as stopped:
        run(ledger, members("u1", "u2", "u3", "u4"), adapter)

    assert isinstance(stopped.value.__cause__, Refused)
    # The planner may order the members either way: whatever went in the requests before the broken
    # one (a request's two members, or none) is committed, and nothing else.
    outcome = stopped.value.outcome
    assert outcome.confirmed == len(adapter.sent) and outcome.confirmed in (0, 2)
    assert outcome.ledger.version == (1 if adapter.sent else 0)
    assert held(ledger) == sorted((user, user.upper()) for user in adapter.sent)


class ConcurrentAdapter(FakeAdapter):
    """`FakeAdapter` sending its requests three at a time (`RequestPace`): the first request fails at
    once, the others answer after it, out of order. `started` maps each request started (by its first
    item number) to its users."""

    def send(self, items: pl.DataFrame) -> Iterator[Answer]:
        self.started: dict[int, list[str]] = {}

        def request(chunk: pl.DataFrame) -> Answer:
            first, users = chunk[ITEM][0], chunk[USER_ID].to_list()
            self.started[first] = users
            if first == 0:
                raise Refused("503 from the fake")
            time.sleep(0.1 * (3 - first // self.per_request))
            self.sent += users
            return Answer(confirmed=chunk[ITEM].to_list())

        yield from RequestPace(max_in_flight=3).results(items.iter_slices(self.per_request), request)


def test_a_failed_request_commits_what_the_requests_in_flight_with_it_confirmed(ledger):
    adapter = ConcurrentAdapter()
    audience = members("u1", "u2", "u3", "u4", "u5", "u6", "u7", "u8")

    with pytest.raises(DeliveryInterrupted) as stopped:
        run(ledger, audience, adapter)

    # The three first requests were in flight together; nothing started after the failure, and what
    # the two others confirmed is committed.
    assert sorted(adapter.started) == [0, 2, 4]
    confirmed = sorted(adapter.started[2] + adapter.started[4])
    assert sorted(adapter.sent) == confirmed
    assert (stopped.value.outcome.confirmed, stopped.value.outcome.requests) == (4, 2)
    assert held(ledger) == [(user, user.upper()) for user in confirmed]
    assert run(ledger, audience).confirmed == 4


def test_the_guard_stops_a_mass_removal_before_sending_unless_allowed(ledger):
    run(ledger, members("u1", "u2", "u3", "u4"))
    adapter = FakeAdapter()

    with pytest.raises(MassRemoval) as stopped:
        run(ledger, members("u1"), adapter)  # three of four would go: 75 %

    assert adapter.sent == [] and ledger.load().version == 1
    counts = stopped.value.counts
    assert (counts["removed"], counts["held"], counts["removal_share"]) == (3, 4, 0.75)
    assert "`allow_mass_removal: true`" in str(stopped.value)
    # An audience that suddenly returns nothing is the same, and never silent.
    with pytest.raises(MassRemoval):
        run(ledger, members())
    # Half is allowed by default; the whole audience only on request.
    assert run(ledger, members("u1", "u2"), adapter).counts["removed"] == 2
    assert ledger.read(run(ledger, members(), adapter, max_removal_share=1.0).ledger).is_empty()


def test_the_first_delivery_of_an_audience_is_never_stopped(ledger):
    assert run(ledger, members(), max_removal_share=0.01).ledger.version == 0


def test_the_epoch_is_written_before_the_first_send(ledger):
    adapter = FakeAdapter(broken="u1")
    with pytest.raises(DeliveryInterrupted):
        run(ledger, members("u1"), adapter)
    epoch = ledger.load().epoch
    assert epoch
    assert run(ledger, members("u1")).ledger.epoch == epoch


def bucketed(*users: str, version: str = "") -> BucketedMembers:
    """`members` kept in buckets, as a snapshot is."""
    audience = members(*users, version=version).frame
    bits = bits_for(audience.height)
    return BucketedMembers(
        bits, lambda bucket, level: Members(audience.filter(bucket_of(USER_ID, level) == bucket))
    )


def test_a_large_audience_is_planned_sent_and_committed_a_bucket_at_a_time(ledger, monkeypatch):
    # Buckets of about five members, everything set aside on disk.
    monkeypatch.setattr(buckets, "BUCKET_ROWS", 5)
    monkeypatch.setattr(buckets, "SPILL_MEMORY_BYTES", 0)
    users = [f"u{i:03}" for i in range(60)]
    adapter = FakeAdapter(per_request=7)

    first = run(ledger, bucketed(*users), adapter)

    assert first.counts["added"] == first.confirmed == 60 and first.ledger.bits > 0
    assert sorted(adapter.sent) == users and held(ledger) == [(u, u.upper()) for u in users]
    # Each bucket's items go in requests of their own.
    assert first.requests > -(-60 // 7)

    changed = [*users[5:50], *(f"n{i}" for i in range(5))]
    adapter = FakeAdapter(broken=sorted(changed)[30])
    with pytest.raises(DeliveryInterrupted) as stopped:
        run(ledger, bucketed(*changed, version="-new"), adapter)

    # What was confirmed before the failing request is committed, whatever its bucket: every member is
    # as before or as now, and some are as now.
    outcome = stopped.value.outcome
    assert (outcome.held, outcome.counts["removed"], outcome.counts["identity_changed"]) == (60, 15, 45)
    assert outcome.ledger.version == 2 and 0 < outcome.confirmed < outcome.counts["planned"]
    before = {u: u for u in users}
    now = {u: u + "-new" for u in changed}
    for user in set(before) | set(now):
        stored = ledger.read().filter(pl.col(USER_ID) == user)["fingerprint"].to_list()
        assert stored in ([before[user]] if user in before else [], [now[user]] if user in now else [])
    again = run(ledger, bucketed(*changed, version="-new"))
    assert again.confirmed == again.counts["planned"] > 0
    assert dict(ledger.read().select(USER_ID, "fingerprint").iter_rows()) == now
