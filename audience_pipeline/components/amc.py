"""Amazon Marketing Cloud (Treasure Data's AMC export, seed 003): dataset uploads through S3, identity
deletion and rule-based audiences, each followed to its final state.

One instance of the component is one AMC instance and one S3 location. Each configured target is an
asset:

- `amc/dataset/<dataset_id>`: the query's rows, normalized and hashed where the dataset says so,
  written as gzip CSV (or Parquet) parts plus a manifest in S3 and uploaded into the dataset (created
  on first run from `dataset_definition` when `create_dataset` is set);
- `amc/deletion/<name>`: the query's identities deleted from every dataset of the instance;
- `amc/audience/<name>`: a rule-based audience for Amazon DSP, found by name before it is created.

With `wait_until_finish` a run polls AMC until its work is final; otherwise the job status sensor
follows it. Either way the final state lands on the asset: figures as metadata, and the asset
checks `amc_job_succeeded` (carrying AMC's message when it failed) and, for audiences,
`dsp_minimum_audience_size`.
"""

import re
import time
from datetime import UTC, datetime
from typing import Any, Literal

import dagster as dg
import duckdb
from boto3.exceptions import S3UploadFailedError
from botocore.exceptions import BotoCoreError, ClientError
from pydantic import Field, field_validator, model_validator

from audience_pipeline.amc.compatibility import SchemaMismatch, check_query_schema
from audience_pipeline.amc.definitions import DatasetDefinition, InvalidDefinition
from audience_pipeline.amc.deletion import deletion_identities
from audience_pipeline.amc.jobs import (
    AmcJob,
    AmcJobError,
    JobOutcome,
    create_dataset_once,
    ensure_audience,
    request_deletions,
    start_upload_once,
    wait_for_job,
)
from audience_pipeline.amc.rule_based import RuleBasedAudienceSettings
from audience_pipeline.amc.upload_files import (
    NoRowsToUpload,
    S3Location,
    write_upload_files,
)
from audience_pipeline.clients.ads_api import AdsApiClient, AmazonAdsApiError
from audience_pipeline.clients.amc import AmcClient, first_amc_account
from audience_pipeline.clients.s3 import AssumeRole, s3_client
from audience_pipeline.components.amc_status import (
    AUDIENCE_SIZE_CHECK,
    JOB_CHECK,
    JOB_METADATA_KEY,
    build_job_status_sensor,
    check_results,
    clean_uploaded_files,
    outcome_metadata,
)
from audience_pipeline.components.audiences import country_setting, source_query_errors
from audience_pipeline.components.aws_settings import (
    check_env_var_name,
    check_key_pair,
    check_region,
    env_secret,
)
from audience_pipeline.components.schedules import check_cron
from audience_pipeline.components.source import source_table_key
from audience_pipeline.components.ui import OWNERS, name_part, rejects_by_reason
from audience_pipeline.resources.amazon_ads import AmazonAdsApi
from audience_pipeline.resources.duckdb_source import DuckDBSource, source_tables

UpdateStrategy = Literal["ADDITIVE", "FULL_REPLACE", "OVERLAP_REPLACE", "OVERLAP_KEEP"]
_NAME = re.compile(r"[a-z0-9_]+")
_SQL_ERRORS = (duckdb.ParserException, duckdb.CatalogException, duckdb.BinderException)


class AmcRunConfig(dg.Config):
    """Run configuration of the AMC assets."""

    dry_run: bool = Field(
        default=False,
        description="Validate and report rows, rejects and the planned files and calls without writing to "
        "S3 or calling AMC.",
    )


