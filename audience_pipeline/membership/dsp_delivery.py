"""The Amazon DSP adapter of the delivery core (`membership.delivery`): flushing one audience's queue.

    queue (pending vs ledger) ─► the MAIDs DSP should hold ─ core: diff vs ledger, guard
        ─► add/remove patches ─► the profile and the DSP audience (`DspAudienceRecord`)
        ─► PATCH requests within the limits (`patch_batches`) ─► core: ledger commit of the confirmed
        ─► the queue without them, stamped with the upload time

A member is one MAID: the ledger of a DSP destination has one row per MAID (`user_id` is the MAID,
`fingerprint` its SHA-256, no payload), so the core's diff of "ledger plus pending changes" against
the ledger is exactly the queue's pending adds and removes. Queue and ledger are both bucketed by
MAID and read a bucket at a time. A request that still fails after the client's retries stops the
flush: what was confirmed before it is committed and leaves the queue, the rest stays queued for
the next flush (patches are idempotent, so a crash between sending and committing only re-sends).

No Dagster here, and what is returned holds counts only.
"""

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Protocol

import polars as pl
import requests

from audience_pipeline.clients.accounts import ProfileNotFound
from audience_pipeline.clients.ads_api import AmazonAdsApiError
from audience_pipeline.clients.concurrency import RequestPace
from audience_pipeline.clients.dsp import DspClient, maid_patch, patch_batches
from audience_pipeline.membership.delivery import (
    ADDED,
    ITEM,
    KIND,
    REMOVED,
    USER_ID,
    Answer,
    BucketedMembers,
    DeliveryInterrupted,
    Members,
    Outcome,
    SettingProblem,
    deliver,
)
from audience_pipeline.membership.diff import MembershipDiff
from audience_pipeline.membership.dsp_audiences import DspAudienceRecord, dsp_audience_name
from audience_pipeline.membership.dsp_queue import ADD, MAID, REMOVE, DspQueue, QueueConflict, pending
from audience_pipeline.membership.fingerprints import fingerprint
from audience_pipeline.membership.ledger import Ledger, LedgerReader, LedgerState

# A queue replaced by the queue asset while a flush ran is loaded again this many times.
_SAVE_ATTEMPTS = 3
# Patch sizes depend on the audience id; the widest (19 digits) counts requests before one exists.
_WIDEST_AUDIENCE_ID = 10**18


def flush_members(queue: pl.DataFrame, delivered: pl.Series) -> Members:
    """The MAIDs DSP holds once `queue` is flushed, given the `delivered` MAIDs (the ledger's); for a
    whole audience, or for one bucket of MAIDs of both."""
    work = pending(queue, delivered)
    removes = work.filter(pl.col("op") == REMOVE).get_column(MAID)
    adds = work.filter(pl.col("op") == ADD).get_column(MAID)
    maids = pl.concat([delivered.filter(~delivered.is_in(removes.implode())), adds])
    frame = pl.DataFrame({USER_ID: maids.cast(pl.String)})
    return Members(frame.with_columns(fingerprint(frame, [USER_ID]), payload=pl.lit(None, dtype=pl.String)))


@dataclass(frozen=True)
class DspTarget:
    """Whose DSP audience the MAIDs go to: the advertiser; its profile, by name and marketplace
    (country code or id; None: the one marketplace with a profile of that name); the audience as DSP
    shows it; the API region (NA, EU, FE); and the Amazon user the login must belong to (None: not
    checked)."""

    advertiser_id: int
    marketplace_profile_name: str
    marketplace: str | None
    audience_id: str
    audience_name: str
    region: str
    profile_name: str | None = None


class DspAccess(Protocol):
    """Where the adapter gets its DSP client: the `amazon_ads` resource, or a fake in tests."""

    def dsp_profile(
        self, marketplace_profile_name: str, marketplace: str | None, region: str | None = None
    ) -> dict[str, Any]:
        """The profile of that name in that marketplace (raises `ProfileNotFound`)."""

    def check_linked_user(self, profile_name: str, region: str | None = None) -> None:
        """Raises `ProfileNotFound` unless the login belongs to the Amazon user named `profile_name`."""

    def dsp(self, profile_id: int, region: str | None = None) -> DspClient:
        """The Data Provider client of one profile."""


