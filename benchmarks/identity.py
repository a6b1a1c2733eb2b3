"""Identity engine throughput against bare single-core hashlib, and peak memory.

    python benchmarks/identity.py --profiles 1000000 [--source sample|synthetic|both] [--per-field]

Profiles come from two generators, each in a child process so its memory is not counted:
`sample` is the project's sample data (`audience_pipeline.sample_data`), `synthetic` a second
generator written for this benchmark in DuckDB SQL, messy in other ways: names, streets and cities
from syllables (many more distinct values), mostly ZIP+4 codes (two thirds of the raw ZIPs of a
batch distinct), E.164 and dotted phone formats, extensions, `tel:` prefixes. Both are streamed
from DuckDB in batches through `normalize_identities` for 8 fields: email, phone, first and last
name, address, city, state, zip.

The baseline hashes the very values the engine normalized, one `hashlib.sha256` call each on one
core. The two sides take turns `--repeat` times and the fastest pass of each counts; `ratio_cpu`
compares their CPU seconds (the engine's on all cores together), which other work on a shared
machine disturbs less than wall time. `--per-field` adds, per field, the engine's fastest pass over
that field alone, in CPU seconds. Prints one JSON line per source, with the peak RSS of
the process (the generator runs in a child process). Figures are printed, never asserted.
"""

import argparse
import hashlib
import json
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import duckdb
import polars as pl

from audience_pipeline.batches import frames
from audience_pipeline.identity import normalize_identities

FIELDS = ["email", "phone", "first_name", "last_name", "address", "city", "state", "zip"]

