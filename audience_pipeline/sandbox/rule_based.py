"""AMC rule-based audiences: SQL over uploaded datasets in DuckDB, followed to SUCCEEDED or FAILED.

Shapes per Rule-BasedAudiences_prod_3p.json, behaviour per Amazon's rule-based audiences guide:
- Answers come in versioned media types. A GET answers the version its Accept header asks for
  (`application/vnd.amcquerybasedaudience.v1.2+json` as Amazon's Postman collection sends, v1 for
  `application/json` or none) with exactly that version's fields; POST answers v1, PUT v1.2, errors v1.
- Only a FAILED audience can be updated (PUT, which runs it again) or deleted; a SUCCEEDED one keeps
  its name, query and parameters.
"""

import json
import re
import secrets
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import duckdb
from flask import Blueprint, Response, current_app, request

from audience_pipeline.sandbox.amc_datasets import event_time_column
from audience_pipeline.sandbox.amc_jobs import (
    answer_as,
    new_job,
    now_iso,
    page,
    poll,
    public,
    require_headers,
)
from audience_pipeline.sandbox.amc_synthetic import create_synthetic_views
from audience_pipeline.sandbox.errors import ApiError, json_body

blueprint = Blueprint("rule_based", __name__, url_prefix="/amc/audiences/query")

INSTANCE_HEADER = "Amazon-Marketing-Cloud-Audience-InstanceId"
MINIMUM_USERS = 2000
V1 = "application/vnd.amcquerybasedaudience.v1+json"
V1_1 = "application/vnd.amcquerybasedaudience.v1.1+json"
V1_2 = "application/vnd.amcquerybasedaudience.v1.2+json"
_V1_FIELDS = frozenset(
    {
        "advertiserId",
        "audienceDescription",
        "audienceExecutionId",
        "audienceName",
        "countryCode",
        "createTime",
        "dspAudienceId",
        "instanceId",
        "lastRefreshedTime",
        "query",
        "refreshRateDays",
        "status",
        "statusReason",
        "timeWindowEnd",
        "timeWindowRelative",
        "timeWindowStart",
    }
)
_V1_1_FIELDS = _V1_FIELDS | {"audienceCount", "dspCanonicalId"}
# The fields of an audience each version of the answer carries.
FIELDS = {
    V1: _V1_FIELDS,
    V1_1: _V1_1_FIELDS,
    V1_2: _V1_1_FIELDS
    | {
        "advertiserType",
        "audienceType",
        "deletable",
        "inputParameters",
        "lookalikeAudienceExpectedReach",
        "no3pTrackers",
        "parameterValues",
        "workflowId",
    },
}
COUNTRIES = frozenset(
    ["AE", "AU", "BR", "CA", "DE", "ES", "FR", "IN", "IT", "JP", "MX", "NL", "SA", "SE", "TR", "UK", "US"]
)
_TIME = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}Z")


@blueprint.before_request
def require_instance_header() -> None:
    """Every call names the AMC instance whose data the audience is built from."""
    require_headers(INSTANCE_HEADER)


@blueprint.after_request
def label_answer(response: Response) -> Response:
    """JSON answers not labelled by their handler (POST, errors) in the v1 media type."""
    return answer_as(response, V1)


def _sandbox():
    return current_app.config["SANDBOX"]


def _audiences() -> dict[str, dict[str, Any]]:
    audiences = _sandbox().state.family("amc").setdefault("audiences", {})
    return audiences.setdefault(request.headers[INSTANCE_HEADER], {})


def _audience(execution_id: str) -> dict[str, Any]:
    audience = _audiences().get(execution_id)
    if audience is None:
        raise ApiError(404, "NOT_FOUND", f"Audience execution {execution_id} does not exist")
    return audience


def _bad(details: str) -> ApiError:
    return ApiError(400, "BAD_REQUEST", details)


def _answer(body: dict[str, Any], media_type: str) -> Response:
    return Response(json.dumps(body), mimetype=media_type)


def _version() -> str:
    """The media type the request's Accept header asks for: v1 unless it names v1.1 or v1.2."""
    return request.accept_mimetypes.best_match([V1, V1_1, V1_2]) or V1


def _shown(audience: dict[str, Any], media_type: str) -> dict[str, Any]:
    """An audience as one version of the answer shows it."""
    shown = {**public(audience), "deletable": audience["status"] == "FAILED"}
    return {key: value for key, value in shown.items() if key in FIELDS[media_type]}


