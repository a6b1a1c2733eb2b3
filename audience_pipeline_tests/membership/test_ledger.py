"""Ledgers advance only with what the destination confirmed, and never lose a concurrent commit."""

import random
import threading
from pathlib import Path

import boto3
import polars as pl
import pytest

from audience_pipeline.membership import (
    Ledger,
    LedgerConflict,
    diff,
    ledger_key,
    message_id,
)
from audience_pipeline.membership.ledger import LedgerDamaged
from audience_pipeline.sandbox.server import DUMMY_AWS_KEYS
from audience_pipeline.state import ParquetStore, buckets


def members(*rows: tuple[str, str, str]) -> pl.DataFrame:
    return pl.DataFrame(rows, schema=["user_id", "fingerprint", "payload"], orient="row")


@pytest.fixture
def store(tmp_path) -> ParquetStore:
    return ParquetStore(str(tmp_path / "state"))


@pytest.fixture
def ledger(store) -> Ledger:
    return Ledger(store, "firehose/my_stream", 1001)


def test_an_absent_ledger_loads_empty_at_version_0(ledger):
    state = ledger.load()
    assert state.version == 0
    assert ledger.read(state).is_empty()
    assert ledger.read(state).schema == {
        "user_id": pl.String,
        "fingerprint": pl.String,
        "payload": pl.String,
        "version": pl.Int64,
    }


def test_commits_upsert_and_drop_members_at_the_next_version(ledger):
    first = ledger.commit(ledger.load(), added=members(("u1", "f1", "p1"), ("u2", "f2", "p2")))
    changes = diff(members(("u1", "f1-new", "p1-new"), ("u3", "f3", "p3")), ledger.read(first))
    second = ledger.commit(first, added=changes.added, removed=changes.removed, changed=changes.changed)

    loaded = ledger.load()
    assert (first.version, second.version, loaded.version) == (1, 2, 2)
    assert sorted(ledger.read(loaded).rows()) == [("u1", "f1-new", "p1-new", 2), ("u3", "f3", "p3", 2)]
    assert ledger.read(loaded).equals(ledger.read(second))


def test_a_commit_that_only_removes_still_moves_the_version_on(ledger):
    state = ledger.commit(ledger.load(), added=members(("u1", "f1", "p1")))
    state = ledger.commit(state, removed=pl.DataFrame({"user_id": ["u1"]}))
    loaded = ledger.load()
    assert (state.version, loaded.version, ledger.read(loaded).height) == (2, 2, 0)


def test_only_the_confirmed_changes_are_recorded_and_the_rest_is_found_again(ledger):
    state = ledger.commit(
        ledger.load(), added=members(("u1", "f1", "p1"), ("u2", "f2", "p2"), ("u3", "f3", "p3"))
    )
    snapshot = members(("u1", "f1", "p1"), ("u2", "f2-new", "p2-new"), ("u4", "f4", "p4"), ("u5", "f5", "p5"))
    changes = diff(snapshot, ledger.read(state))

    # The destination took u4 and the removal of u3, but neither u5 nor u2's new identities.
    state = ledger.commit(
        state,
        added=changes.added.filter(pl.col("user_id") == "u4"),
        removed=changes.removed,
        changed=changes.changed.filter(pl.col("user_id") == "nobody"),
    )

    pending = diff(snapshot, ledger.read())
    assert pending.added.get_column("user_id").to_list() == ["u5"]
    assert pending.removed.is_empty()
    assert pending.changed.select("user_id", "old_payload").rows() == [("u2", "p2")]
    assert sorted(ledger.read().rows()) == [
        ("u1", "f1", "p1", 1),
        ("u2", "f2", "p2", 1),
        ("u4", "f4", "p4", 2),
    ]


def test_nothing_confirmed_writes_nothing(ledger, store):
    state = ledger.load()
    assert ledger.commit(state, added=members()) is state
    assert store.read(ledger.key) is None


