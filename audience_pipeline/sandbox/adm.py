"""Amazon Ads Data Manager: audiences, members (CREATE/DELETE), metrics, identity deletion.

Held to `AdsDataManager_prod_3p.json` for shapes, statuses and content types, and to Amazon's ADM
guide for behaviour. Records live in `state.family("adm")`: `datasets` (by dataSetId: the fields
Amazon answers, plus the owning `account`) and `stats` (dataSetId → upload counters). Members
(dataSetId → externalUserId → userIdentity) live on disk in `member_store.ADM`, a DuckDB log: an
upload costs O(its members), metrics and identity deletion are SQL over the log, so a dataset may
hold millions of members without the sandbox holding them in memory.

Accounts: the definition makes `Amazon-Ads-Manager-Account-ID` optional on every call but identity
deletion, and authorizes a DSP advertiser named by `Amazon-Ads-AccountId` on create, list and member
uploads (their descriptions; the parameter itself is listed on members and metrics; the guide sends
it on create). Amazon has to know whose datasets a call means, so the sandbox keys datasets by the
manager account the call names, else by the advertiser account; a call naming neither is a 400. A
dataset of another account is a 404, or a 400 on metrics, which documents no 404.
"""

import re
import uuid
from datetime import UTC, datetime
from typing import Any

import polars as pl
import pyarrow as pa
import pycountry
from flask import Blueprint, Response, current_app, request

from audience_pipeline.sandbox import identity_graph
from audience_pipeline.sandbox.amc_jobs import answer_as
from audience_pipeline.sandbox.errors import ApiError, json_body
from audience_pipeline.sandbox.member_store import ADM, IDENTITY_PAIRS_SQL, adm_ops, identity_pairs

blueprint = Blueprint("adm", __name__)

MANAGER_HEADER = "Amazon-Ads-Manager-Account-ID"
ADVERTISER_HEADER = "Amazon-Ads-AccountId"
# The definition's media types: members in and out, metrics (errors too), identity deletion in.
MEMBERS_MEDIA_TYPE = "application/vnd.admAudiences.v1+json"
METRICS_MEDIA_TYPE = "application/vnd.admmetrics.v1+json"
DELETION_MEDIA_TYPE = "application/vnd.admDataDeletion.v1+json"
# `name`: pattern `^[A-Za-z][A-Za-z0-9_-]{0,99}$` with minLength 5, i.e. 5..100 characters.
NAME = re.compile(r"[A-Za-z][A-Za-z0-9_-]{4,99}")
# The definition's `CountryCode` enum: ISO 3166-1 alpha-2, Kosovo, the retired AN, and UNKNOWN.
COUNTRY_CODES = frozenset({country.alpha_2 for country in pycountry.countries} | {"XK", "AN", "UNKNOWN"})
HEX64 = re.compile(r"[0-9a-f]{64}")
HASHED_PII_KEYS = frozenset({"ad", "cty", "em", "fn", "ln", "ph", "st", "zip"})
EXTERNAL_ID_KEYS = frozenset(
    {"liveRampId", "experianId", "kantarId", "maId", "merkleId", "neustarId", "realId", "sambaTvId"}
)
# Keys that single out a person: a name or city hash alone resolves nobody.
MATCH_KEYS = frozenset({"em", "ph"}) | EXTERNAL_ID_KEYS
CONSENT_VALUES = frozenset({"GRANTED", "DENIED", "NOT_APPLICABLE", "UNKNOWN"})
MAX_MEMBERS = 10_000
MAX_IDENTITIES_PER_KIND = 10
MAX_DELETION_TARGETS = 1_000
MAX_DETAILED_ERRORS = 100
# The guide's file limit; the definition documents no 413, so a larger body is a 400 like any other.
MAX_BODY_BYTES = 10 * 1024 * 1024
DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE = 100, 1_000
# `CdxDataSetWithoutSchema`, what list answers per dataset; create answers these and `schema`.
LISTED_FIELDS = (
    "clientName",
    "countryCode",
    "createdBy",
    "dataSetId",
    "dataSetType",
    "dateCreated",
    "description",
    "idRetention",
    "lastModified",
    "lastModifiedBy",
    "name",
)


