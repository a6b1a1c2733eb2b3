"""AWS on loopback: moto's S3 and Firehose behind the sandbox's fault, journal and reset layer."""

import json
from collections.abc import Callable
from typing import Any

from botocore.exceptions import ClientError
from moto.moto_api._internal import moto_api_backend
from moto.moto_server.werkzeug_app import DomainDispatcherApplication, create_backend_app
from werkzeug.wrappers import Request, Response

from audience_pipeline.sandbox.faults import Decision, Faults, Journal, SandboxMiddleware
from audience_pipeline.sandbox.firehose_records import FirehoseRecords
from audience_pipeline.sandbox.iam import IamPolicies
from audience_pipeline.sandbox.quotas import StreamQuotas
from audience_pipeline.sandbox.s3_encryption import DefaultEncryption


class _Dispatcher(DomainDispatcherApplication):
    """moto's dispatcher, remembering which backend serves each host.

    moto finds it again on every request, listing its modules on disk and trying every service's URL
    patterns: more work than a Firehose batch or an S3 part costs the rest of the server. A host is
    always served by the same backend, so the first answer is kept.
    """

    def __init__(self, create_app: Callable) -> None:
        super().__init__(create_app)
        self._backends: dict[str | None, Any] = {}

    def get_backend_for_host(self, host: str | None) -> Any:
        if host not in self._backends:
            self._backends[host] = super().get_backend_for_host(host)
        return self._backends[host]


def _reset_moto() -> None:
    # moto keeps its backends process-wide; its own reset empties every one.
    moto_api_backend.reset()


def _respond_fault(request: Request, decision: Decision) -> Response:
    # Firehose (JSON protocol) throttles with ServiceUnavailableException; S3 speaks XML.
    status = decision.status or 500
    headers = {"Retry-After": str(decision.retry_after)} if decision.retry_after is not None else {}
    if request.headers.get("X-Amz-Target"):
        kind = "ServiceUnavailableException" if status in (429, 503) else "InternalFailure"
        body = json.dumps({"__type": kind, "message": "Injected sandbox fault"})
        return Response(body, status=status, headers=headers, mimetype="application/x-amz-json-1.1")
    code = "SlowDown" if status in (429, 503) else "InternalError"
    body = (
        '<?xml version="1.0" encoding="UTF-8"?>'
        f"<Error><Code>{code}</Code><Message>Injected sandbox fault</Message></Error>"
    )
    return Response(body, status=status, headers=headers, mimetype="application/xml")


def create_aws_app(faults: Faults | None = None, journal: Journal | None = None) -> Callable:
    """The WSGI application serving S3 and Firehose the way AWS does, with sandbox faults and the
    IAM policies registered through `POST /_sandbox/iam` (see `sandbox.iam`) and the stream quotas
    registered through `POST /_sandbox/firehose-quotas` (see `sandbox.quotas`)."""
    # The Firehose layer sits inside the middleware so it sees the fault decision for each call; the
    # IAM layer in front of it, so a denied call neither reaches moto nor draws record failures; the
    # quotas between them, so only an allowed call counts against its stream's quota.
    quotas = StreamQuotas(FirehoseRecords(DefaultEncryption(_Dispatcher(create_backend_app))))
    app = IamPolicies(quotas)

    def reset() -> None:
        _reset_moto()
        app.clear()
        quotas.clear()

    return SandboxMiddleware(
        app,
        faults or Faults(),
        journal or Journal(),
        reset,
        _respond_fault,
        admin_routes={
            ("POST", "/_sandbox/iam"): app.register,
            ("POST", "/_sandbox/firehose-quotas"): quotas.register,
            ("GET", "/_sandbox/firehose-quotas"): quotas.counts,
        },
    )


def create_firehose_stream(firehose, s3, name: str, bucket: str) -> None:
    """A Direct PUT delivery stream writing to `bucket` (made too), unless the stream exists already.

    Takes boto3 Firehose and S3 clients. moto keeps its state process-wide, so a stream an earlier
    sandbox in this process made is the one to use.
    """
    s3.create_bucket(Bucket=bucket)
    try:
        firehose.create_delivery_stream(
            DeliveryStreamName=name,
            DeliveryStreamType="DirectPut",
            ExtendedS3DestinationConfiguration={
                "RoleARN": "arn:aws:iam::123456789012:role/firehose",
                "BucketARN": f"arn:aws:s3:::{bucket}",
            },
        )
    except ClientError as error:
        if error.response["Error"]["Code"] != "ResourceInUseException":
            raise


def create_amc_bucket(s3, bucket: str, instance_id: str) -> None:
    """The bucket an AMC instance reads uploads from, tagged `instance=<instance_id>` as seed 003 sets
    it up (made unless it exists; re-tagged either way). Takes a boto3 S3 client."""
    try:
        s3.create_bucket(Bucket=bucket)
    except ClientError as error:
        if error.response["Error"]["Code"] not in ("BucketAlreadyOwnedByYou", "BucketAlreadyExists"):
            raise
    s3.put_bucket_tagging(Bucket=bucket, Tagging={"TagSet": [{"Key": "instance", "Value": instance_id}]})
