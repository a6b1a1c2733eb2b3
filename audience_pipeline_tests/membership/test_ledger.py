"""Ledgers advance only with what the destination confirmed, and never lose a concurrent commit."""

import threading
from pathlib import Path

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
from audience_pipeline.state import ParquetStore


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
    assert state.frame.is_empty()
    assert state.frame.schema == {
        "user_id": pl.String,
        "fingerprint": pl.String,
        "payload": pl.String,
        "version": pl.Int64,
    }


def test_commits_upsert_and_drop_members_at_the_next_version(ledger):
    first = ledger.commit(ledger.load(), added=members(("u1", "f1", "p1"), ("u2", "f2", "p2")))
    changes = diff(members(("u1", "f1-new", "p1-new"), ("u3", "f3", "p3")), first.frame)
    second = ledger.commit(first, added=changes.added, removed=changes.removed, changed=changes.changed)

    loaded = ledger.load()
    assert (first.version, second.version, loaded.version) == (1, 2, 2)
    assert sorted(loaded.frame.rows()) == [("u1", "f1-new", "p1-new", 2), ("u3", "f3", "p3", 2)]
    assert loaded.frame.equals(second.frame)


def test_a_commit_that_only_removes_still_moves_the_version_on(ledger):
    state = ledger.commit(ledger.load(), added=members(("u1", "f1", "p1")))
    state = ledger.commit(state, removed=pl.DataFrame({"user_id": ["u1"]}))
    loaded = ledger.load()
    assert (state.version, loaded.version, loaded.frame.height) == (2, 2, 0)


def test_only_the_confirmed_changes_are_recorded_and_the_rest_is_found_again(ledger):
    state = ledger.commit(
        ledger.load(), added=members(("u1", "f1", "p1"), ("u2", "f2", "p2"), ("u3", "f3", "p3"))
    )
    snapshot = members(("u1", "f1", "p1"), ("u2", "f2-new", "p2-new"), ("u4", "f4", "p4"), ("u5", "f5", "p5"))
    changes = diff(snapshot, state.frame)

    # The destination took u4 and the removal of u3, but neither u5 nor u2's new identities.
    state = ledger.commit(
        state,
        added=changes.added.filter(pl.col("user_id") == "u4"),
        removed=changes.removed,
        changed=changes.changed.filter(pl.col("user_id") == "nobody"),
    )

    pending = diff(snapshot, ledger.load().frame)
    assert pending.added.get_column("user_id").to_list() == ["u5"]
    assert pending.removed.is_empty()
    assert pending.changed.select("user_id", "old_payload").rows() == [("u2", "p2")]
    assert sorted(ledger.load().frame.rows()) == [
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
    changes = diff(snapshot, state.frame)
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
    assert "Restore the file from a backup of the state store, or delete it" in message


def test_a_commit_on_a_ledger_that_moved_on_raises_a_conflict(ledger):
    base = ledger.commit(ledger.load(), added=members(("u1", "f1", "p1")))
    mine, theirs = ledger.load(), ledger.load()
    ledger.commit(theirs, added=members(("u2", "f2", "p2")))

    with pytest.raises(LedgerConflict, match="version 1"):
        ledger.commit(mine, added=members(("u3", "f3", "p3")))
    assert ledger.load().version == base.version + 1
    assert sorted(ledger.load().frame.get_column("user_id")) == ["u1", "u2"]


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
                changes = diff(members_now, state.frame)
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
        state = Ledger(store, "firehose/my_stream", audience).load()
        assert state.version == 5
        assert sorted(state.frame.get_column("user_id")) == sorted(f"{audience}-u{i}" for i in range(50))
        assert set(state.frame.get_column("fingerprint")) == {"f4"}


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
    assert sorted(state.frame.get_column("user_id")) == sorted(f"u{i}" for i in range(6))


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
