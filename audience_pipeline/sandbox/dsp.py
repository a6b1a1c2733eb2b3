"""Amazon DSP Data Provider API: audience metadata, and PATCH /v2/dp/audience for records.

Served as Amazon's OpenAPI file `DataProvider_openapi.yaml` defines it (the extract in
`audience_pipeline_tests/contract/definitions/data_provider.json`), with the guide's stricter
1 MB PATCH limit (see docs/amazon_api_conformance.md).

Records live in `state.family("dsp")`: `audiences` (str(id) → the audience as created). Their
records live on disk in `member_store.DSP`, a DuckDB log: a PATCH appends its own changes, O(its
records) whatever the audience's size, and an audience's size is SQL over the log. Ids exceed 2^53,
as Amazon's do. MAIDs are kept lower-case; cookie and external
user ids as sent. The `Amazon-Advertising-API-Scope` header is optional, as in the definition; when
sent it must name a sandbox profile.
"""

import random
import re
import uuid
from typing import Any

import polars as pl
from flask import Blueprint, current_app, request

from audience_pipeline.sandbox import identity_graph
from audience_pipeline.sandbox.errors import ApiError, json_body
from audience_pipeline.sandbox.member_store import DSP, dsp_ops
from audience_pipeline.sandbox.profiles import PROFILES
from audience_pipeline.sandbox.state import SandboxState

blueprint = Blueprint("dsp", __name__)

SCOPE_HEADER = "Amazon-Advertising-API-Scope"
JSON = "application/json"
MAID = "MAID"
RECORD_PATH = re.compile(r"/(COOKIE|MAID|EXTERNAL_USER_ID)-([^/\s]+)/audiences")
COUNTRY = re.compile(r"[A-Z]{2}")
UUID = re.compile(r"[0-9A-Fa-f]{8}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{12}")
METADATA_FIELDS = {"type", "externalAudienceId", "ttl", "audienceFees", "dataSourceCountry"}
CURRENCIES = {"USD", "CAD", "JPY", "GBP", "EUR", "AUD", "AED", "SAR", "MXN", "INR", "SEK", "TRY", "BRL"}
CONSENT_TYPES = {"TCF", "GPP", "Amazon"}
CONSENT_CHOICES = {"GRANTED", "DENIED"}
MAX_TTL_SECONDS = 34_300_800
NAME_CHARS = (10, 128)
MAX_DESCRIPTION_CHARS = 1_000
MAX_PATCHES = 2_000
# The OpenAPI summary allows 6 MB; the guide says 1 MB. The stricter one, so we never rely on more.
MAX_PATCH_BYTES = 1_000_000
# MAIDs a size query hands to the identity graph at a time.
MATCH_BATCH_ROWS = 100_000
_random = random.SystemRandom()


def _invalid(field: str, message: str) -> ApiError:
    return ApiError(400, "INVALID_ARGUMENT", message, field=field)


def _records(state: SandboxState) -> dict[str, Any]:
    dsp = state.family("dsp")
    dsp.setdefault("audiences", {})
    return dsp


def _is_int(value: Any) -> bool:
    return type(value) is int


@blueprint.before_request
def check_headers() -> None:
    """A scope, when sent, names a sandbox profile; a body comes as `application/json`."""
    scope = request.headers.get(SCOPE_HEADER)
    if scope is not None and scope not in {str(profile["profileId"]) for profile in PROFILES}:
        raise ApiError(403, "FORBIDDEN", f"Not authorized for profile {scope}", field=SCOPE_HEADER)
    # Every operation lists Content-Type as required; only the ones with a body need it to be JSON.
    # 400 rather than 415: Amazon documents no 415 for these operations.
    if request.method in ("POST", "PATCH") and request.mimetype != JSON:
        raise _invalid("Content-Type", f"Content-Type must be {JSON}")


def _checked_fees(fees: Any) -> None:
    if not isinstance(fees, list):
        raise _invalid("metadata.audienceFees", "metadata.audienceFees must be a list")
    for index, fee in enumerate(fees):
        where = f"metadata.audienceFees[{index}]"
        if not isinstance(fee, dict) or set(fee) != {"cpmCents", "currency"}:
            raise _invalid(where, f"{where} must have exactly cpmCents and currency")
        if not _is_int(fee["cpmCents"]):
            raise _invalid(f"{where}.cpmCents", f"{where}.cpmCents must be an integer")
        if fee["currency"] not in CURRENCIES:
            raise _invalid(
                f"{where}.currency", f"{where}.currency must be one of {', '.join(sorted(CURRENCIES))}"
            )


