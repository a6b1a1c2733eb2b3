"""The Amazon Ads API emulator: a Flask app with one blueprint per API family.

Every call but the token endpoint and the consent page needs a bearer token; errors come in the
family's own body shape; the app sits behind `SandboxMiddleware` for faults, the journal and reset,
and behind the request-rate quotas of `sandbox.api_quotas`.
"""

import json
from dataclasses import dataclass, field
from typing import Any

from flask import Flask, Response, request
from werkzeug.exceptions import HTTPException
from werkzeug.wrappers import Request

from audience_pipeline.sandbox import (
    adm,
    amc,
    amc_accounts,
    auth,
    dsp,
    manager_accounts,
    profiles,
    rule_based,
)
from audience_pipeline.sandbox.api_quotas import RouteQuotas
from audience_pipeline.sandbox.config import SandboxConfig
from audience_pipeline.sandbox.errors import STATUS_CODES, ApiError, error_response, family_of
from audience_pipeline.sandbox.faults import Decision, Faults, Journal, SandboxMiddleware
from audience_pipeline.sandbox.state import SandboxState


@dataclass
class AdsSandbox:
    """What the emulator's handlers share: settings, records, faults and the journal."""

    config: SandboxConfig
    state: SandboxState = field(init=False)
    faults: Faults = field(init=False)
    journal: Journal = field(default_factory=Journal)

    def __post_init__(self) -> None:
        self.state = SandboxState(self.config.state_dir)
        self.faults = Faults(seed=self.config.seed)


def create_app(sandbox: AdsSandbox) -> SandboxMiddleware:
    """The WSGI application of the Amazon Ads API emulator."""
    app = Flask(__name__)
    app.config["SANDBOX"] = sandbox
    for family in (auth, profiles, manager_accounts, amc, amc_accounts, rule_based, adm, dsp):
        app.register_blueprint(family.blueprint)

    @app.before_request
    def authenticate() -> None:
        # Login with Amazon's own paths: where a caller gets a token, and the user profile, which
        # checks its token its own way.
        if not auth.is_lwa_path(request.path):
            auth.require_token()

    @app.errorhandler(ApiError)
    def api_error(error: ApiError) -> Response:
        return error_response(
            family_of(request.path), error.status, error.code, error.details, field=error.field
        )

    @app.errorhandler(HTTPException)
    def http_error(error: HTTPException) -> Response:
        status = error.code or 500
        return error_response(
            family_of(request.path), status, STATUS_CODES.get(status, "ERROR"), error.description
        )

    def respond_fault(req: Request, decision: Decision) -> Response:
        status = decision.status or 500
        details = "Too many requests" if status == 429 else "Injected sandbox fault"
        with app.test_request_context(req.path):
            return error_response(
                family_of(req.path), status, STATUS_CODES[status], details, retry_after=decision.retry_after
            )

    def journal_body(req: Request) -> Any:
        # Token requests carry secrets; every other API here takes hashed identities or IDs only.
        if req.path.startswith("/auth/") or not req.get_data():
            return None
        try:
            return json.loads(req.get_data())
        except ValueError:
            return None

    # Inside the middleware, so a throttled request is journaled with its 429 like any other answer.
    quotas = RouteQuotas(app.wsgi_app)

    def reset() -> None:
        sandbox.state.reset()
        quotas.clear()

    return SandboxMiddleware(
        quotas,
        sandbox.faults,
        sandbox.journal,
        reset,
        respond_fault,
        journal_body,
        admin_routes={
            ("POST", "/_sandbox/ads-quotas"): quotas.register,
            ("GET", "/_sandbox/ads-quotas"): quotas.counts,
        },
    )
