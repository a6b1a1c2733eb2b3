"""One audience's membership changes to a Kinesis Data Firehose stream, committed only when confirmed.

    members (raw identities) ─ diff vs ledger ─► added / removed / identity changed
        ─► one JSON message per change (two for an identity change with remove-on-change)
        ─► PutRecordBatch or PutRecord (the caller's `send`) ─► ledger commit of the fully confirmed changes

- A member's identities are compared by fingerprint: the SHA-256 of the `UserIdentities` object the
  stream receives, so changing what is forwarded (a toggle, an exclusion) is an identity change too.
- A member with no forwardable identity is not a member for this stream: it is counted as skipped,
  and one the stream already holds is sent a removal with the identities it was given.
- The ledger keeps each member's `UserIdentities` encrypted (`PayloadCipher`), because a removal
  must carry the identities delivered earlier; only the changes are encrypted or decrypted.
- Message ids are `message_id(destination, audience, user, change, ledger version loaded, identities)`:
  a re-run after a crash between sending and committing sends the same ids again.
- A message over Firehose's record size limit can never be sent: it is rejected with its reason and
  its change is not committed, so it is reported again on every run until the source changes; it
  does not fail the run (nothing a retry could fix). A message still failing after the client's
  retries leaves its change uncommitted for the next run; the caller fails the run on it.

No Dagster here, and nothing returned holds raw identities: only counts.
"""

import time
from collections.abc import Callable
from dataclasses import dataclass

import polars as pl

from audience_pipeline.clients.firehose import MAX_RECORD_BYTES, SendResult
from audience_pipeline.membership.diff import MembershipDiff, diff
from audience_pipeline.membership.fingerprints import fingerprint, message_id
from audience_pipeline.membership.firehose_messages import ForwardingRules, messages, user_identities
from audience_pipeline.membership.ledger import Ledger, LedgerState
from audience_pipeline.membership.payload_crypto import PayloadCipher

USER_ID = "user_id"
# Labels of the changes in message ids; an identity change sends a removal and an addition.
ADD, REMOVE, IDENTITY_REMOVE, IDENTITY_ADD = "add", "remove", "identity_remove", "identity_add"


@dataclass(frozen=True)
class Members:
    """An audience's members for one stream: `user_id, fingerprint, payload` (the raw `UserIdentities`
    JSON, never persisted as is), and how many members had nothing to forward."""

    frame: pl.DataFrame
    skipped: int


def stream_members(result: pl.DataFrame, rules: ForwardingRules, user_ids: pl.Series) -> Members:
    """The members among `user_ids` (the audience snapshot's) in an audience query's raw `result`.

    As in the snapshot, user ids are trimmed text and the first row the query returned for a user
    wins; members the query no longer returns are left out.
    """
    user_id = pl.col(USER_ID).cast(pl.String).str.strip_chars()
    rows = (
        result.with_columns(user_id.alias(USER_ID))
        .filter(pl.col(USER_ID).is_not_null() & (pl.col(USER_ID) != ""))
        .unique(USER_ID, keep="first", maintain_order=True)
        .join(pl.DataFrame({USER_ID: user_ids.cast(pl.String)}), on=USER_ID, how="semi")
    )
    identified = rows.select(USER_ID, user_identities(rows, rules).alias("payload"))
    sendable = identified.filter(pl.col("payload").is_not_null())
    frame = sendable.select(USER_ID, fingerprint(sendable, ["payload"]), "payload")
    return Members(frame, identified.height - sendable.height)


@dataclass(frozen=True)
class FirehoseTarget:
    """Where and how an audience is delivered: the ledger's destination name, the audience as the
    stream shows it, and the seed's remove-on-identity-change setting."""

    destination: str
    audience_id: int | str
    audience_name: str
    send_remove_on_identity_change: bool = True


@dataclass(frozen=True)
class DeliveryPlan:
    """The changes found against a loaded ledger and the messages announcing them.

    `outgoing` has one row per message: `user_id`, `kind` (added/removed/changed), `message` (JSON
    line, raw identities: never log or persist it).
    """

    state: LedgerState
    diff: MembershipDiff
    outgoing: pl.DataFrame
    skipped: int

    def counts(self) -> dict[str, int]:
        """The plan in numbers: changes, messages, members skipped, messages too large to send."""
        return {
            "added": self.diff.added.height,
            "removed": self.diff.removed.height,
            "identity_changed": self.diff.changed.height,
            "messages": self.outgoing.height,
            "skipped": self.skipped,
            "rejected": int(self.outgoing.select(_oversize().sum()).item()),
        }


