"""Sending records to a Kinesis Data Firehose stream, honestly counted, after checking the stream.

- `check_stream` calls `DescribeDeliveryStream` first: records go only to an existing, `ACTIVE`,
  Direct PUT stream, and a stream that cannot take them fails before anything is sent.
- Records go with `PutRecordBatch` while the IAM policy allows it. Seed 002's policy allows only
  `PutRecord` and `DescribeDeliveryStream`: once `PutRecordBatch` is denied, the records of that
  call and every later one go with `PutRecord`, one record per call (`SendResult.put_mode` says which).
- Records go in batches within AWS's limits: at most 500 records and 4 MiB per call, each record at
  most 1,000 KiB (sizes before base64). A record over the size limit is never sent: it is rejected.
- A call can succeed with some records failed; only those are sent again, with exponential backoff
  and full jitter, up to `max_retries` times. A throttled or failed call (`ServiceUnavailableException`,
  5xx, lost connection) is retried the same way.
- A record counts as sent only once AWS answered it with a `RecordId`. Delivery is at-least-once
  (a call that failed on the wire may still have landed), so every record should carry its own id.
- Calls run `max_in_flight` at a time, after a first call alone that finds which API the policy
  allows. With a `RateLimit` (requests, records and bytes per second, as the stream's quota), every
  call, retries included, waits for its share first, and calls are no larger than the limit's burst,
  so a delivery runs at the quota instead of into `ServiceUnavailableException`.
"""

import functools
import random
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from botocore.exceptions import ClientError, HTTPClientError
from botocore.exceptions import ConnectionError as BotocoreConnectionError

from audience_pipeline.clients.concurrency import completed
from audience_pipeline.clients.rate_limit import RateLimit

MAX_RECORDS_PER_CALL = 500
MAX_RECORD_BYTES = 1_000 * 1024
MAX_CALL_BYTES = 4 * 1024 * 1024
_RETRYABLE_CODES = {"ServiceUnavailableException", "InternalFailure", "ThrottlingException"}
# What AWS answers on the JSON protocol when the caller's IAM policy does not allow the action.
ACCESS_DENIED = "AccessDeniedException"
PUT_RECORD_BATCH = "PutRecordBatch"
PUT_RECORD = "PutRecord"
# Firehose's default Direct PUT quotas per stream (AWS's quota page): these three regions get the
# first, every other region the second. `bytes` are the records' data, before base64.
_LARGE_REGIONS = {"us-east-1", "us-west-2", "eu-west-1"}
LARGE_REGION_QUOTA = {"records": 500_000, "requests": 2_000, "bytes": 5 * 1024 * 1024}
REGION_QUOTA = {"records": 100_000, "requests": 1_000, "bytes": 1024 * 1024}


def default_quota(region: str) -> dict[str, int]:
    """A Direct PUT stream's default quota in `region`: records, requests and bytes per second."""
    return dict(LARGE_REGION_QUOTA if region in _LARGE_REGIONS else REGION_QUOTA)


@dataclass(frozen=True)
class FailedRecord:
    """A record AWS still refused after the last retry: its position in the input and AWS's reason."""

    index: int
    error_code: str
    error_message: str


@dataclass(frozen=True)
class RejectedRecord:
    """A record that was never sent because AWS could not accept it."""

    index: int
    reason: str


@dataclass
class SendResult:
    """What happened to the records of one `send_records` call; indices are positions in its input.

    `batches` counts the groups of records sent together (one record each with `PutRecord`), `calls`
    every call made, the refused `PutRecordBatch` of a fallback included. `put_mode` is the API the
    records went with: `PutRecordBatch`, `PutRecord` once the policy denied batches, None when no
    call was made.
    """

    sent: int = 0
    retried: int = 0
    failed: list[FailedRecord] = field(default_factory=list)
    rejected: list[RejectedRecord] = field(default_factory=list)
    batches: int = 0
    calls: int = 0
    put_mode: str | None = None