class DspAdapter:
    """MAID patches to one audience's DSP audience (see the module docstring).

    `access` is None in a dry run. The profile is looked up and the DSP audience found or created
    (`DspAudienceRecord`) before the first request, once, so a dry run or a stopped flush touches
    neither. After `send`, `dsp` and `dsp_audience_id` say where the patches went. PATCHes go at
    `pace` (default: one at a time, unlimited): several at once, each attempt taking its request from
    the pace's rate limit.
    """

    noun = "patches"
    request_errors = (AmazonAdsApiError, requests.RequestException)

    def __init__(
        self,
        target: DspTarget,
        record: DspAudienceRecord,
        clock: Callable[[], float],
        access: DspAccess | None = None,
        pace: RequestPace | None = None,
    ):
        self.target, self.record, self.clock, self.access = target, record, clock, access
        self.pace = pace or RequestPace()
        self.dsp: DspClient | None = None
        self.dsp_audience_id: int | None = None

    def items(self, changes: MembershipDiff, state: LedgerState) -> pl.DataFrame:
        """One patch per MAID added or removed (a MAID never changes: it is the member)."""
        return pl.concat(
            [
                changes.added.select(USER_ID, pl.lit(ADDED).alias(KIND), pl.lit(ADD).alias("op")),
                changes.removed.select(USER_ID, pl.lit(REMOVED).alias(KIND), pl.lit(REMOVE).alias("op")),
            ]
        )

    def requests(self, items: pl.DataFrame) -> int:
        """See `patch_batches`."""
        return sum(1 for _ in patch_batches(_patches(items, _WIDEST_AUDIENCE_ID)))

    def send(self, items: pl.DataFrame) -> Iterator[Answer]:
        """One PATCH per batch, as they complete; Amazon confirms a request's patches all at once. The
        DSP audience is found or created first, once, before any PATCH starts."""
        if items.is_empty():
            return
        audience_id = self.dsp_audience_id if self.dsp_audience_id is not None else self._connect()
        numbers = items.get_column(ITEM).to_list()

        def batches() -> Iterator[tuple[list[int], list[dict[str, Any]]]]:
            done = 0
            for batch in patch_batches(_patches(items, audience_id)):
                yield numbers[done : done + len(batch)], batch
                done += len(batch)

        yield from self.pace.results(batches(), lambda numbered: self._patch(*numbered))

    def _patch(self, numbers: list[int], batch: list[dict[str, Any]]) -> Answer:
        """One PATCH confirming the patches `numbers`."""
        retries = self.dsp.api.thread_retries
        self.dsp.patch_audiences(batch, rate_limit=self.pace.rate_limit)
        return Answer(confirmed=numbers, retries=self.dsp.api.thread_retries - retries)

    def stored(self, confirmed: pl.DataFrame) -> pl.DataFrame:
        """The MAID and its fingerprint; there is no payload."""
        return confirmed

    def _connect(self) -> int:
        target = self.target
        try:
            profile = self.access.dsp_profile(
                target.marketplace_profile_name, target.marketplace, target.region
            )
            if target.profile_name is not None:
                self.access.check_linked_user(target.profile_name, target.region)
        except ProfileNotFound as missing:
            raise SettingProblem(missing.setting, str(missing)) from None
        self.dsp = self.access.dsp(int(profile["profileId"]), target.region)

        def create() -> int:
            return self.dsp.create_audience(
                name=dsp_audience_name(target.audience_name),
                description=f"audience_pipeline audience {target.audience_id}",
                advertiser_id=target.advertiser_id,
                external_audience_id=target.audience_id,
                data_source_country=[str(profile["countryCode"])],
            ).id

        self.dsp_audience_id = self.record.audience_id(self.dsp, create, self.clock)
        return self.dsp_audience_id


def _patches(items: pl.DataFrame, audience_id: int) -> list[dict[str, Any]]:
    return [maid_patch(op, maid, audience_id) for maid, op in items.select(USER_ID, "op").iter_rows()]


@dataclass(frozen=True)
class Flushed:
    """A flush's outcome and how many changes are left in the queue."""

    outcome: Outcome
    left: int


def flush(
    queue: DspQueue,
    ledger: Ledger,
    adapter: DspAdapter,
    now: int,
    *,
    dry_run: bool = False,
    max_removal_share: float,
) -> Flushed:
    """Send the queue's pending changes through the core, and save the queue without what DSP
    confirmed, with `now` (Unix seconds) as its last upload when anything was confirmed. A dry run
    sends and writes nothing. Raises what `deliver` raises, after saving the queue."""

    loaded = queue.load()
    with queue.reader(loaded) as queued:

        def members(state: LedgerState, held: LedgerReader) -> BucketedMembers:
            def bucket(number: int, level: int) -> Members:
                return flush_members(queued.read(number, level), held.read(number, level).get_column(USER_ID))

            return BucketedMembers(queued.bits, bucket)

        try:
            outcome = deliver(ledger, members, adapter, dry_run=dry_run, max_removal_share=max_removal_share)
        except DeliveryInterrupted as stopped:
            _save(queue, ledger, stopped.outcome, now)
            raise
    if dry_run:
        return Flushed(outcome, outcome.counts["added"] + outcome.counts["removed"])
    return Flushed(outcome, _save(queue, ledger, outcome, now))


def _save(queue: DspQueue, ledger: Ledger, outcome: Outcome, now: int) -> int:
    """Drop what the ledger now holds from the queue (loaded afresh: the queue asset may have appended
    meanwhile), stamping the upload time; returns how many changes are left."""
    uploaded_at = now if outcome.confirmed else None
    for _ in range(_SAVE_ATTEMPTS - 1):
        try:
            return _save_once(queue, ledger, outcome.ledger, uploaded_at)
        except QueueConflict:
            continue
    return _save_once(queue, ledger, outcome.ledger, uploaded_at)


def _save_once(queue: DspQueue, ledger: Ledger, state: LedgerState, uploaded_at: int | None) -> int:
    loaded = queue.load()
    with queue.reader(loaded) as queued, ledger.reader(state) as held:
        level = max(queued.bits, held.bits)
        left = (
            (number, pending(queued.read(number, level), held.read(number, level).get_column(USER_ID)))
            for number in range(1 << level)
        )
        saved = queue.save(
            loaded, left, level, uploaded_at if uploaded_at is not None else loaded.last_upload_at
        )
    return saved.changes