# `h(i, k)` draws a number for row `i` and salt `k`; `pick(i, k, list)` one element of the list.
SYNTHETIC = """
SET enable_progress_bar = false;
CREATE MACRO h(i, k) AS hash(i, k);
CREATE MACRO pick(i, k, items) AS items[(h(i, k) % len(items))::INTEGER + 1];
CREATE MACRO syllable(i, k) AS pick(i, k, ['ka', 'lo', 'mi', 'ren', 'sa', 'tor', 'vel', 'an', 'dri', 'el',
    'fen', 'gor', 'is', 'jo', 'mar', 'ne', 'ol', 'pa', 'qui', 'ush']);
CREATE MACRO word(i, k) AS syllable(i, k || '1') || syllable(i, k || '2')
    || CASE WHEN h(i, k) % 2 = 0 THEN syllable(i, k || '3') ELSE '' END;
CREATE MACRO digits(i, k, n) AS lpad((h(i, k) % (10 ** n)::UBIGINT)::VARCHAR, n, '0');
CREATE MACRO cap(s) AS upper(left(s, 1)) || substr(s, 2);
CREATE TABLE profiles AS
WITH people AS (
    SELECT i, h(i, 'mess') % 100 AS mess,
        pick(i, 'country', ['US', 'US', 'US', 'US', 'US', 'US', 'US', 'GB', 'DE', 'FR', 'CA', 'AU', 'NL',
            'BR']) AS cc,
        word(i, 'first') AS first, word(i, 'last') || syllable(i, 'last4') AS last
    FROM range({profiles}) AS t(i)
)
SELECT
    CASE WHEN mess < 6 THEN NULL
        WHEN mess < 8 THEN 'n/a'
        WHEN mess < 14 THEN upper(first || '.' || last || '@'
            || pick(i, 'dom', ['example.com', 'example.org']))
        WHEN mess < 20 THEN '  ' || first || '+' || pick(i, 'tag', ['news', 'x', 'ads']) || '@example.net '
        ELSE first || pick(i, 'sep', ['.', '_', '', '-']) || last || digits(i, 'ed', 3) || '@'
            || pick(i, 'dom2', ['example.com', 'example.net', 'mail.example', 'example.co.uk', 'example.de'])
    END AS email,
    CASE WHEN mess % 17 = 0 THEN NULL
        WHEN mess % 29 = 1 THEN 'tel: +1 ' || digits(i, 'p', 10)
        WHEN cc IN ('US', 'CA') THEN pick(i, 'pf', ['+1 ', '', '1-', '(']) || '415'
            || pick(i, 'ps', [') ', '.', '-', ' ']) || (2 + h(i, 'ex') % 8)::VARCHAR || digits(i, 'p2', 2)
            || pick(i, 'ps2', ['.', '-', ' ']) || digits(i, 'p', 4)
            || CASE WHEN mess % 23 = 3 THEN ' x' || digits(i, 'ext', 3) ELSE '' END
        WHEN cc = 'GB' THEN pick(i, 'gf', ['+44 20 ', '020 ', '0044 7700 ', '07700 ']) || digits(i, 'p', 4)
            || ' ' || digits(i, 'p3', 4)
        WHEN cc = 'DE' THEN pick(i, 'df', ['+49 30 ', '030 ', '0151 ']) || digits(i, 'p', 8)
        ELSE '+' || pick(i, 'cf', ['33 6', '61 4', '31 6', '55 11 9']) || digits(i, 'p', 8)
    END AS phone,
    CASE WHEN mess % 13 = 0 THEN NULL WHEN mess % 7 = 0 THEN upper(first) ELSE cap(first) END AS first_name,
    CASE WHEN mess % 11 = 0 THEN NULL
        ELSE cap(last) || CASE WHEN mess % 19 = 0 THEN '-' || cap(first) ELSE '' END
    END AS last_name,
    CASE WHEN mess % 9 = 0 THEN NULL
        ELSE (1 + h(i, 'no') % 9999)::VARCHAR || ' ' || cap(word(i, 'street')) || ' '
            || pick(i, 'suffix', ['Street', 'St.', 'Avenue', 'Ave', 'Road', 'Rd', 'Boulevard', 'Lane', 'Way',
                'Court', 'Strasse', 'rue'])
            || pick(i, 'unit', ['', '', '', ', Apt ' || (1 + h(i, 'u') % 40)::VARCHAR,
                ' #' || (1 + h(i, 'u') % 900)::VARCHAR, ' Suite ' || (100 + h(i, 'u') % 900)::VARCHAR,
                ', Floor 2'])
    END AS address,
    CASE WHEN mess % 10 = 0 THEN NULL ELSE cap(word(i, 'city')) END AS city,
    CASE WHEN cc = 'US' THEN pick(i, 'st', ['CA', 'NY', 'TX', 'California', 'new york', 'Texas', 'WA',
            'Washington', 'IL', 'FL', 'XX'])
        WHEN cc = 'DE' THEN pick(i, 'dst', ['Bayern', 'Berlin', 'BY', 'Hessen'])
        WHEN cc = 'CA' THEN pick(i, 'cst', ['ON', 'Ontario', 'QC', 'BC'])
        ELSE NULL
    END AS state,
    CASE WHEN mess % 31 = 0 THEN NULL
        WHEN cc = 'US' THEN digits(i, 'z', 5)
            || CASE WHEN mess % 10 = 0 THEN '' ELSE '-' || digits(i, 'z4', 4) END
        WHEN cc = 'GB' THEN pick(i, 'gz', ['SW1A', 'EC1A', 'W1A', 'M1', 'B33']) || ' ' || digits(i, 'gz2', 1)
            || pick(i, 'gz3', ['AA', 'BB', 'HQ', 'XY'])
        WHEN cc = 'CA' THEN pick(i, 'cz', ['K1A', 'M5V', 'H2X']) || ' ' || digits(i, 'cz2', 1) || 'B'
            || digits(i, 'cz3', 1)
        ELSE digits(i, 'z', 5)
    END AS zip,
    CASE WHEN mess % 37 = 0 THEN NULL
        WHEN mess % 5 = 0 THEN lower(cc)
        WHEN mess % 7 = 1 THEN pick(i, 'cn', ['United States', 'USA', 'United Kingdom', 'Germany', 'France',
            'Canada'])
        ELSE cc
    END AS country_code
FROM people
"""


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def generate(source: str, directory: str, profiles: int, seed: int) -> Path:
    """A DuckDB file with a `profiles` table from the named generator, written by a child process."""
    if source == "sample":
        code = (
            "from audience_pipeline.sample_data import write_sample_data; "
            f"write_sample_data({directory!r}, {profiles}, {seed})"
        )
        database = Path(directory) / "sample.duckdb"
    else:
        database = Path(directory) / "synthetic.duckdb"
        # The seed salts every draw, so two seeds give two different tables.
        sql = SYNTHETIC.format(profiles=profiles).replace("hash(i, k)", f"hash(i, k, {seed})")
        code = f"import duckdb; duckdb.connect({str(database)!r}).execute({sql!r})"
    subprocess.run([sys.executable, "-c", code], check=True)
    return database