def test_a_member_confirmed_twice_in_one_commit_is_refused(ledger):
    with pytest.raises(ValueError, match="only once"):
        ledger.commit(
            ledger.load(), added=members(("u1", "f1", "p1")), removed=pl.DataFrame({"user_id": ["u1"]})
        )


def outgoing_ids(ledger: Ledger, snapshot: pl.DataFrame) -> list[str]:
    state = ledger.load()
    changes = diff(snapshot, ledger.read(state))
    ids = [
        changes.added.select(
            message_id(
                "firehose/my_stream",
                1001,
                pl.col("user_id"),
                "added",
                state.epoch,
                state.version,
                pl.col("fingerprint"),
            )
        ),
        changes.removed.select(
            message_id(
                "firehose/my_stream",
                1001,
                pl.col("user_id"),
                "removed",
                state.epoch,
                state.version,
                pl.col("fingerprint"),
            )
        ),
    ]
    return sorted(pl.concat(ids).to_series().to_list())


def test_a_rerun_after_a_crash_before_the_commit_sends_the_same_message_ids(ledger):
    ledger.commit(ledger.load(), added=members(("u1", "f1", "p1"), ("u2", "f2", "p2")))
    snapshot = members(("u1", "f1", "p1"), ("u3", "f3", "p3"))

    sent_before_the_crash = outgoing_ids(ledger, snapshot)
    resent = outgoing_ids(ledger, snapshot)

    assert resent == sent_before_the_crash and len(resent) == 2


def test_the_same_change_at_another_ledger_version_gets_another_id(ledger):
    snapshot = members(("u1", "f1", "p1"))
    first_add = outgoing_ids(ledger, snapshot)
    state = ledger.commit(ledger.load(), added=snapshot)
    ledger.commit(state, removed=snapshot)
    assert outgoing_ids(ledger, snapshot) != first_add


def test_a_ledger_started_again_after_a_reset_sends_ids_never_sent_before(ledger, store):
    snapshot = members(("u1", "f1", "p1"))
    started = ledger.start(ledger.load())
    assert started.epoch and ledger.load().epoch == started.epoch
    # A crash before the commit: the re-run loads the epoch the first ids were made with.
    before_the_crash = outgoing_ids(ledger, snapshot)
    assert outgoing_ids(ledger, snapshot) == before_the_crash
    assert ledger.start(ledger.load()).revision == ledger.load().revision

    store.delete(ledger.key)  # the documented recovery for a lost ledger key
    ledger.start(ledger.load())

    assert set(outgoing_ids(ledger, snapshot)).isdisjoint(before_the_crash)


def test_commits_keep_the_epoch(ledger):
    started = ledger.start(ledger.load())
    committed = ledger.commit(started, added=members(("u1", "f1", "p1")))
    assert ledger.load().epoch == committed.epoch == started.epoch


@pytest.mark.parametrize(
    ("damage", "problem"),
    [
        (lambda path: path.write_bytes(b"not parquet"), "is not a readable Parquet file"),
        (lambda path: pl.DataFrame({"user_id": ["u1"]}).write_parquet(path), "has no ledger version"),
    ],
)
def test_a_damaged_ledger_names_its_file_and_the_way_back(ledger, store, damage, problem):
    path = store.uri(ledger.key)
    Path(path).parent.mkdir(parents=True)
    damage(Path(path))

    with pytest.raises(LedgerDamaged) as error:
        ledger.load()

    message = str(error.value)
    assert message.startswith(f"Ledger {path} {problem}") and "\n" not in message
    assert f"Restore the file and its parts ({path.removesuffix('.parquet')}@parts) from a backup" in message
    assert "or delete both" in message


def test_a_commit_on_a_ledger_that_moved_on_raises_a_conflict(ledger):
    base = ledger.commit(ledger.load(), added=members(("u1", "f1", "p1")))
    mine, theirs = ledger.load(), ledger.load()
    ledger.commit(theirs, added=members(("u2", "f2", "p2")))

    with pytest.raises(LedgerConflict, match="version 1"):
        ledger.commit(mine, added=members(("u3", "f3", "p3")))
    assert ledger.load().version == base.version + 1
    assert sorted(ledger.read().get_column("user_id")) == ["u1", "u2"]


