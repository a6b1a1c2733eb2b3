"""AMC rule-based audience settings (seed 003, target `rule_based_audiences`), checked before any call.

AMC answers a bad time window or refresh rate with a 400, and an audience whose SQL does not select
`user_id` alone only fails once it has run; both are caught here, at load time, naming the setting.
The SQL is parsed with DuckDB's own parser (`json_serialize_sql`): it checks syntax and the shape of
the final SELECT, not whether the tables exist (they live in the AMC instance).
"""

import json
import re
from collections.abc import Iterable, Mapping
from datetime import UTC, date, datetime
from typing import Annotated, Any

import duckdb
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    field_validator,
    model_validator,
)

from audience_pipeline.clients.amc import amc_time

# Amazon DSP does not serve an audience of fewer users; AMC fails such an audience.
MINIMUM_AUDIENCE_SIZE = 2000
AUDIENCE_COLUMN = "user_id"

NonBlank = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1)]


class RuleBasedAudienceSettings(BaseModel):
    """One rule-based audience, by seed 003's setting names; `to_create_kwargs()` gives the API call."""

    # Unknown keys are refused, so that a misspelt optional setting cannot silently take its default.
    model_config = ConfigDict(extra="forbid", populate_by_name=True, frozen=True)

    audience_name: NonBlank
    audience_description: str | None = None
    advertiser_id: int | str = Field(description="Amazon DSP advertiser id (digits); ids may exceed 2^53")
    # Seed 003's workflow calls it `query`; `sql` is this project's name for SQL settings everywhere,
    # and one name only keeps YAML and Python alike.
    sql: NonBlank = Field(description="AMC SQL whose final SELECT returns only user_id (seed 003: `query`)")
    time_window_start: str = Field(description="Start of the data queried, as yyyy-MM-ddTHH:mm:ssZ (UTC)")
    time_window_end: str = Field(description="End of the data queried, as yyyy-MM-ddTHH:mm:ssZ (UTC)")
    refresh_rate_days: int = Field(default=21, ge=0, le=21, description="0 deactivates after 30 days")
    time_window_relative: bool = False

    @field_validator("advertiser_id", "refresh_rate_days", mode="before")
    @classmethod
    def _not_a_boolean(cls, value: Any) -> Any:
        # pydantic would read True as 1: a YAML `yes` is never meant as an id or a number of days.
        if isinstance(value, bool):
            raise ValueError("must be a number, not a boolean")
        return value

    @field_validator("advertiser_id")
    @classmethod
    def _digits(cls, value: int | str) -> int | str:
        if isinstance(value, str):
            value = value.strip()
        if not str(value).isdigit():
            raise ValueError("must be the advertiser's digits, e.g. 123")
        return value

    @field_validator("time_window_start", "time_window_end", mode="before")
    @classmethod
    def _amc_time(cls, value: Any) -> str:
        return amc_time(_utc(value))

    @field_validator("sql")
    @classmethod
    def _selects_user_id(cls, sql: str) -> str:
        check_audience_sql(sql)
        return sql

    @model_validator(mode="after")
    def _window_in_order(self) -> "RuleBasedAudienceSettings":
        # Both are yyyy-MM-ddTHH:mm:ssZ, so text order is time order.
        if self.time_window_start >= self.time_window_end:
            raise ValueError(
                f"time_window_start ({self.time_window_start}) must be before "
                f"time_window_end ({self.time_window_end})"
            )
        return self

    def to_create_kwargs(self) -> dict[str, Any]:
        """Keyword arguments of `AmcClient.create_audience(self.audience_name, **kwargs)`."""
        return {
            # Rule-BasedAudiences_prod_3p.json types advertiserId as a string.
            "advertiser_id": str(self.advertiser_id),
            "query": self.sql,
            "time_window_start": self.time_window_start,
            "time_window_end": self.time_window_end,
            "refresh_rate_days": self.refresh_rate_days,
            "time_window_relative": self.time_window_relative,
            "description": self.audience_description,
        }


