"""Amazon DSP Data Provider API: audience metadata and PATCH /v2/dp/audience for mobile ad IDs.

Records live in `state.family("dsp")`: `audiences` (by str(id)) and `maids` (str(id) → sorted MAIDs).
Ids exceed 2^53, as Amazon's do. Every call runs in a profile's scope
(`Amazon-Advertising-API-Scope`), which must be one of the sandbox profiles.
"""

import random
import re
import uuid
from typing import Any

from flask import Blueprint, current_app, request

from audience_pipeline.sandbox import identity_graph
from audience_pipeline.sandbox.errors import ApiError, json_body
from audience_pipeline.sandbox.profiles import PROFILES

blueprint = Blueprint("dsp", __name__)

SCOPE_HEADER = "Amazon-Advertising-API-Scope"
MAID_PATH = re.compile(
    r"/MAID-([0-9A-Fa-f]{8}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{12})/audiences"
)
COUNTRY = re.compile(r"[A-Z]{2}")
MAX_TTL_SECONDS = 34_300_800
MAX_PATCHES = 2_000
MAX_PATCH_BYTES = 1_000_000
_random = random.SystemRandom()


def _invalid(field: str, message: str) -> ApiError:
    return ApiError(400, "INVALID_ARGUMENT", message, field=field)


def _records() -> dict[str, Any]:
    dsp = current_app.config["SANDBOX"].state.family("dsp")
    dsp.setdefault("audiences", {})
    dsp.setdefault("maids", {})
    return dsp


@blueprint.before_request
def require_scope() -> None:
    """The profile scope must name a sandbox profile."""
    scope = request.headers.get(SCOPE_HEADER)
    if not scope:
        raise _invalid(SCOPE_HEADER, f"Missing {SCOPE_HEADER} header")
    if scope not in {str(profile["profileId"]) for profile in PROFILES}:
        raise ApiError(403, "FORBIDDEN", f"Not authorized for profile {scope}", field=SCOPE_HEADER)


def _checked_metadata(metadata: Any) -> dict[str, Any]:
    if not isinstance(metadata, dict):
        raise _invalid("metadata", "metadata must be an object")
    if metadata.get("type") != "DATA_PROVIDER":
        raise _invalid("metadata.type", "metadata.type must be DATA_PROVIDER")
    if not isinstance(metadata.get("externalAudienceId"), str) or not metadata["externalAudienceId"]:
        raise _invalid("metadata.externalAudienceId", "metadata.externalAudienceId is required")
    ttl = metadata.get("ttl")
    if ttl is not None and (type(ttl) is not int or not 0 < ttl <= MAX_TTL_SECONDS):
        raise _invalid("metadata.ttl", f"metadata.ttl must be an integer 1..{MAX_TTL_SECONDS}")
    countries = metadata.get("dataSourceCountry")
    if (
        not isinstance(countries, list)
        or not countries
        or not all(COUNTRY.fullmatch(str(c)) for c in countries)
    ):
        raise _invalid("metadata.dataSourceCountry", "metadata.dataSourceCountry must list ISO alpha-2 codes")
    unknown = set(metadata) - {"type", "externalAudienceId", "ttl", "dataSourceCountry"}
    if unknown:
        raise _invalid("metadata", f"Unknown metadata fields: {', '.join(sorted(unknown))}")
    return dict(metadata)


@blueprint.post("/v2/dp/audiencemetadata/")
def create_audience():
    """Create a data provider audience; its id is above 2^53."""
    body = json_body()
    if not isinstance(body, dict):
        raise _invalid("body", "Request body must be a JSON object")
    name = body.get("name")
    if not isinstance(name, str) or not 10 <= len(name) <= 128:
        raise _invalid("name", "name must be 10..128 characters")
    if not isinstance(body.get("description"), str):
        raise _invalid("description", "description is required")
    if type(body.get("advertiserId")) is not int:
        raise _invalid("advertiserId", "advertiserId must be an integer")
    metadata = _checked_metadata(body.get("metadata"))
    sandbox = current_app.config["SANDBOX"]
    with sandbox.state.lock:
        records = _records()
        audience_id = _random.randrange(2**53 + 1, 2**63)
        audience = {
            "id": audience_id,
            "name": name,
            "description": body["description"],
            "advertiserId": body["advertiserId"],
            "metadata": metadata,
        }
        records["audiences"][str(audience_id)] = audience
        records["maids"][str(audience_id)] = []
        sandbox.state.save()
    return {"requestId": str(uuid.uuid4()), "audience": audience}