def test_two_first_commits_of_the_same_ledger_conflict(ledger):
    mine, theirs = ledger.load(), ledger.load()
    ledger.commit(theirs, added=members(("u1", "f1", "p1")))
    with pytest.raises(LedgerConflict):
        ledger.commit(mine, added=members(("u2", "f2", "p2")))


def test_audiences_committed_concurrently_never_touch_each_other(store):
    audiences = [f"audience-{i}" for i in range(8)]
    errors = []

    def deliver(audience: str) -> None:
        try:
            ledger = Ledger(store, "firehose/my_stream", audience)
            for round_ in range(5):
                members_now = members(*[(f"{audience}-u{i}", f"f{round_}", f"p{round_}") for i in range(50)])
                state = ledger.load()
                changes = diff(members_now, ledger.read(state))
                ledger.commit(state, added=changes.added, changed=changes.changed)
        except Exception as error:  # surfaced below: a thread's failure would otherwise vanish
            errors.append(error)

    threads = [threading.Thread(target=deliver, args=(audience,)) for audience in audiences]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert errors == []
    for audience in audiences:
        ledger = Ledger(store, "firehose/my_stream", audience)
        assert ledger.load().version == 5
        assert sorted(ledger.read().get_column("user_id")) == sorted(f"{audience}-u{i}" for i in range(50))
        assert set(ledger.read().get_column("fingerprint")) == {"f4"}


