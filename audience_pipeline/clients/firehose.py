"""Sending records to a Kinesis Data Firehose stream with `PutRecordBatch`, honestly counted.

- Records go in batches within AWS's limits: at most 500 records and 4 MiB per call, each record at
  most 1,000 KiB (sizes before base64). A record over the size limit is never sent: it is rejected.
- A call can succeed with some records failed; only those are sent again, with exponential backoff
  and full jitter, up to `max_retries` times. A throttled or failed call (`ServiceUnavailableException`,
  5xx, lost connection) is retried the same way.
- A record counts as sent only once AWS answered it with a `RecordId`. Delivery is at-least-once
  (a call that failed on the wire may still have landed), so every record should carry its own id.
"""

import functools
import random
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import boto3
from botocore.config import Config
from botocore.exceptions import ClientError, HTTPClientError
from botocore.exceptions import ConnectionError as BotocoreConnectionError

MAX_RECORDS_PER_CALL = 500
MAX_RECORD_BYTES = 1_000 * 1024
MAX_CALL_BYTES = 4 * 1024 * 1024
_RETRYABLE_CODES = {"ServiceUnavailableException", "InternalFailure", "ThrottlingException"}


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
    """What happened to the records of one `send_records` call; indices are positions in its input."""

    sent: int = 0
    retried: int = 0
    failed: list[FailedRecord] = field(default_factory=list)
    rejected: list[RejectedRecord] = field(default_factory=list)
    batches: int = 0
    calls: int = 0


class FirehoseSendError(Exception):
    """AWS refused a call for a reason retrying cannot fix; `result` says what was delivered before it."""

    def __init__(self, error: ClientError, result: SendResult):
        self.result = result
        super().__init__(str(error))


def firehose_client(
    region: str = "us-east-1",
    endpoint_url: str | None = None,
    access_key_id: str | None = None,
    secret_access_key: str | None = None,
) -> Any:
    """A boto3 Firehose client without botocore's own retries, so `send_records` sees every failure.

    Without keys, boto3's default credential chain applies.
    """
    return boto3.client(
        "firehose",
        region_name=region,
        endpoint_url=endpoint_url,
        aws_access_key_id=access_key_id,
        aws_secret_access_key=secret_access_key,
        config=Config(retries={"total_max_attempts": 1, "mode": "standard"}),
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
) -> SendResult:
    """Send `records` to `stream_name` in batches, retrying only what failed; see the module docstring.

    `client` should not retry on its own (see `firehose_client`), or `retried` and `calls` undercount.
    """
    result = SendResult()
    send_batch = functools.partial(
        _send_batch,
        client,
        stream_name,
        result=result,
        max_retries=max_retries,
        base_delay=base_delay,
        max_delay=max_delay,
        sleep=sleep,
    )
    batch: list[tuple[int, bytes]] = []
    batch_bytes = 0
    for index, data in enumerate(records):
        if len(data) > MAX_RECORD_BYTES:
            reason = f"record is {len(data)} bytes; Firehose accepts at most {MAX_RECORD_BYTES}"
            result.rejected.append(RejectedRecord(index, reason))
            continue
        if len(batch) == MAX_RECORDS_PER_CALL or batch_bytes + len(data) > MAX_CALL_BYTES:
            send_batch(batch)
            batch, batch_bytes = [], 0
        batch.append((index, data))
        batch_bytes += len(data)
    if batch:
        send_batch(batch)
    return result


def _send_batch(
    client: Any,
    stream_name: str,
    batch: list[tuple[int, bytes]],
    *,
    result: SendResult,
    max_retries: int,
    base_delay: float,
    max_delay: float,
    sleep: Callable[[float], None],
) -> None:
    result.batches += 1
    pending = batch
    errors: dict[int, tuple[str, str]] = {}
    for attempt in range(max_retries + 1):
        if attempt:
            result.retried += len(pending)
            # Full jitter: concurrent senders hitting the same throttled stream spread out.
            sleep(random.uniform(0, min(max_delay, base_delay * 2**attempt)))
        result.calls += 1
        try:
            answer = client.put_record_batch(
                DeliveryStreamName=stream_name, Records=[{"Data": data} for _, data in pending]
            )
        except ClientError as error:
            code = error.response.get("Error", {}).get("Code", "")
            status = error.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
            if code not in _RETRYABLE_CODES and status < 500:
                raise FirehoseSendError(error, result) from error
            message = error.response.get("Error", {}).get("Message", "")
            errors = {index: (code, message) for index, _ in pending}
            continue
        except (BotocoreConnectionError, HTTPClientError) as error:
            errors = {index: ("ConnectionError", str(error)) for index, _ in pending}
            continue
        # `RequestResponses` lines up with `Records`: an entry without a RecordId is a failed record.
        still_pending = []
        errors = {}
        for (index, data), response in zip(pending, answer["RequestResponses"], strict=True):
            if response.get("RecordId"):
                result.sent += 1
            else:
                still_pending.append((index, data))
                errors[index] = (response.get("ErrorCode", ""), response.get("ErrorMessage", ""))
        pending = still_pending
        if not pending:
            return
    result.failed.extend(FailedRecord(index, *errors[index]) for index, _ in pending)
