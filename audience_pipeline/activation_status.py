"""The activation overview: every audience at every destination in one table, as the seeds' consoles
show ingestion status and match rates.

One row per audience and membership destination (Firehose, Ads Data Manager, DSP), and one per AMC
target: the members the destination holds by its ledger, the changes pending, the ones it refused, the
latest delivery run and its status, Amazon's match rate where the delivery records one, and where the
work stands (a DSP queue's next flush, an AMC job's state).

`status_rows` builds the rows from what the Dagster instance recorded about each delivery asset
(`Recorded`, read by `components.activation_status`) and what the state store holds, read cheaply: a
ledger's manifest (its member count) and a DSP queue's metadata (its counts), not their rows.
`text_table` and `markdown_table` show the rows. No Dagster here, and no member: counts and states only.
"""

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import Any, Literal

from audience_pipeline.membership.dsp_queue import DspQueue, QueueState
from audience_pipeline.membership.ledger import Ledger, LedgerDamaged
from audience_pipeline.state import ParquetStore, StoreError

Kind = Literal["firehose", "ads_data_manager", "dsp", "amc_upload", "amc_deletion", "amc_audience"]
MEMBERSHIP_KINDS = ("firehose", "ads_data_manager", "dsp")
# Run statuses of a run that has not ended, and of one that ended without delivering.
_RUNNING = {"NOT_STARTED", "QUEUED", "STARTING", "STARTED", "CANCELING"}
_FAILED = {"FAILURE", "CANCELED"}
# What an AMC target's job does, and the figure AMC reports when it is done.
_AMC_WORK = {
    "amc_upload": ("upload", "output_row_count"),
    "amc_deletion": ("deletion", "identity_count"),
    "amc_audience": ("audience", "audience_count"),
}
HEADERS = (
    "AUDIENCE",
    "DESTINATION",
    "DELIVERED",
    "PENDING",
    "REJECTED",
    "LAST DELIVERY",
    "MATCH RATE",
    "STATE",
)
_NUMERIC = {"DELIVERED", "PENDING", "REJECTED", "MATCH RATE"}
NO_DESTINATIONS = "No destinations are configured: add one under defs/ (see docs/adding.md)."
NOTHING_DELIVERED = (
    "Nothing delivered yet: no destination holds a member or has a delivery run recorded in this Dagster "
    "instance and state store."
)


@dataclass(frozen=True)
class Target:
    """One audience at one destination, or one AMC target, as the project declares it.

    `asset` is the delivery asset's key path (DSP: the flush); `intake` the asset that takes the
    audience's snapshot (the delivery asset itself, DSP's queue; none for AMC); `ledger` the ledger's
    destination name. DSP adds its flush settings."""

    audience: str
    name: str
    destination: str
    kind: Kind
    asset: tuple[str, ...]
    intake: tuple[str, ...] | None = None
    ledger: str | None = None
    flush_interval_seconds: float | None = None
    queue_size_limit_bytes: int | None = None


@dataclass(frozen=True)
class Recorded:
    """What the Dagster instance recorded about a target's delivery asset (its audience's partition).

    `metadata` and `delivered_at`: the latest materialization that was not a dry run; `run_id`,
    `run_status`, `run_at`: the latest run that materialized the asset or tried to (a run that failed
    after the last delivery, or one still going); `followed_up`: an AMC job's final state, recorded by
    the job status sensor after the materialization; `snapshot_newer`: the audience's snapshot changed
    after its intake last took it."""

    metadata: Mapping[str, Any] | None = None
    delivered_at: float | None = None
    run_id: str | None = None
    run_status: str | None = None
    run_at: float | None = None
    followed_up: Mapping[str, Any] | None = None
    snapshot_newer: bool = False


@dataclass(frozen=True)
class StatusRow:
    """One line of the overview; numbers are None where the destination has no such figure (yet)."""

    audience: str
    name: str
    destination: str
    kind: Kind
    delivered: int | None
    pending: int | None
    rejected: int | None
    last_delivery_at: float | None
    last_run_status: str | None
    last_run_id: str | None
    match_rate_pct: float | None
    state: str

    def to_json(self) -> dict[str, Any]:
        """The row as JSON-able values, times as ISO 8601 in UTC."""
        values = asdict(self)
        values["last_delivery_at"] = _iso(self.last_delivery_at)
        return values

    @property
    def recorded(self) -> bool:
        """Whether anything was delivered or tried here."""
        return self.delivered is not None or self.last_run_status is not None


