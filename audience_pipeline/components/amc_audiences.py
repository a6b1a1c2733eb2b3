"""AMC rule-based audiences: the `audiences` targets of the AMC component and their
`amc/audience/<name>` assets, which submit the audience (`amc.rule_based`'s settings) to AMC once."""

import time
from collections.abc import Mapping
from typing import Any

import dagster as dg
from pydantic import Field

from audience_pipeline.amc.jobs import AmcJob, AmcJobError, ensure_audience
from audience_pipeline.amc.rule_based import (
    MINIMUM_AUDIENCE_SIZE,
    RuleBasedAudienceSettings,
    datasets_named,
    planned_audience_calls,
)
from audience_pipeline.clients.ads_api import AmazonAdsApiError
from audience_pipeline.components.amc_assets import AmcInstance, AmcRunConfig, AmcTarget, plain
from audience_pipeline.components.amc_status import AUDIENCE_SIZE_CHECK, JOB_CHECK
from audience_pipeline.components.ui import name_part
from audience_pipeline.resources.amazon_ads import AmazonAdsApi


class RuleBasedAudience(AmcTarget, RuleBasedAudienceSettings):
    """A rule-based audience: AMC runs `sql` over the instance's data and sends the users to DSP."""

    datasets: list[str] | None = Field(
        default=None,
        description="Upload targets (dataset ids) the audience reads; default: those its SQL names.",
    )

    @property
    def asset_key(self) -> dg.AssetKey:
        """`amc/audience/<audience name, lowercased, other characters as _>`."""
        return dg.AssetKey(["amc", "audience", name_part(self.audience_name.lower())])


def build_audience_asset(
    instance: AmcInstance, target: RuleBasedAudience, uploads: Mapping[str, dg.AssetKey]
) -> dg.AssetsDefinition:
    """The asset submitting `target` to AMC (or finding it there by name), after the `uploads`
    (dataset id → asset key) it reads."""
    read = target.datasets if target.datasets is not None else datasets_named(target.sql, uploads)

    @instance.asset(
        target.asset_key,
        f"Rule-based audience `{target.audience_name}` for DSP advertiser {target.advertiser_id}, "
        "built by AMC from its SQL.",
        {"dsp"},
        [JOB_CHECK, AUDIENCE_SIZE_CHECK],
        deps=[uploads[dataset_id] for dataset_id in read],
    )
    def amc_audience(context: dg.AssetExecutionContext, config: AmcRunConfig, amazon_ads: AmazonAdsApi):
        """Creates the rule-based audience unless one of that name and settings exists."""
        yield from _audience(instance, context, config, amazon_ads, target)

    return amc_audience


def _audience(
    instance: AmcInstance,
    context: dg.AssetExecutionContext,
    config: AmcRunConfig,
    amazon_ads: AmazonAdsApi,
    target: RuleBasedAudience,
):
    started = time.perf_counter()
    where = f"AMC audience {target.audience_name!r}"
    create = target.to_create_kwargs()
    name = target.audience_name
    metadata: dict[str, Any] = {
        "dry_run": config.dry_run,
        "audience_name": name,
        "refresh_rate_days": target.refresh_rate_days,
        "time_window": f"{create['time_window_start']} .. {create['time_window_end']}",
    }
    if config.dry_run:
        metadata["planned_calls"] = dg.MetadataValue.json(planned_audience_calls())
        metadata["projected_audience_size"] = (
            f"computed by AMC; DSP needs at least {MINIMUM_AUDIENCE_SIZE:,} users"
        )
        context.log.info(f"{where}: dry run, nothing sent: {plain(metadata)}")
        yield dg.MaterializeResult(asset_key=target.asset_key, metadata=metadata)
        return
    amc = instance.amc_client(amazon_ads)
    try:
        submitted = ensure_audience(amc, name, create)
    except AmcJobError as error:
        raise dg.Failure(f"{where}: {error}") from None
    except AmazonAdsApiError as error:
        raise dg.Failure(f"{where}: AMC refused the audience: {error.message}") from None
    job = AmcJob("audience", (submitted.execution_id,))
    metadata.update(
        audience_execution_id=submitted.execution_id,
        amc_audience_name=submitted.name,
        action=submitted.action,
        retries=amc.api.retries,
        seconds=round(time.perf_counter() - started, 3),
    )
    if submitted.action == "new_version":
        note = (
            f"the settings changed and AMC keeps a succeeded audience as it is, so it was submitted "
            f"again as {submitted.name!r}; the earlier version ({submitted.previous_id}) stays in AMC, "
            "which deletes only failed audiences, and the DSP audience id to use is the new one's"
        )
        metadata.update(previous_audience_execution_id=submitted.previous_id, note=note)
        context.log.warning(f"{where}: {note}")
    yield from instance.finish(context, target.asset_key, amc, job, target.wait_until_finish, metadata, None)
