"""Login with Amazon: the consent page, the token endpoint, the user profile, and the bearer check every
API call goes through.

`GET /ap/oa` shows the consent page a user allows an app on; its "Allow" (`POST /ap/oa`) redirects to
the app's `redirect_uri` with a one-time authorization code. `POST /auth/o2/token` exchanges that code
(`grant_type=authorization_code`) or a refresh token (`grant_type=refresh_token`) for an access token.
`GET /user/profile` answers who the sandbox's one user is, to an access token granted the `profile`
scope (only `user_id` for `profile:user_id`), as Login with Amazon's customer profile does.

Codes, refresh tokens and access tokens carry the scopes the user allowed; a refresh token the
sandbox did not issue (any non-empty one logs in) carries `DEFAULT_GRANT`. They live in
`state.family("lwa")`.
"""

import secrets
import time
import uuid
from collections.abc import Mapping
from urllib.parse import urlencode, urlsplit

from flask import Blueprint, Response, current_app, jsonify, redirect, render_template_string, request

from audience_pipeline.sandbox.errors import LWA, ApiError, error_response

blueprint = Blueprint("lwa", __name__)

# The Amazon Ads API's scope, and the Data Provider API's.
SCOPES = frozenset({"advertising::campaign_management", "advertising::audiences"})
# Login with Amazon's customer profile scopes: `profile` is user_id, name and email, `profile:user_id`
# the user_id alone (postal_code, the third, is not served here).
PROFILE_SCOPES = frozenset({"profile", "profile:user_id"})
# What a refresh token the sandbox did not issue was granted: every scope the sandbox serves.
DEFAULT_GRANT = ("advertising::audiences", "advertising::campaign_management", "profile")
# The Amazon user every sandbox login belongs to; the e-mail address is a made-up one.
USER = {
    "user_id": "amzn1.account.SANDBOXUSER0000001",
    "name": "Sandbox User",
    "email": "user@sandbox.invalid",
}
_CONSENT_FIELDS = ("client_id", "scope", "response_type", "redirect_uri", "state")
_CONSENT_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Amazon Ads sandbox: sign in</title></head>
<body>
<h1>Allow access to your Amazon Ads account?</h1>
<p>The application <code>{{ fields.client_id }}</code> asks for <code>{{ fields.scope }}</code>.
This is the audience_pipeline sandbox: there is no password.</p>
<form method="post" action="/ap/oa">
{% for name, value in fields.items() %}<input type="hidden" name="{{ name }}" value="{{ value }}">
{% endfor %}<button type="submit">Allow</button>
</form>
</body></html>
"""


def _consent_problem(params: Mapping[str, str]) -> str | None:
    """What is wrong with an authorization request, as a short text; None when it is fine."""
    if not params.get("client_id"):
        return "client_id is required"
    if params.get("response_type") != "code":
        return "response_type must be code"
    redirect_uri = urlsplit(params.get("redirect_uri", ""))
    if redirect_uri.scheme not in ("http", "https") or not redirect_uri.netloc:
        return "redirect_uri must be an absolute http(s) URL"
    scopes = set(params.get("scope", "").split())
    if not SCOPES & scopes:
        return f"scope must include {' or '.join(sorted(SCOPES))}"
    unknown = scopes - SCOPES - PROFILE_SCOPES
    if unknown:
        return f"An unknown scope was requested: {' '.join(sorted(unknown))}"
    return None


def _bad_request(problem: str) -> Response:
    return Response(f"Bad request: {problem}\n", status=400, mimetype="text/plain")


@blueprint.get("/ap/oa")
def consent():
    """The consent page: an "Allow" button that posts the authorization request back."""
    problem = _consent_problem(request.args)
    if problem:
        return _bad_request(problem)
    fields = {name: request.args[name] for name in _CONSENT_FIELDS if request.args.get(name)}
    return render_template_string(_CONSENT_PAGE, fields=fields)


@blueprint.post("/ap/oa")
def allow():
    """The user allowed: redirect to `redirect_uri` with a code bound to the app and that URI."""
    form = request.form
    problem = _consent_problem(form)
    if problem:
        return _bad_request(problem)
    sandbox = current_app.config["SANDBOX"]
    code = secrets.token_urlsafe(15)
    with sandbox.state.lock:
        sandbox.state.family("lwa").setdefault("codes", {})[code] = {
            "client_id": form["client_id"],
            "redirect_uri": form["redirect_uri"],
            "scopes": sorted(set(form["scope"].split())),
            "expires_at": time.time() + sandbox.config.auth_code_ttl_seconds,
        }
        sandbox.state.save()
    query = {"code": code, "scope": form["scope"], **({"state": form["state"]} if form.get("state") else {})}
    separator = "&" if "?" in form["redirect_uri"] else "?"
    return redirect(f"{form['redirect_uri']}{separator}{urlencode(query)}", code=302)


@blueprint.post("/auth/o2/token")
def token():
    """An access token for a refresh token or an authorization code.

    Any non-empty refresh token works but `revoked*` ones. A code works once, within its lifetime, for
    the app and `redirect_uri` it was issued to, and brings a new refresh token with the code's scopes.
    """
    form = request.form
    required = {
        "refresh_token": ("refresh_token", "client_id", "client_secret"),
        "authorization_code": ("code", "redirect_uri", "client_id", "client_secret"),
    }.get(form.get("grant_type", ""))
    if required is None:
        return error_response(
            LWA, 400, "unsupported_grant_type", "grant_type must be refresh_token or authorization_code"
        )
    missing = [name for name in required if not form.get(name)]
    if missing:
        return error_response(LWA, 400, "invalid_request", f"missing {', '.join(missing)}")
    sandbox = current_app.config["SANDBOX"]
    if form["grant_type"] == "authorization_code":
        invalid, scopes = _redeem_code(form)
        if invalid:
            return error_response(
                LWA, 400, "invalid_grant", f"The request has an invalid parameter : {invalid}"
            )
        refresh_token = f"Atzr|{secrets.token_urlsafe(32)}"
    elif form["refresh_token"].startswith("revoked"):
        return error_response(LWA, 400, "invalid_grant", "The refresh token is invalid or has been revoked")
    else:
        refresh_token = form["refresh_token"]
        with sandbox.state.lock:
            issued = sandbox.state.family("lwa").get("refresh_tokens", {}).get(refresh_token, {})
        scopes = issued.get("scopes", list(DEFAULT_GRANT))
    access_token = f"Atza|{secrets.token_urlsafe(24)}"
    with sandbox.state.lock:
        lwa = sandbox.state.family("lwa")
        if form["grant_type"] == "authorization_code":
            lwa.setdefault("refresh_tokens", {})[refresh_token] = {"scopes": scopes}
        lwa.setdefault("tokens", {})[access_token] = {
            "client_id": form["client_id"],
            "scopes": scopes,
            "expires_at": time.time() + sandbox.config.token_ttl_seconds,
        }
        sandbox.state.save()
    return {
        "access_token": access_token,
        "token_type": "bearer",
        "expires_in": sandbox.config.token_ttl_seconds,
        "refresh_token": refresh_token,
    }


def _redeem_code(form: Mapping[str, str]) -> tuple[str | None, list[str]]:
    """Use up the form's authorization code: the parameter that makes it invalid (or None), and the
    scopes the user allowed with it."""
    sandbox = current_app.config["SANDBOX"]
    with sandbox.state.lock:
        # A code is gone once presented, even when the exchange then fails: codes are single use.
        issued = sandbox.state.family("lwa").get("codes", {}).pop(form["code"], None)
        sandbox.state.save()
    if issued is None or issued["expires_at"] <= time.time():
        return "code", []
    if issued["client_id"] != form["client_id"]:
        return "client_id", []
    if issued["redirect_uri"] != form["redirect_uri"]:
        return "redirect_uri", []
    return None, issued.get("scopes", list(DEFAULT_GRANT))


def _profile_error(status: int, code: str, description: str) -> Response:
    """Login with Amazon's profile error body: `{error, error_description, request_id}`."""
    response = jsonify({"error": code, "error_description": description, "request_id": str(uuid.uuid4())})
    response.status_code = status
    return response


