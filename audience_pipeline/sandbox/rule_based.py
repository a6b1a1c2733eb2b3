"""AMC rule-based audiences: SQL over uploaded datasets in DuckDB, followed to SUCCEEDED or FAILED."""

import re
import secrets
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import duckdb
from flask import Blueprint, Response, current_app, request

from audience_pipeline.sandbox.amc_datasets import event_time_column
from audience_pipeline.sandbox.amc_jobs import new_job, now_iso, page, poll, public, require_headers
from audience_pipeline.sandbox.amc_synthetic import create_synthetic_views
from audience_pipeline.sandbox.errors import ApiError, json_body

blueprint = Blueprint("rule_based", __name__, url_prefix="/amc/audiences/query")

INSTANCE_HEADER = "Amazon-Marketing-Cloud-Audience-InstanceId"
MINIMUM_USERS = 2000
_TIME = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}Z")


@blueprint.before_request
def require_instance_header() -> None:
    """Every call names the AMC instance whose data the audience is built from."""
    require_headers(INSTANCE_HEADER)


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


def _validate(body: Any) -> dict[str, Any]:
    if not isinstance(body, dict):
        raise _bad("Request body must be a JSON object")
    for field in ("audienceName", "query"):
        if not isinstance(body.get(field), str) or not body[field].strip():
            raise _bad(f"{field} is required")
    if "audienceDescription" in body and not isinstance(body["audienceDescription"], str):
        raise _bad("audienceDescription must be a string")
    advertiser = body.get("advertiserId")
    if isinstance(advertiser, bool) or not isinstance(advertiser, str | int) or advertiser == "":
        raise _bad("advertiserId is required")
    start, end = (_time(body, field) for field in ("timeWindowStart", "timeWindowEnd"))
    if start >= end:
        raise _bad("timeWindowStart must be before timeWindowEnd")
    refresh = body.get("refreshRateDays", 21)
    if isinstance(refresh, bool) or not isinstance(refresh, int) or not 0 <= refresh <= 21:
        raise _bad("refreshRateDays must be an integer from 0 to 21")
    relative = body.get("timeWindowRelative", False)
    # Amazon's docs show the flag as a string; the spec types it boolean. Take both.
    if isinstance(relative, str) and relative.lower() in ("true", "false"):
        relative = relative.lower() == "true"
    if not isinstance(relative, bool):
        raise _bad("timeWindowRelative must be a boolean")
    return {**body, "refreshRateDays": refresh, "timeWindowRelative": relative}


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
    body = _validate(json_body())
    execution_id = str(uuid.uuid4())
    state = _sandbox().state
    with state.lock:
        _audiences()[execution_id] = new_job(
            "PENDING",
            audienceExecutionId=execution_id,
            audienceName=body["audienceName"],
            audienceDescription=body.get("audienceDescription"),
            advertiserId=body["advertiserId"],
            query=body["query"],
            timeWindowStart=body["timeWindowStart"],
            timeWindowEnd=body["timeWindowEnd"],
            refreshRateDays=body["refreshRateDays"],
            timeWindowRelative=body["timeWindowRelative"],
            createTime=now_iso(),
        )
        state.save()
    return {
        "audienceExecutionId": execution_id,
        "status": "PENDING",
        "audienceExecutionDescription": f"Audience {body['audienceName']} submitted",
    }


@blueprint.get("/<execution_id>")
def audience_status(execution_id: str):
    """An audience's full record; polling moves it on."""
    sandbox = _sandbox()
    instance_id = request.headers[INSTANCE_HEADER]
    with sandbox.state.lock:
        audience = _audience(execution_id)
        poll(audience, sandbox.config, lambda job: _step(instance_id, job))
        sandbox.state.save()
        return public(audience)


@blueprint.get("")
def list_audiences():
    """The instance's audiences, a page at a time."""
    with _sandbox().state.lock:
        items, token = page([public(a) for a in _audiences().values()])
    return {"executionMetadata": items, "nextToken": token}


@blueprint.delete("/<execution_id>")
def delete_audience(execution_id: str):
    """Delete a finished audience (a PENDING or RUNNING one cannot be)."""
    state = _sandbox().state
    with state.lock:
        audience = _audience(execution_id)
        if audience["status"] not in ("FAILED", "SUCCEEDED"):
            raise _bad(f"Only FAILED or SUCCEEDED audiences can be deleted; this one is {audience['status']}")
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
