"""Identity engine throughput against bare single-core hashlib, and peak memory.

    python benchmarks/identity.py --profiles 1000000

Generates messy sample profiles (in a child process, so its memory is not counted), then streams
them from DuckDB in batches through `normalize_identities` for 8 fields: email, phone, first and
last name, address, city, state, zip. The baseline hashes the very values the engine normalized,
one `hashlib.sha256` call each on one core: the engine must be at least as fast as hashing alone.
Each side runs `--repeat` times and its fastest pass counts. Figures are printed, never asserted.
"""

import argparse
import hashlib
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import duckdb

from audience_pipeline.batches import frames
from audience_pipeline.identity import normalize_identities

FIELDS = ["email", "phone", "first_name", "last_name", "address", "city", "state", "zip"]


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def batches(database: Path, profiles: int, batch_size: int):
    with duckdb.connect(str(database), read_only=True) as conn:
        reader = conn.sql(
            f"SELECT {', '.join(FIELDS)}, country_code FROM profiles LIMIT {profiles}"
        ).to_arrow_reader(batch_size)
        yield from frames(reader, batch_size)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--profiles", type=int, default=1_000_000)
    parser.add_argument("--batch-size", type=int, default=250_000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--repeat", type=int, default=3, help="passes of each side; the fastest counts, as timeit does"
    )
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        generate = (
            "from audience_pipeline.sample_data import write_sample_data; "
            f"write_sample_data({tmp!r}, {args.profiles}, {args.seed})"
        )
        subprocess.run([sys.executable, "-c", generate], check=True)
        database = Path(tmp) / "sample.duckdb"

        engine_seconds = hashlib_seconds = float("inf")
        for _ in range(args.repeat):
            seconds, hashed_values, rows, rejects = 0.0, 0, 0, 0
            for frame in batches(database, args.profiles, args.batch_size):
                start = time.perf_counter()
                result = normalize_identities(frame, fields=FIELDS, row_offset=rows)
                seconds += time.perf_counter() - start
                hashed_values += sum(result.values_out().values())
                rejects += result.rejects.height
                rows += frame.height
            engine_seconds = min(engine_seconds, seconds)
        engine_rss = peak_rss_mib()

        for _ in range(args.repeat):
            seconds, baseline_values = 0.0, 0
            for frame in batches(database, args.profiles, args.batch_size):
                plain = normalize_identities(frame, fields=FIELDS, hash_values=False).frame
                values = [v.encode() for f in FIELDS for v in plain[f].drop_nulls().to_list()]
                start = time.perf_counter()
                for value in values:
                    hashlib.sha256(value).hexdigest()
                seconds += time.perf_counter() - start
                baseline_values += len(values)
            hashlib_seconds = min(hashlib_seconds, seconds)

    print(f"profiles                 {rows:,}")
    print(f"fields                   {len(FIELDS)} ({', '.join(FIELDS)})")
    print(f"values out / rejects     {hashed_values:,} / {rejects:,}")
    print(f"engine                   {engine_seconds:.2f} s  {rows / engine_seconds:,.0f} profiles/s")
    print(
        f"hashlib, one core        {hashlib_seconds:.2f} s  {baseline_values / hashlib_seconds:,.0f} values/s"
        f"  = {rows / hashlib_seconds:,.0f} profiles/s"
    )
    print(f"ratio engine / hashlib   {hashlib_seconds / engine_seconds:.2f}")
    print(f"peak RSS (engine pass)   {engine_rss:,.0f} MiB")


if __name__ == "__main__":
    main()