def _checked_metadata(metadata: Any) -> dict[str, Any]:
    if not isinstance(metadata, dict):
        raise _invalid("metadata", "metadata must be an object")
    if metadata.get("type") != "DATA_PROVIDER":
        raise _invalid("metadata.type", "metadata.type must be DATA_PROVIDER")
    if not isinstance(metadata.get("externalAudienceId"), str):
        raise _invalid("metadata.externalAudienceId", "metadata.externalAudienceId is required")
    ttl = metadata.get("ttl")
    if ttl is not None and (not _is_int(ttl) or not 0 <= ttl <= MAX_TTL_SECONDS):
        raise _invalid("metadata.ttl", f"metadata.ttl must be an integer 0..{MAX_TTL_SECONDS}")
    if "audienceFees" in metadata:
        _checked_fees(metadata["audienceFees"])
    countries = metadata.get("dataSourceCountry")
    # ISO 3166-1 alpha-2, as the definition's prose says.
    if (
        not isinstance(countries, list)
        or not countries
        or not all(COUNTRY.fullmatch(str(c)) for c in countries)
    ):
        raise _invalid("metadata.dataSourceCountry", "metadata.dataSourceCountry must list ISO alpha-2 codes")
    unknown = set(metadata) - METADATA_FIELDS
    if unknown:
        raise _invalid("metadata", f"Unknown metadata fields: {', '.join(sorted(unknown))}")
    return dict(metadata)


@blueprint.post("/v2/dp/audiencemetadata/")
def create_audience():
    """Create a data provider audience; its id is above 2^53."""
    body = json_body()
    if not isinstance(body, dict):
        raise _invalid("body", "Request body must be a JSON object")
    # The definition's `audienceName` and `audienceDescription` give these lengths in prose.
    low, high = NAME_CHARS
    name = body.get("name")
    if not isinstance(name, str) or not low <= len(name) <= high:
        raise _invalid("name", f"name must be {low}..{high} characters")
    description = body.get("description")
    if not isinstance(description, str) or len(description) > MAX_DESCRIPTION_CHARS:
        raise _invalid("description", f"description is required, at most {MAX_DESCRIPTION_CHARS} characters")
    if not _is_int(body.get("advertiserId")):
        raise _invalid("advertiserId", "advertiserId must be an integer")
    metadata = _checked_metadata(body.get("metadata"))
    sandbox = current_app.config["SANDBOX"]
    with sandbox.state.lock:
        records = _records(sandbox.state)
        audience_id = _random.randrange(2**53 + 1, 2**63)
        audience = {
            "id": audience_id,
            "name": name,
            "description": description,
            "advertiserId": body["advertiserId"],
            "metadata": metadata,
        }
        records["audiences"][str(audience_id)] = audience
        sandbox.state.save()
    return {"requestId": str(uuid.uuid4()), "audience": audience}


@blueprint.get("/v2/dp/audiencemetadata/<int:audience_id>")
def get_audience(audience_id: int):
    """An audience's metadata with its size: every record received, the MAIDs among them matched in
    the identity graph (the sandbox has no cookie sync and no external user ids to match)."""
    sandbox = current_app.config["SANDBOX"]
    with sandbox.state.lock:
        records = _records(sandbox.state)
        audience = records["audiences"].get(str(audience_id))
        if audience is None:
            raise ApiError(404, "NOT_FOUND", f"Audience {audience_id} not found", field="audienceId")
    cursor = sandbox.state.cursor()
    cursor.begin()  # both queries read the same records
    received = DSP.count(cursor, str(audience_id))
    matched = 0
    maids = cursor.sql(
        f"SELECT record_id FROM ({DSP.live()}) WHERE record_type = '{MAID}'",
        params={"collections": [str(audience_id)]},
    )
    for batch in maids.to_arrow_reader(MATCH_BATCH_ROWS):
        known = identity_graph.known(
            pl.from_arrow(batch["record_id"]),
            seed=sandbox.config.seed,
            known_share=sandbox.config.known_share,
        )
        matched += int(known.sum())
    cursor.rollback()
    size = {
        "receivedRecordSize": received,
        "matchedRecordSize": matched,
        "matchRate": round(matched / received, 4) if received else 0.0,
    }
    answer = {**audience, "metadata": {**audience["metadata"], "audienceSize": size}}
    return {"requestId": str(uuid.uuid4()), "audience": answer}


