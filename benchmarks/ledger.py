"""Membership ledger at audience scale: fingerprint a snapshot, diff it, commit and load the ledger.

    python benchmarks/ledger.py --members 10000000 --churn 0.01 [--root DIR]

Builds an audience of `--members` users with hashed email and phone plus a customer id and
commits it as the ledger (in a child process, so its memory is not counted). Then takes a
snapshot in which `--churn` of the members changed: a third left, a third changed identities,
and as many new users as left joined. Times the snapshot's fingerprints, the load of the ledger,
the diff, and the commit of every change (a full rewrite of the ledger file). `--root` is a
folder or `s3://bucket/prefix` (default: a temporary folder). Figures are printed, never asserted.
"""

import argparse
import multiprocessing
import resource
import sys
import tempfile
import time

import polars as pl
import polars_hash  # noqa: F401  (registers the `chash` namespace)

from audience_pipeline.membership import Ledger, diff, fingerprint
from audience_pipeline.state import ParquetStore

IDENTITIES = ["customer_id", "email_sha256", "phone_sha256"]
LEDGER = ("benchmark/stream", "audience-1")


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def audience(user_numbers: pl.Expr, variant: pl.Expr) -> list[pl.Expr]:
    """Members' identity columns; `variant` stands in for whatever makes an identity change."""
    number = user_numbers.cast(pl.String)
    return [
        pl.concat_str(pl.lit("u"), number).alias("user_id"),
        pl.concat_str(pl.lit("c"), number).alias("customer_id"),
        pl.concat_str(pl.lit("e"), number, pl.lit("-"), variant).chash.sha2_256().alias("email_sha256"),
        pl.concat_str(pl.lit("p"), number).chash.sha2_256().alias("phone_sha256"),
    ]


def payload(identities: pl.DataFrame) -> pl.Series:
    """What Firehose would carry for each member, as the caller serializes it for the ledger."""
    record = pl.struct(
        CustomerId=pl.col("customer_id"), Email=pl.col("email_sha256"), Phone=pl.col("phone_sha256")
    )
    return identities.select(record.struct.json_encode().alias("payload")).to_series()


def commit_baseline(root: str, n: int) -> None:
    """Commit the ledger of `n` members: in a child process, so its memory is not counted."""
    identities = pl.select(audience(pl.int_range(n), pl.lit("0")))
    delivered = identities.select("user_id", fingerprint(identities, IDENTITIES), payload(identities))
    ledger = Ledger(ParquetStore(root), *LEDGER)
    ledger.commit(ledger.load(), added=delivered)


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
        root = args.root or tmp
        baseline = multiprocessing.get_context("spawn").Process(target=commit_baseline, args=(root, n))
        baseline.start()
        baseline.join()
        if baseline.exitcode:
            sys.exit("Committing the baseline ledger failed")
        ledger = Ledger(ParquetStore(root), *LEDGER)

        # Members [moved, n) stay, the first `moved` of them with changed identities; [0, moved)
        # leave; [n, n + moved) join.
        numbers = pl.int_range(moved, n + moved)
        variant = pl.when(numbers < 2 * moved).then(pl.lit("1")).otherwise(pl.lit("0"))
        identities = pl.select(audience(numbers, variant))

        start = time.perf_counter()
        fingerprints = fingerprint(identities, IDENTITIES)
        fingerprint_seconds = time.perf_counter() - start
        snapshot = identities.select("user_id", fingerprints, payload(identities))
        del identities, fingerprints

        start = time.perf_counter()
        state = ledger.load()
        load_seconds = time.perf_counter() - start

        start = time.perf_counter()
        changes = diff(snapshot, state.frame)
        diff_seconds = time.perf_counter() - start

        start = time.perf_counter()
        ledger.commit(state, added=changes.added, removed=changes.removed, changed=changes.changed)
        commit_seconds = time.perf_counter() - start

    print(f"members                  {n:,}  (churn {args.churn:.2%})")
    print(
        f"added / removed / changed {changes.added.height:,} / {changes.removed.height:,} / "
        f"{changes.changed.height:,}"
    )
    print(f"snapshot fingerprints    {fingerprint_seconds:.2f} s  ({len(IDENTITIES)} identity columns)")
    print(f"diff                     {diff_seconds:.2f} s")
    print(f"commit (write)           {commit_seconds:.2f} s")
    print(f"load (read)              {load_seconds:.2f} s")
    print(f"peak RSS                 {peak_rss_mib():,.0f} MiB")


if __name__ == "__main__":
    main()
