"""One audience through snapshot, ledger diff and commit at scale, each stage in a process of its own.

    python benchmarks/ledger.py --members 10000000 --churn 0.01 [--root DIR]

Generates a DuckDB source of `--members` profiles (email, phone, names, address, zip, country, IDFA),
then runs, each in a fresh process whose peak RSS is the stage's:

- `snapshot`: the audience query streamed through the identity engine into the bucketed snapshot file;
- `first_delivery`: the members of that snapshot (a payload of hashed identities and its fingerprint,
  as a destination would build them) diffed against an empty ledger and every one committed;
- `snapshot_churned`: the snapshot again after `--churn` of the members changed: a third left, a
  third changed their email, and as many new users as left joined;
- `members`: the churned snapshot's members built and set down by bucket (the diff's input);
- `diff`: those members diffed against the ledger, bucket by bucket, with, in the same process, the
  baseline: a bare polars anti-join of the two key columns (`user_id` of the members and of the
  ledger), once in memory and once including reading those columns from the same files;
- `commit`: the diff again and the changes read back with the old payloads (not timed: a delivery
  builds its items from them), then every change added as confirmed and committed: a delta part,
  written in time proportional to the changes, not to the audience (compare its seconds at several
  sizes, or with another `--churn`).

Prints one JSON line per stage: seconds, rate (members per second; changes per second for `commit`)
and peak RSS of the process doing the work. `--root` is a folder or `s3://bucket/prefix` for the
state store (default: a temporary folder). Figures are printed, never asserted.
"""

import argparse
import json
import multiprocessing
import resource
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import duckdb
import polars as pl

from audience_pipeline.membership.delivery import BucketedMembers, Members, plan
from audience_pipeline.membership.fingerprints import fingerprint
from audience_pipeline.membership.ledger import Ledger, LedgerChanges
from audience_pipeline.resources.duckdb_source import DuckDBSource
from audience_pipeline.snapshot import build_snapshot
from audience_pipeline.state import ParquetStore
from audience_pipeline.state.buckets import BucketedFile, BucketedWriter

LEDGER = ("benchmark/destination", "audience-1")
SNAPSHOT, MEMBERS = "snapshots/audience-1.parquet", "benchmark/members.parquet"
MEMBER_SCHEMA = pl.Schema({"user_id": pl.String, "fingerprint": pl.String, "payload": pl.String})
PROFILES = """
CREATE OR REPLACE TABLE profiles AS
SELECT
    'u' || i AS user_id,
    CASE WHEN i % 5 = 0 THEN ' User.' || i || '@Example.COM ' ELSE 'user' || i || '@example.com' END
        || CASE WHEN i < {changed} THEN '.new' ELSE '' END AS email,
    '(206) 555-' || lpad((i % 10000)::VARCHAR, 4, '0') AS phone,
    'First' || (i % 5003) AS first_name,
    'Last' || (i % 20011) AS last_name,
    (i % 9973) || ' Main Street' AS address,
    'Seattle' AS city,
    'WA' AS state,
    lpad((i % 99991)::VARCHAR, 5, '0') AS zip,
    'US' AS country_code,
    CASE WHEN i % 3 = 0 THEN
        substr(md5(i::VARCHAR), 1, 8) || '-' || substr(md5(i::VARCHAR), 9, 4) || '-4'
        || substr(md5(i::VARCHAR), 14, 3) || '-8' || substr(md5(i::VARCHAR), 18, 3) || '-'
        || substr(md5(i::VARCHAR), 21, 12)
    END AS idfa
FROM range({first}, {stop}) AS t(i)
"""


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def members_of(snapshot: pl.DataFrame) -> Members:
    """A destination's members from a snapshot bucket: the hashed identities as the payload."""
    identities = pl.struct("email", "phone", "first_name", "last_name", "zip", "idfa")
    frame = snapshot.select("user_id", identities.struct.json_encode().alias("payload"))
    return Members(frame.select("user_id", fingerprint(frame, ["payload"]), "payload"))


def run_snapshot(root: str, source: str) -> dict:
    store = ParquetStore(root)
    started = time.perf_counter()
    with (
        DuckDBSource(database=source).stream("SELECT * FROM profiles") as result,
        store.replacing(SNAPSHOT) as staged,
    ):
        snapshot = build_snapshot(result.frames, result.schema, staged.path, "US")
    return {"seconds": time.perf_counter() - started, "members": snapshot.members}


def run_first_delivery(root: str) -> dict:
    store = ParquetStore(root)
    ledger = Ledger(store, *LEDGER)
    started = time.perf_counter()
    state = ledger.start(ledger.load())
    with store.open(SNAPSHOT) as stored:
        snapshot = BucketedFile(stored)
        members = BucketedMembers(
            snapshot.bits, lambda bucket, level: members_of(snapshot.read(bucket, level))
        )
        with (
            ledger.reader(state) as held,
            plan(members, state, held) as planned,
            LedgerChanges(ledger, state, planned.added.rows) as changes,
        ):
            for bucket in range(1 << planned.level):
                changes.add(added=planned.changes(bucket).added)
            committed = ledger.commit_changes(state, changes)
    return {
        "seconds": time.perf_counter() - started,
        "members": planned.added.rows,
        "ledger_bits": committed.bits,
    }