def _validate(body: Any, required: tuple[str, ...]) -> dict[str, Any]:
    """The settings of a POST or PUT body, or a 400. Keys the sandbox does not use are ignored."""
    if not isinstance(body, dict):
        raise _bad("Request body must be a JSON object")
    for field in ("audienceName", "advertiserId", *required):
        if not isinstance(body.get(field), str) or not body[field].strip():
            raise _bad(f"{field} is required and must be a string")
    if "workflowId" in body:
        raise _bad("The sandbox builds audiences from query only; workflowId is not supported")
    if not isinstance(body.get("query"), str) or not body["query"].strip():
        raise _bad("query is required")
    if "audienceDescription" in body and not isinstance(body["audienceDescription"], str):
        raise _bad("audienceDescription must be a string")
    if "countryCode" in body and body["countryCode"] not in COUNTRIES:
        raise _bad(f"countryCode must be one of {', '.join(sorted(COUNTRIES))}")
    start, end = (_time(body, field) for field in ("timeWindowStart", "timeWindowEnd"))
    if start >= end:
        raise _bad("timeWindowStart must be before timeWindowEnd")
    refresh = body.get("refreshRateDays", 21)
    if isinstance(refresh, bool) or not isinstance(refresh, int) or not 0 <= refresh <= 21:
        raise _bad("refreshRateDays must be an integer from 0 to 21")
    relative = body.get("timeWindowRelative", False)
    # The definition types the flag boolean; Amazon's guide and Postman samples send "TRUE".
    if isinstance(relative, str) and relative.lower() in ("true", "false"):
        relative = relative.lower() == "true"
    if not isinstance(relative, bool):
        raise _bad("timeWindowRelative must be a boolean")
    settings = {
        field: body[field]
        for field in ("audienceName", "audienceDescription", "advertiserId", "countryCode", "query")
        if field in body
    }
    return {
        **settings,
        "timeWindowStart": body["timeWindowStart"],
        "timeWindowEnd": body["timeWindowEnd"],
        "refreshRateDays": refresh,
        "timeWindowRelative": relative,
    }


def _time(body: dict[str, Any], field: str) -> datetime:
    value = body.get(field)
    try:
        if not isinstance(value, str) or not _TIME.fullmatch(value):
            raise ValueError
        return datetime.strptime(value, "%Y-%m-%dT%H:%M:%SZ")
    except ValueError:
        raise _bad(f"{field} must be a time in the format yyyy-MM-ddTHH:mm:ssZ") from None


@blueprint.post("")
def create_audience():
    """Submit a rule-based audience; it runs its SQL once it leaves PENDING."""
    settings = _validate(json_body(), ())
    execution_id = str(uuid.uuid4())
    state = _sandbox().state
    stamp = now_iso()
    with state.lock:
        _audiences()[execution_id] = new_job(
            "PENDING",
            audienceExecutionId=execution_id,
            instanceId=request.headers[INSTANCE_HEADER],
            audienceType="RULE_BASED",
            createTime=stamp,
            lastRefreshedTime=stamp,
            **settings,
        )
        state.save()
    return {
        "audienceExecutionId": execution_id,
        "status": "PENDING",
        "audienceExecutionDescription": "Successfully started audience creation workflow.",
    }


@blueprint.get("/<execution_id>")
def audience_status(execution_id: str):
    """An audience's record in the version the Accept header asks for; polling moves it on."""
    sandbox = _sandbox()
    instance_id = request.headers[INSTANCE_HEADER]
    media_type = _version()
    with sandbox.state.lock:
        audience = _audience(execution_id)
        poll(audience, sandbox.config, lambda job: _step(instance_id, job))
        sandbox.state.save()
        return _answer(_shown(audience, media_type), media_type)


@blueprint.get("")
def list_audiences():
    """The instance's audiences, a page at a time, in the version the Accept header asks for."""
    media_type = _version()
    with _sandbox().state.lock:
        audiences = [_shown(audience, media_type) for audience in _audiences().values()]
    return _answer(page("executionMetadata", audiences), media_type)


