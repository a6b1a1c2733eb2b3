"""AWS for the destinations, through dagster-aws: an S3 resource (AMC uploads) and a Firehose resource.

Both are `ResourceWithBoto3Configuration`s, so every AWS client is configured one way: region,
endpoint (`AWS_ENDPOINT_URL` points both at the sandbox), profile, keys, plus an optional IAM role
assumed with STS (role ARN and external id, seed 003's `assume_role`). Without keys, boto3's default
chain applies (instance profile, `AWS_*` variables); keys are wired only through `dg.EnvVar`.

A destination may reach AWS its own way (seed 002 and 003 give keys, a region or a role per
connection): its component hands that to `get_client` as an `AwsConnection`, which takes precedence
over the resource's own settings field by field.
"""

from dataclasses import dataclass
from typing import Any

import boto3
from botocore.config import Config
from dagster_aws.utils import ResourceWithBoto3Configuration, construct_boto_client_retry_config
from pydantic import Field

ENDPOINT_ENV_VAR = "AWS_ENDPOINT_URL"


@dataclass(frozen=True)
class AwsConnection:
    """One destination's own way into AWS; a field left None is the resource's.

    `aws_access_key_id`, `aws_secret_access_key`, `aws_session_token` and `external_id` are the
    secrets themselves, read by the component from the environment variables its settings name.
    """

    region_name: str | None = None
    endpoint_url: str | None = None
    aws_access_key_id: str | None = None
    aws_secret_access_key: str | None = None
    aws_session_token: str | None = None
    role_arn: str | None = None
    external_id: str | None = None
    duration_seconds: int | None = None


class AwsResource(ResourceWithBoto3Configuration):
    """dagster-aws's boto3 configuration plus an IAM role to assume; the base of the AWS resources."""

    role_arn: str | None = Field(
        default=None,
        description="IAM role to assume with STS (`arn:aws:iam::<account>:role/<name>`); unset: none.",
    )
    external_id: str | None = Field(
        default=None, description="The external id the role's trust policy asks for (through `dg.EnvVar`)."
    )
    role_session_name: str = Field(
        default="audience-pipeline", description="Session name of the assumed role, as CloudTrail shows it."
    )
    duration_seconds: int = Field(
        default=3600, ge=900, le=43200, description="Lifetime of the assumed role's credentials."
    )

    def session(self, connection: AwsConnection | None = None) -> boto3.session.Session:
        """A boto3 session with the credentials `connection` or the resource gives, as the role when
        one is set (the caller's own credentials then only call STS `AssumeRole`)."""
        conn = connection or AwsConnection()
        # A connection's own keys replace the resource's as a set: never one key of each.
        keys = conn.aws_access_key_id is not None
        region = conn.region_name or self.region_name
        session = boto3.session.Session(
            aws_access_key_id=conn.aws_access_key_id if keys else self.aws_access_key_id,
            aws_secret_access_key=conn.aws_secret_access_key if keys else self.aws_secret_access_key,
            aws_session_token=conn.aws_session_token if keys else self.aws_session_token,
            profile_name=None if keys else self.profile_name,
            region_name=region,
        )
        role_arn = conn.role_arn or self.role_arn
        if role_arn is None:
            return session
        request: dict[str, Any] = {
            "RoleArn": role_arn,
            "RoleSessionName": self.role_session_name,
            "DurationSeconds": conn.duration_seconds or self.duration_seconds,
        }
        external_id = conn.external_id if conn.role_arn else self.external_id
        if external_id:
            request["ExternalId"] = external_id
        sts = session.client(
            "sts", endpoint_url=self._endpoint(conn), use_ssl=self.use_ssl, verify=self.verify
        )
        credentials = sts.assume_role(**request)["Credentials"]
        return boto3.session.Session(
            aws_access_key_id=credentials["AccessKeyId"],
            aws_secret_access_key=credentials["SecretAccessKey"],
            aws_session_token=credentials["SessionToken"],
            region_name=region,
        )

    def _client(self, service: str, connection: AwsConnection | None, config: Config) -> Any:
        conn = connection or AwsConnection()
        return self.session(conn).client(
            service,
            endpoint_url=self._endpoint(conn),
            use_ssl=self.use_ssl,
            verify=self.verify,
            config=config,
        )

    def _endpoint(self, connection: AwsConnection) -> str | None:
        endpoint = connection.endpoint_url or self.endpoint_url
        # Seed 003 writes S3 endpoints as bare hosts (`s3.ap-northeast-1.amazonaws.com`).
        if endpoint and "://" not in endpoint:
            endpoint = f"https://{endpoint}"
        return endpoint


class S3Resource(AwsResource):
    """S3, where AMC reads uploads from. dagster-aws's own `S3Resource` cannot assume a role, which
    seed 003's `assume_role` needs, hence this one on the same configuration base."""

    def get_client(self, connection: AwsConnection | None = None) -> Any:
        """A boto3 S3 client, retrying as botocore does up to `max_attempts`."""
        return self._client("s3", connection, construct_boto_client_retry_config(self.max_attempts))


class FirehoseResource(AwsResource):
    """Kinesis Data Firehose, where the Firehose destination puts its records."""

    max_attempts: int = Field(
        default=1,
        description="Attempts per call botocore makes; 1, because `send_records` retries only the failed "
        "records of a batch itself and must see every failure to count it.",
    )

    def get_client(self, connection: AwsConnection | None = None) -> Any:
        """A boto3 Firehose client."""
        return self._client(
            "firehose",
            connection,
            Config(retries={"total_max_attempts": self.max_attempts, "mode": "standard"}),
        )
