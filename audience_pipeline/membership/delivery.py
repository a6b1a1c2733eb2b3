"""The one delivery core: what every membership destination does with an audience, whatever it is.

    members (user_id, fingerprint, payload) ─ diff vs ledger ─► added / removed / identity changed
        ─► the mass-removal guard ─► items (the adapter's: messages, member objects, patches)
        ─► the adapter's `send`: one `Answer` per request, confirming, rejecting or failing items
        ─► ledger commit of every change whose items were all confirmed ─► `Outcome` (numbers only)

An adapter says how a plan's changes become items and how a destination's answers become
confirmations (`Adapter`); the rest is here, once: the ledger's epoch written before anything is
sent, the guard, the dry run, the commit of exactly what was confirmed and the outcome metrics.

- A change is committed when every item announcing it was confirmed (a Firehose identity change is
  two messages). Rejected and failed items leave their change out of the ledger, so the next run
  finds it again.
- An item the adapter knows can never be sent (`REJECT` set, e.g. over a size limit) is not sent:
  it is a reject with its reason, in a dry run too.
- A request that fails for good (one of the adapter's `request_errors`) stops the delivery: what was
  confirmed before is committed and `DeliveryInterrupted` carries the outcome.

No Dagster and no HTTP here: the errors a destination raises are named by its adapter.
"""

import time
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import polars as pl

from audience_pipeline.membership.diff import MembershipDiff, diff
from audience_pipeline.membership.ledger import Ledger, LedgerState

ADDED, REMOVED, CHANGED = "added", "removed", "changed"
USER_ID, KIND, ITEM, REJECT = "user_id", "kind", "item", "reject"
DEFAULT_MAX_REMOVAL_SHARE = 0.5


@dataclass(frozen=True)
class Members:
    """An audience's members as one destination receives them: `user_id, fingerprint, payload`, and
    how many members had nothing this destination can take (they are not members for it)."""

    frame: pl.DataFrame
    skipped: int = 0


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
    """One destination's part of a delivery."""

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
        """Send `items` (with their `item` numbers), answering request by request."""
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


@dataclass(frozen=True)
class Plan:
    """The changes found against a loaded ledger and the items announcing them (`ITEM` numbers them)."""

    state: LedgerState
    changes: MembershipDiff
    items: pl.DataFrame
    skipped: int

    @property
    def removal_share(self) -> float:
        """The share of the members the destination holds that the plan removes."""
        held = self.state.frame.height
        return round(self.changes.removed.height / held, 4) if held else 0.0

    def counts(self) -> dict[str, int]:
        """The plan in numbers: changes, members skipped, items planned."""
        return {
            "added": self.changes.added.height,
            "removed": self.changes.removed.height,
            "identity_changed": self.changes.changed.height,
            "skipped": self.skipped,
            "planned": self.items.height,
        }

    def check_removals(self, max_share: float) -> None:
        """Raise `MassRemoval` when the plan removes more than `max_share` of the members the
        destination holds. A first delivery (nothing held) is never stopped."""
        held = self.state.frame.height
        if held and self.changes.removed.height / held > max_share:
            raise MassRemoval(
                {
                    **self.counts(),
                    "held": held,
                    "removal_share": self.removal_share,
                    "max_removal_share": max_share,
                }
            )


def plan(members: Members, state: LedgerState, adapter: Adapter) -> Plan:
    """Diff `members` against the ledger `state` and let `adapter` turn the changes into items."""
    changes = diff(members.frame, state.frame)
    items = adapter.items(changes, state)
    if REJECT not in items.columns:
        items = items.with_columns(pl.lit(None, dtype=pl.String).alias(REJECT))
    return Plan(state, changes, items.with_row_index(ITEM), members.skipped)


@dataclass(frozen=True)
class Outcome:
    """What a delivery did (or, in a dry run, would do), in numbers and the destination's reasons;
    `noun` is what the adapter calls an item."""

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
    confirmed: list[int] = field(default_factory=list)
    rejects: dict[int, str] = field(default_factory=dict)
    failed: int = 0
    requests: int = 0
    retries: int = 0

    def add(self, answer: Answer) -> None:
        self.confirmed += answer.confirmed
        self.rejects.update(answer.rejected)
        self.failed += len(answer.failed)
        self.requests += answer.requests
        self.retries += answer.retries


def deliver(
    ledger: Ledger,
    members: Callable[[LedgerState], Members],
    adapter: Adapter,
    *,
    dry_run: bool = False,
    max_removal_share: float = DEFAULT_MAX_REMOVAL_SHARE,
) -> Outcome:
    """Deliver an audience's `members` (given the loaded ledger) through `adapter` and commit to
    `ledger` exactly what the destination confirmed.

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
    planned = plan(members(state), state, adapter)
    early_rejects = planned.items.filter(pl.col(REJECT).is_not_null())
    sendable = planned.items.filter(pl.col(REJECT).is_null())
    progress = _Progress(rejects=dict(early_rejects.select(ITEM, REJECT).iter_rows()))
    if dry_run:
        progress.requests = adapter.requests(sendable)
        return _outcome(adapter, planned, progress, planned.state, started, dry_run=True)

    planned.check_removals(max_removal_share)
    try:
        for answer in adapter.send(sendable):
            progress.add(answer)
    except adapter.request_errors as error:
        committed = _commit(planned, ledger, adapter, progress)
        raise DeliveryInterrupted(_outcome(adapter, planned, progress, committed, started)) from error
    return _outcome(adapter, planned, progress, _commit(planned, ledger, adapter, progress), started)


def _commit(planned: Plan, ledger: Ledger, adapter: Adapter, progress: _Progress) -> LedgerState:
    """Commit every change whose items were all confirmed."""
    numbers = pl.Series(ITEM, progress.confirmed, dtype=pl.UInt32)
    confirmed = (
        planned.items.group_by(USER_ID, KIND)
        .agg(pl.col(ITEM).is_in(numbers.implode()).all().alias("confirmed"))
        .filter("confirmed")
    )

    def confirmed_in(frame: pl.DataFrame, kind: str) -> pl.DataFrame:
        users = confirmed.filter(pl.col(KIND) == kind).select(USER_ID)
        return frame.join(users, on=USER_ID, how="semi")

    return ledger.commit(
        planned.state,
        added=adapter.stored(confirmed_in(planned.changes.added, ADDED)),
        removed=confirmed_in(planned.changes.removed, REMOVED),
        changed=adapter.stored(confirmed_in(planned.changes.changed, CHANGED)),
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
    answered = len(progress.confirmed) + len(progress.rejects) - planned.items[REJECT].is_not_null().sum()
    return Outcome(
        noun=adapter.noun,
        dry_run=dry_run,
        counts=planned.counts(),
        requests=progress.requests,
        sent=int(answered),
        confirmed=len(progress.confirmed),
        failed=progress.failed,
        rejects=dict(Counter(progress.rejects.values())),
        retries=progress.retries,
        removal_share=planned.removal_share,
        ledger=state,
        seconds=round(time.perf_counter() - started, 3),
    )
