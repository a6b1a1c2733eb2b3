"""Firehose in the sandbox over real HTTP: delivery to S3, AWS's limits, per-record and whole-call faults."""

import base64
import json

import boto3
import pytest
import requests
from botocore.config import Config
from botocore.exceptions import ClientError

from audience_pipeline.sandbox.aws import create_firehose_stream

from ..conftest import add_fault, journal

STREAM = "audience-changes"
BUCKET = "audience-changes-bucket"
PUT_RECORD_BATCH = "Firehose_20150804.PutRecordBatch"
PUT_RECORD = "Firehose_20150804.PutRecord"
STREAM_ARN = f"arn:aws:firehose:us-east-1:123456789012:deliverystream/{STREAM}"


def aws_clients(sandbox) -> tuple:
    """Firehose (without botocore retries) and S3 clients on the sandbox, and an ExtendedS3 stream."""
    keys = {"aws_access_key_id": "sandbox", "aws_secret_access_key": "sandbox", "region_name": "us-east-1"}
    config = Config(retries={"total_max_attempts": 1, "mode": "standard"})
    firehose = boto3.client("firehose", endpoint_url=sandbox.aws_url, config=config, **keys)
    s3 = boto3.client("s3", endpoint_url=sandbox.aws_url, **keys)
    create_firehose_stream(firehose, s3, STREAM, BUCKET)
    return firehose, s3


def delivered_objects(s3) -> list[bytes]:
    """Every object the stream wrote to its bucket."""
    listing = s3.list_objects_v2(Bucket=BUCKET).get("Contents", [])
    return [s3.get_object(Bucket=BUCKET, Key=item["Key"])["Body"].read() for item in listing]


def delivered_messages(s3) -> list[dict]:
    """The JSON Lines messages that reached the bucket, in no particular order."""
    return [json.loads(line) for data in delivered_objects(s3) for line in data.splitlines()]


def set_policy(sandbox, access_key_id: str, *statements: dict) -> None:
    """Make every Firehose call signed with `access_key_id` subject to an IAM policy of `statements`."""
    policy = {"Version": "2012-10-17", "Statement": list(statements)}
    answer = requests.post(
        f"{sandbox.aws_url}/_sandbox/iam", json={"access_key_id": access_key_id, "policy": policy}, timeout=10
    )
    answer.raise_for_status()


def statement(effect: str, *actions: str, resource: str | list[str] = STREAM_ARN) -> dict:
    """A policy statement over Firehose `actions` (`PutRecord` stands for `firehose:PutRecord`)."""
    return {"Effect": effect, "Action": [f"firehose:{a}" for a in actions], "Resource": resource}


def firehose_as(sandbox, access_key_id: str):
    """A Firehose client of the sandbox signing with `access_key_id`, without botocore retries."""
    config = Config(retries={"total_max_attempts": 1, "mode": "standard"})
    return boto3.client(
        "firehose",
        endpoint_url=sandbox.aws_url,
        region_name="us-east-1",
        aws_access_key_id=access_key_id,
        aws_secret_access_key="secret",
        config=config,
    )


def message(i: int) -> bytes:
    return json.dumps({"MessageId": f"m-{i}", "AudienceId": 7, "IsMember": True}).encode() + b"\n"


@pytest.fixture
def aws(sandbox):
    return aws_clients(sandbox)


def test_each_call_lands_in_the_bucket_as_one_object(aws):
    firehose, s3 = aws
    answer = firehose.put_record_batch(
        DeliveryStreamName=STREAM, Records=[{"Data": message(i)} for i in range(3)]
    )
    assert answer["FailedPutCount"] == 0
    assert all(r["RecordId"] for r in answer["RequestResponses"])
    assert firehose.put_record(DeliveryStreamName=STREAM, Record={"Data": message(3)})["RecordId"]
    assert sorted(delivered_objects(s3)) == sorted([message(0) + message(1) + message(2), message(3)])


def test_every_record_delivered_gets_an_id_of_its_own(aws):
    firehose, _ = aws
    answers = [
        firehose.put_record_batch(
            DeliveryStreamName=STREAM, Records=[{"Data": message(i)} for i in range(50)]
        )
        for _ in range(2)
    ]
    ids = [response["RecordId"] for answer in answers for response in answer["RequestResponses"]]
    assert len(set(ids)) == len(ids) == 100


