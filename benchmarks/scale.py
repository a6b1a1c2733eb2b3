"""One audience of N members through every stage, twice, with the baselines each stage is compared to.

    python benchmarks/scale.py --members 1000000 [--churn 0.01] [--workdir DIR] [--stages ...]

Starts a sandbox in this process and does everything else in child processes, one at a time, so that
each one's peak RSS is its own and this process holds nothing but the sandbox. None of the
benchmark's own steps holds all N members in memory (its DuckDB connections are capped at 512 MB):

1. `sample_data`: the sample data (`audience-pipeline sample-data`'s messy profiles) with N profiles.
2. The baselines: `hashlib` (one core of bare `hashlib` SHA-256 over the first 5M of the same
   identity values, unnormalized), `json_dumps` (200k member dicts shaped like ADM's, with those
   values' digests as hashed e-mail and phone) and `gzip` (level 6, of the AMC query's CSV bytes, all
   rows, 64 MiB at a time). The first two are fixed-size samples, read a batch at a time: their rates
   do not depend on N, and neither does their memory.
3. Round 1: one audience of every profile through the project's assets, each stage a child of its
   own: `snapshot` (query, identity engine, Parquet), `firehose`, `adm`, `dsp` (queue and upload) and
   `amc` (the example customer-identities dataset: files on S3 and the upload call).
4. `churn`: `--churn` of the profiles change (two fifths leave, two fifths join, one fifth change
   e-mail and phone); then the baseline `polars_anti_join`: a bare anti-join both ways of the two
   rounds' member keys, all of them, a hash bucket of about 1M keys at a time (as the pipeline diffs
   a bucket at a time), read from Parquet files the churn step wrote.
5. Round 2: the stages again.

The sandbox is kept from holding what nobody reads here: the Ads API journal keeps only its last
20 requests (it keeps each one's parsed body: an ADM request of 5,000 members is ~15 MB of Python
objects), and while `firehose` runs another child empties the
stream's bucket as the stream's consumer would (moto keeps small objects in memory; the line says how
much was delivered). The sandbox keeps the AMC rows and the ADM and DSP members in DuckDB on disk,
within a memory limit of its own.

Prints one JSON line per step: seconds, rate, peak RSS (`VmHWM`) and CPU seconds of the child that did
the work. A stage's line adds the sandbox's CPU seconds meanwhile, and its RSS after the stage and peak
RSS so far (this process), and, where a baseline applies (`snapshot`: hashlib, over the values hashed;
`adm`: json_dumps; `amc`: gzip), the baseline's rate and the stage's rate as a share of it. The last
line is this process's peak RSS: the sandbox's. Figures are printed, never asserted.
"""

import argparse
import collections
import gzip
import hashlib
import json
import logging
import multiprocessing
import os
import resource
import shutil
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from queue import Empty
from typing import Any

import duckdb

AUDIENCE_ID = 1
HASHED = ("email", "phone", "first_name", "last_name", "address", "city", "state", "zip")
STAGES = ("snapshot", "firehose", "adm", "dsp", "amc")
AMC_DATASET = "sample_customer_identities"
KEYS_PER_BUCKET = 1_000_000


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

    from audience_pipeline.sandbox.server import start_sandbox

    workdir.mkdir(parents=True, exist_ok=True)
    source = workdir / "data" / "sample.duckdb"
    emit(child("sample_data", workdir, source, {}, members=members))
    baselines = {}
    for name in ("hashlib", "json_dumps", "gzip"):
        baselines[name] = child(name, workdir, source, {})
        emit(baselines[name])
    # One access-log line per call would bury the figures.
    logging.getLogger("werkzeug").setLevel(logging.WARNING)
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
        let_go(sandbox)
        firehose_bucket = child("provision", workdir, source, env)["firehose_bucket"]
        for round_number in (1, 2):
            if round_number == 2:
                emit(child("churn", workdir, source, {}, churn=churn))
                emit(child("polars_anti_join", workdir, source, {}))
            for stage in stages:
                with drained(firehose_bucket if stage == "firehose" else None, env) as drain:
                    line = measured(lambda s=stage: child(s, workdir, source, env))
                emit({"round": round_number, **compared(line, baselines), **drain})
        emit({"stage": "sandbox", "peak_rss_mib": status_mib("VmHWM"), "rss_mib": status_mib("VmRSS")})
    finally:
        sandbox.stop()


