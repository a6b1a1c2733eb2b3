"""Amazon's error bodies, one shape per API family, as the contract in amazon_ads_api.md gives them."""

import json
import uuid
from typing import Any

from flask import Response, jsonify, request

AMC, ADM, DSP, LWA = "amc", "adm", "dsp", "lwa"
# Rule-based audiences and AMC accounts document error bodies of their own (see `error_body`).
AMC_AUDIENCES, AMC_ACCOUNTS = "amc_audiences", "amc_accounts"


class ApiError(Exception):
    """An error answer; the family's handler renders it in that family's body shape."""

    def __init__(self, status: int, code: str, details: str, *, field: str | None = None):
        super().__init__(details)
        self.status, self.code, self.details, self.field = status, code, details, field


def json_body() -> Any:
    """The request's JSON body, or a 400 in the family's shape."""
    try:
        return json.loads(request.get_data() or b"null")
    except ValueError:
        raise ApiError(400, "BAD_REQUEST", "Request body is not valid JSON") from None


def family_of(path: str) -> str:
    """Which API family a path belongs to (decides the error body shape)."""
    if path == "/amc/audiences/query" or path.startswith("/amc/audiences/query/"):
        return AMC_AUDIENCES
    if path == "/amc/accounts":
        return AMC_ACCOUNTS
    if path.startswith("/amc/"):
        return AMC
    if path.startswith("/adm/"):
        return ADM
    if path.startswith("/auth/"):
        return LWA
    return DSP


def error_body(family: str, status: int, code: str, details: str, field: str | None = None) -> dict[str, Any]:
    """The JSON body Amazon sends for an error of this family."""
    request_id = str(uuid.uuid4())
    if family == AMC:
        return {"code": code, "details": details, "errors": [details], "requestId": request_id}
    # Rule-BasedAudiences_prod_3p.json: `{code, details, requestId}`, no `errors` list.
    if family == AMC_AUDIENCES:
        return {"code": code, "details": details, "requestId": request_id}
    # AMCAdministration_prod_3p.json, `GET /amc/accounts`: `{message, requestId}`.
    if family == AMC_ACCOUNTS:
        return {"message": details, "requestId": request_id}
    # AdsDataManager_prod_3p.json: `code` is "the HTTP status code" (a string) and `DetailedError`'s
    # `errorCode` a number; the name of the error travels as `errorType`.
    if family == ADM:
        return {
            "code": str(status),
            "details": details,
            "errors": [{"errorCode": status, "errorMessage": details, "errorType": code}],
            "message": details,
        }
    if family == LWA:
        return {"error": code, "error_description": details}
    # Data Provider (DataProvider_openapi.yaml): `fieldName` is a string when there is one, never
    # null, and the 413 body defines none.
    error = {"errorType": code, "message": details, **({"fieldName": field} if field else {})}
    return {
        "requestId": request_id,
        "error": {"httpStatusCode": str(status), "description": details, "errors": [error]},
    }


def error_response(
    family: str,
    status: int,
    code: str,
    details: str,
    *,
    field: str | None = None,
    retry_after: int | None = None,
) -> Response:
    """A Flask response carrying `error_body`, with `Retry-After` when throttling."""
    response = jsonify(error_body(family, status, code, details, field))
    response.status_code = status
    if retry_after is not None:
        response.headers["Retry-After"] = str(retry_after)
    return response


# The error code Amazon uses for each status the sandbox can answer with.
STATUS_CODES = {
    400: "BAD_REQUEST",
    401: "UNAUTHORIZED",
    403: "FORBIDDEN",
    404: "NOT_FOUND",
    413: "PAYLOAD_TOO_LARGE",
    429: "TOO_MANY_REQUESTS",
    500: "INTERNAL_ERROR",
    503: "SERVICE_UNAVAILABLE",
}