def status_rows(
    targets: Iterable[Target], recorded: Mapping[Target, Recorded], store: ParquetStore, now: float
) -> list[StatusRow]:
    """The overview's rows, one per target in the order given; `recorded` holds what the Dagster
    instance knows of each (none: never delivered), `store` is the state store, `now` the time (Unix
    seconds) a DSP queue's next flush is reckoned from."""
    rows = []
    for target in targets:
        seen = recorded.get(target, Recorded())
        if target.kind in MEMBERSHIP_KINDS:
            rows.append(_membership_row(target, seen, store, now))
        else:
            rows.append(_amc_row(target, seen))
    return rows


def held_members(ledger: Ledger) -> int | None:
    """How many members the destination holds by `ledger`; None when it has none yet. Read from the
    manifest; a ledger written before the count was kept is counted by its user ids."""
    state = ledger.load()
    if state.revision is None:
        return None
    if state.members is not None:
        return state.members
    with ledger.reader(state) as held:
        return sum(held.bucket(bucket).height for bucket in range(1 << held.bits))


def _membership_row(target: Target, seen: Recorded, store: ParquetStore, now: float) -> StatusRow:
    metadata = seen.metadata or {}
    notes = _run_notes(seen, "flushing" if target.kind == "dsp" else "delivering")
    delivered: int | None = None
    pending: int | None = None
    if target.kind != "dsp" and "planned" in metadata:
        # Items the delivery did not get confirmed stay out of the ledger: the next run sends them.
        pending = metadata["planned"] - metadata["confirmed"]
    try:
        delivered = held_members(Ledger(store, target.ledger or "", target.audience))
        if target.kind == "dsp":
            queue = DspQueue(store, target.ledger or "", target.audience).load()
            if queue.revision is not None:
                pending = queue.changes
                notes.append(_queue_note(target, queue, flushed=bool(metadata), now=now))
    except (StoreError, LedgerDamaged) as error:
        notes.append(f"state store unreadable: {error}")
    if seen.snapshot_newer:
        notes.append(
            "snapshot changed since; " + ("queueing" if target.kind == "dsp" else "delivery") + " due"
        )
    elif pending is not None and target.kind != "dsp":
        notes.append(f"{pending:,} refused, sent again next run" if pending else "up to date")
    if not metadata and seen.run_status is None:
        notes.insert(0, "never delivered")
    return StatusRow(
        audience=target.audience,
        name=target.name,
        destination=target.destination,
        kind=target.kind,
        delivered=delivered,
        pending=pending,
        rejected=metadata.get("rejected"),
        last_delivery_at=seen.run_at if seen.run_at is not None else seen.delivered_at,
        last_run_status=seen.run_status,
        last_run_id=seen.run_id,
        match_rate_pct=_match_rate(target, metadata),
        state="; ".join(notes),
    )


def _queue_note(target: Target, queue: QueueState, *, flushed: bool, now: float) -> str:
    """Where a DSP queue stands: empty, due for a flush (and why), or when its next flush is due."""
    if not queue.changes:
        return "queue empty"
    queued = f"{queue.changes:,} queued ({queue.size_bytes:,} bytes)"
    if not flushed:
        return f"{queued}; first flush follows the queue"
    interval, limit = target.flush_interval_seconds or 0, target.queue_size_limit_bytes or 0
    due = queue.due(now, interval, limit)
    if due is not None:
        return f"{queued}; flush due: {due}"
    since = queue.last_upload_at if queue.last_upload_at is not None else queue.oldest_queued_at
    return f"{queued}; next flush by {_time(since + interval)} or at {limit:,} bytes"


def _match_rate(target: Target, metadata: Mapping[str, Any]) -> float | None:
    """Amazon's match rate as the delivery recorded it: ADM's `matchRecordPercentage`, DSP's audience
    match rate once DSP reports records received (before that it records 0, which is no rate)."""
    if target.kind == "ads_data_manager":
        return metadata.get("match_rate_pct")
    if target.kind == "dsp" and metadata.get("received"):
        return metadata.get("match_rate_pct")
    return None


