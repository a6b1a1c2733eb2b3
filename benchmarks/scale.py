"""One audience of N members through every stage, twice, with the baselines each stage is compared to.

    python benchmarks/scale.py --members 1000000 [--churn 0.01] [--workdir DIR] [--stages ...]

Writes the sample data (`audience-pipeline sample-data`'s messy profiles) with N profiles, starts a
sandbox in this process, and runs one audience of every profile through the project's assets, each
stage in a child process of its own: `snapshot` (query, identity engine, Parquet), `firehose`,
`adm`, `dsp` (queue and upload) and `amc` (the example customer-identities dataset: files on S3 and
the upload call). Then `--churn` of the profiles change (two fifths leave, two fifths join, one fifth
change e-mail and phone) and the stages run again. In the same run it measures the baselines:
single-core `hashlib` over the same identity values, a polars anti-join of the two rounds' member
keys, `json.dumps` of member dicts shaped like ADM's, and `gzip` of the AMC query's CSV bytes.

Prints one JSON line per stage and round: seconds, rate, peak RSS of the child that did the work, its
CPU seconds, the sandbox's CPU seconds (this process) and, where a baseline applies, the baseline's
rate and the ratio. Figures are printed, never asserted.
"""

import argparse
import gzip
import hashlib
import json
import logging
import multiprocessing
import os
import resource
import sys
import tempfile
import time
from pathlib import Path
from queue import Empty
from typing import Any

import duckdb

AUDIENCE_ID = 1
HASHED = ("email", "phone", "first_name", "last_name", "address", "city", "state", "zip")
STAGES = ("snapshot", "firehose", "adm", "dsp", "amc")
AMC_DATASET = "sample_customer_identities"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--members", type=int, required=True)
    parser.add_argument("--churn", type=float, default=0.01)
    parser.add_argument("--workdir", type=Path, help="default: a temporary folder")
    parser.add_argument("--stages", default=",".join(STAGES), help=f"comma-separated, of {','.join(STAGES)}")
    args = parser.parse_args()
    stages = [stage for stage in args.stages.split(",") if stage]
    unknown = sorted(set(stages) - set(STAGES))
    if unknown:
        parser.error(f"--stages: unknown {', '.join(unknown)}")
    with tempfile.TemporaryDirectory() as scratch:
        run(args.workdir or Path(scratch), args.members, args.churn, stages)


