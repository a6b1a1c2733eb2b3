"""Fault injection, a request journal and reset, shared by both sandbox servers as WSGI middleware.

The admin API lives under `/_sandbox/`, outside every Amazon path:

- `POST /_sandbox/faults` `{"route": "<METHOD> <path prefix>" | "<X-Amz-Target>", "status": 429|500|503,
  "rate": 0..1, "count": n?, "retry_after": seconds?, "latency_ms": n?, "record_failure_rate": 0..1?,
  "barrier": n?, "barrier_timeout_s": seconds?}`
- `DELETE /_sandbox/faults`, `GET /_sandbox/journal`, `POST /_sandbox/reset`.
- Routes of one server's own, such as the AWS server's `POST /_sandbox/iam` (`sandbox.iam`).
"""

import contextlib
import io
import json
import random
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel, Field, ValidationError
from werkzeug.wrappers import Request, Response

ADMIN_PREFIX = "/_sandbox/"


class FaultRule(BaseModel):
    """One fault: which requests it hits, how often, and what they get."""

    route: str = Field(min_length=1)
    status: int | None = Field(default=None, description="429, 500 or 503; none for latency-only rules")
    rate: float = Field(default=1.0, ge=0, le=1)
    count: int | None = Field(default=None, ge=1, description="stop after this many faults")
    retry_after: int | None = Field(default=None, ge=0)
    latency_ms: int | None = Field(default=None, ge=0)
    record_failure_rate: float | None = Field(default=None, ge=0, le=1)
    barrier: int | None = Field(
        default=None,
        ge=2,
        description="hold the first n matching requests until all n have arrived, then let them on "
        "together (once), so that n clients are provably in flight at the same time",
    )
    barrier_timeout_s: float = Field(
        default=300, gt=0, description="how long a held request waits for the others before going on"
    )

    def matches(self, method: str, path: str, target: str | None) -> bool:
        """See `route_matches`."""
        return route_matches(self.route, method, path, target)


def route_matches(route: str, method: str, path: str, target: str | None = None) -> bool:
    """`METHOD /path-prefix` matches requests by method and path; anything else is an X-Amz-Target."""
    verb, _, prefix = route.partition(" ")
    if prefix:
        return verb.upper() == method.upper() and path.startswith(prefix)
    return target == route


@dataclass
class Decision:
    """What the faults say about one request."""

    latency_ms: int = 0
    status: int | None = None
    retry_after: int | None = None
    record_failure_rate: float | None = None
    # Barriers to wait at before answering, with how long to wait at each.
    barriers: list[tuple[threading.Barrier, float]] = field(default_factory=list)

    def wait(self) -> None:
        """The latency, then each barrier (a barrier whose others never came lets its requests on)."""
        if self.latency_ms:
            time.sleep(self.latency_ms / 1000)
        for barrier, timeout in self.barriers:
            with contextlib.suppress(threading.BrokenBarrierError):
                barrier.wait(timeout)


@dataclass
class _Barrier:
    """A rule's barrier, and how many more requests it holds (it holds its first n only)."""

    barrier: threading.Barrier
    places: int


@dataclass
class Faults:
    """The active fault rules; thread-safe, seeded so a test run is repeatable."""

    seed: int = 0
    _rules: list[FaultRule] = field(default_factory=list)
    _remaining: list[int | None] = field(default_factory=list)
    _barriers: list[_Barrier | None] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def __post_init__(self) -> None:
        self._random = random.Random(self.seed)

    def add(self, rule: FaultRule) -> None:
        with self._lock:
            self._rules.append(rule)
            self._remaining.append(rule.count)
            held = _Barrier(threading.Barrier(rule.barrier), rule.barrier) if rule.barrier else None
            self._barriers.append(held)

    def clear(self) -> None:
        with self._lock:
            self._rules.clear()
            self._remaining.clear()
            for held in self._barriers:
                if held is not None:
                    held.barrier.abort()  # requests held at a cleared barrier go on
            self._barriers.clear()

    def held(self) -> int:
        """How many requests wait at barriers now: each is provably in flight until its barrier lets it
        on."""
        with self._lock:
            return sum(held.barrier.n_waiting for held in self._barriers if held is not None)

    def decide(self, method: str, path: str, target: str | None) -> Decision:
        """Latency adds up over matching rules; the first rule that fires sets the status."""
        decision = Decision()
        with self._lock:
            for i, rule in enumerate(self._rules):
                if not rule.matches(method, path, target):
                    continue
                decision.latency_ms += rule.latency_ms or 0
                held = self._barriers[i]
                if held is not None and held.places > 0:
                    held.places -= 1
                    decision.barriers.append((held.barrier, rule.barrier_timeout_s))
                if rule.record_failure_rate is not None and decision.record_failure_rate is None:
                    decision.record_failure_rate = rule.record_failure_rate
                if rule.status is None or decision.status is not None or self._remaining[i] == 0:
                    continue
                if self._random.random() < rule.rate:
                    decision.status, decision.retry_after = rule.status, rule.retry_after
                    if self._remaining[i] is not None:
                        self._remaining[i] -= 1
        return decision


