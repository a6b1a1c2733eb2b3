"""Kinesis Data Firehose destination: audience membership changes as JSON messages on a delivery stream.

One instance is one stream; many audiences may share it. Its asset `firehose/<stream>` has one
partition per routed audience and runs (eager automation) whenever an audience's snapshot changes.
"""

import re
import time
from typing import Any, ClassVar

import dagster as dg
from pydantic import ConfigDict, Field, field_validator, model_validator

from audience_pipeline.clients.firehose import check_stream, default_quota, send_records
from audience_pipeline.clients.rate_limit import RateLimit
from audience_pipeline.components.audiences import (
    Audience,
    AudiencesComponent,
    open_snapshot,
    query_stream,
)
from audience_pipeline.components.aws_settings import (
    check_env_var_name,
    check_key_pair,
    check_region,
    env_secret,
)
from audience_pipeline.components.destination import DeliveryRunConfig, DestinationComponent
from audience_pipeline.components.ui import name_part
from audience_pipeline.membership.delivery import USER_ID, BucketedMembers, Members, deliver
from audience_pipeline.membership.firehose_delivery import (
    FirehoseAdapter,
    FirehoseTarget,
    stream_columns,
    stream_members,
)
from audience_pipeline.membership.firehose_messages import ForwardingRules
from audience_pipeline.membership.ledger import Ledger
from audience_pipeline.resources.aws import AwsConnection
from audience_pipeline.snapshot import set_aside

_STREAM_NAME = re.compile(r"[a-zA-Z0-9_.-]{1,64}")