class FirehoseSendError(Exception):
    """AWS refused a call for a reason retrying cannot fix; `result` says what was delivered before it.

    `code` is AWS's error code; `unconfirmed` the input positions of the refused call's records that
    AWS has not confirmed.
    """

    def __init__(self, error: ClientError, result: SendResult, unconfirmed: list[int]):
        self.result = result
        self.code = _error_code(error)
        self.unconfirmed = unconfirmed
        super().__init__(str(error))


class FirehoseStreamError(Exception):
    """The stream cannot take records from this sender: missing, not ACTIVE, not Direct PUT, or not
    describable with these credentials. The message names the stream and what to change."""


def check_stream(
    client: Any,
    stream_name: str,
    *,
    max_retries: int = 5,
    base_delay: float = 0.1,
    max_delay: float = 10.0,
    sleep: Callable[[float], None] = time.sleep,
) -> None:
    """Raise `FirehoseStreamError` unless `stream_name` exists, is `ACTIVE` and takes Direct PUT records.

    A throttled or failed `DescribeDeliveryStream` is retried as sends are.
    """
    stream = f"Firehose stream {stream_name!r} in {client.meta.region_name}"
    for attempt in range(max_retries + 1):
        if attempt:
            _pause(attempt, base_delay, max_delay, sleep)
        try:
            answer = client.describe_delivery_stream(DeliveryStreamName=stream_name)
        except ClientError as error:
            code = _error_code(error)
            if code == "ResourceNotFoundException":
                raise FirehoseStreamError(
                    f"{stream} does not exist for these credentials' account; create it with source "
                    "Direct PUT, or correct the name or the region"
                ) from None
            if code == ACCESS_DENIED:
                raise FirehoseStreamError(
                    f"these credentials may not call firehose:DescribeDeliveryStream on {stream}; allow "
                    f"firehose:DescribeDeliveryStream on the stream's ARN (AWS: {_error_message(error)})"
                ) from None
            if not _retryable(error) or attempt == max_retries:
                raise FirehoseStreamError(f"{stream} could not be described: {error}") from None
        except (BotocoreConnectionError, HTTPClientError) as error:
            if attempt == max_retries:
                raise FirehoseStreamError(f"{stream} could not be described: {error}") from None
        else:
            description = answer["DeliveryStreamDescription"]
            break
    status, kind = description["DeliveryStreamStatus"], description["DeliveryStreamType"]
    if status != "ACTIVE":
        raise FirehoseStreamError(f"{stream} is {status}; records can be sent only to an ACTIVE stream")
    if kind != "DirectPut":
        raise FirehoseStreamError(
            f"{stream} takes its records from its source ({kind}); PutRecord and PutRecordBatch need "
            "a stream whose source is Direct PUT"
        )


def send_records(
    client: Any,
    stream_name: str,
    records: Iterable[bytes],
    *,
    max_retries: int = 5,
    base_delay: float = 0.1,
    max_delay: float = 10.0,
    sleep: Callable[[float], None] = time.sleep,
    rate_limit: RateLimit | None = None,
    max_in_flight: int = 1,
) -> SendResult:
    """Send `records` to `stream_name` in batches, retrying only what failed; see the module docstring.

    `client` should not retry on its own (see `resources.aws.FirehoseResource`), or `retried` and
    `calls` undercount; boto3 clients may be shared by the `max_in_flight` threads.
    Raises `FirehoseSendError` when AWS refuses a call for good (a missing stream, `PutRecord` denied),
    after the calls already in flight have ended; its `result` counts what was delivered.
    """
    result = SendResult()
    send_batch = functools.partial(
        _send_batch,
        client,
        stream_name,
        rate_limit=rate_limit,
        max_retries=max_retries,
        base_delay=base_delay,
        max_delay=max_delay,
        sleep=sleep,
    )
    records = list(records)
    result.rejected = [
        RejectedRecord(index, f"record is {len(data)} bytes; Firehose accepts at most {MAX_RECORD_BYTES}")
        for index, data in enumerate(records)
        if len(data) > MAX_RECORD_BYTES
    ]
    batches = record_batches(records, **_call_limits(rate_limit))
    first = next(batches, None)
    if first is None:
        return result
    # Alone, so that its answer settles the API for the calls that follow.
    _merge(result, _sent(send_batch, first, None))
    units: Iterator[list[tuple[int, bytes]]] = batches
    if result.put_mode == PUT_RECORD:  # one record per call: concurrent calls are single records
        units = ([record] for batch in batches for record in batch)
    _send_concurrently(send_batch, units, result, max_in_flight)
    return result