@dataclass
class Journal:
    """Requests as the server received them: method, path, status, (where recorded) the body, and
    when the server received the request and finished its answer (`started`, `ended`: seconds on the
    server's monotonic clock, for the order and overlap of requests, not for the time of day)."""

    entries: list[dict[str, Any]] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def record(self, method: str, path: str, status: int, body: Any, started: float, ended: float) -> None:
        entry = {"method": method, "path": path, "status": status, "body": body}
        with self._lock:
            self.entries.append({**entry, "started": started, "ended": ended})

    def snapshot(self) -> list[dict[str, Any]]:
        with self._lock:
            return list(self.entries)

    def clear(self) -> None:
        with self._lock:
            self.entries.clear()


FaultResponder = Callable[[Request, Decision], Response]
# A server's own admin route: the request in, the JSON body and status of the answer out.
AdminRoute = Callable[[Request], tuple[Any, int]]


class SandboxMiddleware:
    """Serves `/_sandbox/*`, applies faults, and journals every other request of the wrapped app.

    `respond_fault` builds the API family's own error response for a fault; `journal_body` says
    which request bodies the journal keeps (hashed APIs only: never secrets or raw PII);
    `admin_routes` maps `(METHOD, /_sandbox/... path)` to the server's own admin routes.
    """

    def __init__(
        self,
        app: Callable,
        faults: Faults,
        journal: Journal,
        reset: Callable[[], None],
        respond_fault: FaultResponder,
        journal_body: Callable[[Request], Any] = lambda request: None,
        admin_routes: Mapping[tuple[str, str], AdminRoute] | None = None,
    ):
        self.app, self.faults, self.journal, self.reset = app, faults, journal, reset
        self.respond_fault, self.journal_body = respond_fault, journal_body
        self.admin_routes = dict(admin_routes or {})

    def __call__(self, environ: dict, start_response: Callable) -> Iterable[bytes]:
        started = time.monotonic()
        request = Request(environ)
        if request.path.startswith(ADMIN_PREFIX):
            return self._admin(request)(environ, start_response)
        # Read the body once and hand the wrapped app a fresh stream of it, for the journal's sake.
        data = request.get_data(cache=True)
        environ["wsgi.input"] = io.BytesIO(data)
        environ["CONTENT_LENGTH"] = str(len(data))
        decision = self.faults.decide(request.method, request.path, request.headers.get("X-Amz-Target"))
        decision.wait()
        environ["sandbox.decision"] = decision
        statuses: list[int] = []

        def recording_start_response(status: str, headers: list, exc_info: Any = None):
            statuses.append(int(status.split(" ", 1)[0]))
            return start_response(status, headers, exc_info)

        if decision.status is not None:
            result = self.respond_fault(request, decision)(environ, recording_start_response)
        else:
            result = self.app(environ, recording_start_response)
        body = list(result)
        status = statuses[0] if statuses else 0
        ended = time.monotonic()
        self.journal.record(request.method, request.path, status, self.journal_body(request), started, ended)
        return body

    def _admin(self, request: Request) -> Response:
        route = (request.method, request.path.rstrip("/"))
        if route == ("POST", "/_sandbox/faults"):
            try:
                rule = FaultRule.model_validate_json(request.get_data() or b"{}")
            except ValidationError as error:
                return _json({"error": "invalid fault", "details": json.loads(error.json())}, 400)
            self.faults.add(rule)
            return _json({"added": rule.model_dump(exclude_none=True)}, 201)
        if route == ("DELETE", "/_sandbox/faults"):
            self.faults.clear()
            return _json({"cleared": True})
        if route == ("GET", "/_sandbox/journal"):
            return _json({"entries": self.journal.snapshot()})
        if route == ("POST", "/_sandbox/reset"):
            self.reset()
            self.faults.clear()
            self.journal.clear()
            return _json({"reset": True})
        if route in self.admin_routes:
            return _json(*self.admin_routes[route](request))
        return _json({"error": f"no sandbox admin route {request.method} {request.path}"}, 404)


def _json(body: Any, status: int = 200) -> Response:
    return Response(json.dumps(body), status=status, mimetype="application/json")
