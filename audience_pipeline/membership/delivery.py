"""The one delivery core: what every membership destination does with an audience, whatever it is.

    members (user_id, fingerprint, payload), a bucket at a time
        ─ diff vs ledger, bucket by bucket ─► added / removed / identity changed, set aside by bucket
        ─► the mass-removal guard, on the whole plan's counts
        ─► per bucket: items (the adapter's: messages, member objects, patches)
           ─► the adapter's `send`: one `Answer` per request, confirming, rejecting or failing items
        ─► ledger commit of every change whose items were all confirmed ─► `Outcome` (numbers only)

An adapter says how a plan's changes become items and how a destination's answers become
confirmations (`Adapter`); the rest is here, once: the ledger's epoch written before anything is
sent, the guard, the dry run, the commit of exactly what was confirmed and the outcome metrics.

- Members, the ledger and the changes are worked through in buckets of their user ids
  (`state.buckets`), so memory holds a bucket's worth at a time: a first delivery of millions of
  members is planned, sent and committed one bucket's members after another, and what is waiting
  (the plan's changes, the confirmed ones) waits on local disk, encrypted.
- A change is committed when every item announcing it was confirmed (a Firehose identity change is
  two messages). Rejected and failed items leave their change out of the ledger, so the next run
  finds it again.
- An item the adapter knows can never be sent (`REJECT` set, e.g. over a size limit) is not sent:
  it is a reject with its reason, in a dry run too.
- Answers are matched to items by number, so requests sent several at once may answer in any order.
- A request that fails for good (one of the adapter's `request_errors`) stops the delivery: what was
  confirmed before it, and by the requests in flight with it, is committed and `DeliveryInterrupted`
  carries the outcome.

No Dagster and no HTTP here: the errors a destination raises are named by its adapter.
"""

import time
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from typing import Any, ClassVar, Protocol

import polars as pl

from audience_pipeline.membership.diff import MembershipDiff, find_changes, with_old_payloads
from audience_pipeline.membership.ledger import Ledger, LedgerChanges, LedgerReader, LedgerState
from audience_pipeline.state.buckets import Spill, bucket_of

ADDED, REMOVED, CHANGED = "added", "removed", "changed"
USER_ID, KIND, ITEM, REJECT = "user_id", "kind", "item", "reject"
DEFAULT_MAX_REMOVAL_SHARE = 0.5
_MEMBER = pl.Schema({USER_ID: pl.String, "fingerprint": pl.String, "payload": pl.String})
_CHANGE = pl.Schema({**_MEMBER, "old_fingerprint": pl.String, "old_payload": pl.String})


@dataclass(frozen=True)
class Members:
    """An audience's members as one destination receives them: `user_id, fingerprint, payload`, and
    how many members had nothing this destination can take (they are not members for it).

    All of them at once (a `MemberSource` of one bucket), or one bucket of a `MemberSource`."""

    frame: pl.DataFrame
    skipped: int = 0
    bits: ClassVar[int] = 0

    def read(self, bucket: int, level: int) -> "Members":
        """The members in `bucket` at `level`; the skipped ones count in bucket 0."""
        if level == 0:
            return self
        return Members(
            self.frame.filter(bucket_of(USER_ID, level) == bucket), self.skipped if bucket == 0 else 0
        )


class MemberSource(Protocol):
    """An audience's members as one destination receives them, a bucket at a time (`state.buckets`):
    `Members`, or `BucketedMembers`."""

    bits: int
    """The level the members are kept at; they are read at that level or a finer one."""

    def read(self, bucket: int, level: int) -> Members:
        """The members whose user id is in `bucket` at `level`."""
        ...


@dataclass(frozen=True)
class BucketedMembers:
    """Members built a bucket at a time from bucketed data kept at level `bits` (a snapshot, a
    query's result set aside): `build(bucket, level)` gives the members of one bucket."""

    bits: int
    build: Callable[[int, int], Members]

    def read(self, bucket: int, level: int) -> Members:
        """`build(bucket, level)`."""
        return self.build(bucket, level)


