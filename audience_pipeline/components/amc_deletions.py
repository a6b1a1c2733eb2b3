"""AMC identity deletions: the `deletions` targets of the AMC component and their `amc/deletion/<name>`
assets, which send the query's identities (hashed by `amc.deletion`) as user deletion requests."""

import re
import time
from functools import partial
from typing import Any

import dagster as dg
from pydantic import Field, field_validator

from audience_pipeline.amc.deletion import deletion_identities
from audience_pipeline.amc.jobs import AmcJob, request_deletions
from audience_pipeline.clients.ads_api import AmazonAdsApiError
from audience_pipeline.components.amc_assets import AmcInstance, AmcRunConfig, AmcTarget, plain
from audience_pipeline.identity.countries import CountrySetting
from audience_pipeline.resources.duckdb_source import source_query_errors

# The name becomes an asset key part and the name of its op and schedule.
_NAME = re.compile(r"[a-z0-9_]+")


class IdentityDeletion(AmcTarget):
    """`operation: delete`: the query's identities deleted from every dataset of the instance."""

    name: str = Field(description="Names the deletion's asset: `amc/deletion/<name>`.")
    query: str = Field(
        min_length=1,
        description="DuckDB SQL returning identity columns: first_name, last_name, email, phone, address, "
        "city, state, zip, country_code (others ignored).",
    )
    country_code: CountrySetting = Field(default=None, description="Default country of the identities.")

    @field_validator("name")
    @classmethod
    def _check_name(cls, value: str) -> str:
        if not _NAME.fullmatch(value):
            raise ValueError(f"{value!r}: use lowercase letters, digits and _")
        return value

    @property
    def asset_key(self) -> dg.AssetKey:
        """`amc/deletion/<name>`."""
        return dg.AssetKey(["amc", "deletion", self.name])


def build_deletion_asset(instance: AmcInstance, target: IdentityDeletion) -> dg.AssetsDefinition:
    """The asset deleting `target`'s identities from the instance's datasets: it sends them as user
    deletion requests of at most 1,000 identities."""
    return instance.query_asset(
        target.asset_key,
        target.query,
        "The query's identities, normalized and hashed, deleted from every dataset of the AMC instance.",
        {"deletion"},
        partial(_delete, instance, target),
    )


def _delete(
    instance: AmcInstance, target: IdentityDeletion, context, config: AmcRunConfig, source, amazon_ads, s3
):
    started = time.perf_counter()
    where = f"AMC deletion {target.name!r}"
    with source_query_errors(where, "query"):
        frame = source.query(target.query)
    try:
        identities = deletion_identities(frame, target.country_code)
    except ValueError as error:
        raise dg.Failure(f"{where}: {error}") from None
    batches = identities.requests()
    metadata: dict[str, Any] = {
        "dry_run": config.dry_run,
        **identities.metadata(),
        "requests": len(batches),
    }
    if config.dry_run or not batches:
        metadata["seconds"] = round(time.perf_counter() - started, 3)
        note = "dry run, nothing sent" if config.dry_run else "no identities to delete"
        context.log.info(f"{where}: {note}: {plain(metadata)}")
        yield dg.MaterializeResult(asset_key=target.asset_key, metadata=metadata)
        return
    amc = instance.amc_client(amazon_ads)
    try:
        request_ids = request_deletions(amc, batches)
    except AmazonAdsApiError as error:
        raise dg.Failure(f"{where}: AMC refused a deletion request: {error.message}") from None
    job = AmcJob("deletion", tuple(request_ids))
    metadata.update(retries=amc.api.retries, seconds=round(time.perf_counter() - started, 3))
    yield from instance.finish(context, target.asset_key, amc, job, target.wait_until_finish, metadata, None)