def _send_concurrently(
    send: Callable[..., None],
    units: Iterator[list[tuple[int, bytes]]],
    result: SendResult,
    max_in_flight: int,
) -> None:
    """Send each unit with at most `max_in_flight` calls at once, merging each unit's own result into
    `result` on this thread; a refused call stops new units and is raised once the others ended."""
    refused: FirehoseSendError | None = None
    # Each unit goes with the API the records went with so far, read as the unit starts.
    starting = ((unit, result.put_mode) for unit in units)
    for future in completed(starting, lambda start: _sent(send, *start), max_in_flight):
        try:
            _merge(result, future.result())
        except FirehoseSendError as error:
            _merge(result, error.result)
            refused = refused or error
    if refused is not None:
        refused.result = result
        raise refused


def _sent(send: Callable[..., None], unit: list[tuple[int, bytes]], put_mode: str | None) -> SendResult:
    """One unit's own result (a call's record counts are merged by the caller, never shared)."""
    own = SendResult()
    send(unit, result=own, put_mode=put_mode)
    return own


def _merge(result: SendResult, part: SendResult) -> None:
    result.sent += part.sent
    result.retried += part.retried
    result.failed.extend(part.failed)
    result.batches += part.batches
    result.calls += part.calls
    # PutRecord once any call found batches denied.
    if result.put_mode != PUT_RECORD:
        result.put_mode = part.put_mode


def _call_limits(rate_limit: RateLimit | None) -> dict[str, int]:
    """The most records and bytes one call carries: AWS's limits, or less where a quota's burst is
    smaller (see `RateLimit.burst`), so that no call can carry the stream past its quota."""

    def within(name: str, aws_limit: int) -> int:
        burst = rate_limit.burst(name) if rate_limit else None
        return aws_limit if burst is None else max(1, min(aws_limit, int(burst)))

    return {
        "max_records": within("records", MAX_RECORDS_PER_CALL),
        "max_call_bytes": within("bytes", MAX_CALL_BYTES),
    }


def record_batches(
    records: Iterable[bytes], max_records: int = MAX_RECORDS_PER_CALL, max_call_bytes: int = MAX_CALL_BYTES
) -> Iterator[list[tuple[int, bytes]]]:
    """`records` with their positions, in batches within AWS's limits (500 records, 4 MiB) or smaller
    ones; a record over the 1,000 KiB record limit is left out (it can never be sent), a record over
    `max_call_bytes` goes alone."""
    batch: list[tuple[int, bytes]] = []
    batch_bytes = 0
    for index, data in enumerate(records):
        if len(data) > MAX_RECORD_BYTES:
            continue
        if batch and (len(batch) == max_records or batch_bytes + len(data) > max_call_bytes):
            yield batch
            batch, batch_bytes = [], 0
        batch.append((index, data))
        batch_bytes += len(data)
    if batch:
        yield batch


