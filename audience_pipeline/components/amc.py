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

This module holds the instance and S3 settings and the wiring; each target kind's settings and asset
are in `amc_uploads`, `amc_deletions` and `amc_audiences`, what their assets share in `amc_assets`,
and the job status sensor in `amc_status`. AMC's own rules are in the `amc` package.
"""

import re
from typing import Any, Literal

import dagster as dg
from pydantic import Field, field_validator, model_validator

from audience_pipeline.amc.upload_files import S3Location, check_file_name_prefix, check_key_prefix
from audience_pipeline.components.amc_assets import AmcInstance
from audience_pipeline.components.amc_audiences import RuleBasedAudience, build_audience_asset
from audience_pipeline.components.amc_deletions import IdentityDeletion, build_deletion_asset
from audience_pipeline.components.amc_status import build_job_status_sensor
from audience_pipeline.components.amc_uploads import DatasetUpload, build_upload_asset
from audience_pipeline.components.aws_settings import (
    check_env_var_name,
    check_key_pair,
    check_region,
    env_secret,
)
from audience_pipeline.components.schedules import schedule_defs
from audience_pipeline.components.setting_errors import CheckedSettings
from audience_pipeline.components.ui import name_part
from audience_pipeline.resources.aws import AwsConnection, S3Resource


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


class AmazonMarketingCloudComponent(CheckedSettings, dg.Component, dg.Model, dg.Resolvable):
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

    @field_validator("path_prefix")
    @classmethod
    def _check_path_prefix(cls, value: str) -> str:
        return check_key_prefix(value)

    @field_validator("file_name_prefix")
    @classmethod
    def _check_file_name_prefix(cls, value: str) -> str:
        return check_file_name_prefix(value)

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

    @property
    def amc_instance(self) -> AmcInstance:
        """The AMC instance and upload location, as the target assets use them."""
        return AmcInstance(
            instance_id=self.instance_id,
            account_id=self.account_id,
            marketplace_id=self.marketplace_id,
            location=self.location,
            s3=self.s3,
            poll_interval_seconds=self.poll_interval_seconds,
            wait_timeout_seconds=self.wait_timeout_seconds,
        )

    def build_defs(self, context: dg.ComponentLoadContext) -> dg.Definitions:
        """An asset per target, its checks, a schedule per target with `schedule`, and the sensor."""
        instance = self.amc_instance
        uploads = {t.dataset_id: t.asset_key for t in self.uploads}
        assets = [
            *(build_upload_asset(instance, t) for t in self.uploads),
            *(build_deletion_asset(instance, t) for t in self.deletions),
            *(build_audience_asset(instance, t, uploads) for t in self.audiences),
        ]
        targets = [*self.uploads, *self.deletions, *self.audiences]
        schedules = [
            schedule_defs(
                f"{'_'.join(t.asset_key.path)}_schedule",
                t.schedule,
                t.schedule_timezone,
                t.schedule_delay_seconds,
                runs=f"Runs {t.asset_key.to_user_string()}",
                target=[t.asset_key],
            )
            for t in targets
        ]
        sensor = build_job_status_sensor(
            name=self.sensor_name,
            asset_keys=[t.asset_key for t in targets],
            amc=instance.amc_client,
            s3_client=self.s3,
            location=instance.location,
        )
        job = dg.define_asset_job(
            f"amc_{name_part(self.instance_id)}",
            selection=[t.asset_key for t in targets],
            description=f"Runs every target of AMC instance {self.instance_id}: uploads, deletions and "
            "audiences.",
        )
        return dg.Definitions.merge(dg.Definitions(assets=assets, sensors=[sensor], jobs=[job]), *schedules)

    def s3(self, resource: S3Resource) -> Any:
        """An S3 client from the `s3` resource, reaching the bucket as `s3_endpoint`, `s3_region` and
        `authentication` say (secrets read from the variables they name)."""
        auth = self.authentication
        role_arn = None
        if auth.method == "assume_role":
            role_arn = f"arn:aws:iam::{auth.account_id}:role/{auth.role_name}"
        return resource.get_client(
            AwsConnection(
                region_name=self.s3_region,
                endpoint_url=self.s3_endpoint,
                aws_access_key_id=env_secret("AMC", "authentication.access_key_id", auth.access_key_id),
                aws_secret_access_key=env_secret(
                    "AMC", "authentication.secret_access_key", auth.secret_access_key
                ),
                aws_session_token=env_secret("AMC", "authentication.session_token", auth.session_token),
                role_arn=role_arn,
                external_id=env_secret("AMC", "authentication.external_id", auth.external_id),
                duration_seconds=auth.duration_seconds,
            )
        )