class S3Authentication(dg.Model, dg.Resolvable):
    """How to reach the bucket: `access_keys`, or `assume_role` (seed 003's two methods).

    Secrets are given as the names of environment variables, never as values. With `access_keys`
    and no key names, boto3's default chain applies (an instance profile, `AWS_*` variables).
    """

    method: Literal["access_keys", "assume_role"] = Field(
        default="access_keys", description="`access_keys` or `assume_role`."
    )
    access_key_id: str | None = Field(
        default=None, description="Environment variable holding the AWS access key id."
    )
    secret_access_key: str | None = Field(
        default=None, description="Environment variable holding the AWS secret access key."
    )
    session_token: str | None = Field(
        default=None, description="Environment variable holding a temporary session token (optional)."
    )
    account_id: str | None = Field(
        default=None, description="assume_role: the AWS account id owning the role (12 digits)."
    )
    role_name: str | None = Field(default=None, description="assume_role: the role to assume.")
    external_id: str | None = Field(
        default=None, description="assume_role: environment variable holding the role's external id."
    )
    duration_seconds: int = Field(
        default=3600, ge=900, le=43200, description="assume_role: lifetime of the temporary credentials."
    )

    @field_validator("access_key_id", "secret_access_key", "session_token", "external_id")
    @classmethod
    def _check_env_var_name(cls, value: str | None) -> str | None:
        return check_env_var_name(value)

    @model_validator(mode="after")
    def _check_method(self) -> "S3Authentication":
        check_key_pair(self.access_key_id, self.secret_access_key)
        if self.method == "assume_role":
            if not (self.account_id and re.fullmatch(r"\d{12}", self.account_id)):
                raise ValueError("account_id: assume_role needs the 12-digit AWS account id of the role")
            if not self.role_name:
                raise ValueError("role_name: assume_role needs the name of the role to assume")
        elif self.account_id or self.role_name or self.external_id:
            raise ValueError("account_id, role_name and external_id are for method: assume_role")
        return self


class _Target(dg.Model, dg.Resolvable):
    wait_until_finish: bool = Field(
        default=False,
        description="Poll AMC inside the run until the work is final; otherwise the job status sensor "
        "follows it.",
    )
    schedule: str | None = Field(
        default=None, description="Cron schedule (e.g. `0 3 * * *`) that runs this target; none by default."
    )

    @field_validator("schedule")
    @classmethod
    def _check_schedule(cls, value: str | None) -> str | None:
        return check_cron(value)


class DatasetUpload(_Target):
    """`operation: upload`: the query's rows into an AMC dataset."""

    dataset_id: str = Field(description="The AMC dataset the rows are uploaded to.")
    query: str = Field(
        min_length=1, description="DuckDB SQL over the source whose columns match the dataset."
    )
    create_dataset: bool = Field(
        default=False, description="Create the dataset from `dataset_definition` if it does not exist."
    )
    dataset_definition: str | dict[str, Any] | None = Field(
        default=None,
        description="The dataset's AMC definition (JSON text or YAML mapping, as in seed 003); required with "
        "`create_dataset`.",
    )
    update_strategy: UpdateStrategy = Field(
        default="ADDITIVE", description="ADDITIVE, FULL_REPLACE, OVERLAP_REPLACE or OVERLAP_KEEP."
    )
    country_code: str | None = Field(
        default=None, description="Source country of the data (ISO alpha-2); also the default country of PII."
    )
    file_format: Literal["csv", "parquet"] = Field(
        default="csv", description="`csv` (gzip compressed) or `parquet`."
    )
    clean_uploaded_files: bool = Field(
        default=False, description="Delete the uploaded parts and manifest from S3 once AMC succeeded."
    )

    @field_validator("dataset_id")
    @classmethod
    def _check_id(cls, value: str) -> str:
        if not _NAME.fullmatch(value):
            raise ValueError(f"{value!r}: AMC dataset ids are lowercase letters, digits and _")
        return value

    @field_validator("update_strategy", mode="before")
    @classmethod
    def _strategy_spelling(cls, value: Any) -> Any:
        # Seed 003 lists the strategies as "FULL REPLACE", "OVERLAP KEEP": take that spelling too.
        return value.strip().upper().replace(" ", "_") if isinstance(value, str) else value

    @field_validator("country_code")
    @classmethod
    def _check_country(cls, value: str | None) -> str | None:
        return country_setting(value)

    @model_validator(mode="after")
    def _check_definition(self) -> "DatasetUpload":
        if self.create_dataset and self.dataset_definition is None:
            raise ValueError("dataset_definition: required when create_dataset is true")
        definition = self.definition
        if definition is not None:
            if definition.data_set_id != self.dataset_id:
                raise ValueError(
                    f"dataset_definition: its dataSetId {definition.data_set_id!r} is not dataset_id "
                    f"{self.dataset_id!r}"
                )
            refuse_overlap(definition, self.update_strategy)
        return self

    @property
    def definition(self) -> DatasetDefinition | None:
        """The configured definition, parsed (InvalidDefinition names each bad field)."""
        return None if self.dataset_definition is None else DatasetDefinition.parse(self.dataset_definition)

    @property
    def asset_key(self) -> dg.AssetKey:
        """`amc/dataset/<dataset_id>`."""
        return dg.AssetKey(["amc", "dataset", self.dataset_id])