@blueprint.get("/v2/dp/audiencemetadata/<int:audience_id>")
def get_audience(audience_id: int):
    """An audience's metadata with its size: MAIDs received and matched in the identity graph."""
    sandbox = current_app.config["SANDBOX"]
    with sandbox.state.lock:
        records = _records()
        audience = records["audiences"].get(str(audience_id))
        if audience is None:
            raise ApiError(404, "NOT_FOUND", f"Audience {audience_id} not found", field="audienceId")
        maids = list(records["maids"][str(audience_id)])
    matched = identity_graph.known_count(
        maids, seed=sandbox.config.seed, known_share=sandbox.config.known_share
    )
    size = {
        "receivedRecordSize": len(maids),
        "matchedRecordSize": matched,
        "matchRate": round(matched / len(maids), 4) if maids else 0.0,
    }
    return {**audience, "metadata": {**audience["metadata"], "audienceSize": size}}


def _checked_patch(index: int, patch: Any, audiences: dict[str, Any]) -> tuple[str, str, list[str]]:
    """(op, lowercase MAID, audience ids) of a valid patch, else a 400 naming the field."""
    where = f"patches[{index}]"
    if not isinstance(patch, dict):
        raise _invalid(where, f"{where} must be an object")
    if patch.get("op") not in ("add", "remove"):
        raise _invalid(f"{where}.op", f"{where}.op must be add or remove")
    match = MAID_PATH.fullmatch(str(patch.get("path", "")))
    if match is None:
        raise _invalid(f"{where}.path", f"{where}.path must be /MAID-<uuid>/audiences")
    value = patch.get("value")
    if not isinstance(value, list) or not value:
        raise _invalid(f"{where}.value", f"{where}.value must list audience ids")
    ids = [str(audience_id) for audience_id in value]
    missing = [audience_id for audience_id in ids if audience_id not in audiences]
    if missing:
        raise _invalid(f"{where}.value", f"{where}.value names unknown audiences: {', '.join(missing)}")
    if "consent" in patch and not isinstance(patch["consent"], dict):
        raise _invalid(f"{where}.consent", f"{where}.consent must be an object")
    return patch["op"], match.group(1).lower(), ids


@blueprint.patch("/v2/dp/audience")
def patch_audience():
    """Associate or dissociate MAIDs with audiences; the whole request is refused on any bad patch."""
    if len(request.get_data()) > MAX_PATCH_BYTES:
        raise ApiError(413, "PAYLOAD_TOO_LARGE", f"Request body exceeds {MAX_PATCH_BYTES} bytes")
    body = json_body()
    patches = body.get("patches") if isinstance(body, dict) else None
    if not isinstance(patches, list) or not patches:
        raise _invalid("patches", "patches must be a non-empty list")
    if len(patches) > MAX_PATCHES:
        raise ApiError(
            413, "PAYLOAD_TOO_LARGE", f"At most {MAX_PATCHES} patches per request", field="patches"
        )
    sandbox = current_app.config["SANDBOX"]
    with sandbox.state.lock:
        records = _records()
        checked = [_checked_patch(i, patch, records["audiences"]) for i, patch in enumerate(patches)]
        touched = {audience_id for _, _, ids in checked for audience_id in ids}
        members = {audience_id: set(records["maids"][audience_id]) for audience_id in touched}
        for op, maid, ids in checked:
            for audience_id in ids:
                if op == "add":
                    members[audience_id].add(maid)
                else:
                    members[audience_id].discard(maid)
        records["maids"].update({audience_id: sorted(maids) for audience_id, maids in members.items()})
        sandbox.state.save()
    return {"jobId": str(uuid.uuid4()), "requestId": str(uuid.uuid4())}
