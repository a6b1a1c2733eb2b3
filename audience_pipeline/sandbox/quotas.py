"""Per-stream Direct PUT quotas on the sandbox's Firehose, as a WSGI layer in front of it.

AWS limits each Direct PUT stream to records, requests and bytes per second (the bytes being the
records' data, before base64), across `PutRecord` and `PutRecordBatch`, and answers a call that would
pass them with `ServiceUnavailableException` ("Slow down."). AWS does not say over which window it
counts; the sandbox does what AWS's throttling generally does, a token bucket per limit that refills
at the quota and holds at most one second of it. A quota registered for a stream (`POST
/_sandbox/firehose-quotas` `{"stream": "...", "records_per_second": n?, "requests_per_second": n?,
"bytes_per_second": n?}`, forgotten on reset) refuses a call whole, before it reaches the stream,
when any bucket lacks its share. `GET /_sandbox/firehose-quotas` counts, per stream, the calls taken
and refused. Streams without a quota are unlimited, as moto is. The buckets (`Buckets`) are also the
Ads API's request-rate quotas (`sandbox.api_quotas`).
"""

import io
import json
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field

from pydantic import BaseModel, Field, ValidationError
from werkzeug.wrappers import Request, Response

_TARGET_PREFIX = "Firehose_20150804."
_PUTS = {f"{_TARGET_PREFIX}PutRecord": "Record", f"{_TARGET_PREFIX}PutRecordBatch": "Records"}


class Quota(BaseModel):
    """The body of `POST /_sandbox/firehose-quotas`: a stream's limits per second; unset is unlimited."""

    stream: str = Field(min_length=1)
    records_per_second: int | None = Field(default=None, gt=0)
    requests_per_second: int | None = Field(default=None, gt=0)
    bytes_per_second: int | None = Field(default=None, gt=0)


@dataclass
class Buckets:
    """Token buckets, one a limit, each refilling at its limit per second and holding at most one
    second of it (full at first), or one unit for a limit under one a second (else nothing would ever
    pass it); and the calls they took and refused."""

    limits: dict[str, float]
    updated: float
    tokens: dict[str, float] = field(init=False)
    taken: int = 0
    throttled: int = 0

    def __post_init__(self) -> None:
        self.tokens = {name: max(limit, 1.0) for name, limit in self.limits.items()}

    def admit(self, now: float, wanted: Mapping[str, float]) -> bool:
        """Take the call's share (`wanted`, by limit) if every bucket, refilled up to now, holds it."""
        elapsed, self.updated = now - self.updated, now
        for name, limit in self.limits.items():
            self.tokens[name] = min(max(limit, 1.0), self.tokens[name] + elapsed * limit)
        if any(self.tokens[name] < wanted[name] for name in self.limits):
            self.throttled += 1
            return False
        for name in self.limits:
            self.tokens[name] -= wanted[name]
        self.taken += 1
        return True

    def seconds_until(self, wanted: Mapping[str, float]) -> float:
        """How long until every bucket holds the call's share, as of the last `admit`."""
        return max(
            (max(0.0, wanted[name] - self.tokens[name]) / limit for name, limit in self.limits.items()),
            default=0.0,
        )


def _limits(quota: Quota) -> dict[str, float]:
    limits = {
        "requests": quota.requests_per_second,
        "records": quota.records_per_second,
        "bytes": quota.bytes_per_second,
    }
    return {name: float(limit) for name, limit in limits.items() if limit is not None}


class StreamQuotas:
    """Wraps the Firehose layers; calls to streams without a quota, and other calls, pass through."""

    def __init__(self, app: Callable, clock: Callable[[], float] = time.monotonic):
        self.app, self.clock = app, clock
        self._windows: dict[str, Buckets] = {}
        self._lock = threading.Lock()

    def register(self, request: Request) -> tuple[dict, int]:
        """`POST /_sandbox/firehose-quotas`: the stream's quota, replacing any earlier one."""
        try:
            quota = Quota.model_validate_json(request.get_data() or b"{}")
        except ValidationError as error:
            return {"error": "invalid Firehose quota", "details": json.loads(error.json())}, 400
        with self._lock:
            self._windows[quota.stream] = Buckets(_limits(quota), updated=self.clock())
        return {"registered": quota.stream}, 201

    def counts(self, request: Request) -> tuple[dict, int]:
        """`GET /_sandbox/firehose-quotas`: per stream, the calls taken and throttled."""
        with self._lock:
            return {
                name: {"taken": window.taken, "throttled": window.throttled}
                for name, window in self._windows.items()
            }, 200

    def clear(self) -> None:
        """Forget every quota."""
        with self._lock:
            self._windows.clear()

    def __call__(self, environ: dict, start_response: Callable) -> Iterable[bytes]:
        records_key = _PUTS.get(environ.get("HTTP_X_AMZ_TARGET") or "")
        if records_key is None or not self._windows:
            return self.app(environ, start_response)
        data = Request(environ).get_data()
        # Hand the next layer a fresh stream of the body read here.
        environ["wsgi.input"] = io.BytesIO(data)
        environ["CONTENT_LENGTH"] = str(len(data))
        try:
            body = json.loads(data or b"{}")
            records = body[records_key] if records_key == "Records" else [body[records_key]]
            sizes = [_decoded_size(record["Data"]) for record in records]
            stream = body["DeliveryStreamName"]
        except (ValueError, KeyError, TypeError):
            return self.app(environ, start_response)  # malformed: the stream's own validation answers
        with self._lock:
            window = self._windows.get(stream)
            wanted = {"requests": 1, "records": len(sizes), "bytes": sum(sizes)}
            admitted = window is None or window.admit(self.clock(), wanted)
        if admitted:
            return self.app(environ, start_response)
        answer = json.dumps({"__type": "ServiceUnavailableException", "message": "Slow down."})
        return Response(answer, status=503, mimetype="application/x-amz-json-1.1")(environ, start_response)


def _decoded_size(encoded: str) -> int:
    """The size of base64 `encoded` once decoded, without decoding it."""
    return len(encoded) * 3 // 4 - encoded[-2:].count("=")