def _send_batch(
    client: Any,
    stream_name: str,
    batch: list[tuple[int, bytes]],
    *,
    result: SendResult,
    rate_limit: RateLimit | None,
    put_mode: str | None = None,
    **backoff: Any,
) -> None:
    """One batch with `PutRecordBatch`, or record by record with `PutRecord` once batches were denied."""
    if put_mode != PUT_RECORD:
        result.put_mode = PUT_RECORD_BATCH
        put = _limited(functools.partial(_put_record_batch, client, stream_name), rate_limit)
        try:
            _send_with_retries(put, batch, result=result, **backoff)
            return
        except FirehoseSendError as error:
            if error.code != ACCESS_DENIED:
                raise
            # The policy may allow only PutRecord, as seed 002's does: use it for the rest of the run.
            unconfirmed = set(error.unconfirmed)
            batch = [record for record in batch if record[0] in unconfirmed]
    result.put_mode = PUT_RECORD
    put = _limited(functools.partial(_put_record, client, stream_name), rate_limit)
    for record in batch:
        _send_with_retries(put, [record], result=result, **backoff)


def _limited(
    put: Callable[[list[bytes]], list[dict]], rate_limit: RateLimit | None
) -> Callable[[list[bytes]], list[dict]]:
    """`put`, each call first taking its request, records and bytes from `rate_limit`."""
    if rate_limit is None:
        return put

    def limited_put(records: list[bytes]) -> list[dict]:
        rate_limit.take(requests=1, records=len(records), bytes=sum(map(len, records)))
        return put(records)

    return limited_put


def _put_record_batch(client: Any, stream_name: str, records: list[bytes]) -> list[dict]:
    answer = client.put_record_batch(
        DeliveryStreamName=stream_name, Records=[{"Data": data} for data in records]
    )
    return answer["RequestResponses"]


def _put_record(client: Any, stream_name: str, records: list[bytes]) -> list[dict]:
    # PutRecord has no per-record status: its record failing is the call failing, retried as such.
    [data] = records
    return [client.put_record(DeliveryStreamName=stream_name, Record={"Data": data})]


def _send_with_retries(
    put: Callable[[list[bytes]], list[dict]],
    batch: list[tuple[int, bytes]],
    *,
    result: SendResult,
    max_retries: int,
    base_delay: float,
    max_delay: float,
    sleep: Callable[[float], None],
) -> None:
    """Send `batch` with `put` (answering one response per record) until every record is confirmed
    or the retries are spent; the records still failing then go to `result.failed`."""
    result.batches += 1
    pending = batch
    errors: dict[int, tuple[str, str]] = {}
    for attempt in range(max_retries + 1):
        if attempt:
            result.retried += len(pending)
            _pause(attempt, base_delay, max_delay, sleep)
        result.calls += 1
        try:
            responses = put([data for _, data in pending])
        except ClientError as error:
            if not _retryable(error):
                raise FirehoseSendError(error, result, [index for index, _ in pending]) from error
            errors = {index: (_error_code(error), _error_message(error)) for index, _ in pending}
            continue
        except (BotocoreConnectionError, HTTPClientError) as error:
            errors = {index: ("ConnectionError", str(error)) for index, _ in pending}
            continue
        # The responses line up with the records: an entry without a RecordId is a failed record.
        still_pending = []
        errors = {}
        for (index, data), response in zip(pending, responses, strict=True):
            if response.get("RecordId"):
                result.sent += 1
            else:
                still_pending.append((index, data))
                errors[index] = (response.get("ErrorCode", ""), response.get("ErrorMessage", ""))
        pending = still_pending
        if not pending:
            return
    result.failed.extend(FailedRecord(index, *errors[index]) for index, _ in pending)


def _pause(attempt: int, base_delay: float, max_delay: float, sleep: Callable[[float], None]) -> None:
    # Full jitter: concurrent senders hitting the same throttled stream spread out.
    sleep(random.uniform(0, min(max_delay, base_delay * 2**attempt)))


def _retryable(error: ClientError) -> bool:
    status = error.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
    return _error_code(error) in _RETRYABLE_CODES or status >= 500


def _error_code(error: ClientError) -> str:
    return error.response.get("Error", {}).get("Code", "")


def _error_message(error: ClientError) -> str:
    return error.response.get("Error", {}).get("Message", "")
