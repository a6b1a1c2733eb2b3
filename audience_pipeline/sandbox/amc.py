"""Amazon Marketing Cloud advertiser data upload: datasets, uploads (ingested from S3), user deletion.

Shapes per AdvertiserDataUpload_prod_3p.json: each resource answers in its own media type
(`application/vnd.amcadvertiserdataset.v1+json`, `...dataupload...`, `...userdeletionrequest...`),
errors as `application/json`. Requests are read as JSON whatever their Content-Type: Amazon's own
uploader sends `application/json`, the definition names the vendor types.
"""

import re
import uuid
from typing import Any

import duckdb
from flask import Blueprint, Response, current_app, request

from audience_pipeline.sandbox.amc_datasets import (
    create_table_sql,
    is_fact,
    new_table_name,
    stored_columns,
    validate_dataset,
)
from audience_pipeline.sandbox.amc_deletion import delete_identities, validate_targets
from audience_pipeline.sandbox.amc_ingest import UploadFailed, ingest
from audience_pipeline.sandbox.amc_jobs import (
    answer_as,
    new_job,
    now_iso,
    page,
    poll,
    public,
    require_headers,
)
from audience_pipeline.sandbox.errors import ApiError, json_body

blueprint = Blueprint("amc", __name__, url_prefix="/amc/advertiserData/<instance_id>")

STRATEGIES = ("ADDITIVE", "FULL_REPLACE", "OVERLAP_REPLACE", "OVERLAP_KEEP")
COMPRESSIONS = ("GZIP", "BZIP", "SNAPPY", "NONE", "ZIP")
UPLOAD_STATUSES = ("SUBMITTED", "IN_PROGRESS", "SUCCESS", "FAILED")
# What an upload request says about reading its files, kept out of the upload record AMC shows.
_READ_SETTINGS = ("updateStrategy", "compressionFormat", "fileFormat")
_SOURCES = ("sourceFileS3Key", "sourceS3Prefix", "sourceManifestS3Key")
_FORMATS = ("csvDataFormat", "jsonDataFormat", "parquetDataFormat")
_COUNTRY = re.compile(r"[A-Z]{2}")
# The media type of each resource's answers, by the path segment after the instance id.
MEDIA_TYPES = {
    "dataSets": "application/vnd.amcadvertiserdataset.v1+json",
    "uploads": "application/vnd.amcadvertiserdataupload.v1+json",
    "userDeletionRequest": "application/vnd.amcadvertiseruserdeletionrequest.v1+json",
}


@blueprint.before_request
def require_account_headers() -> None:
    """Every data upload call names the AMC account and marketplace."""
    require_headers("Amazon-Advertising-API-AdvertiserId", "Amazon-Advertising-API-MarketplaceId")


@blueprint.after_request
def label_answer(response: Response) -> Response:
    """Successful answers in the resource's media type; errors stay `application/json`."""
    resource = request.path.split("/")[4] if request.path.count("/") >= 4 else ""
    if response.status_code < 400 and resource in MEDIA_TYPES:
        return answer_as(response, MEDIA_TYPES[resource])
    return response


def _sandbox():
    return current_app.config["SANDBOX"]


def _instance(instance_id: str) -> dict[str, Any]:
    instances = _sandbox().state.family("amc").setdefault("instances", {})
    return instances.setdefault(instance_id, {"dataSets": {}, "uploads": {}, "deletions": {}})


def _dataset(instance_id: str, dataset_id: str) -> dict[str, Any]:
    dataset = _instance(instance_id)["dataSets"].get(dataset_id)
    if dataset is None:
        raise ApiError(404, "NOT_FOUND", f"Dataset {dataset_id} does not exist")
    return dataset


def _bad(details: str) -> ApiError:
    return ApiError(400, "BAD_REQUEST", details)


# --- datasets -----------------------------------------------------------------------------------------


@blueprint.post("/dataSets")
def create_dataset(instance_id: str):
    """Define a dataset and create the table its rows will live in."""
    dataset = validate_dataset(json_body())
    state = _sandbox().state
    with state.lock:
        datasets = _instance(instance_id)["dataSets"]
        if dataset["dataSetId"] in datasets:
            raise _bad(f"Dataset {dataset['dataSetId']} already exists")
        table = new_table_name()
        state.cursor().execute(create_table_sql(table, dataset))
        datasets[dataset["dataSetId"]] = {**dataset, "_table": table}
        state.save()
    return {"dataSetId": dataset["dataSetId"], "instanceId": instance_id}


@blueprint.get("/dataSets/<dataset_id>")
def get_dataset(instance_id: str, dataset_id: str):
    """One dataset definition."""
    with _sandbox().state.lock:
        return {"dataSet": public(_dataset(instance_id, dataset_id))}