@blueprint.get("/user/profile")
def user_profile():
    """The customer profile of the user who allowed the access token's app.

    The token comes as `Authorization: Bearer`, `x-amz-access-token` or `?access_token=`, as Login with
    Amazon takes it. Missing: 400 `invalid_request`; unknown or expired: 401 `invalid_token`; granted
    neither `profile` nor `profile:user_id`: 403 `insufficient_scope` (RFC 6750's statuses for the
    error codes Login with Amazon documents).
    """
    scheme, _, bearer = request.headers.get("Authorization", "").strip().partition(" ")
    value = (
        (bearer.strip() if scheme.lower() == "bearer" else "")
        or request.headers.get("x-amz-access-token", "").strip()
        or request.args.get("access_token", "").strip()
    )
    if not value:
        return _profile_error(
            400, "invalid_request", "The request is missing a required parameter : access_token"
        )
    sandbox = current_app.config["SANDBOX"]
    with sandbox.state.lock:
        issued = sandbox.state.family("lwa").get("tokens", {}).get(value)
    if issued is None or issued["expires_at"] < time.time():
        return _profile_error(
            401, "invalid_token", "The access token provided is expired, revoked, malformed, or invalid"
        )
    # Tokens issued before scopes were recorded had every scope, as unknown refresh tokens do.
    scopes = set(issued.get("scopes", DEFAULT_GRANT))
    if "profile" in scopes:
        return jsonify(USER)
    if "profile:user_id" in scopes:
        return jsonify({"user_id": USER["user_id"]})
    return _profile_error(
        403, "insufficient_scope", "The access token provided does not have access to the required scope"
    )


def is_lwa_path(path: str) -> bool:
    """Whether Login with Amazon serves `path` itself (token, consent page, user profile): no Amazon
    Ads API bearer check goes in front of it."""
    return path.startswith("/auth/") or path in ("/ap/oa", "/user/profile")


def require_token() -> str:
    """The caller's client id, or an `ApiError(401)` for a missing, unknown or expired token."""
    sandbox = current_app.config["SANDBOX"]
    header = request.headers.get("Authorization", "").strip()
    scheme, _, value = header.partition(" ")
    # `Bearer <token>`, or the token bare: Amazon's Data Provider samples send `Authorization: Atza|…`.
    value = value.strip() if scheme.lower() == "bearer" else header
    if not value:
        raise ApiError(401, "UNAUTHORIZED", "Missing access token in the Authorization header")
    if not request.headers.get("Amazon-Advertising-API-ClientId"):
        raise ApiError(401, "UNAUTHORIZED", "Missing Amazon-Advertising-API-ClientId header")
    with sandbox.state.lock:
        issued = sandbox.state.family("lwa").get("tokens", {}).get(value)
    if issued is None:
        raise ApiError(401, "UNAUTHORIZED", "Invalid access token")
    if issued["expires_at"] < time.time():
        raise ApiError(401, "UNAUTHORIZED", "Access token has expired")
    return issued["client_id"]
