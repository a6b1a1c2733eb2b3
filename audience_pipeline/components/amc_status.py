"""Recording where AMC's work ended: check results and metadata, and the sensor that follows the work.

A run that does not wait for AMC leaves its job (`AmcJob`, JSON) in the materialization metadata
under `amc_job`. The job status sensor reads new materializations of the AMC assets (its cursor
keeps the last event it read per asset and the jobs still running), polls each running job once
per tick, and when one is final records it on the asset: an observation with AMC's figures and the
evaluations of the asset checks, a failure carrying AMC's message. Uploaded files are deleted then
when the target asked for it.
"""

import json
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Any

import dagster as dg
from botocore.exceptions import BotoCoreError, ClientError

from audience_pipeline.amc.jobs import AmcJob, JobOutcome, check_job
from audience_pipeline.amc.rule_based import MINIMUM_AUDIENCE_SIZE, audience_size_check
from audience_pipeline.amc.upload_files import S3Location, delete_upload_files
from audience_pipeline.clients.ads_api import AmazonAdsApiError
from audience_pipeline.clients.amc import AmcClient
from audience_pipeline.resources.amazon_ads import AmazonAdsApi
from audience_pipeline.resources.aws import S3Resource

JOB_CHECK = "amc_job_succeeded"
AUDIENCE_SIZE_CHECK = "dsp_minimum_audience_size"
JOB_METADATA_KEY = "amc_job"
CHECK_DESCRIPTIONS = {
    JOB_CHECK: "AMC finished the work of the latest run successfully; a failure carries AMC's message.",
    AUDIENCE_SIZE_CHECK: f"The audience has at least the {MINIMUM_AUDIENCE_SIZE:,} users Amazon DSP needs.",
}
_WORK = {"upload": "upload", "deletion": "user deletion", "audience": "rule-based audience"}


@dataclass(frozen=True)
class CheckOutcome:
    """One asset check's result for a finished job."""

    check_name: str
    passed: bool
    description: str
    metadata: dict[str, Any]


def outcome_metadata(outcome: JobOutcome) -> dict[str, Any]:
    """AMC's status, message and figures as materialization or observation metadata."""
    metadata: dict[str, Any] = {"amc_status": outcome.status, **outcome.details}
    if outcome.message:
        metadata["amc_message"] = outcome.message
    return metadata


def check_results(job: AmcJob, outcome: JobOutcome) -> list[CheckOutcome]:
    """The asset checks of a final job: it succeeded, and (audiences) it is big enough for DSP."""
    what = f"AMC {_WORK[job.kind]} {', '.join(job.ids)}"
    described = f"{what} ended {outcome.status}" + (f": {outcome.message}" if outcome.message else "")
    results = [CheckOutcome(JOB_CHECK, outcome.succeeded, described, outcome_metadata(outcome))]
    if job.kind == "audience":
        passed, description = audience_size_check(
            {
                "status": outcome.status,
                "audienceCount": outcome.details.get("audience_count"),
                "statusReason": outcome.message,
            }
        )
        count = outcome.details.get("audience_count")
        results.append(
            CheckOutcome(
                AUDIENCE_SIZE_CHECK,
                passed,
                description,
                {"audience_count": count if count is not None else "unknown"},
            )
        )
    return results


def clean_uploaded_files(s3: Callable[[], Any], location: S3Location, job: AmcJob, log: Any) -> None:
    """Delete a succeeded upload's files when its target asked for it (`job.files`).

    A failed delete only leaves files behind: it is logged, and the upload's outcome still recorded.
    """
    if not job.files:
        return
    try:
        delete_upload_files(s3(), location, list(job.files))
    except (RuntimeError, BotoCoreError, ClientError) as error:
        log.warning(f"the upload's files stay in s3://{location.bucket} ({error}); delete them by hand")