def run(workdir: Path, members: int, churn: float, stages: list[str]) -> None:
    """Both rounds of every stage, with the baselines, printed as JSON lines."""
    from cryptography.fernet import Fernet

    from audience_pipeline.sample_data import write_sample_data
    from audience_pipeline.sandbox.server import start_sandbox

    workdir.mkdir(parents=True, exist_ok=True)
    # One access-log line per call would bury the figures.
    logging.getLogger("werkzeug").setLevel(logging.WARNING)
    started = time.perf_counter()
    source = write_sample_data(workdir / "data", profiles=members)
    emit({"stage": "sample_data", "members": members, "seconds": round(time.perf_counter() - started, 2)})
    sandbox = start_sandbox()
    try:
        env = {
            **sandbox.env(),
            "AMAZON_ADS_CLIENT_ID": "scale",
            "AMAZON_ADS_CLIENT_SECRET": "scale",
            "AMAZON_ADS_REFRESH_TOKEN": "scale",
            "AUDIENCE_PIPELINE_LEDGER_KEY": Fernet.generate_key().decode(),
            "DAGSTER_HOME": str(workdir / "dagster_home"),
        }
        (workdir / "dagster_home").mkdir(exist_ok=True)
        (workdir / "dagster_home" / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
        child("provision", workdir, source, env)
        before = member_keys(source)
        for round_number in (1, 2):
            if round_number == 2:
                emit({"stage": "churn", **apply_churn(source, churn)})
                emit(baseline_diff(before, member_keys(source)))
            for stage in stages:
                emit({"round": round_number, **measured(lambda s=stage: child(s, workdir, source, env))})
        for baseline in (baseline_hashlib, baseline_json, baseline_gzip):
            emit(baseline(source))
    finally:
        sandbox.stop()


def emit(line: dict[str, Any]) -> None:
    print(json.dumps(line), flush=True)


def measured(work) -> dict[str, Any]:
    """`work()`'s line plus the CPU this process (the sandbox's threads) spent meanwhile."""
    before = _cpu(resource.RUSAGE_SELF)
    line = work()
    return {**line, "sandbox_cpu_seconds": round(_cpu(resource.RUSAGE_SELF) - before, 2)}


def child(stage: str, workdir: Path, source: Path, env: dict[str, str]) -> dict[str, Any]:
    """Run `stage` in a fresh process; its line, with the child's peak RSS and CPU seconds."""
    context = multiprocessing.get_context("spawn")
    queue = context.Queue()
    process = context.Process(target=_stage_process, args=(queue, stage, workdir, source, env))
    process.start()
    line = None
    while line is None:
        try:
            line = queue.get(timeout=1)
        except Empty:
            if not process.is_alive():  # ended without a word: killed, or crashed in native code
                line = {"error": f"the process ended with exit code {process.exitcode}"}
    process.join()
    if "error" in line:
        sys.exit(f"stage {stage} failed: {line['error']}")
    return line


def _stage_process(queue, stage: str, workdir: Path, source: Path, env: dict[str, str]) -> None:
    os.environ.update(env)
    try:
        started = time.perf_counter()
        line = {"stage": stage, **STAGE_FUNCTIONS[stage](workdir, source)}
        seconds = time.perf_counter() - started
        if line.get("items"):
            line["rate_per_second"] = round(line["items"] / seconds)
        line["seconds"] = round(seconds, 2)
        line["peak_rss_mib"] = _peak_rss_mib()
        line["cpu_seconds"] = round(_cpu(resource.RUSAGE_SELF), 2)
    except Exception as error:  # reported by the parent, which stops
        line = {"error": f"{type(error).__name__}: {error}"}
    queue.put(line)


def _peak_rss_mib() -> int:
    """This process's own peak RSS: Linux's `VmHWM`. (`ru_maxrss` survives `exec`, so a spawned child
    would report its parent's peak, the sandbox's here, if that was higher.)"""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return round(int(line.split()[1]) / 1024)
    raise RuntimeError("no VmHWM in /proc/self/status")


def _cpu(who: int) -> float:
    usage = resource.getrusage(who)
    return usage.ru_utime + usage.ru_stime


def _components():
    """The audience of every profile and the project's destinations, sent only that audience."""
    from audience_pipeline.components.ads_data_manager import AdsDataManagerComponent
    from audience_pipeline.components.audiences import Audience, AudiencesComponent
    from audience_pipeline.components.dsp import DspMobileAdIdsComponent
    from audience_pipeline.components.firehose import FirehoseComponent
    from audience_pipeline.definitions import project_components

    audiences = AudiencesComponent(
        audiences=[Audience(id=AUDIENCE_ID, name="everyone", sql="SELECT * FROM profiles")], country_code="US"
    )
    # Every membership change is a scale test, not a guarded mistake.
    routed = {"audiences": [AUDIENCE_ID], "max_removal_share": 1.0}
    destinations = {
        "firehose": project_components(FirehoseComponent)[0],
        "adm": project_components(AdsDataManagerComponent)[0],
        "dsp": project_components(DspMobileAdIdsComponent)[0],
    }
    return audiences, {name: d.model_copy(update=routed) for name, d in destinations.items()}


def _materialize(assets: list, source: Path, workdir: Path, partition_key: str | None) -> list:
    import dagster as dg

    from audience_pipeline.defs.resources import resources
    from audience_pipeline.resources.duckdb_source import DuckDBSource
    from audience_pipeline.resources.state_store import StateStore

    result = dg.materialize(
        assets,
        partition_key=partition_key,
        resources={
            **resources().resources,
            "source": DuckDBSource(database=str(source)),
            "state_store": StateStore(root=str(workdir / "state")),
        },
        instance=dg.DagsterInstance.get(),
        run_config={"loggers": {"console": {"config": {"log_level": "WARNING"}}}},
    )
    return [event.materialization for event in result.get_asset_materialization_events()]


def _metadata(materialization) -> dict[str, Any]:
    return {key: value.value for key, value in materialization.metadata.items()}


def _provision(workdir: Path, source: Path) -> dict[str, Any]:
    import boto3

    from audience_pipeline.components.amc import AmazonMarketingCloudComponent
    from audience_pipeline.definitions import project_components
    from audience_pipeline.sandbox.provision import provision_sandbox

    s3, firehose = (boto3.client(kind) for kind in ("s3", "firehose"))
    provision_sandbox(
        s3, firehose, [_components()[1]["firehose"]], project_components(AmazonMarketingCloudComponent)
    )
    return {}


def _snapshot(workdir: Path, source: Path) -> dict[str, Any]:
    import dagster as dg

    from audience_pipeline.components.audiences import SNAPSHOT_ASSET_KEY

    audiences, _ = _components()
    snapshot = dg.build_defs_for_component(audiences).get_assets_def(SNAPSHOT_ASSET_KEY)
    [done] = _materialize([snapshot], source, workdir, str(AUDIENCE_ID))
    metadata = _metadata(done)
    return {"items": metadata["members"], "values_hashed": metadata["values_hashed"]}


def _destination(name: str):
    def stage(workdir: Path, source: Path) -> dict[str, Any]:
        audiences, destinations = _components()
        assets = destinations[name].build_assets(audiences)
        done = _materialize(assets, source, workdir, str(AUDIENCE_ID))
        metadata = _metadata(done[-1])
        counts = {k: metadata[k] for k in ("added", "removed", "identity_changed", "sent") if k in metadata}
        items = sum(counts.get(k, 0) for k in ("added", "removed", "identity_changed"))
        return {"items": items, **counts}

    return stage


def _amc(workdir: Path, source: Path) -> dict[str, Any]:
    import dagster as dg

    from audience_pipeline.components.amc import AmazonMarketingCloudComponent
    from audience_pipeline.definitions import project_components

    [amc] = project_components(AmazonMarketingCloudComponent)
    definitions = dg.build_defs_for_component(amc)
    upload = next(a for a in definitions.assets if AMC_DATASET in a.key.to_user_string())
    [done] = _materialize([upload], source, workdir, None)
    metadata = _metadata(done)
    return {"items": metadata["rows_in"], "rows_written": metadata["rows_written"]}


STAGE_FUNCTIONS = {
    "provision": _provision,
    "snapshot": _snapshot,
    "firehose": _destination("firehose"),
    "adm": _destination("adm"),
    "dsp": _destination("dsp"),
    "amc": _amc,
}


def apply_churn(source: Path, churn: float) -> dict[str, Any]:
    """Two fifths of `churn` leave, as many join (copies with new user ids), one fifth change e-mail
    and phone; chosen by user number, so the same every run."""
    every = max(1, round(1 / (churn * 0.4)))
    changed_every = max(1, round(1 / (churn * 0.2)))
    number = "CAST(substr(user_id, 2) AS BIGINT)"
    with duckdb.connect(str(source)) as conn:
        left = conn.execute(f"DELETE FROM profiles WHERE {number} % {every} = 0").fetchone()[0]
        changed = conn.execute(
            "UPDATE profiles SET email = 'new.' || email, phone = phone || '1' "
            f"WHERE {number} % {changed_every} = 2"
        ).fetchone()[0]
        # New users copy existing ones under other ids ('j…'), after the changes chosen by number.
        joined = conn.execute(
            f"INSERT INTO profiles SELECT * REPLACE ('j' || user_id AS user_id) FROM profiles "
            f"WHERE {number} % {every} = 1"
        ).fetchone()[0]
    return {"joined": joined, "left": left, "identities_changed": changed}


def member_keys(source: Path):
    with duckdb.connect(str(source), read_only=True) as conn:
        return conn.sql("SELECT user_id FROM profiles").pl()


def baseline_diff(before, after) -> dict[str, Any]:
    """A bare polars anti-join both ways of the two rounds' member keys."""
    started = time.perf_counter()
    left = before.join(after, on="user_id", how="anti").height
    joined = after.join(before, on="user_id", how="anti").height
    seconds = time.perf_counter() - started
    return {
        "baseline": "polars_anti_join",
        "rows": before.height + after.height,
        "changes": left + joined,
        "seconds": round(seconds, 3),
    }


def _values(source: Path, limit: int) -> list[str]:
    columns = " UNION ALL ".join(
        f"SELECT {c}::VARCHAR AS v FROM profiles WHERE {c} IS NOT NULL" for c in HASHED
    )
    with duckdb.connect(str(source), read_only=True) as conn:
        return [row[0] for row in conn.execute(f"SELECT v FROM ({columns}) LIMIT {limit}").fetchall()]


def baseline_hashlib(source: Path) -> dict[str, Any]:
    """One core of bare `hashlib` over (up to 5M of) the same identity values, unnormalized."""
    values = _values(source, 5_000_000)
    started = time.perf_counter()
    for value in values:
        hashlib.sha256(value.encode()).hexdigest()
    seconds = time.perf_counter() - started
    return {"baseline": "hashlib", "values": len(values), "values_per_second": round(len(values) / seconds)}


def baseline_json(source: Path) -> dict[str, Any]:
    """`json.dumps` of (up to 200k) member dicts shaped like ADM's: hashed PII and a few plain fields."""
    values = _values(source, 1_600_000)
    members = [
        {
            "externalUserId": f"u{i}",
            "hashedPiis": [{"email": values[i]}, {"phone": values[i + 1]}],
            "countryCode": "US",
            "action": "CREATE",
        }
        for i in range(0, len(values) - 1, 8)
    ]
    started = time.perf_counter()
    for member in members:
        json.dumps(member)
    seconds = time.perf_counter() - started
    return {
        "baseline": "json_dumps",
        "members": len(members),
        "members_per_second": round(len(members) / seconds),
    }


def baseline_gzip(source: Path) -> dict[str, Any]:
    """`gzip` (level 6) of the CSV bytes of the AMC dataset's rows, in 64 MiB pieces."""
    with duckdb.connect(str(source), read_only=True) as conn:
        rows = conn.execute("SELECT count(*) FROM profiles WHERE customer_id IS NOT NULL").fetchone()[0]
        csv_path = source.parent / "amc_rows.csv"
        conn.execute(
            "COPY (SELECT customer_id, email, phone, first_name, last_name, zip, country_code FROM profiles "
            f"WHERE customer_id IS NOT NULL) TO '{csv_path}' (HEADER)"
        )
    started = time.perf_counter()
    with csv_path.open("rb") as file:
        while piece := file.read(64 * 1024 * 1024):
            gzip.compress(piece, compresslevel=6)
    seconds = time.perf_counter() - started
    csv_path.unlink()
    return {"baseline": "gzip", "rows": rows, "rows_per_second": round(rows / seconds)}


if __name__ == "__main__":
    main()
