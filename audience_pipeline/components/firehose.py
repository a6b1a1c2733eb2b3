"""Kinesis Data Firehose destination: audience membership changes as JSON messages on a delivery stream.

One instance is one stream; many audiences may share it. Its asset `firehose/<stream>` is partitioned
like `audience_snapshot` and runs (eager automation) whenever an audience's snapshot changes.
"""

import re
import time

import dagster as dg
from pydantic import ConfigDict, Field, field_validator, model_validator

from audience_pipeline.clients.firehose import (
    FirehoseSendError,
    FirehoseStreamError,
    check_stream,
    firehose_client,
    send_records,
)
from audience_pipeline.components.audiences import (
    SNAPSHOT_ASSET_KEY,
    AudiencesComponent,
    check_audience_ids,
    find_audiences,
    read_snapshot,
    run_audience_query,
)
from audience_pipeline.components.aws_settings import (
    check_env_var_name,
    check_key_pair,
    check_region,
    env_secret,
)
from audience_pipeline.components.ui import OWNERS, name_part
from audience_pipeline.membership.firehose_delivery import (
    FirehoseTarget,
    deliver,
    plan_delivery,
    stream_members,
)
from audience_pipeline.membership.firehose_messages import ForwardingRules
from audience_pipeline.membership.ledger import Ledger, LedgerConflict
from audience_pipeline.membership.payload_crypto import LEDGER_KEY_ENV_VAR, LedgerKeyError, PayloadCipher
from audience_pipeline.resources.duckdb_source import DuckDBSource
from audience_pipeline.resources.state_store import StateStore

_STREAM_NAME = re.compile(r"[a-zA-Z0-9_.-]{1,64}")


class FirehoseDeliveryConfig(dg.Config):
    """Run configuration of a Firehose delivery."""

    dry_run: bool = Field(
        default=False,
        description="Compute and report the changes and messages without sending or committing anything.",
    )


