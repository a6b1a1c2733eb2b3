"""Firehose quotas per stream on the sandbox, and the sender holding them without one throttled call."""

import collections

import pytest
import requests
from botocore.exceptions import ClientError

from audience_pipeline.clients.firehose import send_records
from audience_pipeline.clients.rate_limit import RateLimit

from .. import test_firehose_client as client_tests
from .test_aws_firehose import STREAM, aws_clients, delivered_messages, message

# Records bind first for 59-byte messages; 3,000 of them take about 1.5 s at the quota.
QUOTA = {"records": 2000, "requests": 40, "bytes": 200_000}
# As the pipeline makes it: botocore does not retry, so every refused call is seen.
firehose = client_tests.firehose


def set_quota(sandbox, **per_second) -> None:
    answer = requests.post(
        f"{sandbox.aws_url}/_sandbox/firehose-quotas", json={"stream": STREAM, **per_second}, timeout=10
    )
    answer.raise_for_status()


def quota_counts(sandbox) -> dict:
    return requests.get(f"{sandbox.aws_url}/_sandbox/firehose-quotas", timeout=10).json()[STREAM]


def test_a_call_over_the_quota_is_refused_whole_as_aws_does(sandbox, firehose):
    aws_clients(sandbox)
    set_quota(sandbox, requests_per_second=2)
    put = lambda: firehose.put_record(DeliveryStreamName=STREAM, Record={"Data": message(0)})  # noqa: E731
    put()
    put()

    with pytest.raises(ClientError) as refused:
        put()

    assert refused.value.response["Error"] == {"Code": "ServiceUnavailableException", "Message": "Slow down."}
    assert refused.value.response["ResponseMetadata"]["HTTPStatusCode"] == 503
    assert quota_counts(sandbox) == {"taken": 2, "throttled": 1}


def test_a_bad_quota_is_refused_naming_the_field(sandbox):
    answer = requests.post(
        f"{sandbox.aws_url}/_sandbox/firehose-quotas",
        json={"stream": STREAM, "bytes_per_second": 0},
        timeout=10,
    )
    assert answer.status_code == 400 and answer.json()["details"][0]["loc"] == ["bytes_per_second"]


def test_the_sender_at_the_quota_is_never_throttled_and_delivers_every_record_once(sandbox, firehose):
    s3 = aws_clients(sandbox)[1]
    set_quota(sandbox, **{f"{name}_per_second": value for name, value in QUOTA.items()})
    records = [message(i) for i in range(3000)]

    result = send_records(firehose, STREAM, records, rate_limit=RateLimit(QUOTA), max_in_flight=4)

    assert quota_counts(sandbox)["throttled"] == 0
    assert result.sent == 3000 and result.retried == 0
    assert collections.Counter(m["MessageId"] for m in delivered_messages(s3)) == collections.Counter(
        f"m-{i}" for i in range(3000)
    )


def test_without_the_limit_the_same_send_is_throttled_and_still_delivers_every_record_once(sandbox, firehose):
    s3 = aws_clients(sandbox)[1]
    set_quota(sandbox, **{f"{name}_per_second": value for name, value in QUOTA.items()})

    result = send_records(
        firehose, STREAM, [message(i) for i in range(3000)], max_in_flight=4, base_delay=0.2
    )

    assert quota_counts(sandbox)["throttled"] > 0 and result.retried > 0
    assert result.sent == 3000 and not result.failed
    assert len(delivered_messages(s3)) == 3000