@pytest.mark.parametrize(
    "records",
    [
        pytest.param([message(0)] * 501, id="501 records"),
        pytest.param([b"x" * 1025 * 1024], id="a 1,025 KiB record"),
        pytest.param([b"x" * 1000 * 1024] * 5, id="over 4 MiB per call"),
    ],
)
def test_calls_over_the_limits_are_refused_and_deliver_nothing(aws, records):
    firehose, s3 = aws
    with pytest.raises(ClientError) as error:
        firehose.put_record_batch(DeliveryStreamName=STREAM, Records=[{"Data": r} for r in records])
    assert error.value.response["Error"]["Code"] == "InvalidArgumentException"
    assert error.value.response["ResponseMetadata"]["HTTPStatusCode"] == 400
    assert delivered_objects(s3) == []


def test_a_record_of_exactly_1000_kib_is_accepted(aws):
    firehose, s3 = aws
    firehose.put_record(DeliveryStreamName=STREAM, Record={"Data": b"x" * 1000 * 1024})
    assert [len(data) for data in delivered_objects(s3)] == [1000 * 1024]


@pytest.mark.parametrize("rate", [0.0, 1.0])
def test_an_unknown_stream_is_resource_not_found(sandbox, aws, rate):
    firehose, _ = aws
    add_fault(sandbox.aws_url, route=PUT_RECORD_BATCH, record_failure_rate=rate)
    with pytest.raises(ClientError) as error:
        firehose.put_record_batch(DeliveryStreamName="no-such-stream", Records=[{"Data": message(0)}])
    assert error.value.response["Error"]["Code"] == "ResourceNotFoundException"


def test_failed_records_line_up_with_the_request_and_are_not_delivered(sandbox, aws):
    firehose, s3 = aws
    add_fault(sandbox.aws_url, route=PUT_RECORD_BATCH, record_failure_rate=0.5)
    answer = firehose.put_record_batch(
        DeliveryStreamName=STREAM, Records=[{"Data": message(i)} for i in range(100)]
    )
    responses = answer["RequestResponses"]
    failed = [i for i, r in enumerate(responses) if "ErrorCode" in r]
    assert len(responses) == 100
    assert answer["FailedPutCount"] == len(failed) and 0 < len(failed) < 100
    assert {responses[i]["ErrorCode"] for i in failed} <= {"ServiceUnavailableException", "InternalFailure"}
    assert all(r["RecordId"] for r in responses if "ErrorCode" not in r)
    delivered = sorted(m["MessageId"] for m in delivered_messages(s3))
    assert delivered == sorted(f"m-{i}" for i in range(100) if i not in failed)


def test_which_records_fail_follows_the_records_not_the_order_of_calls(sandbox):
    def failed(firehose, batch: list[dict]) -> list[int]:
        answer = firehose.put_record_batch(DeliveryStreamName=STREAM, Records=batch)
        return [i for i, response in enumerate(answer["RequestResponses"]) if "ErrorCode" in response]

    first, second = ([{"Data": message(i)} for i in range(start, start + 50)] for start in (0, 50))
    runs = []
    for order in ((first, second), (second, first)):
        requests.post(f"{sandbox.aws_url}/_sandbox/reset", timeout=10).raise_for_status()
        firehose, _ = aws_clients(sandbox)
        add_fault(sandbox.aws_url, route=PUT_RECORD_BATCH, record_failure_rate=0.5)
        runs.append({id(batch): failed(firehose, batch) for batch in order})
    # Concurrent senders fail the same records in every run, whichever call arrives first.
    assert runs[0] == runs[1] and [len(found) for found in runs[0].values()] == [25, 25]
    # A retry of the records that failed fails half of those, and so on until none fails.
    retry = first
    for expected in (25, 12, 6, 3, 1, 0):
        retry = [retry[i] for i in failed(firehose, retry)]
        assert len(retry) == expected


def test_a_batch_whose_records_all_fail_writes_nothing(sandbox, aws):
    firehose, s3 = aws
    add_fault(sandbox.aws_url, route=PUT_RECORD_BATCH, record_failure_rate=1.0)
    answer = firehose.put_record_batch(
        DeliveryStreamName=STREAM, Records=[{"Data": message(i)} for i in range(5)]
    )
    assert answer["FailedPutCount"] == 5
    assert all("RecordId" not in r for r in answer["RequestResponses"])
    assert delivered_objects(s3) == []


def test_put_record_with_a_failed_record_is_a_failed_call(sandbox, aws):
    firehose, s3 = aws
    add_fault(sandbox.aws_url, route="Firehose_20150804.PutRecord", record_failure_rate=1.0)
    with pytest.raises(ClientError) as error:
        firehose.put_record(DeliveryStreamName=STREAM, Record={"Data": message(0)})
    assert error.value.response["Error"]["Code"] in {"ServiceUnavailableException", "InternalFailure"}
    assert delivered_objects(s3) == []