@blueprint.after_request
def label_answer(response: Response) -> Response:
    """Member upload answers and metrics (errors included) in the media types the definition gives."""
    if request.endpoint == "adm.dataset_metrics":
        return answer_as(response, METRICS_MEDIA_TYPE)
    if request.endpoint == "adm.upload_members" and response.status_code == 200:
        return answer_as(response, MEMBERS_MEDIA_TYPE)
    return response


def _account(*, manager_only: bool = False) -> str:
    """Whose datasets the call means: the manager account, else the advertiser account."""
    account = request.headers.get(MANAGER_HEADER)
    if not account and not manager_only:
        account = request.headers.get(ADVERTISER_HEADER)
    if not account:
        named = MANAGER_HEADER if manager_only else f"{MANAGER_HEADER} or {ADVERTISER_HEADER}"
        raise ApiError(400, "BAD_REQUEST", f"Missing {named} header")
    return account


def _require_media_type(media_type: str) -> None:
    # No operation documents 415: a body in another media type is a bad request. (Media types are
    # case-insensitive, and werkzeug lowercases them.)
    if request.mimetype != media_type.lower():
        raise ApiError(400, "BAD_REQUEST", f"Content-Type must be {media_type}")


def _records() -> dict[str, Any]:
    adm = current_app.config["SANDBOX"].state.family("adm")
    for key in ("datasets", "stats"):
        adm.setdefault(key, {})
    return adm


def _dataset(records: dict[str, Any], data_set_id: str, account: str, *, status: int = 404) -> dict[str, Any]:
    dataset = records["datasets"].get(data_set_id)
    if dataset is None or dataset["account"] != account:
        raise ApiError(
            status, "NOT_FOUND" if status == 404 else "BAD_REQUEST", f"Dataset {data_set_id} not found"
        )
    return dataset


def _listed(dataset: dict[str, Any]) -> dict[str, Any]:
    return {key: dataset[key] for key in LISTED_FIELDS if key in dataset}


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@blueprint.post("/adm/audiences")
def create_audience():
    """Create an audience dataset (201); names are unique per account (else 400)."""
    account = _account()
    body = json_body()
    if not isinstance(body, dict):
        raise ApiError(400, "BAD_REQUEST", "Request body must be a JSON object")
    unknown = set(body) - {"name", "countryCode", "description", "idRetention"}
    if unknown:
        raise ApiError(400, "BAD_REQUEST", f"Unknown fields: {', '.join(sorted(unknown))}")
    name = body.get("name")
    if not isinstance(name, str) or not NAME.fullmatch(name):
        raise ApiError(
            400, "BAD_REQUEST", "name must match ^[A-Za-z][A-Za-z0-9_-]{0,99}$ and have 5..100 characters"
        )
    if body.get("countryCode") not in COUNTRY_CODES:
        raise ApiError(400, "BAD_REQUEST", "countryCode must be an ISO 3166 alpha-2 code or UNKNOWN")
    description = body.get("description")
    if description is not None and not (isinstance(description, str) and 1 <= len(description) <= 1_000):
        raise ApiError(400, "BAD_REQUEST", "description must be a string of 1..1000 characters")
    if not isinstance(body.get("idRetention", False), bool):
        raise ApiError(400, "BAD_REQUEST", "idRetention must be a boolean")
    sandbox = current_app.config["SANDBOX"]
    with sandbox.state.lock:
        records = _records()
        if any(d["name"] == name and d["account"] == account for d in records["datasets"].values()):
            raise ApiError(400, "DuplicateDatasetName", f"An audience named {name} already exists")
        now = _now()
        dataset = {
            "dataSetId": str(uuid.uuid4()),
            "name": name,
            "countryCode": body["countryCode"],
            **({"description": description} if description is not None else {}),
            "idRetention": body.get("idRetention", False),
            "dataSetType": "AUDIENCE",
            "clientName": request.headers["Amazon-Advertising-API-ClientId"],
            "createdBy": account,
            "dateCreated": now,
            "lastModified": now,
            "lastModifiedBy": account,
            "account": account,
        }
        records["datasets"][dataset["dataSetId"]] = dataset
        records["stats"][dataset["dataSetId"]] = {
            "uploadCount": 0,
            "acceptedCount": 0,
            "invalidRecordCount": 0,
            "ignoredDeleteCount": 0,
        }
        sandbox.state.save()
    # An audience dataset has no columns of its own; `schema` is required all the same.
    return {**_listed(dataset), "schema": []}, 201