def batches(database: Path, profiles: int, batch_size: int) -> Iterator[pl.DataFrame]:
    with duckdb.connect(str(database), read_only=True) as conn:
        conn.execute("SET enable_progress_bar = false")
        reader = conn.sql(
            f"SELECT {', '.join(FIELDS)}, country_code FROM profiles LIMIT {profiles}"
        ).to_arrow_reader(batch_size)
        yield from frames(reader, batch_size)


def engine_pass(database: Path, args: argparse.Namespace, fields: Sequence[str]) -> dict:
    """One pass of the engine over every batch: wall and CPU seconds, values out, rejects."""
    wall = cpu = 0.0
    values = rejects = rows = 0
    for frame in batches(database, args.profiles, args.batch_size):
        started, started_cpu = time.perf_counter(), time.process_time()
        result = normalize_identities(frame, fields=fields, row_offset=rows)
        wall += time.perf_counter() - started
        cpu += time.process_time() - started_cpu
        values += sum(result.values_out().values())
        rejects += result.rejects.height
        rows += frame.height
    return {"seconds": wall, "cpu_seconds": cpu, "values": values, "rejects": rejects, "rows": rows}


def hashlib_pass(database: Path, args: argparse.Namespace) -> tuple[float, float, int]:
    """Wall and CPU seconds for one `hashlib.sha256` per value the engine normalized, and how many values."""
    wall = cpu = 0.0
    count = 0
    for frame in batches(database, args.profiles, args.batch_size):
        plain = normalize_identities(frame, fields=FIELDS, hash_values=False).frame
        values = [v.encode() for f in FIELDS for v in plain[f].drop_nulls().to_list()]
        started, started_cpu = time.perf_counter(), time.process_time()
        for value in values:
            hashlib.sha256(value).hexdigest()
        wall += time.perf_counter() - started
        cpu += time.process_time() - started_cpu
        count += len(values)
    return wall, cpu, count


def measure(source: str, args: argparse.Namespace) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        database = generate(source, tmp, args.profiles, args.seed)
        # The two sides take turns, so a machine shared with other work slows both alike.
        engine = {"seconds": float("inf")}
        baseline = (float("inf"), float("inf"), 0)
        for _ in range(args.repeat):
            engine = min(engine, engine_pass(database, args, FIELDS), key=lambda p: p["seconds"])
            baseline = min(baseline, hashlib_pass(database, args))
        figures = {
            "source": source,
            "profiles": engine["rows"],
            "fields": len(FIELDS),
            "values_out": engine["values"],
            "rejects": engine["rejects"],
            "engine_seconds": round(engine["seconds"], 3),
            "engine_cpu_seconds": round(engine["cpu_seconds"], 3),
            "profiles_per_second": round(engine["rows"] / engine["seconds"]),
            "hashlib_seconds": round(baseline[0], 3),
            "hashlib_cpu_seconds": round(baseline[1], 3),
            "hashlib_values": baseline[2],
            "hashlib_profiles_per_second": round(engine["rows"] / baseline[0]),
            "ratio_engine_vs_hashlib": round(baseline[0] / engine["seconds"], 2),
            "ratio_cpu": round(baseline[1] / engine["cpu_seconds"], 2),
            "peak_rss_mib": round(peak_rss_mib()),
        }
        if args.per_field:
            figures["field_cpu_seconds"] = {
                field: round(
                    min(engine_pass(database, args, [field])["cpu_seconds"] for _ in range(args.repeat)), 3
                )
                for field in FIELDS
            }
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--profiles", type=int, default=1_000_000)
    parser.add_argument("--batch-size", type=int, default=250_000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--source", choices=["sample", "synthetic", "both"], default="both")
    parser.add_argument(
        "--repeat", type=int, default=3, help="passes of each side; the fastest counts, as timeit does"
    )
    parser.add_argument("--per-field", action="store_true", help="also time each field alone")
    args = parser.parse_args()
    for source in ("sample", "synthetic") if args.source == "both" else (args.source,):
        print(json.dumps(measure(source, args)), flush=True)


if __name__ == "__main__":
    main()
