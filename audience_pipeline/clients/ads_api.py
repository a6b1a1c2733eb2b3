"""The Amazon Ads API client every destination uses: Login with Amazon, retries, typed errors.

- Tokens are cached until shortly before they expire and refreshed once on a 401.
- 429 and 5xx are retried with exponential backoff and full jitter, honouring `Retry-After`;
  other 4xx never are. A request that may have created something (`idempotent=False`) is not
  retried after a 5xx or a lost connection: the caller looks it up first (no API has an
  idempotency key).
- JSON is parsed whatever the Content-Type, with integers kept exact (DSP ids exceed 2^53).
- A body already written as JSON text (`json_text`) goes as it is, not parsed and written again.
- Several threads may share a client (`clients.concurrency`): with a `RateLimit`, each attempt of a
  request, retries included, first takes its request from it; `thread_retries` counts the calling
  thread's retries, so each request counts its own.
"""

import contextlib
import json
import random
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any
from urllib.parse import urlsplit

import requests
from pydantic import BaseModel, ConfigDict
from pydantic.alias_generators import to_camel

from audience_pipeline.clients.rate_limit import RateLimit

API_HOSTS = {
    "NA": "https://advertising-api.amazon.com",
    "EU": "https://advertising-api-eu.amazon.com",
    "FE": "https://advertising-api-fe.amazon.com",
}
TOKEN_URLS = {
    "NA": "https://api.amazon.com/auth/o2/token",
    "EU": "https://api.amazon.co.uk/auth/o2/token",
    "FE": "https://api.amazon.co.jp/auth/o2/token",
}
# Where a user allows an app access (Login with Amazon's consent page); its code works in every region.
AUTH_URLS = {
    "NA": "https://www.amazon.com/ap/oa",
    "EU": "https://eu.account.amazon.com/ap/oa",
    "FE": "https://apac.account.amazon.com/ap/oa",
}
_REFRESH_MARGIN_SECONDS = 60
# The connections a session keeps per host (requests' default pool): more requests in flight at once
# than this would open and drop a connection each time.
MAX_IN_FLIGHT = 10


class ApiModel(BaseModel):
    """A payload of the Amazon Ads API: camelCase on the wire, snake_case here, unknown keys ignored."""

    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="ignore")


class AmazonAdsApiError(Exception):
    """An error answer from Amazon, with its status and body (Amazon's own words, never our data)."""

    def __init__(self, method: str, path: str, status: int, body: Any):
        self.method, self.path, self.status, self.body = method, path, status, body
        super().__init__(f"{method} {path} -> {status}: {self.message}")

    @property
    def message(self) -> str:
        """Amazon's description, from whichever error body shape the API family uses."""
        body = self.body
        if isinstance(body, Mapping):
            for key in ("details", "message", "error_description", "description"):
                if isinstance(body.get(key), str):
                    return body[key]
            if isinstance(body.get("error"), Mapping):
                return str(body["error"].get("description", body["error"]))
            if isinstance(body.get("error"), str):
                return body["error"]
        return str(body)[:500]


class AuthenticationError(AmazonAdsApiError):
    """Login with Amazon refused the credentials (e.g. a revoked refresh token)."""


class ThrottledError(AmazonAdsApiError):
    """Still throttled (429) after every retry."""


class ServerError(AmazonAdsApiError):
    """Amazon failed (5xx) after every retry, or on a call that is not safe to repeat."""


# What a POST that may have created something can end with although it did: the caller looks it up.
LOST_ANSWER = (ServerError, requests.ConnectionError, requests.Timeout)


