"""Ads Data Manager member payloads: building them against `json.dumps` of the same member dicts.

    python benchmarks/adm_payloads.py --members 200000

Generates `--members` sample profiles (in a child process), runs them through the identity engine
as a snapshot would, then times, each its fastest of `--repeat` passes:

- `member_payloads`: the JSON text of every member's ADM object, with every target identity chosen;
- `adm_members`: the same plus each payload's fingerprint, as a delivery calls it;
- the baseline: `json.dumps` of each member's object as a dict (the dicts are made beforehand by
  parsing the payloads, so both sides write the very same members).

The three take turns. Prints one JSON line: seconds (wall and CPU) and members per second of each,
and the ratios of the baseline to the building (`ratio_cpu` in CPU seconds, which other work on a
shared machine disturbs less). Figures are printed, never asserted.
"""

import argparse
import json
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import duckdb
import polars as pl

from audience_pipeline.identity import normalize_identities
from audience_pipeline.membership.adm_delivery import (
    TARGET_IDENTITIES,
    MemberRules,
    adm_members,
    member_payloads,
)


def snapshot(members: int, seed: int) -> pl.DataFrame:
    """`members` sample profiles with their identities normalized and hashed, as in a snapshot."""
    with tempfile.TemporaryDirectory() as tmp:
        generate = (
            "from audience_pipeline.sample_data import write_sample_data; "
            f"write_sample_data({tmp!r}, {members}, {seed})"
        )
        subprocess.run([sys.executable, "-c", generate], check=True)
        with duckdb.connect(str(Path(tmp) / "sample.duckdb"), read_only=True) as conn:
            conn.execute("SET enable_progress_bar = false")
            profiles = conn.sql("SELECT * FROM profiles").pl()
    return normalize_identities(profiles).frame


def fastest(runs: dict[str, Callable[[], object]], repeat: int) -> dict[str, tuple[float, float]]:
    """Wall and CPU seconds of the fastest of `repeat` runs of each; the runs take turns, so a
    machine shared with other work slows them alike."""
    best = dict.fromkeys(runs, (float("inf"), float("inf")))
    for _ in range(repeat):
        for name, run in runs.items():
            wall, cpu = time.perf_counter(), time.process_time()
            run()
            best[name] = min(best[name], (time.perf_counter() - wall, time.process_time() - cpu))
    return best


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--members", type=int, default=200_000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--repeat", type=int, default=3, help="passes of each; the fastest counts")
    args = parser.parse_args()

    frame = snapshot(args.members, args.seed)
    rules = MemberRules(TARGET_IDENTITIES, "GRANTED", "US")
    payloads = member_payloads(frame, rules).get_column("payload").drop_nulls()
    members = [json.loads(payload) for payload in payloads]

    times = fastest(
        {
            "build": lambda: member_payloads(frame, rules),
            "with_fingerprints": lambda: adm_members(frame, rules),
            "baseline": lambda: [json.dumps(member) for member in members],
        },
        args.repeat,
    )
    build, with_fingerprints, baseline = times["build"], times["with_fingerprints"], times["baseline"]
    figures = {
        "members": frame.height,
        "payloads": len(members),
        "payload_bytes_mean": round(payloads.str.len_bytes().mean()),
        "seconds": round(build[0], 4),
        "cpu_seconds": round(build[1], 4),
        "members_per_second": round(frame.height / build[0]),
        "adm_members_seconds": round(with_fingerprints[0], 4),
        "adm_members_per_second": round(frame.height / with_fingerprints[0]),
        "json_dumps_seconds": round(baseline[0], 4),
        "json_dumps_cpu_seconds": round(baseline[1], 4),
        "json_dumps_members_per_second": round(len(members) / baseline[0]),
        "ratio": round(baseline[0] / build[0], 1),
        "ratio_cpu": round(baseline[1] / build[1], 1),
        "ratio_adm_members": round(baseline[0] / with_fingerprints[0], 1),
    }
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