class FirehoseComponent(dg.Component, dg.Model, dg.Resolvable):
    """Sends one JSON message per membership change of the chosen audiences to a Firehose stream.

    The settings are mParticle's Kinesis settings (seed 002), with its defaults. Credentials are
    the names of environment variables, never the secrets; without them boto3's default chain applies.
    """

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
    audiences: list[int | str] = Field(
        min_length=1, description="Ids of the audiences (of the audiences component) sent to this stream."
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

    @field_validator("audiences")
    @classmethod
    def _check_unique(cls, value: list[int | str]) -> list[int | str]:
        return check_audience_ids(value)

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

    def build_defs(self, context: dg.ComponentLoadContext) -> dg.Definitions:
        """The delivery asset over the project's audiences."""
        job = dg.define_asset_job(
            f"{self.asset_key.to_python_identifier()}_delivery",
            selection=[self.asset_key],
            description=f"Sends the chosen audiences' membership changes to Firehose stream "
            f"{self.delivery_stream_name}.",
        )
        return dg.Definitions(assets=[self.build_asset(find_audiences(context))], jobs=[job])

    def build_asset(self, audiences: AudiencesComponent) -> dg.AssetsDefinition:
        """The delivery asset, partitioned like `audiences`' snapshot; unknown audience ids fail here."""
        delivered = audiences.routed(self.audiences, f"Firehose {self.delivery_stream_name}")

        # Partitions are shared with the snapshot (one run materializes both); an audience this
        # stream does not take is a partition that produces nothing.
        @dg.asset(
            key=self.asset_key,
            partitions_def=audiences.partitions_def,
            deps=[SNAPSHOT_ASSET_KEY],
            automation_condition=dg.AutomationCondition.eager(),
            group_name="deliver",
            kinds={"firehose", "aws"},
            owners=OWNERS,
            pool="firehose",
            output_required=False,
        )
        def firehose_delivery(
            context: dg.AssetExecutionContext,
            config: FirehoseDeliveryConfig,
            source: DuckDBSource,
            state_store: StateStore,
        ):
            """Membership changes of one audience, as JSON messages on the Firehose stream.

            Runs the audience's SQL for the identities as the source holds them (the snapshot only
            has hashes), for the snapshot's members; diffs them against this stream's ledger; checks
            the stream (DescribeDeliveryStream: exists, ACTIVE, Direct PUT); sends one message per
            change (PutRecordBatch, or PutRecord where the IAM policy denies batches; failed records
            retried); commits the confirmed changes. Undelivered changes stay pending and fail the
            run ("Retry Limit Exceeded"). Metadata holds counts, and `put_mode` names the API call.
            """
            if context.partition_key not in delivered:
                context.log.info(f"audience {context.partition_key} is not delivered to this stream")
                return
            yield self._deliver(context, config, source, state_store, audiences)

        return firehose_delivery

    def _deliver(
        self,
        context: dg.AssetExecutionContext,
        config: FirehoseDeliveryConfig,
        source: DuckDBSource,
        state_store: StateStore,
        audiences: AudiencesComponent,
    ) -> dg.MaterializeResult:
        started = time.perf_counter()
        audience = audiences.audience(context.partition_key)
        snapshot = read_snapshot(state_store, audience)
        try:
            cipher = PayloadCipher(dg.EnvVar(LEDGER_KEY_ENV_VAR).get_value())
        except LedgerKeyError as error:
            raise dg.Failure(str(error)) from None
        members = stream_members(run_audience_query(source, audience), self.rules, snapshot["user_id"])
        ledger = Ledger(state_store.store, self.destination, audience.partition_key)
        state = ledger.load()
        target = FirehoseTarget(
            self.destination, audience.id, audience.destination_name, self.send_remove_on_identity_change
        )
        try:
            plan = plan_delivery(target, members, state, cipher, changed_at=int(time.time()))
        except LedgerKeyError as error:
            raise dg.Failure(str(error)) from None
        counts = plan.counts()
        if config.dry_run:
            context.log.info(f"dry run, nothing sent or committed: {counts}")
            return dg.MaterializeResult(
                metadata={
                    "dry_run": True,
                    **counts,
                    "ledger_version": state.version,
                    "seconds": round(time.perf_counter() - started, 3),
                }
            )

        client = firehose_client(self.region, self.endpoint_url, *self._credentials())
        try:
            check_stream(client, self.delivery_stream_name)
        except FirehoseStreamError as error:
            raise dg.Failure(f"Firehose setting `delivery_stream_name`: {error}; nothing was sent") from None
        try:
            outcome = deliver(
                plan, ledger, cipher, lambda records: send_records(client, self.delivery_stream_name, records)
            )
        except FirehoseSendError as error:
            raise dg.Failure(
                f"Firehose {self.delivery_stream_name} refused the delivery ({error}); nothing was "
                f"committed, so the {counts['messages']} messages are sent again on the next run"
            ) from None
        except LedgerConflict as error:
            raise dg.Failure(str(error)) from None
        metadata = {
            "dry_run": False,
            "added": outcome.added,
            "removed": outcome.removed,
            "identity_changed": outcome.identity_changed,
            "messages_sent": outcome.messages_sent,
            "retried": outcome.retried,
            "failed": outcome.failed,
            "skipped": outcome.skipped,
            "rejected": outcome.rejected,
            "batches": outcome.batches,
            "calls": outcome.calls,
            "put_mode": outcome.put_mode,
            "ledger_version": outcome.ledger_version,
            "seconds": round(time.perf_counter() - started, 3),
        }
        context.log.info(f"audience {audience.partition_key} to {self.delivery_stream_name}: {metadata}")
        if outcome.rejected:
            context.log.warning(
                f"{outcome.rejected} messages are over Firehose's 1,000 KiB record limit and were not sent; "
                "their changes stay pending until the source values shrink"
            )
        if outcome.failed:
            # What was confirmed is committed; the rest stays pending for the next run.
            raise dg.Failure(
                f"Retry Limit Exceeded: {outcome.failed} records were not delivered to "
                f"{self.delivery_stream_name} after every retry; their changes stay pending for the next run",
                metadata=metadata,
            )
        return dg.MaterializeResult(metadata=metadata)

    def _credentials(self) -> tuple[str | None, str | None]:
        """The access key pair from the named environment variables, or (None, None) for boto3's chain."""
        return (
            env_secret("Firehose", "access_key_id", self.access_key_id),
            env_secret("Firehose", "secret_access_key", self.secret_access_key),
        )
