"""AMC's asynchronous work, followed to its end: create-once calls, status polls, waiting.

Uploads, user deletions and rule-based audiences all start with a POST that returns an id and then
move through statuses. No AMC POST is idempotent, so a POST whose answer was lost (5xx, dropped
connection) is looked up before anything is sent again. `AmcJob` is what a run hands to whoever
follows the work afterwards (the run itself with `wait_until_finish`, else the job status sensor);
it is plain JSON so it can travel in materialization metadata.
"""

import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, TypeVar

from audience_pipeline.amc.definitions import DatasetDefinition
from audience_pipeline.clients.ads_api import LOST_ANSWER
from audience_pipeline.clients.amc import AmcClient, amc_time, failed, is_final, succeeded

T = TypeVar("T")
JobKind = Literal["upload", "deletion", "audience"]


class AmcJobError(RuntimeError):
    """AMC work that cannot start as it stands; the message says what to do."""


@dataclass(frozen=True)
class AmcJob:
    """AMC work started by one run: what to poll, and what to clean up after success."""

    kind: JobKind
    ids: tuple[str, ...]
    """The upload id, the user deletion request ids (one per ≤1,000 identities) or the audience id."""
    dataset_id: str | None = None
    """The dataset of an upload."""
    files: tuple[str, ...] = ()
    """S3 keys to delete once the upload succeeded (`clean_uploaded_files`); empty to keep them."""

    def to_json(self) -> dict[str, Any]:
        """The job as JSON-able data (for metadata and sensor cursors)."""
        return {
            "kind": self.kind,
            "ids": list(self.ids),
            "dataset_id": self.dataset_id,
            "files": list(self.files),
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> "AmcJob":
        """The job `to_json` described."""
        return cls(data["kind"], tuple(data["ids"]), data.get("dataset_id"), tuple(data.get("files") or ()))


@dataclass(frozen=True)
class JobOutcome:
    """Where a job stands: its status, AMC's message and the figures AMC reports."""

    status: str
    final: bool
    succeeded: bool
    message: str | None = None
    details: dict[str, Any] = field(default_factory=dict)


def check_job(amc: AmcClient, job: AmcJob) -> JobOutcome:
    """Poll the job once (one status call per id)."""
    if job.kind == "upload":
        upload = amc.get_upload(job.dataset_id or "", job.ids[0])
        status = upload.get("status", "")
        rows = (upload.get("metrics") or {}).get("OutputRowCount")
        return _outcome(status, upload.get("message"), {"output_row_count": rows} if rows is not None else {})
    if job.kind == "deletion":
        deletions = [amc.get_user_deletion(request_id) for request_id in job.ids]
        pending = [d for d in deletions if not is_final(d.get("status"))]
        bad = [d for d in deletions if is_final(d.get("status")) and not succeeded(d.get("status"))]
        status = (bad or pending or deletions)[0].get("status", "")
        details = {
            "requests": len(deletions),
            "requests_succeeded": sum(succeeded(d.get("status")) for d in deletions),
            "identity_count": sum(int(d.get("identityCount") or 0) for d in deletions),
        }
        message = f"{len(bad)} of {len(deletions)} deletion requests ended {status}" if bad else None
        return _outcome(status, message, details)
    audience = amc.get_audience(job.ids[0])
    details = {
        key: audience[name]
        for key, name in (
            ("audience_count", "audienceCount"),
            ("dsp_audience_id", "dspAudienceId"),
            ("last_refreshed_time", "lastRefreshedTime"),
        )
        if audience.get(name) is not None
    }
    return _outcome(audience.get("status", ""), audience.get("statusReason"), details)


def _outcome(status: str, message: str | None, details: dict[str, Any]) -> JobOutcome:
    status = status.upper()
    # DEACTIVATED (an audience not refreshed for 30 days) is final without having failed.
    return JobOutcome(status, is_final(status), succeeded(status), message, details)


def wait_for_job(
    amc: AmcClient,
    job: AmcJob,
    *,
    poll_seconds: float,
    timeout_seconds: float,
    sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.monotonic,
) -> JobOutcome:
    """Poll until the job is final or `timeout_seconds` passed; the last outcome either way."""
    deadline = clock() + timeout_seconds
    while True:
        outcome = check_job(amc, job)
        if outcome.final or clock() >= deadline:
            return outcome
        sleep(poll_seconds)


def create_dataset_once(amc: AmcClient, definition: DatasetDefinition) -> None:
    """Create the dataset; when the answer is lost, it counts as created if AMC now has it."""
    dataset_id = definition.data_set_id
    _create_once(
        lambda: amc.create_dataset(definition.to_api()["dataSet"]),
        lambda: amc.get_dataset(dataset_id),
    )


def start_upload_once(amc: AmcClient, dataset_id: str, manifest_key: str, **upload: Any) -> str:
    """Start the upload of the files a manifest lists; the upload id.

    Each upload has its own manifest key, so when the answer to the POST is lost the upload it may
    have started is found by that key instead of being started twice (twice would double an ADDITIVE
    dataset's rows).
    """

    def find() -> str | None:
        for found in amc.list_uploads(dataset_id):
            if (found.get("dataSource") or {}).get("sourceManifestS3Key") == manifest_key:
                return found["uploadId"]
        return None

    return _create_once(lambda: amc.start_upload(dataset_id, manifest_key=manifest_key, **upload), find)


def request_deletions(amc: AmcClient, batches: list[list[dict[str, Any]]]) -> list[str]:
    """Send each batch of ≤1,000 identities as a user deletion request; the request ids.

    Deleting an identity twice deletes no more than once, so a request whose answer was lost is
    simply sent again (AMC has no way to look one up).
    """
    ids = []
    for batch in batches:
        try:
            ids.append(amc.request_user_deletion(batch))
        except LOST_ANSWER:
            ids.append(amc.request_user_deletion(batch))
    return ids


@dataclass(frozen=True)
class AudienceSubmission:
    """What `ensure_audience` did: the audience to follow, under which name, and why."""

    execution_id: str
    name: str
    """The name in AMC: the audience's own, or `<name>_v<n>` once its settings changed."""
    action: Literal["created", "reused", "updated", "replaced", "new_version"]
    previous_id: str | None = None
    """The earlier version a "new_version" leaves in AMC (AMC deletes only failed audiences)."""


def ensure_audience(amc: AmcClient, name: str, create: Mapping[str, Any]) -> AudienceSubmission:
    """The rule-based audience `name` with these settings, making only the calls AMC allows.

    `create` holds `AmcClient.create_audience`'s keyword arguments. AMC updates (PUT) and deletes only
    FAILED audiences, and keeps a succeeded one's name, query and parameters. So the newest version
    of the audience (`name`, else the highest `name_v<n>`) is:
    - with the same settings and not failed: reused ("reused"), so re-runs make no duplicates;
    - FAILED: updated in place and run again ("updated"); when the refresh rate changed, which the
      PUT does not take, deleted and submitted again ("replaced");
    - SUCCEEDED or DEACTIVATED with other settings: left as it is, and a new audience submitted as
      `name_v<n+1>` ("new_version");
    - PENDING or RUNNING with other settings: an `AmcJobError` (AMC changes no running audience).
    With none, it is submitted ("created"). A POST whose answer was lost is looked up by name.
    """
    existing = _newest_version(amc, name)
    if existing is None:
        return AudienceSubmission(_submit(amc, name, create, None), name, "created")
    current, version = existing
    execution_id, status = current["audienceExecutionId"], current.get("status")
    if _same_settings(current, create) and not failed(status):
        return AudienceSubmission(execution_id, current["audienceName"], "reused")
    if failed(status):
        if current.get("refreshRateDays") == create.get("refresh_rate_days", 21):
            update = {key: value for key, value in create.items() if key != "refresh_rate_days"}
            amc.update_audience(execution_id, current["audienceName"], **update)
            return AudienceSubmission(execution_id, current["audienceName"], "updated")
        amc.delete_audience(execution_id)
        new_id = _submit(amc, current["audienceName"], create, execution_id)
        return AudienceSubmission(new_id, current["audienceName"], "replaced")
    if not is_final(status):
        raise AmcJobError(
            f"rule-based audience {current['audienceName']!r} is {status} with other settings; run again "
            "once it has finished (AMC cannot change or delete a running audience)"
        )
    new_name = f"{name}_v{version + 1}"
    return AudienceSubmission(_submit(amc, new_name, create, None), new_name, "new_version", execution_id)


def _newest_version(amc: AmcClient, name: str) -> tuple[dict[str, Any], int] | None:
    """The newest audience named `name` (version 1) or `name_v<n>`, and its version number."""
    versioned = re.compile(re.escape(name) + r"(?:_v(\d+))?")
    found = [
        (int(match.group(1) or 1), audience.get("createTime") or "", audience)
        for audience in amc.list_audiences()
        if (match := versioned.fullmatch(audience.get("audienceName") or ""))
    ]
    if not found:
        return None
    version, _, audience = max(found, key=lambda item: item[:2])
    return audience, version


def _submit(amc: AmcClient, name: str, create: Mapping[str, Any], known: str | None) -> str:
    """Create the audience `name`; after a lost answer, one of that name other than `known` counts."""

    def find() -> str | None:
        found = amc.find_audience(name)
        return found["audienceExecutionId"] if found and found["audienceExecutionId"] != known else None

    return _create_once(lambda: amc.create_audience(name, **create), find)


def _create_once(create: Callable[[], T], find: Callable[[], T | None], attempts: int = 3) -> T:
    """`create()`'s answer; when it is lost, what `find()` shows AMC made, else `create()` again.

    AMC either acted on a POST whose answer was lost or did not: a lookup tells which, so the POST
    is sent again only when it did not happen.
    """
    attempt = 1
    while True:
        try:
            return create()
        except LOST_ANSWER:
            found = find()
            if found is not None:
                return found
            if attempt >= attempts:
                raise
            attempt += 1


def _same_settings(audience: Mapping[str, Any], create: Mapping[str, Any]) -> bool:
    """Whether an audience AMC holds was made with these settings."""
    wanted = {
        "query": create["query"],
        "advertiserId": str(create["advertiser_id"]),
        "timeWindowStart": amc_time(create["time_window_start"]),
        "timeWindowEnd": amc_time(create["time_window_end"]),
        "refreshRateDays": create.get("refresh_rate_days", 21),
        "timeWindowRelative": bool(create.get("time_window_relative", False)),
    }
    return all(str(audience.get(key)) == str(value) for key, value in wanted.items())
