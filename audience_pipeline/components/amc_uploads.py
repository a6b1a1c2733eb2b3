"""AMC dataset uploads: the `uploads` targets of the AMC component and their `amc/dataset/<id>` assets.

A run checks the query's columns against the dataset AMC holds (or the configured definition),
writes the rows as upload files in S3 and has AMC ingest them; the rules of what may be uploaded
are `amc.upload_settings`'s, the files `amc.upload_files`'s.
"""

import time
from datetime import UTC, datetime
from functools import partial
from typing import Any

import dagster as dg
from boto3.exceptions import S3UploadFailedError
from botocore.exceptions import BotoCoreError, ClientError

from audience_pipeline.amc.compatibility import SchemaMismatch, check_query_schema
from audience_pipeline.amc.definitions import InvalidDefinition
from audience_pipeline.amc.jobs import AmcJob, create_dataset_once, start_upload_once
from audience_pipeline.amc.upload_files import NoRowsToUpload, write_upload_files
from audience_pipeline.amc.upload_settings import DatasetUploadSettings, planned_upload_calls, upload_name
from audience_pipeline.clients.ads_api import AmazonAdsApiError
from audience_pipeline.components.amc_assets import AmcInstance, AmcRunConfig, AmcTarget, plain
from audience_pipeline.components.ui import rejects_by_reason
from audience_pipeline.resources.duckdb_source import source_query_errors


class DatasetUpload(AmcTarget, DatasetUploadSettings):
    """`operation: upload`: the query's rows into an AMC dataset."""

    @property
    def asset_key(self) -> dg.AssetKey:
        """`amc/dataset/<dataset_id>`."""
        return dg.AssetKey(["amc", "dataset", self.dataset_id])


def build_upload_asset(instance: AmcInstance, target: DatasetUpload) -> dg.AssetsDefinition:
    """The asset uploading `target`'s query into its dataset: it writes the query's rows as upload files
    in S3 and has AMC ingest them."""
    return instance.query_asset(
        target.asset_key,
        target.query,
        f"The query's rows uploaded into AMC dataset `{target.dataset_id}` ({target.update_strategy}) "
        "through S3.",
        {"s3", target.file_format},
        partial(_upload, instance, target),
    )


def _upload(
    instance: AmcInstance, target: DatasetUpload, context, config: AmcRunConfig, source, amazon_ads, s3
):
    started = time.perf_counter()
    where = f"AMC upload {target.dataset_id!r}"
    location = instance.location
    # The dataset AMC holds is what the rows must fit. A dry run with a configured definition
    # calls nothing; without one it reads the dataset (a read-only call).
    amc, remote = None, None
    if not config.dry_run or target.definition is None:
        amc = instance.amc_client(amazon_ads)
        remote = amc.get_dataset(target.dataset_id)
    try:
        definition = target.definition_to_fit(
            remote, looked_up=amc is not None, instance_id=instance.instance_id
        )
    except InvalidDefinition as error:
        raise dg.Failure(f"{where}: AMC's dataset definition cannot be read: {error}") from None
    except ValueError as error:
        raise dg.Failure(f"{where}: {error}") from None
    name = upload_name(target.dataset_id, context.run.run_id, datetime.now(UTC))
    with source_query_errors(where, "query"), source.stream(target.query) as stream:
        check = check_query_schema(definition, stream.schema)
        try:
            check.raise_for_errors()
        except SchemaMismatch as error:
            raise dg.Failure(f"{where}: nothing was written; {error}") from None
        if check.case_insensitive_matches:
            context.log.warning(f"{where}: columns matched ignoring case: {check.case_insensitive_matches}")
        try:
            files = write_upload_files(
                stream.frames,
                definition,
                check,
                s3_client=None if config.dry_run else instance.s3(s3),
                location=location,
                upload_name=name,
                file_format=target.file_format,
                country_code=target.country_code,
                dry_run=config.dry_run,
            )
        except NoRowsToUpload as error:
            # Not a failure: the query selected nothing (or only rows AMC would drop).
            context.log.warning(f"{where}: {error}")
            yield dg.MaterializeResult(
                asset_key=target.asset_key,
                metadata={"dry_run": config.dry_run, "uploaded": False, **error.stats.metadata()},
            )
            return
        except ValueError as error:
            raise dg.Failure(f"{where}: {error}") from None
        except (BotoCoreError, ClientError, S3UploadFailedError) as error:
            raise dg.Failure(
                f"{where}: writing the upload files to s3://{location.bucket} failed: {error}; "
                "check `bucket`, `authentication` and the bucket policy (nothing was uploaded to AMC)"
            ) from None
    metadata: dict[str, Any] = {
        "dry_run": config.dry_run,
        "dataset_id": target.dataset_id,
        "dataset_kind": definition.kind,
        "update_strategy": target.update_strategy,
        "uploaded": not config.dry_run,
        "ignored_columns": dg.MetadataValue.json(check.ignored),
        **files.stats.metadata(),
        **rejects_by_reason(files.stats.rejects),
        "manifest": f"s3://{location.bucket}/{files.manifest_key}",
    }
    if config.dry_run:
        calls = planned_upload_calls(
            target.dataset_id,
            location.bucket,
            len(files.part_keys),
            creates_dataset=remote is None and target.create_dataset,
        )
        metadata["planned_calls"] = dg.MetadataValue.json(calls)
        metadata["seconds"] = round(time.perf_counter() - started, 3)
        context.log.info(f"{where}: dry run, nothing written or sent: {plain(metadata)}")
        yield dg.MaterializeResult(asset_key=target.asset_key, metadata=metadata)
        return
    if remote is None:
        try:
            create_dataset_once(amc, definition)
        except AmazonAdsApiError as error:
            raise dg.Failure(f"{where}: AMC did not create the dataset: {error.message}") from None
        context.log.info(f"{where}: created dataset {target.dataset_id} ({definition.kind})")
        metadata["dataset_created"] = True
    try:
        upload_id = start_upload_once(
            amc,
            target.dataset_id,
            files.manifest_key,
            bucket=location.bucket,
            file_format=files.file_format,
            compression=files.compression,
            update_strategy=target.update_strategy,
            country_code=target.country_code,
        )
    except AmazonAdsApiError as error:
        raise dg.Failure(
            f"{where}: AMC refused the upload: {error.message}; the files stay at "
            f"s3://{location.bucket}/{files.manifest_key}"
        ) from None
    files_to_clean = tuple([*files.part_keys, files.manifest_key]) if target.clean_uploaded_files else ()
    job = AmcJob("upload", (upload_id,), target.dataset_id, files_to_clean)
    metadata.update(upload_id=upload_id, retries=amc.api.retries)
    metadata["seconds"] = round(time.perf_counter() - started, 3)
    yield from instance.finish(context, target.asset_key, amc, job, target.wait_until_finish, metadata, s3)