@blueprint.get("/adm/audiences")
def list_audiences():
    """The account's audience datasets, oldest first, a page at a time (`nextToken` only when more follow)."""
    account = _account()
    try:
        limit = int(request.args.get("limit", DEFAULT_PAGE_SIZE))
        start = int(request.args.get("nextToken") or 0)
    except ValueError:
        raise ApiError(
            400, "BAD_REQUEST", "limit must be a number and nextToken the value the API gave"
        ) from None
    if not 1 <= limit <= MAX_PAGE_SIZE or start < 0:
        raise ApiError(400, "BAD_REQUEST", f"limit must be 1..{MAX_PAGE_SIZE} and nextToken valid")
    with current_app.config["SANDBOX"].state.lock:
        mine = [_listed(d) for d in _records()["datasets"].values() if d["account"] == account]
    end = start + limit
    return {"dataSets": mine[start:end], **({"nextToken": str(end)} if end < len(mine) else {})}


def _unknown(obj: dict[str, Any], known: set[str] | frozenset[str], where: str) -> list[str]:
    return [f"{where}.{key} is not a known field" for key in sorted(set(obj) - known)]


def _identity_problems(identity: Any, where: str) -> list[str]:
    """What is wrong with a `userIdentity` object; never echoes a value (it may be raw PII)."""
    if not isinstance(identity, dict):
        return [f"{where} must be an object"]
    problems = _unknown(identity, {"hashedPiis", "externalIdentities"}, where)
    for kind, allowed, hashed in (
        ("hashedPiis", HASHED_PII_KEYS, True),
        ("externalIdentities", EXTERNAL_ID_KEYS, False),
    ):
        entries = identity.get(kind, [])
        if not isinstance(entries, list) or len(entries) > MAX_IDENTITIES_PER_KIND:
            problems.append(f"{where}.{kind} must be a list of at most {MAX_IDENTITIES_PER_KIND} objects")
            continue
        for i, entry in enumerate(entries):
            if not isinstance(entry, dict) or not entry:
                problems.append(f"{where}.{kind}[{i}] must be a non-empty object")
                continue
            for key, value in entry.items():
                if key not in allowed:
                    problems.append(f"{where}.{kind}[{i}].{key} is not a known field")
                elif hashed and not (isinstance(value, str) and HEX64.fullmatch(value)):
                    problems.append(f"{where}.{kind}[{i}].{key} must be a 64-character lowercase hex SHA-256")
                elif not hashed and not (isinstance(value, str) and value):
                    problems.append(f"{where}.{kind}[{i}].{key} must be a non-empty string")
    return problems


def _object(value: Any, where: str) -> tuple[dict[str, Any], list[str]]:
    return (value, []) if isinstance(value, dict) else ({}, [f"{where} must be an object"])


def _consent_problems(consent: Any) -> list[str]:
    consent, problems = _object(consent, "userConsent")
    problems += _unknown(consent, {"geo", "consent"}, "userConsent")
    geo, found = _object(consent.get("geo", {}), "userConsent.geo")
    problems += found + _unknown(geo, {"countryCode", "ipAddress"}, "userConsent.geo")
    if "countryCode" in geo and geo["countryCode"] not in COUNTRY_CODES:
        problems.append("userConsent.geo.countryCode must be an ISO 3166 alpha-2 code or UNKNOWN")
    if not isinstance(geo.get("ipAddress", ""), str):
        problems.append("userConsent.geo.ipAddress must be a string")
    signals, found = _object(consent.get("consent", {}), "userConsent.consent")
    problems += found + _unknown(signals, {"amzn", "tcf", "gpp"}, "userConsent.consent")
    problems += [
        f"userConsent.consent.{key} must be a string"
        for key in ("tcf", "gpp")
        if not isinstance(signals.get(key, ""), str)
    ]
    amzn, found = _object(signals.get("amzn", {}), "userConsent.consent.amzn")
    keys = ("amznAdStorage", "amznUserData")
    problems += found + _unknown(amzn, set(keys), "userConsent.consent.amzn")
    problems += [
        f"userConsent.consent.amzn.{key} must be one of {', '.join(sorted(CONSENT_VALUES))}"
        for key in keys
        if key in amzn and amzn[key] not in CONSENT_VALUES
    ]
    return problems