def _checked_consent(where: str, consent: Any) -> None:
    if not isinstance(consent, dict):
        raise _invalid(where, f"{where} must be an object")
    if "consentType" in consent and consent["consentType"] not in CONSENT_TYPES:
        raise _invalid(f"{where}.consentType", f"{where}.consentType must be TCF, GPP or Amazon")
    for text in ("tcf", "gpp"):
        if text in consent and not isinstance(consent[text], str):
            raise _invalid(f"{where}.{text}", f"{where}.{text} must be a string")
    if "amazonConsent" in consent:
        amazon = consent["amazonConsent"]
        choices = ("amazonAdStorage", "amazonUserData")
        if not isinstance(amazon, dict) or not all(amazon.get(c) in CONSENT_CHOICES for c in choices):
            raise _invalid(
                f"{where}.amazonConsent",
                f"{where}.amazonConsent needs {' and '.join(choices)}: GRANTED or DENIED",
            )


def _checked_patch(index: int, patch: Any, audiences: dict[str, Any]) -> tuple[str, str, str, list[str]]:
    """(op, record type, record id, audience ids) of a valid patch, else a 400 naming the field."""
    where = f"patches[{index}]"
    if not isinstance(patch, dict):
        raise _invalid(where, f"{where} must be an object")
    if patch.get("op") not in ("add", "remove"):
        raise _invalid(f"{where}.op", f"{where}.op must be add or remove")
    match = RECORD_PATH.fullmatch(str(patch.get("path", "")))
    if match is None or (match.group(1) == MAID and not UUID.fullmatch(match.group(2))):
        raise _invalid(
            f"{where}.path",
            f"{where}.path must be /<recordIdType>-<recordIdValue>/audiences with recordIdType "
            "COOKIE, MAID (a UUID) or EXTERNAL_USER_ID",
        )
    record_type, record_id = match.groups()
    value = patch.get("value")
    if not isinstance(value, list) or not value or not all(_is_int(audience_id) for audience_id in value):
        raise _invalid(f"{where}.value", f"{where}.value must list audience ids (integers)")
    ids = [str(audience_id) for audience_id in value]
    missing = [audience_id for audience_id in ids if audience_id not in audiences]
    if missing:
        raise _invalid(f"{where}.value", f"{where}.value names unknown audiences: {', '.join(missing)}")
    if "consent" in patch:
        _checked_consent(f"{where}.consent", patch["consent"])
    return patch["op"], record_type, record_id.lower() if record_type == MAID else record_id, ids


@blueprint.patch("/v2/dp/audience")
def patch_audience():
    """Associate or dissociate records with audiences; the whole request is refused on any bad patch."""
    # Amazon's 413 body documents no fieldName.
    if len(request.get_data()) > MAX_PATCH_BYTES:
        raise ApiError(413, "INPUT_TOO_LARGE", f"The input payload exceeds the {MAX_PATCH_BYTES} bytes limit")
    body = json_body()
    patches = body.get("patches") if isinstance(body, dict) else None
    if not isinstance(patches, list) or not patches:
        raise _invalid("patches", "patches must be a non-empty list")
    if len(patches) > MAX_PATCHES:
        raise ApiError(413, "INPUT_TOO_LARGE", f"At most {MAX_PATCHES} patches per request")
    sandbox = current_app.config["SANDBOX"]
    with sandbox.state.lock:
        records = _records(sandbox.state)
        checked = [_checked_patch(i, patch, records["audiences"]) for i, patch in enumerate(patches)]
        # Each record's last op counts. Only these are written: no `state.save()`, no read of the
        # audience, so a PATCH costs the same whatever the audience's size.
        last = {
            (audience_id, record_type, record_id): op == "add"
            for op, record_type, record_id, ids in checked
            for audience_id in ids
        }
        DSP.append(sandbox.state.cursor(), dsp_ops(last), sandbox.state.next_batch())
    return {"jobId": str(uuid.uuid4()), "requestId": str(uuid.uuid4())}
