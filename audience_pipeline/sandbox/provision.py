"""What the project's destinations expect to find in AWS, made in a sandbox (or any S3 and Firehose).

Amazon customers create their Firehose streams and AMC buckets themselves; the demo and
`audience-pipeline dev` make them for the example destinations, so the first run can deliver. Safe to
repeat: what exists already is kept.
"""

from collections.abc import Iterable
from typing import Protocol

from audience_pipeline.sandbox.aws import create_amc_bucket, create_firehose_stream


class FirehoseDestination(Protocol):
    """A Firehose destination: the stream it puts records into."""

    delivery_stream_name: str


class AmcDestination(Protocol):
    """An AMC instance: the bucket its uploads go through (empty when it uploads nowhere)."""

    instance_id: str
    bucket: str | None


def provision_sandbox(
    s3, firehose, streams: Iterable[FirehoseDestination], clouds: Iterable[AmcDestination]
) -> None:
    """Each Firehose stream (Direct PUT into `<stream>-bucket`) and each AMC upload bucket, tagged with its
    instance. Takes boto3 S3 and Firehose clients and the destinations, e.g. the project's components."""
    for stream in streams:
        name = stream.delivery_stream_name
        create_firehose_stream(firehose, s3, name, f"{name}-bucket".lower())
    for cloud in clouds:
        if cloud.bucket:
            create_amc_bucket(s3, cloud.bucket, cloud.instance_id)