def build_job_status_sensor(
    name: str,
    asset_keys: list[dg.AssetKey],
    amc: Callable[[AmazonAdsApi], AmcClient],
    s3_client: Callable[[S3Resource], Any],
    location: S3Location,
) -> dg.SensorDefinition:
    """The sensor following the AMC work of `asset_keys` to its final state."""

    @dg.sensor(
        name=name,
        minimum_interval_seconds=30,
        default_status=dg.DefaultSensorStatus.RUNNING,
        description="Follows AMC uploads, deletions and audiences started by runs that did not wait, and "
        "records their final state on the asset (metadata and asset checks).",
    )
    def amc_job_status(context: dg.SensorEvaluationContext, amazon_ads: AmazonAdsApi, s3: S3Resource):
        """Reads new AMC materializations, polls the jobs still running, records the finished ones."""
        state = json.loads(context.cursor) if context.cursor else {"after": {}, "pending": []}
        for key in asset_keys:
            state["pending"] += _new_jobs(context, key, state["after"])
        if not state["pending"]:
            return dg.SensorResult(skip_reason="no AMC work running", cursor=json.dumps(state))
        client = amc(amazon_ads)
        events: list[Any] = []
        still, waiting, finished = [], [], []
        for entry in state["pending"]:
            key, job = dg.AssetKey(entry["asset_key"]), AmcJob.from_json(entry["job"])
            try:
                outcome = check_job(client, job)
            except AmazonAdsApiError as error:
                if error.status != 404:
                    context.log.warning(f"{key.to_user_string()}: status poll failed ({error}); trying again")
                    still.append(entry)
                    waiting.append(f"{key.to_user_string()} ({job.kind}: status poll failed)")
                    continue
                outcome = JobOutcome(
                    "UNKNOWN", True, False, f"AMC no longer knows this work ({error.message})"
                )
            if not outcome.final:
                still.append(entry)
                waiting.append(f"{key.to_user_string()} ({job.kind} {outcome.status})")
                continue
            if outcome.succeeded:
                clean_uploaded_files(partial(s3_client, s3), location, job, context.log)
            events += _record(key, job, outcome)
            finished.append(f"{key.to_user_string()} ({job.kind} {outcome.status})")
        state["pending"] = still
        # The tick's log in the UI says what was recorded and what is still awaited.
        if finished:
            context.log.info(f"recorded the final state of {', '.join(finished)}")
        if waiting:
            context.log.info(f"waiting for {', '.join(waiting)}")
        if not events:
            return dg.SensorResult(skip_reason=f"waiting for {', '.join(waiting)}", cursor=json.dumps(state))
        return dg.SensorResult(asset_events=events, cursor=json.dumps(state))

    return amc_job_status


def _new_jobs(context: dg.SensorEvaluationContext, key: dg.AssetKey, after: dict[str, int]) -> list[dict]:
    """Jobs left running by materializations of `key` the sensor has not read yet; moves `after` on."""
    name = key.to_user_string()
    records = context.instance.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=key, after_storage_id=after.get(name)), limit=1000, ascending=True
    ).records
    jobs = []
    for record in records:
        after[name] = record.storage_id
        materialization = record.asset_materialization
        value = materialization.metadata.get(JOB_METADATA_KEY) if materialization else None
        if value is not None and not value.value.get("final"):
            jobs.append({"asset_key": list(key.path), "job": value.value})
    return jobs


def _record(key: dg.AssetKey, job: AmcJob, outcome: JobOutcome) -> list[Any]:
    """The observation and check evaluations recording a final job on its asset."""
    events: list[Any] = [
        dg.AssetObservation(
            asset_key=key,
            description=f"AMC {_WORK[job.kind]} ended {outcome.status}",
            metadata={**outcome_metadata(outcome), "amc_ids": dg.MetadataValue.json(list(job.ids))},
        )
    ]
    events += [
        dg.AssetCheckEvaluation(
            asset_key=key,
            check_name=result.check_name,
            passed=result.passed,
            metadata=result.metadata,
            description=result.description,
        )
        for result in check_results(job, outcome)
    ]
    return events
