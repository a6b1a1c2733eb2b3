"""What the assets of every AMC target kind share: run config, settings, shape, and how a run ends.

An `AmcInstance` is the instance a component instance works on, as its target assets see it: the
client, the asset definition every target gets, and `finish`, which either waits for AMC or leaves
the job to the job status sensor (`amc_status`).
"""

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from functools import partial
from typing import Any

import dagster as dg
from pydantic import Field, field_validator

from audience_pipeline.amc.jobs import AmcJob, JobOutcome, wait_for_job
from audience_pipeline.amc.upload_files import S3Location
from audience_pipeline.clients.ads_api import AmazonAdsApiError
from audience_pipeline.clients.amc import AmcClient
from audience_pipeline.components.amc_status import (
    CHECK_DESCRIPTIONS,
    JOB_CHECK,
    JOB_METADATA_KEY,
    check_results,
    clean_uploaded_files,
    outcome_metadata,
)
from audience_pipeline.components.schedules import check_cron
from audience_pipeline.components.source import source_table_key
from audience_pipeline.components.ui import OWNERS
from audience_pipeline.resources.amazon_ads import AmazonAdsApi
from audience_pipeline.resources.aws import S3Resource
from audience_pipeline.resources.duckdb_source import DuckDBSource, source_tables
from audience_pipeline.td_cron import check_timezone


class AmcRunConfig(dg.Config):
    """Run configuration of the AMC assets."""

    dry_run: bool = Field(
        default=False,
        description="Validate and report rows, rejects and the planned files and calls without writing to "
        "S3 or calling AMC.",
    )


# What a target that reads the source does in a run: (context, config, source, amazon_ads, s3) → events.
QueryRun = Callable[
    [dg.AssetExecutionContext, AmcRunConfig, DuckDBSource, AmazonAdsApi, S3Resource], Iterator[Any]
]


class AmcTarget(dg.Model, dg.Resolvable):
    """The settings every AMC target has: how its runs follow AMC, and when they run."""

    wait_until_finish: bool = Field(
        default=False,
        description="Poll AMC inside the run until the work is final; otherwise the job status sensor "
        "follows it.",
    )
    schedule: str | None = Field(
        default=None,
        description="Cron schedule, as Treasure Data reads it (e.g. `0 3 * * *`, `@daily`), that runs this "
        "target; none by default or when empty.",
    )
    schedule_timezone: str = Field(
        default="UTC", description="IANA time zone `schedule` is read in (e.g. `Asia/Tokyo`)."
    )
    schedule_delay_seconds: int = Field(
        default=0, ge=0, description="Seconds each scheduled run starts after its time in `schedule`."
    )

    @field_validator("schedule")
    @classmethod
    def _check_schedule(cls, value: str | None) -> str | None:
        return check_cron(value)

    @field_validator("schedule_timezone")
    @classmethod
    def _check_timezone(cls, value: str) -> str:
        return check_timezone(value)


@dataclass(frozen=True)
class AmcInstance:
    """One AMC instance and its upload location, as the assets of its targets use them."""

    instance_id: str
    account_id: str
    """Blank: the instance's first account."""
    marketplace_id: str
    location: S3Location
    s3: Callable[[S3Resource], Any]
    """A new S3 client for `location`, from the `s3` resource and the component's S3 settings."""
    poll_interval_seconds: float
    wait_timeout_seconds: float

    def amc_client(self, amazon_ads: AmazonAdsApi) -> AmcClient:
        """A client of the instance; a blank `account_id` means the instance's first account."""
        try:
            return amazon_ads.amc(self.instance_id, self.account_id, self.marketplace_id)
        # Only a blank account_id makes a call here: the lookup of the first account.
        except (AmazonAdsApiError, LookupError, ValueError) as error:
            raise dg.Failure(
                f"AMC setting `account_id` is blank and the instance's first account could not be found "
                f"({error}); set `account_id`"
            ) from None

    def asset(
        self,
        key: dg.AssetKey,
        description: str,
        kinds: set[str],
        checks: list[str],
        deps: Iterable[dg.AssetKey] = (),
    ) -> Callable[..., dg.AssetsDefinition]:
        """The decorator making a target's asset, with its asset checks, in the `deliver` group."""
        return dg.multi_asset(
            specs=[
                dg.AssetSpec(
                    key,
                    description=description,
                    group_name="deliver",
                    kinds={"amazon", "amc", *kinds},
                    owners=OWNERS,
                    deps=list(deps),
                    metadata={"amc_instance_id": self.instance_id},
                )
            ],
            check_specs=[
                dg.AssetCheckSpec(
                    name,
                    asset=key,
                    description=CHECK_DESCRIPTIONS[name],
                    blocking=name == JOB_CHECK,
                )
                for name in checks
            ],
            # The checks are evaluated by this run only when it waits for AMC; otherwise by the sensor.
            can_subset=True,
            name="_".join(key.path),
            pool="amazon_ads_amc",
        )

    def query_asset(
        self, key: dg.AssetKey, query: str, description: str, kinds: set[str], run: QueryRun
    ) -> dg.AssetsDefinition:
        """The asset of a target whose `query` reads the source: downstream of the tables it names."""

        @self.asset(
            key, description, kinds, [JOB_CHECK], deps=[source_table_key(t) for t in source_tables(query)]
        )
        def amc_query_target(
            context: dg.AssetExecutionContext,
            config: AmcRunConfig,
            source: DuckDBSource,
            amazon_ads: AmazonAdsApi,
            s3: S3Resource,
        ):
            """Runs the target's work over the source's rows and hands it to AMC."""
            yield from run(context, config, source, amazon_ads, s3)

        return amc_query_target

    def finish(
        self,
        context: dg.AssetExecutionContext,
        key: dg.AssetKey,
        amc: AmcClient,
        job: AmcJob,
        wait: bool,
        metadata: dict[str, Any],
        s3: S3Resource | None,
    ):
        """Wait for the job when asked to, and yield the materialization and any check results.

        `s3` cleans up an upload's files; None for the targets that write no files.
        """
        outcome: JobOutcome | None = None
        if wait:
            outcome = wait_for_job(
                amc, job, poll_seconds=self.poll_interval_seconds, timeout_seconds=self.wait_timeout_seconds
            )
            if outcome.final and outcome.succeeded and s3 is not None:
                clean_uploaded_files(partial(self.s3, s3), self.location, job, context.log)
            metadata.update(outcome_metadata(outcome))
        following = outcome is None or not outcome.final
        metadata[JOB_METADATA_KEY] = dg.MetadataValue.json({**job.to_json(), "final": not following})
        context.log.info(f"{key.to_user_string()}: {plain(metadata)}")
        yield dg.MaterializeResult(asset_key=key, metadata=metadata)
        if outcome is not None and outcome.final:
            for result in check_results(job, outcome):
                if result.check_name in {c.name for c in context.selected_asset_check_keys}:
                    yield dg.AssetCheckResult(
                        asset_key=key,
                        check_name=result.check_name,
                        passed=result.passed,
                        metadata=result.metadata,
                        description=result.description,
                    )
        else:
            context.log.info(
                f"{key.to_user_string()}: AMC is still working "
                f"({outcome.status if outcome else 'started'}); the job status sensor records the final state"
            )


def plain(metadata: dict[str, Any]) -> dict[str, Any]:
    """Metadata as plain values, for a readable log line."""
    return {k: getattr(v, "value", v) for k, v in metadata.items()}
