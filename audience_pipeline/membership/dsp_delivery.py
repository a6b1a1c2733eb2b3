"""Flushing one audience's DSP queue: PATCH the pending changes, commit what Amazon confirmed.

    queue (pending vs ledger) ─► add/remove patches ─► requests within the limits (`patch_batches`)
        ─► the caller's `send`, one request at a time ─► ledger commit of the confirmed patches
        ─► the queue without them, stamped with the upload time

A request that still fails after the client's retries stops the flush: what was confirmed before it
is committed and leaves the queue, the rest stays queued for the next flush (patches are idempotent,
so a crash between sending and committing only re-sends). The ledger of a DSP destination has one
row per MAID (`user_id` is the MAID, `fingerprint` its SHA-256, no payload).

No Dagster here, and what is returned holds counts only.
"""

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import polars as pl
import requests

from audience_pipeline.clients.ads_api import AmazonAdsApiError
from audience_pipeline.clients.dsp import maid_patch, patch_batches
from audience_pipeline.membership.dsp_queue import ADD, REMOVE, DspQueue, QueueConflict, pending
from audience_pipeline.membership.fingerprints import fingerprint
from audience_pipeline.membership.ledger import Ledger

# A queue replaced by the queue asset while a flush ran is loaded again this many times.
_SAVE_ATTEMPTS = 3


@dataclass(frozen=True)
class FlushPlan:
    """The patches a flush sends, in numbers: adds, removes, requests, and the MAIDs the DSP audience
    will hold afterwards."""

    adds: int
    removes: int
    requests: int
    projected_size: int


def plan_flush(queue: pl.DataFrame, delivered: pl.Series) -> FlushPlan:
    """What flushing `queue` would send, given the `delivered` MAIDs (for a dry run)."""
    work = pending(queue, delivered)
    patches = [maid_patch(op, maid, 10**18) for maid, op in work.select("maid", "op").iter_rows()]
    adds = work.filter(pl.col("op") == ADD).height
    removes = work.height - adds
    requests = sum(1 for _ in patch_batches(patches))
    return FlushPlan(adds, removes, requests, delivered.len() + adds - removes)


@dataclass(frozen=True)
class FlushOutcome:
    """What a flush did: patches confirmed (adds, removes), requests made, patches left queued, and
    the error that stopped it, if any (Amazon's words, never our data)."""

    adds: int
    removes: int
    requests: int
    left: int
    ledger_version: int
    error: str | None

    @property
    def patches_sent(self) -> int:
        """Patches Amazon confirmed."""
        return self.adds + self.removes


def flush(
    queue: DspQueue,
    ledger: Ledger,
    audience_id: int,
    send: Callable[[list[dict[str, Any]]], Any],
    now: int,
) -> FlushOutcome:
    """Send the queue's pending changes to DSP audience `audience_id` with `send` (one PATCH request
    each call), commit the confirmed ones to `ledger`, and save the queue without them, with `now`
    (Unix seconds) as its last upload. Raises `LedgerConflict` when another run committed the ledger
    meanwhile (nothing committed; the patches are re-sent next time, harmlessly)."""
    state = ledger.load()
    work = pending(queue.load().frame, state.frame.get_column("user_id"))
    rows = work.select("maid", "op").rows()
    confirmed: list[tuple[str, str]] = []
    requests_made, error = 0, None
    for batch in patch_batches([maid_patch(op, maid, audience_id) for maid, op in rows]):
        requests_made += 1
        try:
            send(batch)
        except (AmazonAdsApiError, requests.RequestException) as failure:
            error = str(failure)
            break
        confirmed.extend(rows[len(confirmed) : len(confirmed) + len(batch)])

    done = pl.DataFrame(confirmed, schema={"maid": pl.String, "op": pl.String}, orient="row")
    adds = done.filter(pl.col("op") == ADD).select(user_id="maid")
    removes = done.filter(pl.col("op") == REMOVE).select(user_id="maid")
    state = ledger.commit(
        state,
        added=adds.with_columns(fingerprint(adds, ["user_id"]), payload=pl.lit(None, dtype=pl.String)),
        removed=removes,
    )
    left = _save(queue, state.frame.get_column("user_id"), now if confirmed else None)
    return FlushOutcome(adds.height, removes.height, requests_made, left, state.version, error)


def _save(queue: DspQueue, delivered: pl.Series, uploaded_at: int | None) -> int:
    """Drop what the ledger now holds from the queue (loaded afresh: the queue asset may have appended
    meanwhile), stamping the upload time; returns how many changes are left."""
    for _ in range(_SAVE_ATTEMPTS - 1):
        try:
            return _save_once(queue, delivered, uploaded_at)
        except QueueConflict:
            continue
    return _save_once(queue, delivered, uploaded_at)


def _save_once(queue: DspQueue, delivered: pl.Series, uploaded_at: int | None) -> int:
    loaded = queue.load()
    left = pending(loaded.frame, delivered)
    queue.save(loaded, left, uploaded_at if uploaded_at is not None else loaded.last_upload_at)
    return left.height