def _utc(value: Any) -> datetime:
    """A time setting as a UTC datetime: ISO text (`Z`, an offset, none = UTC, or a bare date) or a
    date/datetime (naive = UTC)."""
    if isinstance(value, str):
        try:
            value = datetime.fromisoformat(value.strip())
        except ValueError:
            raise ValueError(
                f"{value!r} is not a time: use yyyy-MM-ddTHH:mm:ss (UTC), with Z or an offset, or yyyy-MM-dd"
            ) from None
    elif isinstance(value, date) and not isinstance(value, datetime):
        value = datetime(value.year, value.month, value.day)
    if not isinstance(value, datetime):
        raise ValueError("must be a time such as 2023-06-25T00:00:00Z")
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def check_audience_sql(sql: str) -> None:
    """Raise ValueError unless `sql` is one SELECT whose final select list is `user_id` alone.

    Each branch of a UNION (or other set operation) must end in `user_id`; CTEs may hold anything.
    `user_id` is case-sensitive, as AMC has it.
    """
    with duckdb.connect() as connection:
        (serialized,) = connection.execute("SELECT json_serialize_sql(?)", [sql]).fetchone()
    parsed = json.loads(serialized)
    if parsed["error"]:
        raise ValueError(f"not a single SELECT statement: {parsed['error_message']}")
    if len(parsed["statements"]) != 1:
        raise ValueError(f"must be a single SELECT statement, got {len(parsed['statements'])}")
    for columns in _final_select_lists(parsed["statements"][0]["node"]):
        if columns != [AUDIENCE_COLUMN]:
            raise ValueError(
                f"the final SELECT must return {AUDIENCE_COLUMN} only (case-sensitive); "
                f"it returns {', '.join(columns)}"
            )


def _final_select_lists(node: Mapping[str, Any]) -> list[list[str]]:
    """The output column names of each SELECT whose rows the statement returns."""
    if node["type"] == "SET_OPERATION_NODE":
        # DuckDB 2 lists the branches as `children`; earlier versions as `left` and `right`.
        branches = node.get("children") or [node["left"], node["right"]]
        return [columns for branch in branches for columns in _final_select_lists(branch)]
    if node["type"] != "SELECT_NODE":
        raise ValueError(f"must be a plain SELECT, not {node['type']}")
    return [[_output_name(expression) for expression in node["select_list"]]]


def _output_name(expression: Mapping[str, Any]) -> str:
    """The name a select-list expression gives its column, as the user would read it."""
    if expression["alias"]:
        return expression["alias"]
    if expression["class"] == "COLUMN_REF":
        return expression["column_names"][-1]
    if expression["class"] == "STAR":
        return "*"
    return f"an unnamed {expression['class'].lower()} expression (add AS {AUDIENCE_COLUMN})"


def datasets_named(sql: str, dataset_ids: Iterable[str]) -> list[str]:
    """The dataset ids `sql` names as whole words: the datasets an audience reads unless told which."""
    return [dataset_id for dataset_id in dataset_ids if re.search(rf"\b{re.escape(dataset_id)}\b", sql)]


def planned_audience_calls() -> list[str]:
    """The AMC calls that submitting an audience may make (`ensure_audience`), as a dry run reports them."""
    return [
        "GET /amc/audiences/query (find by name, or its latest _v<n> version)",
        "POST /amc/audiences/query (unless found with these settings), or "
        "PUT /amc/audiences/query/{id} (a FAILED one)",
    ]


def audience_size_check(audience: Mapping[str, Any]) -> tuple[bool, str]:
    """Whether an audience (as `GET /amc/audiences/query/{id}` gives it) reaches Amazon DSP's minimum
    size, and a description with its count and any `statusReason`."""
    count = audience.get("audienceCount")
    reason = audience.get("statusReason")
    if count is None:
        description = f"AMC reported no audience count (status {audience.get('status', 'unknown')})"
    else:
        description = f"{count:,} users; Amazon DSP needs at least {MINIMUM_AUDIENCE_SIZE:,}"
    if reason:
        description += f"; AMC says: {reason}"
    return count is not None and count >= MINIMUM_AUDIENCE_SIZE, description
