"""Request-rate quotas on the sandbox's Amazon Ads API, as a WSGI layer in front of the emulator.

Amazon throttles a caller of the Ads API that sends too many requests in a period: it answers 429,
with a `Retry-After` header giving the seconds to wait before the next call, and its limits are
dynamic, set by the load on the whole system (Amazon's "Rate limiting" page). Its only published
figure for the endpoints we call is the Data Provider guide's 100 TPS throttle on
`PATCH /v2/dp/audience`. So the sandbox takes whatever rate a test or benchmark gives a route:
`POST /_sandbox/ads-quotas` `{"route": "PATCH /v2/dp/audience", "requests_per_second": n}` (`route`
as a fault's: a method and a path prefix; the same route again replaces its quota; forgotten on
reset). Each quota is a token bucket that refills at the rate and holds at most one second of it, as
the Firehose quotas are (`sandbox.quotas`). A request the first matching quota has no token for is
answered 429 in its API family's error body, with `Retry-After` the whole seconds until a token is
back (at least 1), before it reaches the emulator. `GET /_sandbox/ads-quotas` counts, per route, the
requests taken and throttled. Routes without a quota are unlimited.
"""

import json
import math
import threading
import time
from collections.abc import Callable, Iterable

from pydantic import BaseModel, Field, ValidationError
from werkzeug.wrappers import Request, Response

from audience_pipeline.sandbox.errors import STATUS_CODES, error_body, family_of
from audience_pipeline.sandbox.faults import route_matches
from audience_pipeline.sandbox.quotas import Buckets

_ONE_REQUEST = {"requests": 1}


class ApiQuota(BaseModel):
    """The body of `POST /_sandbox/ads-quotas`: a route and the requests per second it takes."""

    route: str = Field(pattern=r"^[A-Za-z]+ /\S*$", description="`METHOD /path-prefix`")
    requests_per_second: float = Field(gt=0)


class RouteQuotas:
    """Wraps the emulator; requests of routes without a quota pass through."""

    def __init__(self, app: Callable, clock: Callable[[], float] = time.monotonic):
        self.app, self.clock = app, clock
        self._routes: dict[str, Buckets] = {}
        self._lock = threading.Lock()

    def register(self, request: Request) -> tuple[dict, int]:
        """`POST /_sandbox/ads-quotas`: the route's quota, replacing any earlier one."""
        try:
            quota = ApiQuota.model_validate_json(request.get_data() or b"{}")
        except ValidationError as error:
            return {"error": "invalid Ads API quota", "details": json.loads(error.json())}, 400
        with self._lock:
            self._routes[quota.route] = Buckets({"requests": quota.requests_per_second}, self.clock())
        return {"registered": quota.route}, 201

    def counts(self, request: Request) -> tuple[dict, int]:
        """`GET /_sandbox/ads-quotas`: per route, the requests taken and throttled."""
        with self._lock:
            return {
                route: {"taken": buckets.taken, "throttled": buckets.throttled}
                for route, buckets in self._routes.items()
            }, 200

    def clear(self) -> None:
        """Forget every quota."""
        with self._lock:
            self._routes.clear()

    def __call__(self, environ: dict, start_response: Callable) -> Iterable[bytes]:
        if not self._routes:
            return self.app(environ, start_response)
        method, path = environ["REQUEST_METHOD"], environ.get("PATH_INFO", "")
        with self._lock:
            route = next((route for route in self._routes if route_matches(route, method, path)), None)
            buckets = self._routes[route] if route is not None else None
            # None: the request may go; else the seconds until it could have.
            wait = None
            if buckets is not None and not buckets.admit(self.clock(), _ONE_REQUEST):
                wait = buckets.seconds_until(_ONE_REQUEST)
        if wait is None:
            return self.app(environ, start_response)
        body = error_body(family_of(path), 429, STATUS_CODES[429], "Too Many Requests")
        headers = {"Retry-After": str(max(1, math.ceil(wait)))}
        answer = Response(json.dumps(body), status=429, headers=headers, mimetype="application/json")
        return answer(environ, start_response)