class AdsApiClient:
    """A session with the Amazon Ads API for one set of Login with Amazon credentials."""

    def __init__(
        self,
        client_id: str,
        client_secret: str,
        refresh_token: str,
        *,
        region: str = "NA",
        base_url: str | None = None,
        token_url: str | None = None,
        timeout: float = 30.0,
        max_retries: int = 5,
        backoff_seconds: float = 0.5,
        max_backoff_seconds: float = 30.0,
        session: requests.Session | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ):
        if region not in API_HOSTS:
            raise ValueError(f"region: {region!r} is not one of {', '.join(API_HOSTS)}")
        self.client_id, self._client_secret, self._refresh_token = client_id, client_secret, refresh_token
        self.base_url = (base_url or API_HOSTS[region]).rstrip("/")
        self.token_url = token_url or TOKEN_URLS[region]
        self.timeout, self.max_retries = timeout, max_retries
        self.backoff_seconds, self.max_backoff_seconds = backoff_seconds, max_backoff_seconds
        self.session = session or requests.Session()
        self._sleep = sleep
        self._token: str | None = None
        self._token_expires = 0.0
        self._token_lock = threading.Lock()
        self.retries = 0  # requests repeated because of throttling or server errors, for metadata
        self._retries_lock = threading.Lock()
        self._thread = threading.local()

    @property
    def thread_retries(self) -> int:
        """The retries made on the calling thread: what a request took is the difference across it,
        whatever other threads sharing the client retried meanwhile."""
        return getattr(self._thread, "retries", 0)

    # --- tokens ----------------------------------------------------------------------------------

    @property
    def login_url(self) -> str:
        """Login with Amazon's host, the token URL's: where the user profile of the token is too."""
        url = urlsplit(self.token_url)
        return f"{url.scheme}://{url.netloc}"

    def access_token(self, *, force: bool = False) -> str:
        """A valid access token, fetched or refreshed as needed."""
        with self._token_lock:
            if force or self._token is None or time.monotonic() >= self._token_expires:
                self._fetch_token()
            return self._token

    def authorize(self, code: str, redirect_uri: str) -> str:
        """Exchange a Login with Amazon authorization code for tokens, which this client uses from then
        on; return the new refresh token. `redirect_uri` is the one the code was sent to."""
        form = {
            "grant_type": "authorization_code",
            "code": code,
            "redirect_uri": redirect_uri,
            "client_id": self.client_id,
            "client_secret": self._client_secret,
        }
        with self._token_lock:
            # A code is single use: after a 5xx it may be spent, and a retry would only say it is invalid.
            body = self._token_request(form, retry_server_errors=False)
            self._keep_token(body)
            self._refresh_token = body["refresh_token"]
            return self._refresh_token

    def _fetch_token(self) -> None:
        form = {
            "grant_type": "refresh_token",
            "refresh_token": self._refresh_token,
            "client_id": self.client_id,
            "client_secret": self._client_secret,
        }
        self._keep_token(self._token_request(form))

    def _token_request(self, form: Mapping[str, str], *, retry_server_errors: bool = True) -> dict[str, Any]:
        for attempt in range(self.max_retries + 1):
            response = self.session.post(self.token_url, data=form, timeout=self.timeout)
            retryable = response.status_code == 429 or (response.status_code >= 500 and retry_server_errors)
            if retryable and attempt < self.max_retries:
                self._back_off(attempt, response)
                continue
            body = _parse(response)
            if response.status_code != 200:
                error = AuthenticationError if response.status_code in (400, 401) else ServerError
                raise error("POST", "/auth/o2/token", response.status_code, body)
            return body

    def _keep_token(self, body: Mapping[str, Any]) -> None:
        self._token = body["access_token"]
        self._token_expires = time.monotonic() + float(body.get("expires_in", 3600)) - _REFRESH_MARGIN_SECONDS

    # --- requests --------------------------------------------------------------------------------

    def request(
        self,
        method: str,
        path: str,
        *,
        json_body: Any = None,
        json_text: bytes | None = None,
        params: Mapping[str, Any] | None = None,
        headers: Mapping[str, str] | None = None,
        idempotent: bool | None = None,
        media_type: str | None = None,
        rate_limit: RateLimit | None = None,
        base_url: str | None = None,
    ) -> Any:
        """Call the API and return the parsed body (None when empty); raise `AmazonAdsApiError`.

        The body is `json_body`, written as JSON, or `json_text`, JSON already written, sent as it is.
        `idempotent` defaults to True for every method but POST. `media_type` is the operation's
        documented content type (several APIs version theirs, e.g. `application/vnd.…v1+json`): it is
        sent as `Accept`, and as `Content-Type` of a JSON body; plain `application/json` otherwise.
        With `rate_limit`, every attempt first takes one request from it. `base_url` sends the call to
        another host with the same token, e.g. Login with Amazon's (`login_url`).
        """
        safe = method.upper() != "POST" if idempotent is None else idempotent
        has_body = json_body is not None or json_text is not None
        headers = {
            **({"Content-Type": "application/json"} if json_text is not None else {}),
            **_media_headers(media_type, has_body),
            **(headers or {}),
        }
        refreshed = False
        attempt = 0
        while True:
            if rate_limit is not None:
                rate_limit.take(requests=1)
            try:
                response = self.session.request(
                    method,
                    f"{base_url or self.base_url}{path}",
                    json=json_body,
                    data=json_text,
                    params=params,
                    headers={**self._headers(), **headers},
                    timeout=self.timeout,
                )
            except (requests.ConnectionError, requests.Timeout):
                if not safe or attempt >= self.max_retries:
                    raise
                self._back_off(attempt, None)
                attempt += 1
                continue
            status = response.status_code
            if status == 401 and not refreshed:
                refreshed = True
                self.access_token(force=True)
                continue
            retryable = status == 429 or (status >= 500 and safe)
            if retryable and attempt < self.max_retries:
                self._back_off(attempt, response)
                attempt += 1
                continue
            body = _parse(response)
            if status >= 400:
                error = (
                    ThrottledError if status == 429 else ServerError if status >= 500 else AmazonAdsApiError
                )
                raise error(method.upper(), path, status, body)
            return body

    def _headers(self) -> dict[str, str]:
        return {
            "Authorization": f"Bearer {self.access_token()}",
            "Amazon-Advertising-API-ClientId": self.client_id,
        }

    def _back_off(self, attempt: int, response: requests.Response | None) -> None:
        with self._retries_lock:
            self.retries += 1
        self._thread.retries = self.thread_retries + 1
        delay = random.uniform(0, min(self.max_backoff_seconds, self.backoff_seconds * 2**attempt))
        retry_after = response.headers.get("Retry-After") if response is not None else None
        if retry_after is not None:
            with contextlib.suppress(ValueError):
                delay = max(delay, float(retry_after))
        self._sleep(delay)


def _media_headers(media_type: str | None, has_body: bool) -> dict[str, str]:
    if media_type is None:
        return {}
    return {"Accept": media_type, **({"Content-Type": media_type} if has_body else {})}


def _parse(response: requests.Response) -> Any:
    # Amazon has answered JSON as application/octet-stream; trust the bytes, not the header.
    if not response.content:
        return None
    try:
        return json.loads(response.content)
    except ValueError:
        return response.text
