"""The Firehose sender against the sandbox over real HTTP: the stream check, batching, limits, retries,
the fallback to PutRecord, exact delivery."""

import collections
import threading

import pytest
from botocore.exceptions import ClientError
from botocore.stub import Stubber

from audience_pipeline.clients.firehose import (
    MAX_RECORD_BYTES,
    FirehoseSendError,
    FirehoseStreamError,
    check_stream,
    send_records,
)
from audience_pipeline.resources.aws import FirehoseResource

from .conftest import add_fault, journal
from .sandbox.test_aws_firehose import (
    BUCKET,
    PUT_RECORD_BATCH,
    STREAM,
    STREAM_ARN,
    aws_clients,
    delivered_messages,
    firehose_as,
    message,
    set_policy,
    statement,
)


@pytest.fixture
def s3(sandbox):
    return aws_clients(sandbox)[1]


@pytest.fixture
def firehose(sandbox):
    return FirehoseResource(
        region_name="us-east-1",
        endpoint_url=sandbox.aws_url,
        aws_access_key_id="sandbox",
        aws_secret_access_key="sandbox",
    ).get_client()


def delivered_ids(s3) -> collections.Counter:
    return collections.Counter(m["MessageId"] for m in delivered_messages(s3))


def put_calls(sandbox) -> list[int]:
    """Statuses of the Firehose calls the sandbox received (S3 calls have a bucket in their path)."""
    return [e["status"] for e in journal(sandbox.aws_url) if e["method"] == "POST" and e["path"] == "/"]


def test_records_are_sent_in_batches_of_at_most_500(sandbox, s3, firehose):
    result = send_records(firehose, STREAM, (message(i) for i in range(1200)), sleep=lambda s: None)
    assert (result.sent, result.batches, result.calls, result.retried) == (1200, 3, 3, 0)
    assert not result.failed and not result.rejected
    assert delivered_ids(s3) == collections.Counter(f"m-{i}" for i in range(1200))


def test_batches_stay_within_4_mib(sandbox, s3, firehose):
    records = [message(i).rstrip(b"\n").ljust(900 * 1024) + b"\n" for i in range(5)]
    result = send_records(firehose, STREAM, records, sleep=lambda s: None)
    assert (result.sent, result.batches, result.calls) == (5, 2, 2)
    assert sum(delivered_ids(s3).values()) == 5


def test_records_over_1000_kib_are_rejected_without_being_sent(sandbox, s3, firehose):
    too_big = b"x" * (MAX_RECORD_BYTES + 1)
    result = send_records(firehose, STREAM, [message(0), too_big, message(2)], sleep=lambda s: None)
    assert result.sent == 2
    assert [r.index for r in result.rejected] == [1]
    assert str(MAX_RECORD_BYTES) in result.rejected[0].reason
    assert delivered_ids(s3) == collections.Counter(["m-0", "m-2"])
    assert put_calls(sandbox)[-1:] == [200] and len(put_calls(sandbox)) == 2  # create stream + one put


@pytest.mark.parametrize("max_in_flight", [1, 4])
def test_partial_failures_are_retried_until_every_record_is_delivered_once(
    sandbox, s3, firehose, max_in_flight
):
    add_fault(sandbox.aws_url, route=PUT_RECORD_BATCH, record_failure_rate=0.2)
    waits = []
    result = send_records(
        firehose, STREAM, [message(i) for i in range(2700)], sleep=waits.append, max_in_flight=max_in_flight
    )
    assert result.sent == 2700 and not result.failed
    assert result.retried > 0 and result.calls > result.batches == 6
    assert len(waits) == result.calls - result.batches == len(put_calls(sandbox)) - 1 - result.batches
    assert delivered_ids(s3) == collections.Counter(f"m-{i}" for i in range(2700))


class RefusingClient:
    """Takes every PutRecordBatch, except that call number `refuse_at` is refused for good."""

    def __init__(self, refuse_at: int):
        self.refuse_at, self.calls, self.received = refuse_at, 0, []
        self.lock = threading.Lock()

    def put_record_batch(self, DeliveryStreamName, Records):  # noqa: N803 (boto3's argument names)
        with self.lock:
            self.calls += 1
            if self.calls == self.refuse_at:
                raise ClientError({"Error": {"Code": "ResourceNotFoundException"}}, "PutRecordBatch")
            self.received += [record["Data"] for record in Records]
        return {"FailedPutCount": 0, "RequestResponses": [{"RecordId": "r"} for _ in Records]}


def test_a_call_refused_among_concurrent_ones_stops_new_calls_and_counts_what_was_delivered():
    client = RefusingClient(refuse_at=3)

    with pytest.raises(FirehoseSendError, match="ResourceNotFoundException") as error:
        send_records(client, STREAM, [message(i) for i in range(10_000)], max_in_flight=4)

    result = error.value.result
    # The calls in flight when it was refused ended; no call started after it.
    assert client.calls <= 3 + 3
    assert (result.calls, result.sent) == (client.calls, len(client.received)) and result.sent < 10_000


def test_whole_call_throttling_is_retried(sandbox, s3, firehose):
    add_fault(sandbox.aws_url, route=PUT_RECORD_BATCH, status=503, count=3)
    waits = []
    result = send_records(firehose, STREAM, [message(i) for i in range(10)], sleep=waits.append)
    assert (result.sent, result.calls, result.retried, len(waits)) == (10, 4, 30, 3)
    assert put_calls(sandbox)[1:] == [503, 503, 503, 200]
    assert delivered_ids(s3) == collections.Counter(f"m-{i}" for i in range(10))