def test_whole_call_throttling_is_service_unavailable(sandbox, aws):
    firehose, s3 = aws
    add_fault(sandbox.aws_url, route=PUT_RECORD_BATCH, status=503, count=1)
    with pytest.raises(ClientError) as error:
        firehose.put_record_batch(DeliveryStreamName=STREAM, Records=[{"Data": message(0)}])
    assert error.value.response["Error"]["Code"] == "ServiceUnavailableException"
    assert delivered_objects(s3) == []
    firehose.put_record_batch(DeliveryStreamName=STREAM, Records=[{"Data": message(0)}])
    assert delivered_objects(s3) == [message(0)]


def test_the_journal_keeps_no_record_data(sandbox, aws):
    firehose, _ = aws
    add_fault(sandbox.aws_url, route=PUT_RECORD_BATCH, record_failure_rate=0.5)
    firehose.put_record_batch(DeliveryStreamName=STREAM, Records=[{"Data": message(i)} for i in range(10)])
    entries = journal(sandbox.aws_url)
    assert entries and all(entry["body"] is None for entry in entries)
    assert base64.b64encode(message(0)).decode() not in json.dumps(entries)


def test_a_call_the_policy_does_not_allow_is_denied_as_aws_denies_it(sandbox, aws):
    _, s3 = aws
    set_policy(sandbox, "seed-user", statement("Allow", "DescribeDeliveryStream", "PutRecord"))
    firehose = firehose_as(sandbox, "seed-user")
    with pytest.raises(ClientError) as error:
        firehose.put_record_batch(DeliveryStreamName=STREAM, Records=[{"Data": message(0)}])
    response = error.value.response
    assert response["Error"]["Code"] == "AccessDeniedException"
    assert response["Error"]["Message"] == (
        "User: arn:aws:iam::123456789012:user/seed-user is not authorized to perform: "
        f"firehose:PutRecordBatch on resource: {STREAM_ARN} because no identity-based policy allows "
        "the firehose:PutRecordBatch action"
    )
    assert response["ResponseMetadata"]["HTTPStatusCode"] == 400
    assert response["ResponseMetadata"]["HTTPHeaders"]["content-type"] == "application/x-amz-json-1.1"
    assert delivered_objects(s3) == []
    # What the policy allows goes through.
    assert firehose.describe_delivery_stream(DeliveryStreamName=STREAM)["DeliveryStreamDescription"]
    assert firehose.put_record(DeliveryStreamName=STREAM, Record={"Data": message(1)})["RecordId"]
    assert delivered_objects(s3) == [message(1)]


def test_an_explicit_deny_is_named_and_beats_an_allow(sandbox, aws):
    set_policy(sandbox, "user", statement("Allow", "*", resource="*"), statement("Deny", "PutRecordBatch"))
    firehose = firehose_as(sandbox, "user")
    with pytest.raises(ClientError, match="with an explicit deny in an identity-based policy"):
        firehose.put_record_batch(DeliveryStreamName=STREAM, Records=[{"Data": message(0)}])
    assert firehose.put_record(DeliveryStreamName=STREAM, Record={"Data": message(0)})["RecordId"]


def test_keys_without_a_policy_are_unrestricted_and_reset_forgets_policies(sandbox, aws):
    firehose, _ = aws  # signs with the key `sandbox`
    set_policy(sandbox, "seed-user", statement("Allow", "DescribeDeliveryStream", "PutRecord"))
    firehose.put_record_batch(DeliveryStreamName=STREAM, Records=[{"Data": message(0)}])
    requests.post(f"{sandbox.aws_url}/_sandbox/reset", timeout=10).raise_for_status()
    firehose, _ = aws_clients(sandbox)
    firehose_as(sandbox, "seed-user").put_record_batch(
        DeliveryStreamName=STREAM, Records=[{"Data": message(0)}]
    )


def test_a_policy_iam_would_read_differently_is_refused(sandbox):
    conditional = {**statement("Allow", "PutRecord"), "Condition": {"Bool": {"aws:SecureTransport": "true"}}}
    policy = {"Version": "2012-10-17", "Statement": [conditional]}
    answer = requests.post(
        f"{sandbox.aws_url}/_sandbox/iam", json={"access_key_id": "user", "policy": policy}, timeout=10
    )
    assert answer.status_code == 400 and "Condition" in answer.text


def test_put_record_draws_record_failures_only_once_allowed(sandbox, aws):
    _, s3 = aws
    set_policy(sandbox, "seed-user", statement("Allow", "DescribeDeliveryStream"))
    add_fault(sandbox.aws_url, route=PUT_RECORD, record_failure_rate=1.0)
    with pytest.raises(ClientError) as error:
        firehose_as(sandbox, "seed-user").put_record(DeliveryStreamName=STREAM, Record={"Data": message(0)})
    assert error.value.response["Error"]["Code"] == "AccessDeniedException"
    assert delivered_objects(s3) == []