def let_go(sandbox) -> None:
    """Keep the sandbox from holding what nobody reads here: the Ads API journal keeps its last 20
    requests (it keeps each request's parsed body; 1,000 ADM requests held 3 GB)."""
    sandbox.ads.journal.entries = collections.deque(maxlen=20)


@contextmanager
def drained(bucket: str | None, env: dict[str, str], count: bool = False) -> Iterator[dict[str, Any]]:
    """While the `with` block runs, a child process empties `bucket` (if any) as Firehose fills it, as
    the stream's consumer would: moto holds every object under 5 MiB in memory, and a Firehose
    delivery is one call's records (about 350 bytes a member). Yields a dict that gets what was drained;
    with `count`, the child reads each object first and the dict also gets `members`: per audience id,
    the messages saying `IsMember` true, less those saying false."""
    drain: dict[str, Any] = {}
    if bucket is None:
        yield drain
        return
    context = multiprocessing.get_context("spawn")
    stop, queue = context.Event(), context.Queue()
    process = context.Process(target=_drain_process, args=(stop, queue, bucket, env, count))
    process.start()
    try:
        yield drain
    finally:
        stop.set()
        drain.update(_answer(queue, process))
        if "error" in drain:
            sys.exit(f"draining {bucket} failed: {drain['error']}")


def _drain_process(stop, queue, bucket: str, env: dict[str, str], count: bool) -> None:
    import boto3

    os.environ.update(env)
    s3 = boto3.client("s3")
    objects = size = 0
    members: collections.Counter[int] = collections.Counter()
    while True:
        stopping = stop.is_set()  # before listing: once set, a listing that finds nothing is the last
        found = s3.list_objects_v2(Bucket=bucket, MaxKeys=1_000).get("Contents", [])
        if found:
            keys = [{"Key": item["Key"]} for item in found]
            for key in keys if count else ():
                for line in s3.get_object(Bucket=bucket, **key)["Body"].read().splitlines():
                    message = json.loads(line)
                    members[message["AudienceId"]] += 1 if message["IsMember"] else -1
            s3.delete_objects(Bucket=bucket, Delete={"Objects": keys, "Quiet": True})
            objects, size = objects + len(found), size + sum(item["Size"] for item in found)
        elif stopping:
            break
        else:
            stop.wait(1)
    queue.put(
        {"drained_objects": objects, "drained_mib": round(size / 2**20, 1)}
        | ({"members": dict(members)} if count else {})
    )


def emit(line: dict[str, Any]) -> None:
    print(json.dumps(line), flush=True)


def measured(work) -> dict[str, Any]:
    """`work()`'s line plus the CPU this process (the sandbox's threads) spent meanwhile, and its RSS
    after and peak RSS so far."""
    before = _cpu(resource.RUSAGE_SELF)
    line = work()
    return {
        **line,
        "sandbox_cpu_seconds": round(_cpu(resource.RUSAGE_SELF) - before, 2),
        "sandbox_rss_mib": status_mib("VmRSS"),
        "sandbox_peak_rss_mib": status_mib("VmHWM"),
    }


# Stage -> its baseline, the baseline's rate, and the field of the stage's line that counts what the
# baseline does.
BASELINE_OF = {
    "snapshot": ("hashlib", "values_per_second", "values_hashed"),
    "adm": ("json_dumps", "members_per_second", "items"),
    "amc": ("gzip", "rows_per_second", "items"),
}