def _amc_row(target: Target, seen: Recorded) -> StatusRow:
    work, figure = _AMC_WORK[target.kind]
    metadata = dict(seen.metadata or {})
    job = metadata.get("amc_job")
    final = {**metadata, **(seen.followed_up or {})}
    notes = _run_notes(seen, "running")
    if not metadata:
        if seen.run_status is None:
            notes.append("never run")
    elif job is None:
        notes.append(f"nothing sent: the query gave no {'rows' if work == 'upload' else 'identities'}")
    elif job.get("final") or seen.followed_up is not None:
        message = final.get("amc_message")
        notes.append(f"{work} {final.get('amc_status')}" + (f": {message}" if message else ""))
    else:
        notes.append(f"{work} submitted; AMC is working on it (the job status sensor follows it)")
    return StatusRow(
        audience=target.audience,
        name=target.name,
        destination=target.destination,
        kind=target.kind,
        delivered=final.get(figure),
        pending=None,
        rejected=_amc_rejected(target, metadata),
        last_delivery_at=seen.run_at if seen.run_at is not None else seen.delivered_at,
        last_run_status=seen.run_status,
        last_run_id=seen.run_id,
        match_rate_pct=None,
        state="; ".join(notes),
    )


def _amc_rejected(target: Target, metadata: Mapping[str, Any]) -> int | None:
    """Values an upload rejected, or identities a deletion left out, by every reason."""
    if target.kind == "amc_upload":
        return metadata.get("rejected_values")
    if target.kind == "amc_deletion" and "rejects" in metadata:
        return sum(n for reasons in metadata["rejects"].values() for n in reasons.values())
    return None


def _run_notes(seen: Recorded, doing: str) -> list[str]:
    """What the latest run says beyond the last delivery: it is still going, or it failed."""
    run = f"run {(seen.run_id or '')[:8]}"
    if seen.run_status in _RUNNING:
        return [f"{doing} now ({run})"]
    if seen.run_status in _FAILED:
        since = f"; last delivered {_time(seen.delivered_at)}" if seen.delivered_at is not None else ""
        return [f"last run {seen.run_status} ({run}){since}"]
    return []


def text_table(rows: Sequence[StatusRow]) -> str:
    """The rows as an aligned table for a terminal, with a line saying so when there is nothing to show."""
    if not rows:
        return NO_DESTINATIONS
    cells = [HEADERS, *(_cells(row) for row in rows)]
    widths = [max(len(line[i]) for line in cells) for i in range(len(HEADERS))]
    lines = [
        "  ".join(
            (cell.rjust(width) if header in _NUMERIC else cell.ljust(width))
            for header, cell, width in zip(HEADERS, line, widths, strict=True)
        ).rstrip()
        for line in cells
    ]
    return "\n".join([*lines, *_footer(rows)])


def markdown_table(rows: Sequence[StatusRow]) -> str:
    """The rows as a Markdown table (what the `activation_status` asset shows in the Dagster UI)."""
    if not rows:
        return NO_DESTINATIONS
    align = ["---:" if header in _NUMERIC else "---" for header in HEADERS]
    lines = [
        _markdown_line([header.capitalize() for header in HEADERS]),
        _markdown_line(align),
        *(_markdown_line(_cells(row)) for row in rows),
    ]
    footer = _footer(rows)
    return "\n".join([*lines, *([""] + footer if footer else [])])


def _footer(rows: Sequence[StatusRow]) -> list[str]:
    return [] if any(row.recorded for row in rows) else [NOTHING_DELIVERED]


def _markdown_line(cells: Sequence[str]) -> str:
    return "| " + " | ".join(cell.replace("|", "\\|") for cell in cells) + " |"


def _cells(row: StatusRow) -> tuple[str, ...]:
    """A row's cells as both tables show them."""
    audience = row.audience if row.name == row.audience else f"{row.audience} ({row.name})"
    last = "never" if row.last_delivery_at is None else _time(row.last_delivery_at)
    if row.last_run_status is not None:
        last += f" {row.last_run_status}"
    rate = "-" if row.match_rate_pct is None else f"{row.match_rate_pct:.2f} %"
    return (
        audience,
        row.destination,
        _count(row.delivered),
        _count(row.pending),
        _count(row.rejected),
        last,
        rate,
        row.state,
    )


def _count(value: int | None) -> str:
    return "-" if value is None else f"{value:,}"


def _time(timestamp: float) -> str:
    return f"{datetime.fromtimestamp(timestamp, UTC):%Y-%m-%d %H:%M} UTC"


def _iso(timestamp: float | None) -> str | None:
    return None if timestamp is None else datetime.fromtimestamp(timestamp, UTC).isoformat()
