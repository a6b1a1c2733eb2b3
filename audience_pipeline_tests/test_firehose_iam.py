"""Firehose as seed 002 sets it up: an IAM user allowed only DescribeDeliveryStream and PutRecord.

End to end against the sandbox, which enforces the policy registered for the run's access key; and
the sandbox's policy evaluation itself.
"""

import collections

import pytest

from audience_pipeline.sandbox.iam import Policy

from .conftest import add_fault
from .sandbox.test_aws_firehose import (
    PUT_RECORD,
    STREAM,
    STREAM_ARN,
    delivered_messages,
    set_policy,
    statement,
)

# `env` is a fixture: the ledger key, the sandbox's default keys, backoff without waits.
from .test_firehose_delivery import ALICE, BOB, CAROL, Pipeline, as_json, env, identity_sets, metadata  # noqa: F401

ACCESS_KEY_ID = "seed-user"
# The seed's template policy, verbatim but for the placeholders.
SEED_POLICY = statement("Allow", "DescribeDeliveryStream", "PutRecord", resource=[STREAM_ARN])
OTHER_STREAM_ARN = "arn:aws:firehose:us-east-1:123456789012:deliverystream/someone-elses-stream"


@pytest.fixture
def pipeline(tmp_path, sandbox, env, monkeypatch) -> Pipeline:  # noqa: F811
    """The Firehose pipeline signing with the seed user's keys, named in its settings as the seed's are."""
    monkeypatch.setenv("FIREHOSE_ACCESS_KEY_ID", ACCESS_KEY_ID)
    monkeypatch.setenv("FIREHOSE_SECRET_ACCESS_KEY", "seed-user-secret")
    return Pipeline(
        tmp_path,
        sandbox,
        access_key_id="FIREHOSE_ACCESS_KEY_ID",
        secret_access_key="FIREHOSE_SECRET_ACCESS_KEY",
    )


def failure_message(result) -> str:
    """The message of the run's `dg.Failure`, without the exception's type."""
    assert not result.success
    message = result.get_step_failure_events()[0].step_failure_data.error.message
    return message.split(": ", 1)[1].strip()


def test_the_seed_policy_delivers_every_message_with_put_record(pipeline, sandbox):
    set_policy(sandbox, ACCESS_KEY_ID, SEED_POLICY)

    result = metadata(pipeline.run())

    assert result["put_mode"] == "PutRecord"
    assert (result["sent"], result["failed"], result["retries"]) == (4, 0, 0)
    # One PutRecordBatch denied, then one PutRecord per message.
    assert (result["requests"], result["batches"]) == (5, 5)
    messages = delivered_messages(pipeline.s3)
    assert identity_sets(messages, True) == as_json(ALICE, BOB, {"MPID": "m3"}, CAROL)
    assert len({m["MessageId"] for m in messages}) == len(messages) == 4
    assert sorted(pipeline.ledger()["user_id"]) == ["u1", "u2", "u3", "u4"]

    again = metadata(pipeline.run())
    assert (again["sent"], again["requests"], again["put_mode"]) == (0, 0, None)


def test_with_put_record_batch_allowed_batches_are_used(pipeline, sandbox):
    set_policy(
        sandbox, ACCESS_KEY_ID, statement("Allow", "DescribeDeliveryStream", "PutRecordBatch", "PutRecord")
    )

    result = metadata(pipeline.run())

    assert result["put_mode"] == "PutRecordBatch"
    assert (result["sent"], result["batches"], result["requests"]) == (4, 1, 1)
    assert len(delivered_messages(pipeline.s3)) == 4


def test_a_policy_for_another_stream_fails_before_sending_naming_the_permission(pipeline, sandbox):
    set_policy(
        sandbox,
        ACCESS_KEY_ID,
        statement("Allow", "DescribeDeliveryStream", "PutRecord", resource=[OTHER_STREAM_ARN]),
    )

    message = failure_message(pipeline.run(raise_on_error=False))

    assert message.startswith(
        "Firehose setting `delivery_stream_name`: these credentials may not call "
        f"firehose:DescribeDeliveryStream on Firehose stream '{STREAM}' in us-east-1;"
    )
    assert message.endswith("; nothing was sent")
    assert delivered_messages(pipeline.s3) == []
    assert pipeline.ledger().is_empty()


def test_a_policy_allowing_neither_put_fails_naming_put_record(pipeline, sandbox):
    set_policy(sandbox, ACCESS_KEY_ID, statement("Allow", "DescribeDeliveryStream"))

    message = failure_message(pipeline.run(raise_on_error=False))

    assert f"Firehose {STREAM} refused the delivery (" in message
    assert f"not authorized to perform: firehose:PutRecord on resource: {STREAM_ARN}" in message
    assert pipeline.ledger().is_empty()