@blueprint.post("/dataSets/list")
def list_datasets(instance_id: str):
    """The instance's datasets, a page at a time."""
    with _sandbox().state.lock:
        return page("dataSets", [public(d) for d in _instance(instance_id)["dataSets"].values()])


@blueprint.delete("/dataSets/<dataset_id>")
def delete_dataset(instance_id: str, dataset_id: str):
    """Delete a dataset and its rows."""
    state = _sandbox().state
    with state.lock:
        dataset = _dataset(instance_id, dataset_id)
        state.cursor().execute(f"DROP TABLE IF EXISTS {dataset['_table']}")
        del _instance(instance_id)["dataSets"][dataset_id]
        state.save()
    return {"dataSetId": dataset_id, "instanceId": instance_id}


# --- uploads ------------------------------------------------------------------------------------------


def _validate_upload(body: Any, dataset: dict[str, Any]) -> dict[str, Any]:
    if not isinstance(body, dict):
        raise _bad("Request body must be a JSON object")
    if body.get("updateStrategy") not in STRATEGIES:
        raise _bad(f"updateStrategy must be one of {', '.join(STRATEGIES)}")
    if body["updateStrategy"].startswith("OVERLAP_") and not is_fact(dataset):
        raise _bad(
            f"{body['updateStrategy']} needs a FACT dataset; {dataset['dataSetId']} is a DIMENSION dataset"
        )
    if body.get("compressionFormat") not in COMPRESSIONS:
        raise _bad(f"compressionFormat must be one of {', '.join(COMPRESSIONS)}")
    # Amazon's uploader sends `"countryCode": null` when the manifest's key names none: no country.
    country = body.get("countryCode")
    if country is not None and not (isinstance(country, str) and _COUNTRY.fullmatch(country)):
        raise _bad("countryCode must match ^[A-Z]{2}$")
    source = body.get("dataSource")
    if not isinstance(source, dict) or not _text(source.get("sourceS3Bucket")):
        raise _bad("dataSource.sourceS3Bucket is required")
    given = [field for field in _SOURCES if field in source]
    if len(given) != 1 or not _text(source[given[0]]):
        raise _bad(f"dataSource needs exactly one of {', '.join(_SOURCES)}")
    _validate_file_format(body.get("fileFormat"))
    return body


def _text(value: Any) -> bool:
    return isinstance(value, str) and bool(value)


def _validate_file_format(file_format: Any) -> None:
    if not isinstance(file_format, dict) or len(file_format) != 1 or next(iter(file_format)) not in _FORMATS:
        raise _bad(f"fileFormat needs exactly one of {', '.join(_FORMATS)}")
    if "csvDataFormat" in file_format:
        options = file_format["csvDataFormat"]
        if not isinstance(options, dict):
            raise _bad("fileFormat.csvDataFormat must be an object")
        for field in ("fieldDelimiter", "quoteCharacter", "quoteEscapeCharacter", "commentCharacter"):
            if field in options and not (isinstance(options[field], str) and len(options[field]) == 1):
                raise _bad(f"fileFormat.csvDataFormat.{field} must be one character")
        if "recordDelimiter" in options and options["recordDelimiter"] not in ("\n", "\r\n"):
            raise _bad("fileFormat.csvDataFormat.recordDelimiter must be a line break")
    elif "jsonDataFormat" in file_format and file_format["jsonDataFormat"] not in ("LINES", "DOCUMENT"):
        raise _bad("fileFormat.jsonDataFormat must be LINES or DOCUMENT")
    elif "parquetDataFormat" in file_format and file_format["parquetDataFormat"] != "PARQUET_DATA_FORMAT":
        raise _bad("fileFormat.parquetDataFormat must be PARQUET_DATA_FORMAT")


@blueprint.post("/uploads/<dataset_id>")
def start_upload(instance_id: str, dataset_id: str):
    """Accept an upload; the files are read when it runs (see `upload_status`)."""
    body = json_body()
    state = _sandbox().state
    with state.lock:
        dataset = _dataset(instance_id, dataset_id)
        upload_request = _validate_upload(body, dataset)
        upload_id = str(uuid.uuid4())
        stamp = now_iso()
        country = upload_request.get("countryCode") or dataset.get("countryCode")
        _instance(instance_id)["uploads"][upload_id] = new_job(
            "SUBMITTED",
            uploadId=upload_id,
            dataSetId=dataset_id,
            instanceId=instance_id,
            createdAt=stamp,
            updatedAt=stamp,
            **({"countryCode": country} if country else {}),
            dataSource=upload_request["dataSource"],
            _request={key: upload_request[key] for key in _READ_SETTINGS},
        )
        state.save()
    return {"uploadId": upload_id, "status": "SUBMITTED"}


