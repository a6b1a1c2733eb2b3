"""`audience-pipeline login`: Login with Amazon's authorization-code grant, run from a terminal.

The user allows the app in the browser, as on the seeds' "Allow" screens; Amazon redirects the browser
to a one-shot HTTP server on loopback with a code, which is exchanged for a refresh token at once
(codes expire after 5 minutes). The refresh token goes into the `.env` file, never to the terminal.
Then the user's name, and the profiles, manager accounts and AMC instances the token reaches are
listed, so that the user can fill in the YAML.
"""

import os
import secrets
import time
import webbrowser
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, quote, urlencode, urlsplit

import requests

from audience_pipeline.cli.env_file import read_env_file, set_env_value
from audience_pipeline.clients.accounts import (
    linked_user_name,
    list_amc_instances,
    list_manager_accounts,
    list_profiles,
)
from audience_pipeline.clients.ads_api import (
    API_HOSTS,
    AUTH_URLS,
    TOKEN_URLS,
    AdsApiClient,
    AmazonAdsApiError,
)

# The Amazon Ads API, and Login with Amazon's `profile`: who the user is (DSP `profile_name`).
SCOPE = "advertising::campaign_management profile"
REFRESH_TOKEN_VARIABLE = "AMAZON_ADS_REFRESH_TOKEN"
CALLBACK_PATH = "/callback"


class LoginError(Exception):
    """The login did not get a refresh token; the message says why and what to do."""


@dataclass(frozen=True)
class LoginApp:
    """A Login with Amazon app and the endpoints it signs in with."""

    client_id: str
    client_secret: str = field(repr=False)
    region: str
    auth_url: str
    token_url: str
    api_url: str


def login_app(region: str, env_file: Path, environ: Mapping[str, str] = os.environ) -> LoginApp:
    """The app of `AMAZON_ADS_CLIENT_ID` / `_CLIENT_SECRET`, and the region's endpoints unless
    `AMAZON_ADS_AUTH_URL`, `_TOKEN_URL` or `_API_URL` name others. A variable missing from the
    environment is read from `env_file`."""
    from_file = read_env_file(env_file)

    def variable(name: str) -> str | None:
        return environ.get(name) or from_file.get(name) or None

    credentials = {}
    for name in ("AMAZON_ADS_CLIENT_ID", "AMAZON_ADS_CLIENT_SECRET"):
        credentials[name] = variable(name)
        if not credentials[name]:
            raise LoginError(
                f"{name} is not set: put your Login with Amazon app's value in the environment or in "
                f"{env_file} (Amazon Ads console > Login with Amazon > security profile > Web Settings)."
            )
    return LoginApp(
        client_id=credentials["AMAZON_ADS_CLIENT_ID"],
        client_secret=credentials["AMAZON_ADS_CLIENT_SECRET"],
        region=region,
        auth_url=variable("AMAZON_ADS_AUTH_URL") or AUTH_URLS[region],
        token_url=variable("AMAZON_ADS_TOKEN_URL") or TOKEN_URLS[region],
        api_url=variable("AMAZON_ADS_API_URL") or API_HOSTS[region],
    )


def consent_url(app: LoginApp, redirect_uri: str, state: str) -> str:
    """Where the user allows the app: Login with Amazon's consent page for this request."""
    query = {
        "client_id": app.client_id,
        "scope": SCOPE,
        "response_type": "code",
        "redirect_uri": redirect_uri,
        "state": state,
    }
    # Scopes are space-separated: `%20`, as Login with Amazon's examples write it.
    return f"{app.auth_url}?{urlencode(query, quote_via=quote)}"


def callback_outcome(query: Mapping[str, str], state: str) -> str | LoginError:
    """The authorization code in the query of Amazon's redirect, or why there is none."""
    if query.get("state") != state:
        return LoginError(
            "The answer to the browser did not carry this login's state: ignored, to be safe. "
            "Run `audience-pipeline login` again and use the address it prints."
        )
    if query.get("error"):
        reason = query.get("error_description") or query["error"]
        return LoginError(f"Login with Amazon did not grant access ({query['error']}): {reason}")
    if not query.get("code"):
        return LoginError("Login with Amazon redirected without an authorization code.")
    return query["code"]


class _CallbackServer(HTTPServer):
    """Loopback HTTP server that takes one redirect from Login with Amazon."""

    def __init__(self, port: int, state: str):
        super().__init__(("127.0.0.1", port), _CallbackHandler)
        self.state = state
        self.outcome: str | LoginError | None = None

    @property
    def redirect_uri(self) -> str:
        """The callback's address (with the port picked, when asked for port 0)."""
        return f"http://127.0.0.1:{self.server_port}{CALLBACK_PATH}"