def _member_problems(member: Any) -> list[str]:
    if not isinstance(member, dict):
        return ["member must be an object"]
    known = {"externalUserId", "action", "userIdentity", "userConsent"}
    problems = [f"{key} is not a known field" for key in sorted(set(member) - known)]
    if not isinstance(member.get("externalUserId"), str) or not member["externalUserId"]:
        problems.append("externalUserId is required")
    if member.get("action") not in ("CREATE", "DELETE"):
        problems.append("action must be CREATE or DELETE")
    if "userIdentity" not in member:
        problems.append("userIdentity is required")
    else:
        problems += _identity_problems(member["userIdentity"], "userIdentity")
    if "userConsent" in member:
        problems += _consent_problems(member["userConsent"])
    return problems


def _member_error(index: int, problems: list[str]) -> dict[str, Any]:
    """A `ValidationError`: `code` is the HTTP status as a string, `index` and `errorCode` numbers."""
    return {
        "index": index,
        "code": "400",
        "details": "; ".join(problems),
        "errors": [
            {"errorCode": 400, "errorMessage": problem, "errorType": "VALIDATION_ERROR"}
            for problem in problems[:MAX_DETAILED_ERRORS]
        ],
    }


def _delete_consented(member: dict[str, Any]) -> bool:
    # Amazon ignores a DELETE unless the member carries a GRANTED Amazon user-data consent signal.
    amzn = member.get("userConsent", {}).get("consent", {}).get("amzn", {})
    return amzn.get("amznUserData") == "GRANTED"


@blueprint.post("/adm/audiences/<data_set_id>/members")
def upload_members(data_set_id: str):
    """CREATE or DELETE members; invalid members are answered by index, the rest are applied."""
    account = _account()
    _require_media_type(MEMBERS_MEDIA_TYPE)
    if len(request.get_data()) > MAX_BODY_BYTES:
        raise ApiError(400, "BAD_REQUEST", f"Request body exceeds {MAX_BODY_BYTES} bytes")
    body = json_body()
    members = body.get("members") if isinstance(body, dict) else None
    if not isinstance(members, list) or not 1 <= len(members) <= MAX_MEMBERS:
        raise ApiError(400, "BAD_REQUEST", f"members must be a list of 1..{MAX_MEMBERS} members")
    if set(body) != {"members"}:
        raise ApiError(400, "BAD_REQUEST", f"Unknown fields: {', '.join(sorted(set(body) - {'members'}))}")
    sandbox = current_app.config["SANDBOX"]
    with sandbox.state.lock:
        records = _records()
        _dataset(records, data_set_id, account)
        stats = records["stats"][data_set_id]
        errors = []
        # externalUserId → its userIdentity if created, None if deleted: a member's last op counts.
        last: dict[str, dict[str, Any] | None] = {}
        for index, member in enumerate(members):
            problems = _member_problems(member)
            if problems:
                errors.append(_member_error(index, problems))
            elif member["action"] == "CREATE":
                last[member["externalUserId"]] = member["userIdentity"]
            elif _delete_consented(member):
                last[member["externalUserId"]] = None
            else:
                stats["ignoredDeleteCount"] += 1
        ops = adm_ops(data_set_id, last, _resolved(list(last.values()), sandbox.config))
        ADM.append(sandbox.state.cursor(), ops, sandbox.state.next_batch())
        stats["uploadCount"] += 1
        stats["invalidRecordCount"] += len(errors)
        stats["acceptedCount"] += len(members) - len(errors)
        sandbox.state.save()
    # `errors` has minItems 1: a request without refused members answers none.
    return {"ingressId": str(uuid.uuid4()), **({"errors": errors} if errors else {})}


def _resolved(identities: list[dict[str, Any] | None], config: Any) -> list[bool]:
    """Whether each identity (None: a removal) resolves in the identity graph: one of its values that
    single out a person (`MATCH_KEYS`) is known. Decided as members arrive, as Amazon matches them on
    ingestion, so metrics only count (a sandbox restarted with another seed keeps earlier answers)."""
    owners, values = [], []
    for i, identity in enumerate(identities):
        for key, value in identity_pairs(identity) if identity is not None else ():
            if key in MATCH_KEYS:
                owners.append(i)
                values.append(value)
    known = identity_graph.known(
        pl.Series("v", values, dtype=pl.String), seed=config.seed, known_share=config.known_share
    )
    resolved = [False] * len(identities)
    for i in pl.Series("owner", owners, dtype=pl.Int64).filter(known):
        resolved[i] = True
    return resolved