def test_a_missing_stream_fails_before_sending_naming_the_setting(pipeline, sandbox):
    set_policy(sandbox, ACCESS_KEY_ID, SEED_POLICY)
    pipeline.firehose.delete_delivery_stream(DeliveryStreamName=STREAM)

    message = failure_message(pipeline.run(raise_on_error=False))

    assert message == (
        f"Firehose setting `delivery_stream_name`: Firehose stream '{STREAM}' in us-east-1 does not "
        "exist for these credentials' account; create it with source Direct PUT, or correct the name or "
        "the region; nothing was sent"
    )
    assert pipeline.ledger().is_empty()


def test_put_record_retries_failed_records_and_delivers_each_exactly_once(pipeline, sandbox):
    set_policy(sandbox, ACCESS_KEY_ID, SEED_POLICY)
    # Counted faults, not a failure rate: a rate could fail one record past every retry by chance.
    add_fault(sandbox.aws_url, route=PUT_RECORD, status=503, count=2)
    add_fault(sandbox.aws_url, route=PUT_RECORD, status=500, count=2)

    result = metadata(pipeline.run())

    assert result["put_mode"] == "PutRecord"
    assert result["retries"] == 4 and result["failed"] == 0 and result["sent"] == 4
    ids = collections.Counter(m["MessageId"] for m in delivered_messages(pipeline.s3))
    assert len(ids) == 4 and set(ids.values()) == {1}
    assert sorted(pipeline.ledger()["user_id"]) == ["u1", "u2", "u3", "u4"]


def test_put_record_past_the_retry_limit_fails_the_run_and_commits_nothing(pipeline, sandbox):
    set_policy(sandbox, ACCESS_KEY_ID, SEED_POLICY)
    add_fault(sandbox.aws_url, route=PUT_RECORD, record_failure_rate=1.0)

    message = failure_message(pipeline.run(raise_on_error=False))

    assert "Retry Limit Exceeded: 4 records were not delivered" in message
    assert delivered_messages(pipeline.s3) == []
    assert pipeline.ledger().is_empty()


def decide(action: str, resource: str, *statements: dict) -> str:
    return Policy.model_validate({"Version": "2012-10-17", "Statement": list(statements)}).decide(
        action, resource
    )


def test_an_explicit_deny_beats_an_allow():
    allow_all = statement("Allow", "*", resource="*")
    deny_batches = statement("Deny", "PutRecordBatch")
    assert decide("firehose:PutRecordBatch", STREAM_ARN, allow_all, deny_batches) == "explicit deny"
    assert decide("firehose:PutRecord", STREAM_ARN, allow_all, deny_batches) == "allowed"
    assert decide("firehose:PutRecordBatch", OTHER_STREAM_ARN, allow_all, deny_batches) == "allowed"


def test_without_a_matching_allow_a_call_is_denied():
    assert decide("firehose:PutRecordBatch", STREAM_ARN, SEED_POLICY) == "no allow"
    assert decide("firehose:PutRecord", OTHER_STREAM_ARN, SEED_POLICY) == "no allow"
    assert decide("firehose:PutRecord", STREAM_ARN) == "no allow"


@pytest.mark.parametrize(
    ("action_pattern", "action", "decision"),
    [
        ("firehose:Put*", "firehose:PutRecordBatch", "allowed"),
        ("firehose:Put*", "firehose:DescribeDeliveryStream", "no allow"),
        ("firehose:PutRecor?", "firehose:PutRecord", "allowed"),
        ("firehose:PutRecor?", "firehose:PutRecordBatch", "no allow"),
        ("FIREHOSE:putrecord", "firehose:PutRecord", "allowed"),
        ("*", "firehose:DescribeDeliveryStream", "allowed"),
        ("s3:*", "firehose:PutRecord", "no allow"),
    ],
)
def test_actions_match_with_wildcards_ignoring_case(action_pattern, action, decision):
    # A single statement object with a string Action, as IAM also accepts.
    policy = {"Effect": "Allow", "Action": action_pattern, "Resource": STREAM_ARN}
    assert Policy.model_validate({"Statement": policy}).decide(action, STREAM_ARN) == decision


@pytest.mark.parametrize(
    ("resource_pattern", "decision"),
    [
        ("arn:aws:firehose:*:123456789012:deliverystream/audience-*", "allowed"),
        ("arn:aws:firehose:us-east-1:123456789012:deliverystream/audience-change?", "allowed"),
        ("arn:aws:firehose:*:999999999999:deliverystream/*", "no allow"),
        ("arn:aws:firehose:us-east-1:123456789012:deliverystream/AUDIENCE-CHANGES", "no allow"),
        ("arn:aws:firehose:us-east-1:123456789012:deliverystream/audience.changes", "no allow"),
    ],
)
def test_resources_match_with_wildcards_and_case(resource_pattern, decision):
    policy = statement("Allow", "PutRecord", resource=resource_pattern)
    assert decide("firehose:PutRecord", STREAM_ARN, policy) == decision