def plan_delivery(
    target: FirehoseTarget, members: Members, state: LedgerState, cipher: PayloadCipher, changed_at: int
) -> DeliveryPlan:
    """Diff `members` against the ledger `state` and build the messages, with `changed_at` (Unix
    seconds) as their `MembershipChangedTimestamp`."""
    found = diff(members.frame, state.frame)
    # Removals carry what the stream was given, which only the (encrypted) ledger still knows.
    parts = [
        _outgoing(target, state, found.added, ADD, found.added["payload"]),
        _outgoing(target, state, found.removed, REMOVE, cipher.decrypt(found.removed["payload"])),
    ]
    if target.send_remove_on_identity_change:
        old = cipher.decrypt(found.changed["old_payload"])
        parts.append(_outgoing(target, state, found.changed, IDENTITY_REMOVE, old, "old_fingerprint"))
    parts.append(_outgoing(target, state, found.changed, IDENTITY_ADD, found.changed["payload"]))
    changes = pl.concat(parts)
    outgoing = changes.select(
        USER_ID,
        "kind",
        messages(
            changes,
            audience_id=target.audience_id,
            audience_name=target.audience_name,
            changed_at=changed_at,
        ),
    )
    return DeliveryPlan(state, found, outgoing, members.skipped)


_KIND = {ADD: "added", REMOVE: "removed", IDENTITY_REMOVE: "changed", IDENTITY_ADD: "changed"}


def _outgoing(
    target: FirehoseTarget,
    state: LedgerState,
    frame: pl.DataFrame,
    change: str,
    identities: pl.Series,
    identities_fingerprint: str = "fingerprint",
) -> pl.DataFrame:
    """The messages announcing `change` for each member of `frame`, with the given identities."""
    ids = message_id(
        target.destination,
        target.audience_id,
        pl.col(USER_ID),
        change,
        state.version,
        pl.col(identities_fingerprint),
    )
    return frame.select(
        USER_ID,
        pl.lit(_KIND[change]).alias("kind"),
        ids.alias("message_id"),
        pl.lit(change in (ADD, IDENTITY_ADD)).alias("is_member"),
    ).with_columns(identities.alias("user_identities"))


def _oversize() -> pl.Expr:
    return pl.col("message").str.len_bytes() > MAX_RECORD_BYTES


@dataclass(frozen=True)
class DeliveryOutcome:
    """What a delivery did, in numbers only, and `put_mode`: the Firehose API call that carried the
    messages (`PutRecordBatch` or `PutRecord`; None when nothing was sent)."""

    added: int
    removed: int
    identity_changed: int
    messages_sent: int
    retried: int
    failed: int
    skipped: int
    rejected: int
    batches: int
    calls: int
    seconds: float
    ledger_version: int
    put_mode: str | None


def deliver(
    plan: DeliveryPlan,
    ledger: Ledger,
    cipher: PayloadCipher,
    send: Callable[[list[bytes]], SendResult],
) -> DeliveryOutcome:
    """Send the plan's messages with `send` and commit to `ledger` every change whose messages were
    all confirmed (for an identity change with remove-on-change, both), with its identities encrypted.

    `send` is `send_records` bound to a client and stream. Raises `LedgerConflict` (nothing
    committed) when another run committed this ledger since the plan's state was loaded.
    """
    started = time.perf_counter()
    result = send(plan.outgoing.get_column("message").cast(pl.Binary).to_list())
    undelivered = [r.index for r in result.failed] + [r.index for r in result.rejected]
    confirmed = (
        plan.outgoing.with_row_index("index")
        .with_columns(delivered=~pl.col("index").is_in(pl.Series(undelivered, dtype=pl.UInt32).implode()))
        .group_by(USER_ID, "kind")
        .agg(pl.col("delivered").all())
        .filter("delivered")
    )

    def confirmed_in(frame: pl.DataFrame, kind: str) -> pl.DataFrame:
        users = confirmed.filter(pl.col("kind") == kind).select(USER_ID)
        return frame.join(users, on=USER_ID, how="semi")

    added = confirmed_in(plan.diff.added, "added")
    changed = confirmed_in(plan.diff.changed, "changed")
    state = ledger.commit(
        plan.state,
        added=added.with_columns(cipher.encrypt(added["payload"])),
        removed=confirmed_in(plan.diff.removed, "removed"),
        changed=changed.with_columns(cipher.encrypt(changed["payload"])),
    )
    counts = plan.counts()
    return DeliveryOutcome(
        added=counts["added"],
        removed=counts["removed"],
        identity_changed=counts["identity_changed"],
        messages_sent=result.sent,
        retried=result.retried,
        failed=len(result.failed),
        skipped=plan.skipped,
        rejected=len(result.rejected),
        batches=result.batches,
        calls=result.calls,
        seconds=round(time.perf_counter() - started, 3),
        ledger_version=state.version,
        put_mode=result.put_mode,
    )