@dataclass(frozen=True)
class Answer:
    """A destination's answer to one request, by item number (the `ITEM` column of the items sent):
    the items it confirmed, the ones it refused with its reason, and the ones still failing after the
    client's retries; `retries` counts the retries the request took."""

    confirmed: Sequence[int]
    rejected: Mapping[int, str] = field(default_factory=dict)
    failed: Sequence[int] = ()
    requests: int = 1
    retries: int = 0


class Adapter(Protocol):
    """One destination's part of a delivery. `items`, `requests` and `send` are called once for each
    bucket with changes, so whatever a destination needs once (a stream checked, a dataset found) is
    done on the first call and kept."""

    noun: str
    """What an item is called in messages: `records`, `members`, `patches`."""
    request_errors: tuple[type[Exception], ...]
    """The errors `send` raises for a request that failed for good."""

    def items(self, changes: MembershipDiff, state: LedgerState) -> pl.DataFrame:
        """One row per item to send: `user_id`, `kind` (`ADDED`, `REMOVED`, `CHANGED`), optionally
        `reject` (why the item can never be sent; null when it can), and the adapter's own columns."""
        ...

    def requests(self, items: pl.DataFrame) -> int:
        """How many requests sending `items` takes (for a dry run)."""
        ...

    def send(self, items: pl.DataFrame) -> Iterator[Answer]:
        """Send `items` (with their `item` numbers), answering request by request, in any order
        (requests may run several at once, `clients.concurrency`). A request failing for good raises
        one of `request_errors`, and only after the answers of every request already sent, so that
        what the destination confirmed is committed."""
        ...

    def stored(self, confirmed: pl.DataFrame) -> pl.DataFrame:
        """Confirmed additions or changes (`user_id, fingerprint, payload`) as the ledger keeps them."""
        ...


class SettingProblem(RuntimeError):
    """The destination cannot take the delivery as configured; `setting` names what to change."""

    def __init__(self, setting: str, problem: str):
        self.setting = setting
        super().__init__(problem)


class DestinationProblem(RuntimeError):
    """What the destination holds stops the delivery; the message says what it is and what to do."""


class MassRemoval(RuntimeError):
    """A delivery would remove more of an audience's delivered members than the guard allows."""

    def __init__(self, counts: dict[str, Any]):
        self.counts = counts
        super().__init__(
            f"{counts['removed']} of the {counts['held']} members the destination holds would be removed "
            f"({counts['removal_share']:.0%}; `max_removal_share` allows {counts['max_removal_share']:.0%}), "
            "so nothing was sent. An audience query that suddenly returns few or no rows (a broken "
            "upstream table) looks like this. If the removal is intended, run again with "
            "`allow_mass_removal: true` in the run config, or raise `max_removal_share`"
        )


@dataclass
class Plan:
    """The changes found against a loaded ledger (its members `delivered`), set aside by bucket at
    `level`, with how many members the destination holds (`held`) and how many members it cannot take
    (`skipped`)."""

    state: LedgerState
    delivered: LedgerReader
    level: int
    added: Spill
    removed: Spill
    changed: Spill
    held: int = 0
    skipped: int = 0

    def changes(self, bucket: int) -> MembershipDiff:
        """The changes of one bucket, with what the destination was given for the members that left or
        changed (read from the ledger now, for those members only)."""
        found = MembershipDiff(
            *(spill.read(bucket, self.level) for spill in (self.added, self.removed, self.changed))
        )
        return with_old_payloads(found, lambda user_ids: self.delivered.rows(bucket, self.level, user_ids))

    @property
    def removal_share(self) -> float:
        """The share of the members the destination holds that the plan removes."""
        return round(self.removed.rows / self.held, 4) if self.held else 0.0

    def counts(self) -> dict[str, int]:
        """The plan's changes in numbers, and the members skipped."""
        return {
            "added": self.added.rows,
            "removed": self.removed.rows,
            "identity_changed": self.changed.rows,
            "skipped": self.skipped,
        }

    def check_removals(self, max_share: float) -> None:
        """Raise `MassRemoval` when the plan removes more than `max_share` of the members the
        destination holds. A first delivery (nothing held) is never stopped."""
        if self.held and self.removed.rows / self.held > max_share:
            raise MassRemoval(
                {
                    **self.counts(),
                    "held": self.held,
                    "removal_share": self.removal_share,
                    "max_removal_share": max_share,
                }
            )


