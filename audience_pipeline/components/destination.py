"""What every membership destination component shares, written once.

A destination component is its settings and an adapter of the delivery core
(`audience_pipeline.membership.delivery`). This base gives it the rest: the audiences it takes (its
`audiences` setting, which are its assets' partitions, each mapped to the same partition of
`audience_snapshot`), the mass-removal guard's setting, the run config (`dry_run`,
`allow_mass_removal`), the asset, job and check wiring, the metadata, and the one place where errors
become a `dg.Failure`: a one-line message naming the setting to change or quoting the destination,
never a stack trace of ours.
"""

import warnings
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any, ClassVar

import dagster as dg
import requests
from botocore.exceptions import BotoCoreError
from pydantic import Field, field_validator

from audience_pipeline.clients.ads_api import AmazonAdsApiError
from audience_pipeline.components.audiences import (
    SNAPSHOT_ASSET_KEY,
    Audience,
    AudiencesComponent,
    check_audience_ids,
    find_audiences,
)
from audience_pipeline.components.setting_errors import CheckedSettings
from audience_pipeline.components.ui import OWNERS
from audience_pipeline.membership.delivery import (
    DEFAULT_MAX_REMOVAL_SHARE,
    DeliveryInterrupted,
    DestinationProblem,
    MassRemoval,
    Outcome,
    SettingProblem,
)
from audience_pipeline.membership.dsp_queue import QueueConflict
from audience_pipeline.membership.ledger import LedgerConflict, LedgerDamaged
from audience_pipeline.membership.payload_crypto import LedgerKeyError
from audience_pipeline.state import StoreError

# Errors whose message already names the file, variable or record and what to do.
_SELF_EXPLAINED = (
    LedgerKeyError,
    LedgerConflict,
    LedgerDamaged,
    QueueConflict,
    StoreError,
    DestinationProblem,
)
# Errors of calls made around a delivery (finding a dataset, reading match rates).
_CALL_ERRORS = (AmazonAdsApiError, requests.RequestException, BotoCoreError)

Step = Callable[[dg.AssetExecutionContext, "DeliveryRunConfig", Audience], dict[str, Any]]


class DeliveryRunConfig(dg.Config):
    """Run configuration of every destination asset."""

    dry_run: bool = Field(
        default=False,
        description="Compute and report the changes and requests without sending, writing or committing.",
    )
    allow_mass_removal: bool = Field(
        default=False,
        description="Deliver even when the run removes more of an audience than `max_removal_share` allows.",
    )