class FirehoseComponent(DestinationComponent):
    """Sends one JSON message per membership change of the chosen audiences to a Firehose stream.

    The settings are mParticle's Kinesis settings (seed 002), with its defaults. The client comes from
    the `firehose` resource, reaching the stream with this stream's own `region`, `endpoint_url` and
    keys; keys are the names of environment variables, never the secrets, and without them the
    resource's credentials (boto3's default chain) apply. The ledger key is the `ledger_cipher` resource's.
    """

    kind: ClassVar[str] = "Firehose"
    # A secret pasted where a variable name belongs must not be echoed back by the validation error.
    model_config = ConfigDict(hide_input_in_errors=True)

    delivery_stream_name: str = Field(description="The Firehose delivery stream (Direct PUT source).")
    region: str = Field(default="us-east-1", description="AWS region of the stream.")
    access_key_id: str | None = Field(
        default=None, description="Name of the environment variable holding the IAM access key id."
    )
    secret_access_key: str | None = Field(
        default=None, description="Name of the environment variable holding the IAM secret access key."
    )
    endpoint_url: str | None = Field(
        default=None,
        description="Firehose endpoint, e.g. the sandbox's; unset: `AWS_ENDPOINT_URL`, else AWS's own.",
    )
    send_remove_on_identity_change: bool = Field(
        default=True,
        description="On an identity change, send IsMember=false with the old identities before the new ones.",
    )
    send_anonymous_users: bool = Field(default=True, description="Send users known only by their MPID.")
    forward_email_addresses: bool = Field(default=True, description="Send `Email`.")
    forward_customer_ids: bool = Field(default=True, description="Send `CustomerId`.")
    forward_idfas: bool = Field(default=True, description="Send `AppleAdvertisingIdentifier`.")
    forward_google_advertising_ids: bool = Field(
        default=True, description="Send `GoogleAdvertisingIdentifier`."
    )
    identities_to_exclude: list[str] = Field(
        default_factory=list,
        description="Identities never sent: Firehose keys (`FacebookId`) or column names (`facebook_id`).",
    )
    max_in_flight_requests: int = Field(
        default=4, ge=1, le=64, description="Calls to the stream in flight at once."
    )
    records_per_second: int | None = Field(
        default=None,
        gt=0,
        description="The stream's records-per-second quota; unset: AWS's default Direct PUT quota for the "
        "region (500,000 in us-east-1, us-west-2 and eu-west-1, 100,000 elsewhere).",
    )
    requests_per_second: int | None = Field(
        default=None,
        gt=0,
        description="The stream's requests-per-second quota; unset: AWS's default (2,000 in us-east-1, "
        "us-west-2 and eu-west-1, 1,000 elsewhere).",
    )
    mib_per_second: float | None = Field(
        default=None,
        gt=0,
        description="The stream's MiB-per-second quota; unset: AWS's default (5 in us-east-1, us-west-2 "
        "and eu-west-1, 1 elsewhere).",
    )

    @field_validator("delivery_stream_name")
    @classmethod
    def _check_stream(cls, value: str) -> str:
        if not _STREAM_NAME.fullmatch(value):
            raise ValueError("must be 1 to 64 letters, digits, `_`, `.` or `-` (Firehose's rule)")
        return value

    @field_validator("region")
    @classmethod
    def _check_region(cls, value: str) -> str:
        return check_region(value)

    @field_validator("access_key_id", "secret_access_key")
    @classmethod
    def _check_env_var_name(cls, value: str | None) -> str | None:
        return check_env_var_name(value)

    @field_validator("endpoint_url")
    @classmethod
    def _check_endpoint(cls, value: str | None) -> str | None:
        if value is not None and not re.fullmatch(r"https?://[^\s/]+(/\S*)?", value):
            raise ValueError(f"{value!r} is not an http(s) URL")
        return value

    @field_validator("identities_to_exclude")
    @classmethod
    def _check_identities(cls, value: list[str]) -> list[str]:
        ForwardingRules(identities_to_exclude=tuple(value))
        return value

    @model_validator(mode="after")
    def _check_key_pair(self) -> "FirehoseComponent":
        check_key_pair(self.access_key_id, self.secret_access_key)
        return self

    @property
    def asset_key(self) -> dg.AssetKey:
        """`firehose/<stream>`, the stream name made a valid asset key part."""
        return dg.AssetKey(["firehose", name_part(self.delivery_stream_name)])

    @property
    def destination(self) -> str:
        """The ledger's destination name: a stream is identified by its region and name."""
        return f"firehose/{self.region}/{self.delivery_stream_name}"

    @property
    def rules(self) -> ForwardingRules:
        """The identity forwarding settings."""
        return ForwardingRules(
            forward_email_addresses=self.forward_email_addresses,
            forward_customer_ids=self.forward_customer_ids,
            forward_idfas=self.forward_idfas,
            forward_google_advertising_ids=self.forward_google_advertising_ids,
            send_anonymous_users=self.send_anonymous_users,
            identities_to_exclude=tuple(self.identities_to_exclude),
        )

    @property
    def quota(self) -> dict[str, float]:
        """The stream's quota per second (records, requests, bytes): the settings, else AWS's defaults."""
        quota: dict[str, float] = default_quota(self.region)
        settings = {"records": self.records_per_second, "requests": self.requests_per_second}
        if self.mib_per_second is not None:
            settings["bytes"] = self.mib_per_second * 1024 * 1024
        return {**quota, **{name: value for name, value in settings.items() if value is not None}}

    @property
    def label(self) -> str:
        """`Firehose <stream>`."""
        return f"Firehose {self.delivery_stream_name}"

    @property
    def job_description(self) -> str:
        """What the job does."""
        return (
            f"Sends the chosen audiences' membership changes to Firehose stream {self.delivery_stream_name}."
        )

    def build_assets(self, audiences: AudiencesComponent) -> list[dg.AssetsDefinition]:
        """The delivery asset."""
        return [self.build_asset(audiences)]

    def build_asset(self, audiences: AudiencesComponent) -> dg.AssetsDefinition:
        """The delivery asset, one partition per routed audience; unknown audience ids fail here."""
        return self.delivery_asset(
            audiences,
            self.asset_key,
            self._deliver,
            description="Membership changes of one audience, as JSON messages on the Firehose stream.\n\n"
            "Runs the audience's SQL for the identities as the source holds them (the snapshot only has "
            "hashes), for the snapshot's members; diffs them against this stream's ledger; checks the "
            "stream (DescribeDeliveryStream: exists, ACTIVE, Direct PUT); sends one message per change "
            "(PutRecordBatch, or PutRecord where the IAM policy denies batches; failed records retried); "
            "commits the confirmed changes. Undelivered changes stay pending and fail the run "
            '("Retry Limit Exceeded"). Metadata holds counts, and `put_mode` names the API call.',
            kinds={"firehose", "aws"},
            resources={"source", "firehose", "ledger_cipher"},
            pool="firehose",
        )

    def _deliver(
        self, context: dg.AssetExecutionContext, config: DeliveryRunConfig, audience: Audience
    ) -> dict[str, Any]:
        state_store = context.resources.state_store
        adapter = self.adapter(context.resources, audience, dry_run=config.dry_run)
        # The snapshot has hashes only: the identities go as the query returns them, set aside by
        # bucket (encrypted) and read beside the snapshot's bucket of the same user ids.
        with (
            open_snapshot(state_store, audience, columns=[USER_ID]) as snapshot,
            query_stream(context.resources.source, audience) as result,
            set_aside(result.frames, stream_columns(result.schema), result.schema) as rows,
        ):

            def bucket(number: int, level: int) -> Members:
                user_ids = snapshot.read(number, level).get_column(USER_ID)
                return stream_members(rows.spill.read(number, level), self.rules, user_ids)

            outcome = deliver(
                Ledger(state_store.store, self.destination, audience.partition_key),
                lambda state, held: BucketedMembers(snapshot.bits, bucket),
                adapter,
                dry_run=config.dry_run,
                max_removal_share=self.max_share(config),
            )
        extra = {} if config.dry_run else {"batches": adapter.batches, "put_mode": adapter.put_mode}
        return self.report(context, outcome, config, **extra)

    def adapter(self, resources: Any, audience: Audience, *, dry_run: bool = False) -> FirehoseAdapter:
        """The delivery core's adapter sending `audience`'s changes to this stream, with the run's
        `firehose` and `ledger_cipher` resources (no client in a dry run)."""
        target = FirehoseTarget(
            self.destination, audience.id, audience.destination_name, self.send_remove_on_identity_change
        )
        client = None if dry_run else resources.firehose.get_client(self.connection())
        # One limit for the whole run: every call of every bucket takes from the stream's quota.
        rate_limit = RateLimit(self.quota)
        return FirehoseAdapter(
            target,
            resources.ledger_cipher.cipher(),
            changed_at=int(time.time()),
            check=lambda: check_stream(client, self.delivery_stream_name),
            put=lambda records: send_records(
                client,
                self.delivery_stream_name,
                records,
                rate_limit=rate_limit,
                max_in_flight=self.max_in_flight_requests,
            ),
        )

    def connection(self) -> AwsConnection:
        """How this stream is reached, for the `firehose` resource: `region`, `endpoint_url` and the key
        pair from the named environment variables (unset: the resource's, or boto3's chain)."""
        return AwsConnection(
            region_name=self.region,
            endpoint_url=self.endpoint_url,
            aws_access_key_id=env_secret("Firehose", "access_key_id", self.access_key_id),
            aws_secret_access_key=env_secret("Firehose", "secret_access_key", self.secret_access_key),
        )
