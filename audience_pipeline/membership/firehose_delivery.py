"""The Kinesis Data Firehose adapter of the delivery core (`membership.delivery`).

    members (raw identities) ─ core: diff vs ledger, guard ─► one JSON message per change (two for an
        identity change with remove-on-change) ─► DescribeDeliveryStream, then PutRecordBatch or
        PutRecord ─► core: ledger commit of the fully confirmed changes

- A member's identities are compared by fingerprint: the SHA-256 of the `UserIdentities` object the
  stream receives, so changing what is forwarded (a toggle, an exclusion) is an identity change too.
- A member with no forwardable identity is not a member for this stream: it is counted as skipped,
  and one the stream already holds is sent a removal with the identities it was given.
- The ledger keeps each member's `UserIdentities` encrypted (`PayloadCipher`), because a removal
  must carry the identities delivered earlier; only the changes are encrypted or decrypted.
- Message ids are `message_id(destination, audience, user, change, ledger epoch and version loaded,
  identities)`: a re-run after a crash between sending and committing sends the same ids again, and
  a ledger deleted and started again (a new epoch) never repeats an id.
- A message over Firehose's record size limit can never be sent: it is rejected with its reason and
  its change is not committed, so it is reported again on every run until the source changes; it
  does not fail the run (nothing a retry could fix). A message still failing after the client's
  retries leaves its change uncommitted for the next run, and the run fails on it.

No Dagster here, and nothing returned holds raw identities: only counts.
"""

from collections.abc import Callable, Iterator
from dataclasses import dataclass

import polars as pl

from audience_pipeline.clients.firehose import (
    MAX_RECORD_BYTES,
    FirehoseSendError,
    FirehoseStreamError,
    SendResult,
    record_batches,
)
from audience_pipeline.membership.delivery import (
    ADDED,
    CHANGED,
    ITEM,
    KIND,
    REJECT,
    REMOVED,
    USER_ID,
    Answer,
    Members,
    SettingProblem,
)
from audience_pipeline.membership.diff import MembershipDiff
from audience_pipeline.membership.fingerprints import fingerprint, message_id
from audience_pipeline.membership.firehose_messages import (
    IDENTITY_KEYS,
    ForwardingRules,
    messages,
    user_identities,
)
from audience_pipeline.membership.ledger import LedgerState
from audience_pipeline.membership.payload_crypto import PayloadCipher

# Labels of the changes in message ids; an identity change sends a removal and an addition.
ADD, REMOVE, IDENTITY_REMOVE, IDENTITY_ADD = "add", "remove", "identity_remove", "identity_add"
_KIND = {ADD: ADDED, REMOVE: REMOVED, IDENTITY_REMOVE: CHANGED, IDENTITY_ADD: CHANGED}
OVERSIZE = f"message over Firehose's {MAX_RECORD_BYTES // 1024:,} KiB record limit"


def stream_columns(schema: pl.Schema) -> list[str]:
    """The columns of an audience query's result that `stream_members` reads: the user id and the
    identities a stream may receive."""
    return [column for column in schema if column == USER_ID or column in IDENTITY_KEYS]


def stream_members(result: pl.DataFrame, rules: ForwardingRules, user_ids: pl.Series) -> Members:
    """The members among `user_ids` (the audience snapshot's) in an audience query's raw `result` (all
    of it, or one bucket of user ids of both): `payload` is the raw `UserIdentities` JSON, which the
    ledger keeps only encrypted.

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


class FirehoseAdapter:
    """Membership changes as JSON messages on one stream (see the module docstring).

    `changed_at` (Unix seconds) is the messages' `MembershipChangedTimestamp`. `check` is
    `check_stream` and `put` is `send_records`, bound to a client and stream (unused in a dry run).
    After sending, `batches` counts the record batches of every `put` and `put_mode` is the API the
    last records went with (see `SendResult`).
    """

    noun = "records"
    request_errors = (FirehoseSendError,)

    def __init__(
        self,
        target: FirehoseTarget,
        cipher: PayloadCipher,
        changed_at: int,
        check: Callable[[], None],
        put: Callable[[list[bytes]], SendResult],
    ):
        self.target, self.cipher, self.changed_at = target, cipher, changed_at
        self.check, self.put = check, put
        self.batches, self.put_mode = 0, None
        self._checked = False

    def items(self, changes: MembershipDiff, state: LedgerState) -> pl.DataFrame:
        """One message per change; removals carry what the stream was given, which only the
        (encrypted) ledger still knows."""
        parts = [
            self._outgoing(state, changes.added, ADD, changes.added["payload"]),
            self._outgoing(state, changes.removed, REMOVE, self.cipher.decrypt(changes.removed["payload"])),
        ]
        if self.target.send_remove_on_identity_change:
            old = self.cipher.decrypt(changes.changed["old_payload"])
            parts.append(self._outgoing(state, changes.changed, IDENTITY_REMOVE, old, "old_fingerprint"))
        parts.append(self._outgoing(state, changes.changed, IDENTITY_ADD, changes.changed["payload"]))
        outgoing = pl.concat(parts)
        message = messages(
            outgoing,
            audience_id=self.target.audience_id,
            audience_name=self.target.audience_name,
            changed_at=self.changed_at,
        )
        return outgoing.select(USER_ID, KIND, message).with_columns(
            pl.when(pl.col("message").str.len_bytes() > MAX_RECORD_BYTES).then(pl.lit(OVERSIZE)).alias(REJECT)
        )

    def _outgoing(
        self,
        state: LedgerState,
        frame: pl.DataFrame,
        change: str,
        identities: pl.Series,
        identities_fingerprint: str = "fingerprint",
    ) -> pl.DataFrame:
        """The messages announcing `change` for each member of `frame`, with the given identities."""
        target = self.target
        ids = message_id(
            target.destination,
            target.audience_id,
            pl.col(USER_ID),
            change,
            state.epoch,
            state.version,
            pl.col(identities_fingerprint),
        )
        return frame.select(
            USER_ID,
            pl.lit(_KIND[change]).alias(KIND),
            ids.alias("message_id"),
            pl.lit(change in (ADD, IDENTITY_ADD)).alias("is_member"),
        ).with_columns(identities.alias("user_identities"))

    def requests(self, items: pl.DataFrame) -> int:
        """The PutRecordBatch calls the messages take (one per record once the policy denies batches)."""
        return sum(1 for _ in record_batches(_records(items)))

    def send(self, items: pl.DataFrame) -> Iterator[Answer]:
        """Check the stream (exists, ACTIVE, Direct PUT) before the first messages, then send every
        message; records still failing after the client's retries are failed items."""
        if not self._checked:
            try:
                self.check()
            except FirehoseStreamError as error:
                raise SettingProblem("delivery_stream_name", str(error)) from None
            self._checked = True
        result: SendResult = self.put(_records(items))
        self.batches += result.batches
        self.put_mode = result.put_mode or self.put_mode
        numbers = items.get_column(ITEM).to_list()
        failed = {record.index for record in result.failed}
        yield Answer(
            confirmed=[number for index, number in enumerate(numbers) if index not in failed],
            failed=[numbers[index] for index in failed],
            requests=result.calls,
            retries=result.retried,
        )

    def stored(self, confirmed: pl.DataFrame) -> pl.DataFrame:
        """The identities encrypted: a removal must carry them, and the ledger never holds them plain."""
        return confirmed.with_columns(self.cipher.encrypt(confirmed["payload"]))


def _records(items: pl.DataFrame) -> list[bytes]:
    return items.get_column("message").cast(pl.Binary).to_list()