class IdentityDeletion(_Target):
    """`operation: delete`: the query's identities deleted from every dataset of the instance."""

    name: str = Field(description="Names the deletion's asset: `amc/deletion/<name>`.")
    query: str = Field(
        min_length=1,
        description="DuckDB SQL returning identity columns: first_name, last_name, email, phone, address, "
        "city, state, zip, country_code (others ignored).",
    )
    country_code: str | None = Field(default=None, description="Default country of the identities.")

    @field_validator("name")
    @classmethod
    def _check_name(cls, value: str) -> str:
        if not _NAME.fullmatch(value):
            raise ValueError(f"{value!r}: use lowercase letters, digits and _")
        return value

    @field_validator("country_code")
    @classmethod
    def _check_country(cls, value: str | None) -> str | None:
        return country_setting(value)

    @property
    def asset_key(self) -> dg.AssetKey:
        """`amc/deletion/<name>`."""
        return dg.AssetKey(["amc", "deletion", self.name])


class RuleBasedAudience(RuleBasedAudienceSettings, dg.Resolvable):
    """A rule-based audience: AMC runs `sql` over the instance's data and sends the users to DSP."""

    wait_until_finish: bool = Field(default=False, description="Poll AMC inside the run until final.")
    schedule: str | None = Field(default=None, description="Cron schedule that runs this target.")
    datasets: list[str] | None = Field(
        default=None,
        description="Upload targets (dataset ids) the audience reads; default: those its SQL names.",
    )

    @field_validator("schedule")
    @classmethod
    def _check_schedule(cls, value: str | None) -> str | None:
        return check_cron(value)

    @property
    def asset_key(self) -> dg.AssetKey:
        """`amc/audience/<audience name, lowercased, other characters as _>`."""
        return dg.AssetKey(["amc", "audience", name_part(self.audience_name.lower())])