def test_records_still_failing_past_the_retry_limit_are_reported_and_not_delivered(sandbox, s3, firehose):
    add_fault(sandbox.aws_url, route=PUT_RECORD_BATCH, record_failure_rate=1.0)
    waits = []
    result = send_records(firehose, STREAM, [message(i) for i in range(4)], max_retries=3, sleep=waits.append)
    assert result.sent == 0 and result.calls == 4 and result.retried == 12
    assert [f.index for f in result.failed] == [0, 1, 2, 3]
    assert {f.error_code for f in result.failed} <= {"ServiceUnavailableException", "InternalFailure"}
    assert len(waits) == 3 and all(0 <= w <= 0.1 * 2**3 for w in waits)
    assert delivered_ids(s3) == collections.Counter()


def test_a_call_aws_refuses_for_good_raises_with_what_was_delivered(sandbox, s3, firehose):
    with pytest.raises(FirehoseSendError, match="ResourceNotFoundException") as error:
        send_records(firehose, "no-such-stream", [message(0)], sleep=lambda s: None)
    assert (error.value.result.sent, error.value.result.calls) == (0, 1)


def test_a_direct_put_stream_that_is_active_passes_the_check(sandbox, s3, firehose):
    check_stream(firehose, STREAM)


def test_a_missing_stream_fails_the_check(sandbox, firehose):
    with pytest.raises(
        FirehoseStreamError, match="Firehose stream 'no-such-stream' in us-east-1 does not exist"
    ):
        check_stream(firehose, "no-such-stream")


def test_a_stream_fed_by_a_kinesis_stream_fails_the_check(sandbox, s3, firehose):
    role = "arn:aws:iam::123456789012:role/firehose"
    firehose.create_delivery_stream(
        DeliveryStreamName="from-kinesis",
        DeliveryStreamType="KinesisStreamAsSource",
        KinesisStreamSourceConfiguration={
            "KinesisStreamARN": "arn:aws:kinesis:us-east-1:123456789012:stream/clicks",
            "RoleARN": role,
        },
        ExtendedS3DestinationConfiguration={"RoleARN": role, "BucketARN": f"arn:aws:s3:::{BUCKET}"},
    )
    with pytest.raises(FirehoseStreamError, match=r"'from-kinesis' .*\(KinesisStreamAsSource\).* Direct PUT"):
        check_stream(firehose, "from-kinesis")


@pytest.mark.parametrize("status", ["CREATING", "DELETING", "CREATING_FAILED"])
def test_a_stream_that_is_not_active_fails_the_check(status):
    # moto makes every stream ACTIVE at once, so DescribeDeliveryStream's answer is stubbed.
    client = FirehoseResource(
        region_name="us-east-1", aws_access_key_id="stub", aws_secret_access_key="stub"
    ).get_client()
    description = {
        "DeliveryStreamName": STREAM,
        "DeliveryStreamARN": STREAM_ARN,
        "DeliveryStreamStatus": status,
        "DeliveryStreamType": "DirectPut",
        "VersionId": "1",
        "Destinations": [],
        "HasMoreDestinations": False,
    }
    with Stubber(client) as stub:
        stub.add_response("describe_delivery_stream", {"DeliveryStreamDescription": description})
        with pytest.raises(
            FirehoseStreamError, match=f"'{STREAM}' in us-east-1 is {status}; .* ACTIVE stream"
        ):
            check_stream(client, STREAM)


def test_a_throttled_check_is_retried(sandbox, s3, firehose):
    add_fault(sandbox.aws_url, route="Firehose_20150804.DescribeDeliveryStream", status=503, count=2)
    waits = []
    check_stream(firehose, STREAM, sleep=waits.append)
    assert len(waits) == 2


def test_where_the_policy_denies_batches_every_later_record_goes_with_put_record(sandbox, s3):
    set_policy(sandbox, "seed-user", statement("Allow", "DescribeDeliveryStream", "PutRecord"))
    client = firehose_as(sandbox, "seed-user")
    # 900 KiB records: four fit in a 4 MiB batch, so six make two batches.
    records = [message(i).rstrip(b"\n").ljust(900 * 1024) + b"\n" for i in range(6)]
    result = send_records(client, STREAM, records, sleep=lambda s: None)
    assert result.put_mode == "PutRecord"
    assert (result.sent, result.calls, result.batches, result.retried) == (6, 7, 7, 0)
    # Only the first batch was tried: the choice holds for the rest of the call.
    assert put_calls(sandbox)[1:] == [400] + [200] * 6
    assert delivered_ids(s3) == collections.Counter(f"m-{i}" for i in range(6))


def test_a_policy_allowing_batches_keeps_batches(sandbox, s3):
    set_policy(sandbox, "batch-user", statement("Allow", "DescribeDeliveryStream", "PutRecordBatch"))
    client = firehose_as(sandbox, "batch-user")
    result = send_records(client, STREAM, [message(i) for i in range(3)], sleep=lambda s: None)
    assert (result.put_mode, result.sent, result.calls, result.batches) == ("PutRecordBatch", 3, 1, 1)


def test_a_policy_denying_both_puts_raises_naming_put_record(sandbox, s3):
    set_policy(sandbox, "describe-only", statement("Allow", "DescribeDeliveryStream"))
    client = FirehoseResource(
        region_name="us-east-1",
        endpoint_url=sandbox.aws_url,
        aws_access_key_id="describe-only",
        aws_secret_access_key="x",
    ).get_client()
    with pytest.raises(FirehoseSendError, match="firehose:PutRecord on resource") as error:
        send_records(client, STREAM, [message(0), message(1)], sleep=lambda s: None)
    assert error.value.code == "AccessDeniedException"
    assert (error.value.result.sent, error.value.result.calls, error.value.result.put_mode) == (
        0,
        2,
        "PutRecord",
    )
    assert delivered_ids(s3) == collections.Counter()