def run_members(root: str) -> dict:
    store = ParquetStore(root)
    started = time.perf_counter()
    with store.open(SNAPSHOT) as stored, store.replacing(MEMBERS) as staged:
        snapshot = BucketedFile(stored)
        writer = BucketedWriter(staged.path, MEMBER_SCHEMA)
        for bucket in range(1 << snapshot.bits):
            writer.write(bucket, members_of(snapshot.read(bucket, snapshot.bits)).frame)
        writer.close(snapshot.bits)
    return {"seconds": time.perf_counter() - started, "members": writer.rows}


def run_diff(root: str, commit: bool) -> dict:
    store = ParquetStore(root)
    ledger = Ledger(store, *LEDGER)
    state = ledger.load()
    reading = 0.0

    def read(file: BucketedFile, bucket: int, level: int) -> Members:
        # Members come from the destination's own work (built from the snapshot); here from a file,
        # and that time is not the diff's.
        nonlocal reading
        started = time.perf_counter()
        members = Members(file.read(bucket, level))
        reading += time.perf_counter() - started
        return members

    figures: dict = {}
    with store.open(MEMBERS) as stored:
        file = BucketedFile(stored)
        members = BucketedMembers(file.bits, lambda bucket, level: read(file, bucket, level))
        started = time.perf_counter()
        with ledger.reader(state) as held, plan(members, state, held) as planned:
            figures |= {"seconds": time.perf_counter() - started - reading, "members": planned.held}
            figures |= {"members_read_seconds": round(reading, 2), "changes": planned.counts()}
            if commit:
                # Reading the changes back with the old payloads is the delivery's (items are built
                # from them); the commit is adding them as confirmed and committing.
                committing = 0.0
                with LedgerChanges(ledger, state, planned.added.rows + planned.changed.rows) as changes:
                    for bucket in range(1 << planned.level):
                        found = planned.changes(bucket)
                        started = time.perf_counter()
                        changes.add(added=found.added, removed=found.removed, changed=found.changed)
                        committing += time.perf_counter() - started
                    started = time.perf_counter()
                    committed = ledger.commit_changes(state, changes)
                    committing += time.perf_counter() - started
                changed = sum(planned.counts()[kind] for kind in ("added", "removed", "identity_changed"))
                figures |= {"seconds": committing, "rate": round(changed / committing)}
                return figures | {"ledger_version": committed.version, "parts": len(committed.parts)}
    # The diff's own peak, before the baseline (the two key columns anti-joined, read from the same
    # files) loads whole columns in this process.
    figures["peak_rss_mib"] = round(peak_rss_mib())
    parts = [store.uri(part.key) for part in state.parts if part.key is not None and part.bucket is not None]
    started = time.perf_counter()
    new_ids = pl.scan_parquet(store.uri(MEMBERS)).select("user_id").collect()
    old_ids = pl.scan_parquet(parts).select("user_id").collect()
    read_ids = time.perf_counter() - started
    started = time.perf_counter()
    new_ids.join(old_ids, on="user_id", how="anti")
    joined = time.perf_counter() - started
    figures |= {
        "baseline_seconds": round(joined, 3),
        "baseline_with_read_seconds": round(read_ids + joined, 3),
    }
    return figures | {
        "ratio": round(figures["seconds"] / joined, 2),
        "ratio_with_read": round(figures["seconds"] / (read_ids + joined), 2),
    }


def in_child(stage: str, target: Callable, *args) -> dict:
    """Run `target(*args)` in a fresh process and add its peak RSS."""
    context = multiprocessing.get_context("spawn")
    with context.Pool(1) as pool:
        figures = pool.apply(_measured, (target, *args))
    figures = {"stage": stage, **figures}
    figures.setdefault("rate", round(figures["members"] / figures["seconds"]))
    figures["seconds"] = round(figures["seconds"], 2)
    print(json.dumps(figures), flush=True)
    return figures


def _measured(target: Callable, *args) -> dict:
    figures = target(*args)
    return {"peak_rss_mib": round(peak_rss_mib()), **figures}


def write_source(path: Path, first: int, stop: int, changed: int) -> None:
    with duckdb.connect(str(path)) as conn:
        conn.execute("SET enable_progress_bar = false")
        conn.execute(PROFILES.format(first=first, stop=stop, changed=changed))


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--members", type=int, default=10_000_000)
    parser.add_argument("--churn", type=float, default=0.01)
    parser.add_argument("--root", help="state store root (default: a temporary folder)")
    args = parser.parse_args()

    n, moved = args.members, int(args.members * args.churn / 3)
    with tempfile.TemporaryDirectory() as tmp:
        root, source = args.root or f"{tmp}/state", Path(tmp) / "source.duckdb"
        write_source(source, 0, n, changed=0)
        in_child("snapshot", run_snapshot, root, str(source))
        in_child("first_delivery", run_first_delivery, root)
        # Members [moved, n) stay, the first `moved` of them with a new email; [0, moved) leave;
        # [n, n + moved) join.
        write_source(source, moved, n + moved, changed=2 * moved)
        in_child("snapshot_churned", run_snapshot, root, str(source))
        in_child("members", run_members, root)
        in_child("diff", run_diff, root, False)
        in_child("commit", run_diff, root, True)


if __name__ == "__main__":
    main()