class AmazonMarketingCloudComponent(dg.Component, dg.Model, dg.Resolvable):
    """Uploads datasets to, deletes identities from, and builds rule-based audiences in one AMC instance.

    The settings are Treasure Data's AMC export settings (seed 003), with its defaults. The Login
    with Amazon credentials are the `amazon_ads` resource's (`AMAZON_ADS_*` environment variables).
    """

    instance_id: str = Field(min_length=1, description="The AMC instance id (`amc...`).")
    account_id: str = Field(
        default="", description="The AMC account (entity) id; blank: the first account of the instance."
    )
    marketplace_id: str = Field(
        default="ATVPDKIKX0DER", description="The marketplace of the account (ATVPDKIKX0DER: amazon.com)."
    )
    s3_endpoint: str | None = Field(
        default=None,
        description="S3 endpoint override (e.g. `s3.ap-northeast-1.amazonaws.com`); unset: the region's, or "
        "`AWS_ENDPOINT_URL`.",
    )
    s3_region: str = Field(default="us-east-1", description="AWS region of the bucket.")
    authentication: S3Authentication = Field(
        default_factory=S3Authentication, description="How to reach the bucket."
    )
    bucket: str | None = Field(default=None, description="S3 bucket AMC reads uploads from.")
    path_prefix: str = Field(default="", description="Folder inside the bucket for the upload files.")
    file_name_prefix: str = Field(default="", description="Prefix of every uploaded file's name.")
    server_side_encryption: Literal["AES256", "aws:kms"] = Field(
        default="AES256", description="How S3 encrypts the upload files: AES256 (S3 keys) or aws:kms."
    )
    kms_key_id: str | None = Field(default=None, description="The KMS key of `aws:kms` (default: S3's).")
    poll_interval_seconds: float = Field(
        default=30, gt=0, description="Seconds between status polls when waiting inside a run."
    )
    wait_timeout_seconds: float = Field(
        default=6 * 3600, gt=0, description="Longest a run waits; the sensor follows the work after that."
    )
    uploads: list[DatasetUpload] = Field(default_factory=list, description="Dataset uploads.")
    deletions: list[IdentityDeletion] = Field(default_factory=list, description="Identity deletions.")
    audiences: list[RuleBasedAudience] = Field(default_factory=list, description="Rule-based audiences.")

    @field_validator("s3_region")
    @classmethod
    def _check_region(cls, value: str) -> str:
        return check_region(value)

    @field_validator("path_prefix", "file_name_prefix")
    @classmethod
    def _check_prefix(cls, value: str) -> str:
        if value.startswith("/") or ".." in value.split("/"):
            raise ValueError(f"{value!r} must be a relative path inside the bucket")
        return value

    @field_validator("file_name_prefix")
    @classmethod
    def _check_file_prefix(cls, value: str) -> str:
        if value.startswith((".", "_")):
            raise ValueError("AMC skips files whose names start with '.' or '_'; choose another prefix")
        return value

    @model_validator(mode="after")
    def _check_targets(self) -> "AmazonMarketingCloudComponent":
        if not (self.uploads or self.deletions or self.audiences):
            raise ValueError("uploads, deletions, audiences: configure at least one target")
        if self.uploads and not self.bucket:
            raise ValueError("bucket: uploads need the S3 bucket AMC reads from")
        if self.kms_key_id and self.server_side_encryption != "aws:kms":
            raise ValueError("kms_key_id: only used with server_side_encryption: aws:kms")
        keys = [t.asset_key.to_user_string() for t in [*self.uploads, *self.deletions, *self.audiences]]
        repeated = sorted({k for k in keys if keys.count(k) > 1})
        if repeated:
            raise ValueError(f"targets configured more than once: {', '.join(repeated)}")
        dataset_ids = {u.dataset_id for u in self.uploads}
        for audience in self.audiences:
            unknown = sorted(set(audience.datasets or ()) - dataset_ids)
            if unknown:
                raise ValueError(
                    f"audiences[{audience.audience_name}].datasets: {', '.join(unknown)} are not upload "
                    "targets of this component"
                )
        return self

    @property
    def location(self) -> S3Location:
        """Where upload files go."""
        return S3Location(
            bucket=self.bucket or "",
            path_prefix=self.path_prefix,
            file_name_prefix=self.file_name_prefix,
            instance_id=self.instance_id,
            sse=self.server_side_encryption,
            kms_key_id=self.kms_key_id,
        )

    @property
    def sensor_name(self) -> str:
        """`amc_<instance>_job_status`: the sensor following this instance's work."""
        return f"amc_{name_part(self.instance_id)}_job_status"

    def build_defs(self, context: dg.ComponentLoadContext) -> dg.Definitions:
        """An asset per target, its checks, a schedule per target with `schedule`, and the sensor."""
        assets = [
            *(self.build_upload_asset(t) for t in self.uploads),
            *(self.build_deletion_asset(t) for t in self.deletions),
            *(self.build_audience_asset(t) for t in self.audiences),
        ]
        targets = [*self.uploads, *self.deletions, *self.audiences]
        schedules = [
            dg.ScheduleDefinition(
                name=f"{'_'.join(t.asset_key.path)}_schedule",
                cron_schedule=t.schedule,
                target=[t.asset_key],
                # A schedule in the settings is a wish to run on it, as in Treasure Data's scheduler.
                default_status=dg.DefaultScheduleStatus.RUNNING,
                description=f"Runs {t.asset_key.to_user_string()} on `{t.schedule}`.",
            )
            for t in targets
            if t.schedule
        ]
        sensor = build_job_status_sensor(
            name=self.sensor_name,
            asset_keys=[t.asset_key for t in targets],
            amc=self.amc_client,
            s3=self.s3,
            location=self.location,
        )
        job = dg.define_asset_job(
            f"amc_{name_part(self.instance_id)}",
            selection=[t.asset_key for t in targets],
            description=f"Runs every target of AMC instance {self.instance_id}: uploads, deletions and "
            "audiences.",
        )
        return dg.Definitions(assets=assets, schedules=schedules, sensors=[sensor], jobs=[job])

    # --- clients -------------------------------------------------------------------------------------

    def amc_client(self, amazon_ads: AmazonAdsApi) -> AmcClient:
        """A client of the instance; a blank `account_id` means the instance's first account."""
        api = amazon_ads.client()
        return AmcClient(
            api,
            self.instance_id,
            self._account_id(api),
            self.marketplace_id,
            entity_id=self.account_id or None,
        )

    def _account_id(self, api: AdsApiClient) -> str:
        if self.account_id:
            return self.account_id
        try:
            return str(first_amc_account(api)["accountId"])
        except (AmazonAdsApiError, LookupError, ValueError) as error:
            raise dg.Failure(
                f"AMC setting `account_id` is blank and the instance's first account could not be found "
                f"({error}); set `account_id`"
            ) from None

    def s3(self) -> Any:
        """An S3 client per `s3_endpoint`, `s3_region` and `authentication`."""
        auth = self.authentication
        role = None
        if auth.method == "assume_role":
            role = AssumeRole(
                account_id=auth.account_id or "",
                role_name=auth.role_name or "",
                external_id=env_secret("AMC", "authentication.external_id", auth.external_id),
                duration_seconds=auth.duration_seconds,
            )
        return s3_client(
            self.s3_region,
            self.s3_endpoint,
            access_key_id=env_secret("AMC", "authentication.access_key_id", auth.access_key_id),
            secret_access_key=env_secret("AMC", "authentication.secret_access_key", auth.secret_access_key),
            session_token=env_secret("AMC", "authentication.session_token", auth.session_token),
            assume_role=role,
        )

    def _asset(self, key: dg.AssetKey, description: str, kinds: set[str], checks: list[str], deps=()):
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
                    description=_CHECK_DESCRIPTIONS[name],
                    blocking=name == JOB_CHECK,
                )
                for name in checks
            ],
            # The checks are evaluated by this run only when it waits for AMC; otherwise by the sensor.
            can_subset=True,
            name="_".join(key.path),
            pool="amazon_ads_amc",
        )

    def _finish(
        self,
        context: dg.AssetExecutionContext,
        key: dg.AssetKey,
        amc: AmcClient,
        job: AmcJob,
        wait: bool,
        metadata: dict[str, Any],
    ):
        """Wait for the job when asked to, and yield the materialization and any check results."""
        outcome: JobOutcome | None = None
        if wait:
            outcome = wait_for_job(
                amc, job, poll_seconds=self.poll_interval_seconds, timeout_seconds=self.wait_timeout_seconds
            )
            if outcome.final and outcome.succeeded:
                clean_uploaded_files(self.s3, self.location, job, context.log)
            metadata.update(outcome_metadata(outcome))
        following = outcome is None or not outcome.final
        metadata[JOB_METADATA_KEY] = dg.MetadataValue.json({**job.to_json(), "final": not following})
        context.log.info(f"{key.to_user_string()}: {_plain(metadata)}")
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

    # --- dataset upload ------------------------------------------------------------------------------

    def build_upload_asset(self, target: DatasetUpload) -> dg.AssetsDefinition:
        """The asset uploading `target`'s query into its dataset."""
        component = self

        @self._asset(
            target.asset_key,
            f"The query's rows uploaded into AMC dataset `{target.dataset_id}` ({target.update_strategy}) "
            "through S3.",
            {"s3", target.file_format},
            [JOB_CHECK],
            deps=[source_table_key(table) for table in source_tables(target.query)],
        )
        def amc_upload(
            context: dg.AssetExecutionContext,
            config: AmcRunConfig,
            source: DuckDBSource,
            amazon_ads: AmazonAdsApi,
        ):
            """Writes the query's rows as upload files in S3 and has AMC ingest them into the dataset."""
            yield from component._upload(context, config, source, amazon_ads, target)

        return amc_upload

    def _upload(self, context, config: AmcRunConfig, source, amazon_ads, target: DatasetUpload):
        started = time.perf_counter()
        where = f"AMC upload {target.dataset_id!r}"
        # The dataset AMC holds is what the rows must fit. A dry run with a configured definition
        # calls nothing; without one it reads the dataset (a read-only call).
        amc, remote = None, None
        if not config.dry_run or target.definition is None:
            amc = self.amc_client(amazon_ads)
            remote = amc.get_dataset(target.dataset_id)
        try:
            definition = DatasetDefinition.from_api(remote) if remote is not None else target.definition
        except InvalidDefinition as error:
            raise dg.Failure(f"{where}: AMC's dataset definition cannot be read: {error}") from None
        if definition is None or (amc is not None and remote is None and not target.create_dataset):
            raise dg.Failure(
                f"{where}: dataset {target.dataset_id!r} does not exist in AMC instance {self.instance_id}; "
                "create it in AMC, or set `create_dataset: true` with a `dataset_definition`"
            )
        try:
            refuse_overlap(definition, target.update_strategy)
        except ValueError as error:
            raise dg.Failure(f"{where}: {error}") from None
        upload_name = f"{target.dataset_id}-{datetime.now(UTC):%Y%m%dT%H%M%S}-{context.run_id[:8]}"
        with source_query_errors(where, "query"), source.stream(target.query) as stream:
            check = check_query_schema(definition, stream.schema)
            try:
                check.raise_for_errors()
            except SchemaMismatch as error:
                raise dg.Failure(f"{where}: nothing was written; {error}") from None
            if check.case_insensitive_matches:
                context.log.warning(
                    f"{where}: columns matched ignoring case: {check.case_insensitive_matches}"
                )
            try:
                files = write_upload_files(
                    stream.frames,
                    definition,
                    check,
                    s3_client=None if config.dry_run else self.s3(),
                    location=self.location,
                    upload_name=upload_name,
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
                    f"{where}: writing the upload files to s3://{self.location.bucket} failed: {error}; "
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
            "manifest": f"s3://{self.location.bucket}/{files.manifest_key}",
        }
        if config.dry_run:
            calls = (
                ["POST /dataSets (if it does not exist)"] if remote is None and target.create_dataset else []
            ) + [
                f"PUT s3://{self.location.bucket}/<{len(files.part_keys)} parts + manifest>",
                f"POST /uploads/{target.dataset_id}",
            ]
            metadata["planned_calls"] = dg.MetadataValue.json(calls)
            metadata["seconds"] = round(time.perf_counter() - started, 3)
            context.log.info(f"{where}: dry run, nothing written or sent: {_plain(metadata)}")
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
                bucket=self.location.bucket,
                file_format=files.file_format,
                compression=files.compression,
                update_strategy=target.update_strategy,
                country_code=target.country_code,
            )
        except AmazonAdsApiError as error:
            raise dg.Failure(
                f"{where}: AMC refused the upload: {error.message}; the files stay at "
                f"s3://{self.location.bucket}/{files.manifest_key}"
            ) from None
        files_to_clean = tuple([*files.part_keys, files.manifest_key]) if target.clean_uploaded_files else ()
        job = AmcJob("upload", (upload_id,), target.dataset_id, files_to_clean)
        metadata.update(upload_id=upload_id, retries=amc.api.retries)
        metadata["seconds"] = round(time.perf_counter() - started, 3)
        yield from self._finish(context, target.asset_key, amc, job, target.wait_until_finish, metadata)

    # --- identity deletion ---------------------------------------------------------------------------

    def build_deletion_asset(self, target: IdentityDeletion) -> dg.AssetsDefinition:
        """The asset deleting `target`'s identities from the instance's datasets."""
        component = self

        @self._asset(
            target.asset_key,
            "The query's identities, normalized and hashed, deleted from every dataset of the AMC instance.",
            {"deletion"},
            [JOB_CHECK],
            deps=[source_table_key(table) for table in source_tables(target.query)],
        )
        def amc_deletion(
            context: dg.AssetExecutionContext,
            config: AmcRunConfig,
            source: DuckDBSource,
            amazon_ads: AmazonAdsApi,
        ):
            """Sends the query's identities as user deletion requests of at most 1,000 identities."""
            yield from component._delete(context, config, source, amazon_ads, target)

        return amc_deletion

    def _delete(self, context, config: AmcRunConfig, source, amazon_ads, target: IdentityDeletion):
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
            context.log.info(f"{where}: {note}: {_plain(metadata)}")
            yield dg.MaterializeResult(asset_key=target.asset_key, metadata=metadata)
            return
        amc = self.amc_client(amazon_ads)
        try:
            request_ids = request_deletions(amc, batches)
        except AmazonAdsApiError as error:
            raise dg.Failure(f"{where}: AMC refused a deletion request: {error.message}") from None
        job = AmcJob("deletion", tuple(request_ids))
        metadata.update(retries=amc.api.retries, seconds=round(time.perf_counter() - started, 3))
        yield from self._finish(context, target.asset_key, amc, job, target.wait_until_finish, metadata)

    # --- rule-based audience -------------------------------------------------------------------------

    def build_audience_asset(self, target: RuleBasedAudience) -> dg.AssetsDefinition:
        """The asset submitting `target` to AMC (or finding it there by name)."""
        component = self
        upload_ids = {u.dataset_id: u.asset_key for u in self.uploads}
        read = (
            target.datasets
            if target.datasets is not None
            else [dataset_id for dataset_id in upload_ids if re.search(rf"\b{dataset_id}\b", target.sql)]
        )

        @self._asset(
            target.asset_key,
            f"Rule-based audience `{target.audience_name}` for DSP advertiser {target.advertiser_id}, "
            "built by AMC from its SQL.",
            {"dsp"},
            [JOB_CHECK, AUDIENCE_SIZE_CHECK],
            deps=[upload_ids[d] for d in read],
        )
        def amc_audience(context: dg.AssetExecutionContext, config: AmcRunConfig, amazon_ads: AmazonAdsApi):
            """Creates the rule-based audience unless one of that name and settings exists."""
            yield from component._audience(context, config, amazon_ads, target)

        return amc_audience

    def _audience(self, context, config: AmcRunConfig, amazon_ads, target: RuleBasedAudience):
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
            metadata["planned_calls"] = dg.MetadataValue.json(
                [
                    "GET /amc/audiences/query (find by name, or its latest _v<n> version)",
                    "POST /amc/audiences/query (unless found with these settings), or "
                    "PUT /amc/audiences/query/{id} (a FAILED one)",
                ]
            )
            metadata["projected_audience_size"] = "computed by AMC; DSP needs at least 2,000 users"
            context.log.info(f"{where}: dry run, nothing sent: {_plain(metadata)}")
            yield dg.MaterializeResult(asset_key=target.asset_key, metadata=metadata)
            return
        amc = self.amc_client(amazon_ads)
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
        yield from self._finish(context, target.asset_key, amc, job, target.wait_until_finish, metadata)


_CHECK_DESCRIPTIONS = {
    JOB_CHECK: "AMC finished the work of the latest run successfully; a failure carries AMC's message.",
    AUDIENCE_SIZE_CHECK: "The audience has at least the 2,000 users Amazon DSP needs.",
}


def refuse_overlap(definition: DatasetDefinition, strategy: str) -> None:
    """OVERLAP_* replace or keep time partitions, which only a FACT dataset has."""
    if strategy.startswith("OVERLAP_") and definition.kind != "FACT":
        raise ValueError(
            f"update_strategy: {strategy} works on the time partitions of a FACT dataset, and "
            f"{definition.data_set_id!r} is a DIMENSION dataset (no isMainEventTime column); "
            "use ADDITIVE or FULL_REPLACE"
        )


def _plain(metadata: dict[str, Any]) -> dict[str, Any]:
    """Metadata as plain values, for a readable log line."""
    return {k: getattr(v, "value", v) for k, v in metadata.items()}