def compared(line: dict[str, Any], baselines: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """`line` with its baseline's rate and its own rate (of what the baseline does) as a share of it."""
    if line["stage"] not in BASELINE_OF:
        return line
    name, rate_field, count = BASELINE_OF[line["stage"]]
    baseline_rate = baselines[name][rate_field]
    rate = line.get(count, 0) / line["seconds"] if line["seconds"] else 0
    return {
        **line,
        "baseline": name,
        "baseline_rate": baseline_rate,
        "share_of_baseline": round(rate / baseline_rate, 4),
    }


def child(stage: str, workdir: Path, source: Path, env: dict[str, str], **params: Any) -> dict[str, Any]:
    """Run step `stage` in a fresh process; its line, with the child's peak RSS and CPU seconds."""
    context = multiprocessing.get_context("spawn")
    queue = context.Queue()
    process = context.Process(target=_stage_process, args=(queue, stage, workdir, source, env, params))
    process.start()
    line = _answer(queue, process)
    if "error" in line:
        sys.exit(f"stage {stage} failed: {line['error']}")
    return line


def _answer(queue, process) -> dict[str, Any]:
    """What `process` puts on `queue`, or an error once it ends without a word (killed, or crashed in
    native code); joined either way."""
    line = None
    while line is None:
        try:
            line = queue.get(timeout=1)
        except Empty:
            if not process.is_alive():
                line = {"error": f"the process ended with exit code {process.exitcode}"}
    process.join()
    return line


def _stage_process(
    queue, stage: str, workdir: Path, source: Path, env: dict[str, str], params: dict[str, Any]
) -> None:
    # Stdout is the parent's JSON lines: whatever a child prints (DuckDB's progress bars) goes to stderr.
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())
    os.environ.update(env)
    try:
        started = time.perf_counter()
        if stage in BASELINE_FUNCTIONS:  # times only its own work, and says its rate
            line = {"baseline": stage, **BASELINE_FUNCTIONS[stage](workdir, source)}
        else:
            line = {"stage": stage, **STAGE_FUNCTIONS[stage](workdir, source, **params)}
            seconds = time.perf_counter() - started
            if line.get("items"):
                line["rate_per_second"] = round(line["items"] / seconds)
            line["seconds"] = round(seconds, 2)
        line["peak_rss_mib"] = status_mib("VmHWM")
        line["cpu_seconds"] = round(_cpu(resource.RUSAGE_SELF), 2)
    except Exception as error:  # reported by the parent, which stops
        line = {"error": f"{type(error).__name__}: {error}"}
    queue.put(line)


def status_mib(field: str, pid: int | str = "self") -> int:
    """A process's (by default this one's) `VmHWM` (peak RSS) or `VmRSS` from Linux. (`ru_maxrss`
    survives `exec`, so a spawned child would report its parent's peak, the sandbox's here, if that
    was higher.)"""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return round(int(line.split()[1]) / 1024)
    raise RuntimeError(f"no {field} in /proc/{pid}/status")


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
    stream = _components()[1]["firehose"]
    provision_sandbox(s3, firehose, [stream], project_components(AmazonMarketingCloudComponent))
    # Where `provision_sandbox` points the stream.
    return {"firehose_bucket": f"{stream.delivery_stream_name}-bucket".lower()}


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
        reported = ("added", "removed", "identity_changed", "sent", "rejected")
        counts = {k: metadata[k] for k in reported if k in metadata}
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


def _sample_data(workdir: Path, source: Path, members: int) -> dict[str, Any]:
    from audience_pipeline.sample_data import write_sample_data

    write_sample_data(source.parent, profiles=members)
    return {"items": members}


