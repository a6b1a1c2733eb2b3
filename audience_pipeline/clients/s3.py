"""S3 clients for AMC uploads: access keys, or a role assumed with STS (seed 003's two methods)."""

from dataclasses import dataclass
from typing import Any

import boto3


@dataclass(frozen=True)
class AssumeRole:
    """An IAM role to assume with STS; the caller's own credentials come from boto3's chain."""

    account_id: str
    role_name: str
    external_id: str | None = None
    duration_seconds: int = 3600

    @property
    def role_arn(self) -> str:
        """`arn:aws:iam::<account>:role/<role name>`."""
        return f"arn:aws:iam::{self.account_id}:role/{self.role_name}"


def s3_client(
    region: str,
    endpoint: str | None = None,
    *,
    access_key_id: str | None = None,
    secret_access_key: str | None = None,
    session_token: str | None = None,
    assume_role: AssumeRole | None = None,
) -> Any:
    """A boto3 S3 client.

    `endpoint` may be a bare host such as `s3.ap-northeast-1.amazonaws.com` (as seed 003 writes it);
    unset, boto3 picks the region's endpoint (or `AWS_ENDPOINT_URL`). With `assume_role`, temporary
    credentials of that role are used, obtained with the given keys or boto3's default chain.
    """
    if endpoint and "://" not in endpoint:
        endpoint = f"https://{endpoint}"
    session = boto3.session.Session(
        aws_access_key_id=access_key_id,
        aws_secret_access_key=secret_access_key,
        aws_session_token=session_token,
        region_name=region,
    )
    if assume_role is not None:
        request = {
            "RoleArn": assume_role.role_arn,
            "RoleSessionName": "audience-pipeline-amc",
            "DurationSeconds": assume_role.duration_seconds,
        }
        if assume_role.external_id:
            request["ExternalId"] = assume_role.external_id
        credentials = session.client("sts").assume_role(**request)["Credentials"]
        session = boto3.session.Session(
            aws_access_key_id=credentials["AccessKeyId"],
            aws_secret_access_key=credentials["SecretAccessKey"],
            aws_session_token=credentials["SessionToken"],
            region_name=region,
        )
    return session.client("s3", endpoint_url=endpoint)
