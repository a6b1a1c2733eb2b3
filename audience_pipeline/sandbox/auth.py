"""Login with Amazon: the token endpoint, and the bearer check every API call goes through."""

import secrets
import time

from flask import Blueprint, current_app, request

from audience_pipeline.sandbox.errors import LWA, ApiError, error_response

blueprint = Blueprint("lwa", __name__)


@blueprint.post("/auth/o2/token")
def token():
    """`grant_type=refresh_token` with any non-empty credentials; `revoked*` refresh tokens fail."""
    form = request.form
    if form.get("grant_type") != "refresh_token":
        return error_response(LWA, 400, "unsupported_grant_type", "grant_type must be refresh_token")
    missing = [name for name in ("refresh_token", "client_id", "client_secret") if not form.get(name)]
    if missing:
        return error_response(LWA, 400, "invalid_request", f"missing {', '.join(missing)}")
    if form["refresh_token"].startswith("revoked"):
        return error_response(LWA, 400, "invalid_grant", "The refresh token is invalid or has been revoked")
    sandbox = current_app.config["SANDBOX"]
    access_token = f"Atza|{secrets.token_urlsafe(24)}"
    with sandbox.state.lock:
        tokens = sandbox.state.family("lwa").setdefault("tokens", {})
        tokens[access_token] = {
            "client_id": form["client_id"],
            "expires_at": time.time() + sandbox.config.token_ttl_seconds,
        }
        sandbox.state.save()
    return {
        "access_token": access_token,
        "token_type": "bearer",
        "expires_in": sandbox.config.token_ttl_seconds,
        "refresh_token": form["refresh_token"],
    }


def require_token() -> str:
    """The caller's client id, or an `ApiError(401)` for a missing, unknown or expired token."""
    sandbox = current_app.config["SANDBOX"]
    header = request.headers.get("Authorization", "")
    scheme, _, value = header.partition(" ")
    if scheme.lower() != "bearer" or not value:
        raise ApiError(401, "UNAUTHORIZED", "Missing bearer token in the Authorization header")
    if not request.headers.get("Amazon-Advertising-API-ClientId"):
        raise ApiError(401, "UNAUTHORIZED", "Missing Amazon-Advertising-API-ClientId header")
    with sandbox.state.lock:
        issued = sandbox.state.family("lwa").get("tokens", {}).get(value)
    if issued is None:
        raise ApiError(401, "UNAUTHORIZED", "Invalid access token")
    if issued["expires_at"] < time.time():
        raise ApiError(401, "UNAUTHORIZED", "Access token has expired")
    return issued["client_id"]