def _failed_audience(execution_id: str, done: str) -> dict[str, Any]:
    """The audience, if it FAILED: Amazon updates and deletes no other (rule-based audiences guide)."""
    audience = _audience(execution_id)
    if audience["status"] != "FAILED":
        raise _bad(f"Audience {execution_id} is {audience['status']}: only FAILED audiences can be {done}")
    return audience


@blueprint.put("/<execution_id>")
def update_audience(execution_id: str):
    """Change a FAILED audience's query, time window or description, and run it again."""
    settings = _validate(json_body(), ("audienceType",))
    state = _sandbox().state
    with state.lock:
        audience = _failed_audience(execution_id, "updated")
        for field in ("audienceName", "advertiserId"):
            if settings[field] != audience[field]:
                raise _bad(f"{field} of an audience cannot be changed")
        audience.pop("statusReason", None)
        audience.update(new_job("PENDING", **settings), refreshRateDays=audience["refreshRateDays"])
        state.save()
    return _answer(
        {
            "audienceExecutionId": execution_id,
            "status": "PENDING",
            "audienceExecutionDescription": "Successfully started audience update workflow.",
        },
        V1_2,
    )


@blueprint.delete("/<execution_id>")
def delete_audience(execution_id: str):
    """Delete a FAILED audience (Amazon deletes no other)."""
    state = _sandbox().state
    with state.lock:
        _failed_audience(execution_id, "deleted")
        del _audiences()[execution_id]
        state.save()
    return Response(status=204)


def _step(instance_id: str, audience: dict[str, Any]) -> str | None:
    if audience["status"] == "PENDING":
        return "RUNNING"
    if audience["status"] == "SUCCEEDED" and audience["refreshRateDays"] == 0:
        # An audience that is never refreshed is deactivated 30 days after it was created.
        created = _time(audience, "createTime")
        return (
            "DEACTIVATED" if datetime.now(UTC).replace(tzinfo=None) - created >= timedelta(days=30) else None
        )
    if audience["status"] != "RUNNING":
        return None
    state = _sandbox().state
    datasets = state.family("amc").get("instances", {}).get(instance_id, {}).get("dataSets", {})
    cursor = state.cursor()
    try:
        count = _count_users(cursor, datasets, audience)
    except (duckdb.Error, ValueError) as error:
        audience["statusReason"] = str(error)
        return "FAILED"
    finally:
        cursor.close()
    if count < MINIMUM_USERS:
        audience["statusReason"] = f"The audience is below the {MINIMUM_USERS:,}-user minimum"
        return "FAILED"
    # DSP audience ids exceed 2^53: a string keeps them exact for every client.
    audience.update(audienceCount=count, dspAudienceId=str(2**53 + secrets.randbelow(10**15)))
    audience["lastRefreshedTime"] = now_iso()
    return "SUCCEEDED"


def _count_users(
    cursor: duckdb.DuckDBPyConnection, datasets: dict[str, dict[str, Any]], audience: dict
) -> int:
    """Distinct users the audience's query selects, over its time window of the datasets (by
    dataSetId; a FACT dataset shows only rows whose main event time falls in the window) and the
    synthetic tables.

    Raises ValueError when the query is not one SELECT of `user_id` alone.
    """
    statements = cursor.extract_statements(audience["query"])
    if len(statements) != 1 or statements[0].type != duckdb.StatementType.SELECT:
        raise ValueError("The query must be a single SELECT statement")
    sql = statements[0].query.strip().rstrip(";")
    cursor.execute("SET TimeZone = 'UTC'")
    create_synthetic_views(cursor)
    window = [_time(audience, "timeWindowStart"), _time(audience, "timeWindowEnd")]
    for name, dataset in datasets.items():
        event_time = event_time_column(dataset)
        # Views take no parameters; the bounds are timestamps this module parsed itself.
        start, end = (f"TIMESTAMP '{bound:%Y-%m-%d %H:%M:%S}'" for bound in window)
        where = f'WHERE "{event_time}" >= {start} AND "{event_time}" < {end}' if event_time else ""
        cursor.execute(f'CREATE OR REPLACE TEMP VIEW "{name}" AS SELECT * FROM {dataset["_table"]} {where}')
    columns = cursor.sql(sql).columns
    if columns != ["user_id"]:
        raise ValueError(f"The final SELECT must return user_id only; it returns {', '.join(columns)}")
    return cursor.execute(f"SELECT count(DISTINCT user_id) FROM ({sql})").fetchone()[0]
