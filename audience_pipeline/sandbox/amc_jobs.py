"""What the AMC handlers share: job stepping, pagination, media types, timestamps, required headers.

A job is a record with a `status`; its bookkeeping lives in `_`-prefixed keys that `public()` strips.
"""

import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from flask import Response, request

from audience_pipeline.sandbox.config import SandboxConfig
from audience_pipeline.sandbox.errors import ApiError

MAX_RESULTS = 100


def now_iso() -> str:
    """The current UTC time as AMC writes it: `yyyy-MM-ddTHH:mm:ssZ`."""
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def new_job(status: str, **fields: Any) -> dict[str, Any]:
    """A job record in its first state."""
    return {**fields, "status": status, "_since": time.time(), "_polls": 0}


def poll(job: dict[str, Any], config: SandboxConfig, step: Callable[[dict[str, Any]], str | None]) -> None:
    """Count one status poll of `job`, first moving it on while it has waited out its current state.

    `step(job)` does the work of leaving the current state and names the next one (None when final).
    """
    now = time.time()
    while job["_polls"] >= config.job_step_polls and now - job["_since"] >= config.job_step_seconds:
        following = step(job)
        if following is None:
            break
        job.update(status=following, _since=now, _polls=0)
    job["_polls"] += 1


def public(record: dict[str, Any]) -> dict[str, Any]:
    """A record without its sandbox bookkeeping."""
    return {key: value for key, value in record.items() if not key.startswith("_")}


def page(key: str, items: list[Any]) -> dict[str, Any]:
    """A list answer: one page of `items` under `key`, per the request's `maxResults` and `nextToken`
    query parameters.

    `nextToken` is there only when another page follows: Amazon's own AMC uploader pages with
    `while 'nextToken' in response`, so a last page with `"nextToken": null` would never end.
    """
    try:
        size = int(request.args.get("maxResults", MAX_RESULTS))
        start = int(request.args.get("nextToken") or 0)
    except ValueError:
        raise ApiError(
            400, "BAD_REQUEST", "maxResults and nextToken must be the values the API gave"
        ) from None
    if not 1 <= size <= MAX_RESULTS or start < 0:
        raise ApiError(400, "BAD_REQUEST", f"maxResults must be between 1 and {MAX_RESULTS}")
    end = start + size
    return {key: items[start:end], **({"nextToken": str(end)} if end < len(items) else {})}


def answer_as(response: Response, media_type: str) -> Response:
    """`response` (a JSON answer) labelled with the media type Amazon documents for it."""
    if response.mimetype == "application/json":
        response.mimetype = media_type
    return response


def require_headers(*names: str) -> list[str]:
    """The values of required request headers, or a 400 naming the missing ones."""
    missing = [name for name in names if not request.headers.get(name)]
    if missing:
        raise ApiError(400, "BAD_REQUEST", f"Missing required header(s): {', '.join(missing)}")
    return [request.headers[name] for name in names]