def test_racing_commits_of_one_ledger_lose_no_update(store):
    # Every thread retries on a conflict, as a re-run would; all additions must survive.
    ledger = Ledger(store, "firehose/my_stream", "shared")

    def add(user: str) -> None:
        while True:
            try:
                ledger.commit(ledger.load(), added=members((user, "f", "p")))
                return
            except LedgerConflict:
                continue

    threads = [threading.Thread(target=add, args=(f"u{i}",)) for i in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    state = ledger.load()
    assert state.version == 6
    assert sorted(ledger.read(state).get_column("user_id")) == sorted(f"u{i}" for i in range(6))


@pytest.mark.parametrize(
    ("destination", "audience", "key"),
    [
        ("firehose/my_stream", 1001, "ledgers/firehose/my_stream/1001.parquet"),
        ("firehose", "../../etc", "ledgers/firehose/%2E.%2F..%2Fetc.parquet"),
        ("adm", ".hidden", "ledgers/adm/%2Ehidden.parquet"),
        ("../x", "a b", "ledgers/%2E./x/a%20b.parquet"),
    ],
)
def test_ledger_keys_stay_inside_the_ledgers_folder(destination, audience, key):
    assert ledger_key(destination, audience) == key


@pytest.mark.parametrize(("destination", "audience"), [("", "1"), ("firehose//s", "1"), ("firehose", "")])
def test_empty_key_parts_are_refused(destination, audience):
    with pytest.raises(ValueError, match="must not be empty"):
        ledger_key(destination, audience)


@pytest.fixture
def small_buckets(monkeypatch, tmp_path):
    """Buckets of about five members, and changes set aside on disk: a large ledger's layout in small."""
    monkeypatch.setattr(buckets, "BUCKET_ROWS", 5)
    monkeypatch.setattr(buckets, "SPILL_MEMORY_BYTES", 0)


@pytest.fixture(params=["local", "s3"])
def any_store(request, tmp_path, monkeypatch) -> ParquetStore:
    if request.param == "local":
        return ParquetStore(str(tmp_path / "state"))
    sandbox = request.getfixturevalue("sandbox")
    for name, value in DUMMY_AWS_KEYS.items():
        monkeypatch.setenv(name, value)
    boto3.client("s3", endpoint_url=sandbox.aws_url).create_bucket(Bucket="state")
    return ParquetStore("s3://state/pipeline", endpoint_url=sandbox.aws_url, region="us-east-1")


def test_a_large_ledger_commits_its_changes_by_bucket_and_reads_back_exactly(small_buckets, any_store):
    ledger = Ledger(any_store, "firehose/my_stream", 1001)
    expected = {f"u{i}": (f"f{i}", f"p{i}") for i in range(100)}
    state = ledger.commit(ledger.start(ledger.load()), added=members(*((u, *v) for u, v in expected.items())))
    assert state.bits > 0 and len(state.parts) == 1 << state.bits

    rng = random.Random(7)
    for round_ in range(12):
        leaving = rng.sample(sorted(expected), 3)
        changing = rng.sample(sorted(set(expected) - set(leaving)), 3)
        joining = [f"n{round_}-{i}" for i in range(3)]
        snapshot = {u: v for u, v in expected.items() if u not in leaving}
        snapshot |= {u: (f"f{u}-{round_}", f"p{u}-{round_}") for u in changing + joining}
        changes = diff(members(*((u, *v) for u, v in snapshot.items())), ledger.read(state))
        assert (changes.added.height, changes.removed.height, changes.changed.height) == (3, 3, 3)
        state = ledger.commit(state, added=changes.added, removed=changes.removed, changed=changes.changed)
        expected = snapshot
        stored = ledger.read()
        assert {u: (f, p) for u, f, p, _ in stored.rows()} == expected
        # Commits write deltas; compaction keeps the rows still read from them under a fifth of the
        # ledger, and every file not named is gone.
        bases = {part.bucket: part.version for part in state.parts if part.bucket is not None}
        deltas = [part for part in state.parts if part.bucket is None]
        pending = sum(n for d in deltas for b, n in enumerate(d.bucket_rows) if d.version > bases[b])
        assert pending <= 0.25 * len(expected) and len(deltas) <= 16
        named = {ledger.key, *(part.key for part in state.parts if part.key)}
        assert set(any_store.keys("ledgers")) == named

    assert ledger.load().epoch == state.epoch and ledger.load().version == 13


def test_a_ledger_in_one_file_is_read_and_written_in_parts_by_its_next_commit(small_buckets, store):
    ledger = Ledger(store, "firehose/my_stream", 1001)
    old = members(*((f"u{i}", f"f{i}", f"p{i}") for i in range(20))).with_columns(version=pl.lit(3, pl.Int64))
    store.write(ledger.key, old, metadata={"ledger_version": "3", "ledger_epoch": "e1"})

    state = ledger.load()
    assert (state.version, state.epoch, state.single_file) == (3, "e1", True)
    assert ledger.read(state).sort("user_id").equals(old.sort("user_id"))
    changes = diff(
        members(("u0", "f0-new", "p0-new"), *((f"u{i}", f"f{i}", f"p{i}") for i in range(1, 20))),
        ledger.read(state),
    )

    state = ledger.commit(state, changed=changes.changed)

    assert not state.single_file and state.bits > 0 and (state.version, state.epoch) == (4, "e1")
    assert ledger.read().filter(pl.col("user_id") == "u0").rows() == [("u0", "f0-new", "p0-new", 4)]
    assert ledger.read().height == 20


def test_a_missing_part_is_named_and_one_replaced_by_another_commit_is_a_conflict(small_buckets, store):
    ledger = Ledger(store, "firehose/my_stream", 1001)
    state = ledger.commit(ledger.load(), added=members(*((f"u{i}", "f", "p") for i in range(30))))
    part = next(part.key for part in state.parts if part.key)

    newer = ledger.commit(state, added=members(*((f"v{i}", "f", "p") for i in range(60))))
    # `state` is an older version: a run that loaded it finds its parts replaced.
    with pytest.raises(LedgerConflict, match="committed by another run while this one read version 1"):
        ledger.read(state)

    store.delete(next(part.key for part in newer.parts if part.key))
    with pytest.raises(LedgerDamaged) as damaged:
        ledger.read()
    assert "names the part" in str(damaged.value) and "which is missing" in str(damaged.value)
    assert part not in store.keys("ledgers")