def _churn(workdir: Path, source: Path, churn: float) -> dict[str, Any]:
    """Two fifths of `churn` leave, as many join (copies with new user ids), one fifth change e-mail
    and phone; chosen by user number, so the same every run. The member keys before and after go to
    Parquet files for the anti-join baseline, by bucket of about 1M keys."""
    every = max(1, round(1 / (churn * 0.4)))
    changed_every = max(1, round(1 / (churn * 0.2)))
    number = "CAST(substr(user_id, 2) AS BIGINT)"
    with _connect(source) as conn:
        buckets = -(-conn.execute("SELECT count(*) FROM profiles").fetchone()[0] // KEYS_PER_BUCKET) or 1
        _write_keys(conn, _keys(workdir, 1), buckets)
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
        _write_keys(conn, _keys(workdir, 2), buckets)
    return {"joined": joined, "left": left, "identities_changed": changed}


def _connect(source: Path, read_only: bool = False) -> duckdb.DuckDBPyConnection:
    conn = duckdb.connect(str(source), read_only=read_only)
    # DuckDB's default limit (80% of RAM) would let its buffer pool grow with the data read.
    conn.execute("SET memory_limit = '512MB'")
    conn.execute("SET enable_progress_bar = false")
    return conn


def _keys(workdir: Path, round_number: int) -> Path:
    return workdir / f"member_keys_{round_number}"


def _write_keys(conn: duckdb.DuckDBPyConnection, folder: Path, buckets: int) -> None:
    """The member keys in `folder/bucket=<k>/` by DuckDB's hash of the key: the same bucket both rounds."""
    conn.execute(
        f"COPY (SELECT user_id, hash(user_id) % {buckets} AS bucket FROM profiles) "
        f"TO '{folder}' (FORMAT parquet, PARTITION_BY (bucket))"
    )


STAGE_FUNCTIONS = {
    "sample_data": _sample_data,
    "provision": _provision,
    "snapshot": _snapshot,
    "firehose": _destination("firehose"),
    "adm": _destination("adm"),
    "dsp": _destination("dsp"),
    "amc": _amc,
    "churn": _churn,
}


def baseline_anti_join(workdir: Path, source: Path) -> dict[str, Any]:
    """A bare polars anti-join both ways of the two rounds' member keys, a bucket of about 1M keys at a
    time (so memory does not grow with N, as the pipeline's diff); reading the keys is not timed."""
    import polars as pl

    folders = [_keys(workdir, round_number) for round_number in (1, 2)]
    rows = changes = 0
    seconds = 0.0
    for bucket in sorted({path.name for folder in folders for path in folder.iterdir()}):
        before, after = (
            pl.read_parquet(folder / bucket, columns=["user_id"]).rechunk()
            if (folder / bucket).exists()
            else pl.DataFrame(schema={"user_id": pl.String})
            for folder in folders
        )
        started = time.perf_counter()
        changes += before.join(after, on="user_id", how="anti").height
        changes += after.join(before, on="user_id", how="anti").height
        seconds += time.perf_counter() - started
        rows += before.height + after.height
    for folder in folders:
        shutil.rmtree(folder)
    return {
        "rows": rows,
        "changes": changes,
        "seconds": round(seconds, 3),
        "rows_per_second": round(rows / seconds),
    }


def _value_batches(source: Path, limit: int) -> Iterator[list[str]]:
    """The first `limit` identity values of the profiles, unnormalized, 100k at a time."""
    columns = " UNION ALL ".join(
        f"SELECT {c}::VARCHAR AS v FROM profiles WHERE {c} IS NOT NULL" for c in HASHED
    )
    with _connect(source, read_only=True) as conn:
        reader = conn.sql(f"SELECT v FROM ({columns}) LIMIT {limit}").to_arrow_reader(100_000)
        for batch in reader:
            yield batch.column(0).to_pylist()


def baseline_hashlib(workdir: Path, source: Path) -> dict[str, Any]:
    """One core of bare `hashlib` over the first 5M of the same identity values, unnormalized."""
    values, seconds = 0, 0.0
    for batch in _value_batches(source, 5_000_000):
        started = time.perf_counter()
        for value in batch:
            hashlib.sha256(value.encode()).hexdigest()
        seconds += time.perf_counter() - started
        values += len(batch)
    return {"values": values, "seconds": round(seconds, 2), "values_per_second": round(values / seconds)}


def baseline_json(workdir: Path, source: Path) -> dict[str, Any]:
    """`json.dumps` of 200k member dicts shaped like ADM's: two of the first 1.6M identity values'
    SHA-256 digests as hashed e-mail and phone, consent and the plain fields (made beforehand, not timed)."""
    count, seconds = 0, 0.0
    for batch in _value_batches(source, 1_600_000):
        digests = [hashlib.sha256(value.encode()).hexdigest() for value in batch]
        members = [
            {
                "externalUserId": f"u{count + i}",
                "action": "CREATE",
                "userIdentity": {"hashedPiis": [{"em": digests[i]}, {"ph": digests[i + 1]}]},
                "userConsent": {"consent": {"amzn": {"amznAdStorage": "GRANTED", "amznUserData": "GRANTED"}}},
            }
            for i in range(0, len(digests) - 1, 8)
        ]
        started = time.perf_counter()
        for member in members:
            json.dumps(member)
        seconds += time.perf_counter() - started
        count += len(members)
    return {"members": count, "seconds": round(seconds, 2), "members_per_second": round(count / seconds)}


def baseline_gzip(workdir: Path, source: Path) -> dict[str, Any]:
    """`gzip` (level 6) of the CSV bytes of the AMC dataset's rows, all of them, in 64 MiB pieces."""
    csv_path = workdir / "amc_rows.csv"
    with _connect(source, read_only=True) as conn:
        rows = conn.execute("SELECT count(*) FROM profiles WHERE customer_id IS NOT NULL").fetchone()[0]
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
    return {"rows": rows, "seconds": round(seconds, 2), "rows_per_second": round(rows / seconds)}


BASELINE_FUNCTIONS = {
    "hashlib": baseline_hashlib,
    "json_dumps": baseline_json,
    "gzip": baseline_gzip,
    "polars_anti_join": baseline_anti_join,
}


if __name__ == "__main__":
    main()