@blueprint.get("/adm/datasets/<data_set_id>/metrics")
def dataset_metrics(data_set_id: str):
    """The dataset, its upload counters, and how many stored members carry an identity and resolve
    in the identity graph: one count of the flags set as members arrived, over the member log."""
    account = _account()
    sandbox = current_app.config["SANDBOX"]
    with sandbox.state.lock:
        records = _records()
        dataset = _listed(_dataset(records, data_set_id, account, status=400))
        stats = dict(records["stats"][data_set_id])
    [(with_identity, resolved)] = (
        sandbox.state.cursor()
        .execute(
            "SELECT count(*) FILTER (with_identity), count(*) FILTER (resolved) "
            f"FROM ({ADM.live(['with_identity', 'resolved'])})",
            {"collections": [data_set_id]},
        )
        .fetchall()
    )
    return {
        **dataset,
        # Required here although optional on create; the dataset came through this API.
        "description": dataset.get("description", ""),
        "dataSetSource": "API",
        "acceptedCount": stats["acceptedCount"],
        "invalidRecordCount": stats["invalidRecordCount"],
        "matchRecordPercentage": round(100 * resolved / with_identity, 2) if with_identity else 0.0,
        "recordsResolved": resolved,
        "recordsWithIdentity": with_identity,
        "uploadCount": stats["uploadCount"],
    }


def _deletion_targets(body: Any) -> tuple[set[str], set[tuple[str, str]]]:
    """The user ids and identity pairs a deletion request names, or a 400."""
    targets = body.get("targetIdentities") if isinstance(body, dict) else None
    if not isinstance(targets, list) or not 1 <= len(targets) <= MAX_DELETION_TARGETS:
        raise ApiError(400, "BAD_REQUEST", f"targetIdentities must hold 1..{MAX_DELETION_TARGETS} entries")
    user_ids, pairs = set(), set()
    for i, target in enumerate(targets):
        if (
            isinstance(target, dict)
            and set(target) == {"externalUserId"}
            and isinstance(target["externalUserId"], str)
        ):
            user_ids.add(target["externalUserId"])
            continue
        if not isinstance(target, dict) or set(target) != {"identity"}:
            raise ApiError(400, "BAD_REQUEST", f"targetIdentities[{i}] must hold externalUserId or identity")
        problems = _identity_problems(target["identity"], f"targetIdentities[{i}].identity")
        if problems:
            raise ApiError(400, "BAD_REQUEST", "; ".join(problems))
        pairs.update(identity_pairs(target["identity"]))
    return user_ids, pairs


@blueprint.post("/adm/identities/delete")
def delete_identities():
    """Remove the targeted users from every dataset of the manager account (200, no body)."""
    account = _account(manager_only=True)
    _require_media_type(DELETION_MEDIA_TYPE)
    user_ids, pairs = _deletion_targets(json_body())
    sandbox = current_app.config["SANDBOX"]
    with sandbox.state.lock:
        mine = [d for d, dataset in _records()["datasets"].items() if dataset["account"] == account]
        _remove(sandbox.state.cursor(), sandbox.state.next_batch(), mine, user_ids, pairs)
    return Response(status=200)


def _remove(
    cursor, batch: int, data_set_ids: list[str], user_ids: set[str], pairs: set[tuple[str, str]]
) -> None:
    """Log the removal of every member of these datasets that has one of these externalUserIds or
    carries one of these identity pairs."""
    keys, values = zip(*pairs, strict=True) if pairs else ((), ())
    targets = {
        "target_users": pa.table({"user_id": pa.array(list(user_ids), pa.string())}),
        "target_pairs": pa.table(
            {"key": pa.array(keys, pa.string()), "value": pa.array(values, pa.string())}
        ),
    }
    for name, table in targets.items():
        cursor.register(name, table)
    try:
        cursor.execute(
            f"INSERT INTO {ADM.table} (batch, collection, user_id, added) "
            "SELECT $batch, collection, user_id, false "
            f"FROM ({ADM.live(['identity'])}) "
            "WHERE user_id IN (SELECT user_id FROM target_users) OR list_has_any("
            f"{IDENTITY_PAIRS_SQL}, (SELECT list({{'key': key, 'value': value}}) FROM target_pairs))",
            {"batch": batch, "collections": data_set_ids},
        )
    finally:
        for name in targets:
            cursor.unregister(name)