class _CallbackHandler(BaseHTTPRequestHandler):
    server: _CallbackServer
    timeout = 10  # a browser's idle pre-connection must not hold the one-request loop

    def do_GET(self) -> None:
        url = urlsplit(self.path)
        if url.path != CALLBACK_PATH:
            self._answer(404, "Not found.")
            return
        self.server.outcome = outcome = callback_outcome(dict(parse_qsl(url.query)), self.server.state)
        if isinstance(outcome, LoginError):
            self._answer(400, f"Login failed: {outcome}")
        else:
            self._answer(200, "Signed in. You can close this tab and return to the terminal.")

    def _answer(self, status: int, text: str) -> None:
        body = text.encode()
        self.send_response(status)
        self.send_header("Content-Type", "text/plain; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet: the request line carries the authorization code."""


def _wait_for_code(server: _CallbackServer, timeout: float) -> str:
    deadline = time.monotonic() + timeout
    while server.outcome is None:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise LoginError(
                f"No answer from the browser within {timeout:g} s. Run `audience-pipeline login` again "
                "(and check that the redirect URI is allow-listed in your security profile)."
            )
        server.timeout = remaining
        server.handle_request()
    if isinstance(server.outcome, LoginError):
        raise server.outcome
    return server.outcome


def login(
    app: LoginApp,
    env_file: Path,
    *,
    port: int,
    timeout: float,
    open_browser: bool,
    echo: Callable[[str], None],
) -> None:
    """Sign in through the browser, save the refresh token to `env_file`, and list what it reaches.

    Raises `LoginError` when no refresh token was saved. Prints no secret.
    """
    state = secrets.token_urlsafe(16)
    try:
        server = _CallbackServer(port, state)
    except OSError as error:
        raise LoginError(
            f"Cannot listen on 127.0.0.1:{port} ({error.strerror}); pick another --port."
        ) from None
    redirect_uri = server.redirect_uri
    with server:
        echo(f"Redirect URI (add it to your security profile's Allowed Return URLs): {redirect_uri}")
        url = consent_url(app, redirect_uri, state)
        echo("Sign in and allow access at:")
        echo(f"  {url}")
        if open_browser:
            webbrowser.open(url)
        code = _wait_for_code(server, timeout)
    api = AdsApiClient(
        app.client_id, app.client_secret, "", region=app.region, base_url=app.api_url, token_url=app.token_url
    )
    try:
        refresh_token = api.authorize(code, redirect_uri)
    except (AmazonAdsApiError, requests.RequestException) as error:
        raise LoginError(f"Login with Amazon did not exchange the authorization code: {error}") from None
    try:
        set_env_value(env_file, REFRESH_TOKEN_VARIABLE, refresh_token)
    except OSError as error:
        raise LoginError(f"Cannot write {env_file}: {error}") from None
    echo(f"Saved {REFRESH_TOKEN_VARIABLE} to {env_file} (readable by you only).")
    for line in account_report(api):
        echo(line)


def account_report(api: AdsApiClient) -> list[str]:
    """Tables of the user signed in, and the profiles, manager accounts and AMC instances `api` reaches;
    a listing Amazon refuses (e.g. a user without AMC access) is one line saying so. The user's e-mail
    address is not shown."""
    return [
        *_section("Amazon user (DSP `profile_name`)", ("NAME",), lambda: [(linked_user_name(api),)]),
        *_section(
            "Advertising profiles (DSP `marketplace_profile_name` is the NAME, `marketplace` the COUNTRY)",
            ("PROFILE ID", "NAME", "COUNTRY", "TYPE"),
            lambda: [
                (
                    p["profileId"],
                    p["accountInfo"].get("name"),
                    p.get("countryCode"),
                    p["accountInfo"].get("type"),
                )
                for p in list_profiles(api)
            ],
        ),
        *_section(
            "Manager accounts (Ads Data Manager `manager_account_id`) and their linked accounts",
            ("MANAGER ACCOUNT ID", "NAME", "LINKED ACCOUNT", "TYPE", "MARKETPLACE ID"),
            lambda: [row for m in list_manager_accounts(api) for row in _manager_rows(m)],
        ),
        *_section(
            "AMC instances (AMC `instance_id`, `account_id`, `marketplace_id`)",
            ("INSTANCE ID", "NAME", "ACCOUNT ID", "MARKETPLACE ID"),
            lambda: [
                (i["instanceId"], i.get("instanceName"), a["accountId"], a["marketplaceId"])
                for a, i in list_amc_instances(api)
            ],
        ),
    ]


def _section(title: str, header: Sequence[str], rows: Callable[[], list[Sequence[Any]]]) -> list[str]:
    try:
        listed = rows()
    except (AmazonAdsApiError, requests.RequestException) as error:
        return ["", f"{title}: not listed ({error})"]
    return ["", f"{title}:", *(_table(header, listed) if listed else ["  (none)"])]


def _manager_rows(manager: Mapping[str, Any]) -> list[tuple[Any, ...]]:
    """A row per linked account, the manager account's id and name on the first one only."""
    first = (manager["managerAccountId"], manager.get("managerAccountName"))
    linked = manager.get("linkedAccounts") or [{}]
    return [
        (*(first if n == 0 else ("", "")), a.get("accountId"), a.get("accountType"), a.get("marketplaceId"))
        for n, a in enumerate(linked)
    ]


def _table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> list[str]:
    """`rows` in columns under `header`, each cell padded to its column's widest."""
    cells = [list(header), *([("" if value is None else str(value)) for value in row] for row in rows)]
    widths = [max(len(row[column]) for row in cells) for column in range(len(header))]
    return [
        "  " + "  ".join(value.ljust(width) for value, width in zip(row, widths, strict=True)).rstrip()
        for row in cells
    ]