class DestinationComponent(CheckedSettings, dg.Component, dg.Model, dg.Resolvable):
    """The settings and wiring every membership destination has; see the module docstring.

    A subclass names its `kind` (`Firehose`, `DSP`, ...), its `label` (the kind and which stream,
    account or advertiser), `asset_key` and `job_description`, and builds its assets with
    `delivery_asset`.
    """

    kind: ClassVar[str]

    audiences: list[int | str] = Field(
        min_length=1,
        description="Ids of the audiences (of the audiences component) sent to this destination.",
    )
    max_removal_share: float = Field(
        default=DEFAULT_MAX_REMOVAL_SHARE,
        gt=0,
        le=1,
        description="A run that would remove more than this share of an audience's delivered members "
        "stops before sending anything (1.0: never stop).",
    )

    @field_validator("audiences")
    @classmethod
    def _check_unique(cls, value: list[int | str]) -> list[int | str]:
        return check_audience_ids(value)

    @property
    def label(self) -> str:
        """The destination in messages, e.g. `Firehose audience-changes`."""
        raise NotImplementedError

    @property
    def asset_key(self) -> dg.AssetKey:
        """The delivery asset's key; its job is named after it."""
        raise NotImplementedError

    @property
    def job_description(self) -> str:
        """What the destination's job does, for the UI."""
        raise NotImplementedError

    def build_assets(self, audiences: AudiencesComponent) -> list[dg.AssetsDefinition]:
        """The destination's assets over `audiences`."""
        raise NotImplementedError

    def build_sensors(self) -> list[dg.SensorDefinition]:
        """The destination's sensors; none by default."""
        return []

    def build_defs(self, context: dg.ComponentLoadContext) -> dg.Definitions:
        """The destination's assets over the project's audiences, a job materializing them, its sensors."""
        assets = self.build_assets(find_audiences(context))
        job = dg.define_asset_job(
            f"{self.asset_key.to_python_identifier()}_delivery",
            selection=[key for asset in assets for key in asset.keys],
            description=self.job_description,
        )
        return dg.Definitions(assets=assets, jobs=[job], sensors=self.build_sensors())

    def delivery_asset(
        self,
        audiences: AudiencesComponent,
        key: dg.AssetKey,
        step: Step,
        *,
        description: str,
        kinds: set[str],
        resources: set[str],
        group_name: str = "deliver",
        upstream: dg.AssetKey = SNAPSHOT_ASSET_KEY,
        automation_condition: dg.AutomationCondition | None = None,
        pool: str | None = None,
        checks: Mapping[str, str] | None = None,
    ) -> dg.AssetsDefinition:
        """An asset with one partition per audience this destination takes, downstream of the same
        partition of `upstream`, that runs `step` and records the metadata it returns; unknown audience
        ids fail here. `automation_condition`: when it materializes on its own; by default eager, whenever
        `upstream`'s partition changes. `checks`: the names and descriptions of its asset checks, evaluated
        per partition (see `checks`)."""
        partitions_def = audiences.routed_partitions_def(self.audiences, self.label)
        spec = dg.AssetSpec(
            key,
            # Identity on the keys both have: each audience's partition follows the snapshot's partition
            # of the same audience; the snapshot's other partitions map to nothing here.
            deps=[dg.AssetDep(upstream, partition_mapping=dg.IdentityPartitionMapping())],
            automation_condition=automation_condition or dg.AutomationCondition.eager(),
            group_name=group_name,
            kinds=kinds,
            owners=OWNERS,
            description=description,
        )

        # A dry run evaluates no check, hence subsettable outputs: a plain asset must yield every check
        # it declares.
        @dg.multi_asset(
            specs=[spec],
            check_specs=self._check_specs(key, partitions_def, checks or {}),
            partitions_def=partitions_def,
            can_subset=True,
            name=spec.key.to_python_identifier(),
            pool=pool,
            required_resource_keys={"state_store", *resources},
        )
        def destination_asset(context: dg.AssetExecutionContext, config: DeliveryRunConfig):
            audience = audiences.audience(context.partition_key)
            with self.failures(audience):
                metadata = step(context, config, audience)
            context.log.info(f"audience {audience.partition_key} to {self.label}: {metadata}")
            yield dg.MaterializeResult(asset_key=spec.key, metadata=_metadata_values(metadata))
            if context.selected_asset_check_keys:
                yield from self.checks(metadata)

        return destination_asset

    @staticmethod
    def _check_specs(
        key: dg.AssetKey, partitions_def: dg.PartitionsDefinition, checks: Mapping[str, str]
    ) -> list[dg.AssetCheckSpec]:
        """Checks partitioned like their asset, so that each result is recorded for the audience
        (partition) the run delivered, and the UI shows each audience's check state."""
        # Partitioned checks are a preview in Dagster 1.13, and a warning at every load would only
        # repeat that.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", dg.PreviewWarning)
            return [
                dg.AssetCheckSpec(name, asset=key, description=description, partitions_def=partitions_def)
                for name, description in checks.items()
            ]

    def checks(self, metadata: Mapping[str, Any]) -> Iterator[dg.AssetCheckResult]:
        """The results of the asset's checks, from its metadata; none by default. Dagster records each
        for the run's partition."""
        yield from ()

    def max_share(self, config: DeliveryRunConfig) -> float:
        """The share of an audience's delivered members a run may remove."""
        return 1.0 if config.allow_mass_removal else self.max_removal_share

    def report(
        self, context: dg.AssetExecutionContext, outcome: Outcome, config: DeliveryRunConfig, **extra: Any
    ) -> dict[str, Any]:
        """A delivery's metadata: the core's one metrics shape and the destination's `extra`.

        Items still failing after every retry fail the run, after their confirmed neighbours were
        committed."""
        metadata = {**outcome.metadata(), **extra}
        if outcome.dry_run:
            context.log.info("dry run, nothing sent or committed")
            if outcome.removal_share > self.max_share(config):
                context.log.warning(
                    f"a real run would stop: it removes {outcome.removal_share:.0%} of the delivered "
                    f"members, over the {self.max_share(config):.0%} `max_removal_share` allows"
                )
        if outcome.rejected:
            context.log.warning(
                f"{outcome.rejected} {outcome.noun} were refused ({outcome.rejects}); their changes stay "
                "pending and are sent again on the next run"
            )
        if outcome.failed:
            raise dg.Failure(
                f"Retry Limit Exceeded: {outcome.failed} {outcome.noun} were not delivered to {self.label} "
                "after every retry; their changes stay pending for the next run",
                metadata=_metadata_values(metadata),
            )
        return metadata

    @contextmanager
    def failures(self, audience: Audience) -> Iterator[None]:
        """The one mapping of a delivery's errors to a one-line `dg.Failure`, raised `from None`."""
        where = f"{self.label}, audience {audience.partition_key}"
        try:
            yield
        except SettingProblem as error:
            raise dg.Failure(f"{self.kind} setting `{error.setting}`: {error}; nothing was sent") from None
        except MassRemoval as error:
            raise dg.Failure(f"{where}: {error}", metadata=error.counts) from None
        except DeliveryInterrupted as error:
            outcome = error.outcome
            raise dg.Failure(
                f"{self.label} refused the delivery ({error.__cause__}) of audience "
                f"{audience.partition_key}; the {outcome.confirmed} {outcome.noun} it confirmed before "
                "are committed, the rest are sent again on the next run",
                metadata=_metadata_values(outcome.metadata()),
            ) from None
        except _SELF_EXPLAINED as error:
            raise dg.Failure(str(error)) from None
        except _CALL_ERRORS as error:
            raise dg.Failure(
                f"{self.label} call failed for audience {audience.partition_key}: {error}"
            ) from None


def _metadata_values(metadata: Mapping[str, Any]) -> dict[str, Any]:
    """Metadata as Dagster records it: maps (rejects by reason) as JSON, the rest as they are."""
    return {k: dg.MetadataValue.json(v) if isinstance(v, dict) else v for k, v in metadata.items()}