@contextmanager
def plan(members: MemberSource, state: LedgerState, held: LedgerReader) -> Iterator[Plan]:
    """Diff `members` against the ledger `state` (its members `held`, from `Ledger.reader`) bucket by
    bucket, on user ids and fingerprints; the plan's changes are set aside until the `with` block ends."""
    level = max(members.bits, held.bits)
    with ExitStack() as stack:
        spills = [stack.enter_context(Spill(schema, level)) for schema in (_MEMBER, _MEMBER, _CHANGE)]
        planned = Plan(state, held, level, *spills)
        for bucket in range(1 << level):
            current, delivered = members.read(bucket, level), held.read(bucket, level)
            found = find_changes(current.frame, delivered)
            planned.added.append(bucket, found.added)
            planned.removed.append(bucket, found.removed)
            planned.changed.append(bucket, found.changed)
            planned.held += delivered.height
            planned.skipped += current.skipped
        yield planned


@dataclass(frozen=True)
class Outcome:
    """What a delivery did (or, in a dry run, would do), in numbers and the destination's reasons;
    `noun` is what the adapter calls an item, `held` how many members the destination held before."""

    noun: str
    dry_run: bool
    counts: dict[str, int]
    requests: int
    sent: int
    confirmed: int
    failed: int
    rejects: dict[str, int]
    retries: int
    removal_share: float
    ledger: LedgerState
    held: int
    seconds: float

    @property
    def rejected(self) -> int:
        """Items refused, before sending (the adapter) or by the destination."""
        return sum(self.rejects.values())

    def metadata(self) -> dict[str, Any]:
        """The one metrics shape of every membership destination (`rejects`: reason → count)."""
        return {
            "dry_run": self.dry_run,
            **self.counts,
            "requests": self.requests,
            "sent": self.sent,
            "confirmed": self.confirmed,
            "rejected": self.rejected,
            "rejects": self.rejects,
            "failed": self.failed,
            "retries": self.retries,
            "removal_share": self.removal_share,
            "ledger_version": self.ledger.version,
            "seconds": self.seconds,
        }


class DeliveryInterrupted(RuntimeError):
    """A request failed for good; what the destination confirmed before it is committed (`outcome`),
    and the destination's error is the cause."""

    def __init__(self, outcome: Outcome):
        super().__init__(f"{outcome.confirmed} {outcome.noun} confirmed before the failure")
        self.outcome = outcome


@dataclass
class _Progress:
    """The items planned and what became of them, in numbers."""

    planned: int = 0
    confirmed: int = 0
    refused: int = 0
    rejects: Counter[str] = field(default_factory=Counter)
    failed: int = 0
    requests: int = 0
    retries: int = 0

    def add(self, answer: Answer) -> None:
        self.confirmed += len(answer.confirmed)
        self.refused += len(answer.rejected)
        self.rejects.update(answer.rejected.values())
        self.failed += len(answer.failed)
        self.requests += answer.requests
        self.retries += answer.retries


@dataclass(frozen=True)
class _Batch:
    """One bucket's changes and the items announcing them: all of them, and those that can be sent."""

    changes: MembershipDiff
    items: pl.DataFrame
    sendable: pl.DataFrame


