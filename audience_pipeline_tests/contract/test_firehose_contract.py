"""The sandbox's Firehose answers what botocore's model of Firehose (AWS's definition) says, both ways.

Our sender (`clients/firehose.py`) calls DescribeDeliveryStream, PutRecordBatch and PutRecord; the
bodies that crossed the wire are checked against the model's input and output shapes, closed.
"""

import json

import botocore.session
import pytest
import requests
from botocore.exceptions import ClientError

from audience_pipeline.clients.firehose import send_records
from audience_pipeline.resources.aws import FirehoseResource

from ..conftest import add_fault
from ..sandbox.test_aws_firehose import STREAM, aws_clients
from .botocore_shapes import shape_problems

MODEL = botocore.session.get_session().get_service_model("firehose")


def record_exchanges(client) -> list[tuple[str, dict, int, dict]]:
    """Append (operation, request body, status, response body) of each call the client makes."""
    exchanges: list[tuple[str, dict, int, dict]] = []
    sent: dict[str, dict] = {}

    def before_send(request, **kwargs) -> None:
        sent["body"] = json.loads(request.body or b"{}")

    def received(response_dict, event_name, **kwargs) -> None:
        operation = event_name.rsplit(".", 1)[-1]
        body = json.loads(response_dict["body"] or b"{}")
        exchanges.append((operation, sent.pop("body"), response_dict["status_code"], body))

    client.meta.events.register("before-send.firehose", before_send)
    client.meta.events.register("response-received.firehose", received)
    return exchanges


def problems(exchanges) -> list[str]:
    found = []
    for name, request, status, response in exchanges:
        operation = MODEL.operation_model(name)
        found += [f"{name} request: {p}" for p in shape_problems(operation.input_shape, request)]
        if status == 200:
            found += [f"{name} response: {p}" for p in shape_problems(operation.output_shape, response)]
        else:
            errors = {shape.name for shape in operation.error_shapes}
            kind = response.get("__type", "").rsplit("#", 1)[-1]
            if kind not in errors:
                found.append(
                    f"{name} -> {status}: {kind or 'no __type'} is not an error of {name} ({errors})"
                )
            else:
                body = {key: value for key, value in response.items() if key != "__type"}
                found += [f"{name} -> {kind}: {p}" for p in shape_problems(MODEL.shape_for(kind), body)]
    return found


@pytest.fixture
def firehose(sandbox):
    aws_clients(sandbox)  # the stream and its bucket
    client = FirehoseResource(
        region_name="us-east-1",
        endpoint_url=sandbox.aws_url,
        aws_access_key_id="sandbox",
        aws_secret_access_key="sandbox",
    ).get_client()
    return client, record_exchanges(client)


def test_describe_and_puts_conform_to_botocores_model(sandbox, firehose):
    client, exchanges = firehose
    client.describe_delivery_stream(DeliveryStreamName=STREAM)
    client.put_record(DeliveryStreamName=STREAM, Record={"Data": b'{"IsMember": true}\n'})
    add_fault(sandbox.aws_url, route="Firehose_20150804.PutRecordBatch", record_failure_rate=0.5, count=1)
    result = send_records(client, STREAM, [b"%d\n" % i for i in range(20)], sleep=lambda seconds: None)

    assert result.sent == 20
    assert {name for name, *_ in exchanges} == {"DescribeDeliveryStream", "PutRecord", "PutRecordBatch"}
    assert problems(exchanges) == []


def test_an_unknown_stream_is_an_error_the_model_names(firehose):
    client, exchanges = firehose
    with pytest.raises(client.exceptions.ResourceNotFoundException):
        client.describe_delivery_stream(DeliveryStreamName="no-such-stream")
    assert problems(exchanges) == []


def test_the_checker_catches_a_missing_or_invented_member(firehose):
    client, exchanges = firehose
    client.put_record(DeliveryStreamName=STREAM, Record={"Data": b"x\n"})
    name, request, status, response = exchanges[-1]

    without_id = {key: value for key, value in response.items() if key != "RecordId"}
    assert problems([(name, request, status, without_id)]) == [
        "PutRecord response: body.RecordId: required member missing"
    ]
    invented = {**response, "SequenceNumber": "1"}
    assert problems([(name, request, status, invented)]) == [
        "PutRecord response: body.SequenceNumber: not a member of PutRecordOutput"
    ]


def test_a_put_over_the_streams_quota_is_the_models_service_unavailable(sandbox, firehose):
    client, exchanges = firehose
    quota = {"stream": STREAM, "requests_per_second": 1}
    requests.post(f"{sandbox.aws_url}/_sandbox/firehose-quotas", json=quota, timeout=10).raise_for_status()
    client.put_record(DeliveryStreamName=STREAM, Record={"Data": b"1\n"})

    with pytest.raises(ClientError, match="ServiceUnavailableException"):
        client.put_record(DeliveryStreamName=STREAM, Record={"Data": b"2\n"})

    assert [status for *_, status, _ in exchanges] == [200, 503]
    assert problems(exchanges) == []