@blueprint.get("/uploads/<dataset_id>/<upload_id>")
def upload_status(instance_id: str, dataset_id: str, upload_id: str):
    """An upload's status; polling moves it on, and it ingests its files on leaving IN_PROGRESS."""
    sandbox = _sandbox()
    with sandbox.state.lock:
        upload = _instance(instance_id)["uploads"].get(upload_id)
        if upload is None or upload["dataSetId"] != dataset_id:
            raise ApiError(404, "NOT_FOUND", f"Upload {upload_id} of dataset {dataset_id} does not exist")
        poll(upload, sandbox.config, lambda job: _step_upload(instance_id, job))
        sandbox.state.save()
        return {"upload": public(upload)}


def _step_upload(instance_id: str, upload: dict[str, Any]) -> str | None:
    if upload["status"] == "SUBMITTED":
        upload["updatedAt"] = now_iso()
        return "IN_PROGRESS"
    if upload["status"] != "IN_PROGRESS":
        return None
    upload["updatedAt"] = now_iso()
    dataset = _instance(instance_id)["dataSets"].get(upload["dataSetId"])
    if dataset is None:
        upload.update(message=f"Dataset {upload['dataSetId']} was deleted", metrics={})
        return "FAILED"
    sandbox = _sandbox()
    cursor = sandbox.state.cursor()
    try:
        # The identity resolution columns (user_id, user_type) hold what AMC resolves, not file data.
        stored = {**dataset, "columns": stored_columns(dataset)}
        job = {**upload, **upload["_request"]}
        result = ingest(cursor, sandbox.config.aws_endpoint_url, stored, dataset["_table"], job)
    except (UploadFailed, duckdb.Error) as error:
        # As the guide's failed uploads show: a message and empty metrics.
        upload.update(message=str(error), metrics={})
        return "FAILED"
    finally:
        cursor.close()
    dropped = result.input_rows - result.output_rows
    upload.update(
        message=f"{result.output_rows} rows stored; {dropped} rows dropped (null or invalid values)",
        # OutputRowCount is the one metric Amazon's material shows; the message tells the rest.
        metrics={"OutputRowCount": result.output_rows},
    )
    return "SUCCESS"


@blueprint.post("/uploads/list")
def list_uploads(instance_id: str):
    """Uploads of the instance, optionally of one dataset and in one status, a page at a time."""
    dataset_id, status = request.args.get("dataSetId"), request.args.get("status")
    if status is not None and status not in UPLOAD_STATUSES:
        raise _bad(f"status must be one of {', '.join(UPLOAD_STATUSES)}")
    with _sandbox().state.lock:
        uploads = [
            public(u)
            for u in _instance(instance_id)["uploads"].values()
            if dataset_id in (None, u["dataSetId"]) and status in (None, u["status"])
        ]
    return page("uploads", uploads)


# --- user deletion ------------------------------------------------------------------------------------


@blueprint.post("/userDeletionRequest")
def request_user_deletion(instance_id: str):
    """Accept identities to delete from every dataset of the instance."""
    targets = validate_targets(json_body())
    state = _sandbox().state
    request_id = str(uuid.uuid4())
    with state.lock:
        _instance(instance_id)["deletions"][request_id] = new_job(
            "PENDING",
            userDeletionRequestId=request_id,
            identityCount=len(targets),
            creationDateTime=now_iso(),
            _targets=targets,
        )
        state.save()
    return {"userDeletionRequestId": request_id}


@blueprint.get("/userDeletionRequest/<request_id>")
def user_deletion_status(instance_id: str, request_id: str):
    """A deletion's status; the rows go when it moves from PENDING to SUCCEEDED."""
    sandbox = _sandbox()
    with sandbox.state.lock:
        deletion = _instance(instance_id)["deletions"].get(request_id)
        if deletion is None:
            raise ApiError(404, "NOT_FOUND", f"User deletion request {request_id} does not exist")
        poll(deletion, sandbox.config, lambda job: _step_deletion(instance_id, job))
        sandbox.state.save()
        return {"identityDeletion": public(deletion)}


def _step_deletion(instance_id: str, deletion: dict[str, Any]) -> str | None:
    if deletion["status"] != "PENDING":
        return None
    cursor = _sandbox().state.cursor()
    try:
        for dataset in _instance(instance_id)["dataSets"].values():
            delete_identities(cursor, dataset, dataset["_table"], deletion["_targets"])
    finally:
        cursor.close()
    return "SUCCEEDED"