def deliver(
    ledger: Ledger,
    members: Callable[[LedgerState, LedgerReader], MemberSource],
    adapter: Adapter,
    *,
    dry_run: bool = False,
    max_removal_share: float = DEFAULT_MAX_REMOVAL_SHARE,
) -> Outcome:
    """Deliver an audience's `members` (given the loaded ledger and its members, `Ledger.reader`)
    through `adapter` and commit to `ledger` exactly what the destination confirmed.

    A real run starts the ledger first (`Ledger.start`: its epoch is in message ids) and stops with
    `MassRemoval` before sending anything when the plan removes more than `max_removal_share` of the
    members held. A dry run plans and counts, and sends, writes and commits nothing. Raises
    `DeliveryInterrupted` when a request failed for good, and `LedgerConflict` (nothing committed)
    when another run committed the ledger meanwhile.
    """
    started = time.perf_counter()
    state = ledger.load()
    if not dry_run:
        state = ledger.start(state)
    progress = _Progress()
    with ledger.reader(state) as held, plan(members(state, held), state, held) as planned:
        if dry_run:
            for batch in _batches(planned, adapter, progress):
                progress.requests += adapter.requests(batch.sendable)
            return _outcome(adapter, planned, progress, state, started, dry_run=True)

        planned.check_removals(max_removal_share)
        with LedgerChanges(ledger, state, planned.added.rows + planned.changed.rows) as confirmed:
            for batch in _batches(planned, adapter, progress):
                numbers: list[int] = []
                try:
                    for answer in adapter.send(batch.sendable):
                        progress.add(answer)
                        numbers += answer.confirmed
                except adapter.request_errors as error:
                    _confirm(batch, numbers, adapter, confirmed)
                    committed = ledger.commit_changes(state, confirmed)
                    raise DeliveryInterrupted(
                        _outcome(adapter, planned, progress, committed, started)
                    ) from error
                _confirm(batch, numbers, adapter, confirmed)
            committed = ledger.commit_changes(state, confirmed)
    return _outcome(adapter, planned, progress, committed, started)


def _batches(planned: Plan, adapter: Adapter, progress: _Progress) -> Iterator[_Batch]:
    """Each bucket's changes with their items, numbered across buckets; the items that can never be sent
    are counted as rejects."""
    for bucket in range(1 << planned.level):
        changes = planned.changes(bucket)
        if not (changes.added.height or changes.removed.height or changes.changed.height):
            continue
        items = adapter.items(changes, planned.state)
        if REJECT not in items.columns:
            items = items.with_columns(pl.lit(None, dtype=pl.String).alias(REJECT))
        items = items.with_row_index(ITEM, offset=progress.planned)
        progress.planned += items.height
        progress.rejects.update(items.get_column(REJECT).drop_nulls().to_list())
        yield _Batch(changes, items, items.filter(pl.col(REJECT).is_null()))


def _confirm(batch: _Batch, numbers: list[int], adapter: Adapter, confirmed: LedgerChanges) -> None:
    """Add to `confirmed` every change of `batch` whose items are all among the confirmed `numbers`."""
    # Marked row by row with a join, then grouped: an `is_in` of the numbers inside the aggregation
    # would repeat the whole list for every member (memory quadratic in the batch).
    confirmed_items = pl.DataFrame({ITEM: numbers}, schema={ITEM: pl.UInt32}).unique()
    done = (
        batch.items.select(USER_ID, KIND, ITEM)
        .join(confirmed_items.with_columns(pl.lit(True).alias("confirmed")), on=ITEM, how="left")
        .group_by(USER_ID, KIND)
        .agg(pl.col("confirmed").is_not_null().all())
        .filter("confirmed")
    )

    def confirmed_in(frame: pl.DataFrame, kind: str) -> pl.DataFrame:
        return frame.join(done.filter(pl.col(KIND) == kind).select(USER_ID), on=USER_ID, how="semi")

    confirmed.add(
        added=adapter.stored(confirmed_in(batch.changes.added, ADDED)),
        removed=confirmed_in(batch.changes.removed, REMOVED),
        changed=adapter.stored(confirmed_in(batch.changes.changed, CHANGED)),
    )


def _outcome(
    adapter: Adapter,
    planned: Plan,
    progress: _Progress,
    state: LedgerState,
    started: float,
    *,
    dry_run: bool = False,
) -> Outcome:
    return Outcome(
        noun=adapter.noun,
        dry_run=dry_run,
        counts={**planned.counts(), "planned": progress.planned},
        requests=progress.requests,
        sent=progress.confirmed + progress.refused,
        confirmed=progress.confirmed,
        failed=progress.failed,
        rejects=dict(progress.rejects),
        retries=progress.retries,
        removal_share=planned.removal_share,
        ledger=state,
        held=planned.held,
        seconds=round(time.perf_counter() - started, 3),
    )
