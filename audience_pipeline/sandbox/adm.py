"""Amazon Ads Data Manager: audiences, members (CREATE/DELETE), metrics, identity deletion.

Records live in `state.family("adm")`: `datasets` (by dataSetId, each with its manager account),
`members` (dataSetId → externalUserId → userIdentity) and `stats` (dataSetId → upload counters).
Every call needs `Amazon-Ads-Manager-Account-ID`; a dataset of another manager account is a 404.
"""

import re
import uuid
from datetime import UTC, datetime
from typing import Any

import polars as pl
from flask import Blueprint, current_app, request

from audience_pipeline.sandbox import identity_graph
from audience_pipeline.sandbox.errors import ApiError, json_body

blueprint = Blueprint("adm", __name__)

MANAGER_HEADER = "Amazon-Ads-Manager-Account-ID"
NAME = re.compile(r"[A-Za-z][A-Za-z0-9_-]{4,99}")
COUNTRY = re.compile(r"[A-Z]{2}")
HEX64 = re.compile(r"[0-9a-f]{64}")
HASHED_PII_KEYS = frozenset({"em", "ph", "fn", "ln", "ad", "cty", "st", "zip", "country"})
EXTERNAL_ID_KEYS = frozenset(
    {"liveRampId", "experianId", "kantarId", "maId", "merkleId", "neustarId", "realId", "sambaTvId"}
)
# Keys that single out a person: a name, city or country hash alone resolves nobody.
MATCH_KEYS = frozenset({"em", "ph"}) | EXTERNAL_ID_KEYS
CONSENT_VALUES = frozenset({"GRANTED", "DENIED", "NOT_APPLICABLE", "UNKNOWN"})
MAX_MEMBERS = 10_000
MAX_IDENTITIES_PER_KIND = 10
MAX_DELETION_TARGETS = 1_000
MAX_BODY_BYTES = 10 * 1024 * 1024
DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE = 100, 1_000


def _manager_account() -> str:
    account = request.headers.get(MANAGER_HEADER)
    if not account:
        raise ApiError(400, "BAD_REQUEST", f"Missing {MANAGER_HEADER} header")
    return account


def _records() -> dict[str, Any]:
    adm = current_app.config["SANDBOX"].state.family("adm")
    for key in ("datasets", "members", "stats"):
        adm.setdefault(key, {})
    return adm


def _dataset(records: dict[str, Any], data_set_id: str, account: str) -> dict[str, Any]:
    dataset = records["datasets"].get(data_set_id)
    if dataset is None or dataset["managerAccountId"] != account:
        raise ApiError(404, "NOT_FOUND", f"Dataset {data_set_id} not found")
    return dataset


@blueprint.post("/adm/audiences")
def create_audience():
    """Create an audience dataset; names are unique per manager account."""
    account = _manager_account()
    body = json_body()
    if not isinstance(body, dict):
        raise ApiError(400, "BAD_REQUEST", "Request body must be a JSON object")
    unknown = set(body) - {"name", "countryCode", "description", "idRetention"}
    if unknown:
        raise ApiError(400, "BAD_REQUEST", f"Unknown fields: {', '.join(sorted(unknown))}")
    name = body.get("name")
    if not isinstance(name, str) or not NAME.fullmatch(name):
        raise ApiError(400, "BAD_REQUEST", f"name must match {NAME.pattern}")
    if not isinstance(body.get("countryCode"), str) or not COUNTRY.fullmatch(body["countryCode"]):
        raise ApiError(400, "BAD_REQUEST", "countryCode must be an ISO 3166 alpha-2 code")
    if not isinstance(body.get("description", ""), str):
        raise ApiError(400, "BAD_REQUEST", "description must be a string")
    if not isinstance(body.get("idRetention", False), bool):
        raise ApiError(400, "BAD_REQUEST", "idRetention must be a boolean")
    sandbox = current_app.config["SANDBOX"]
    with sandbox.state.lock:
        records = _records()
        if any(d["name"] == name and d["managerAccountId"] == account for d in records["datasets"].values()):
            raise ApiError(400, "BAD_REQUEST", f"An audience named {name} already exists")
        dataset = {
            "dataSetId": str(uuid.uuid4()),
            "name": name,
            "countryCode": body["countryCode"],
            "description": body.get("description", ""),
            "idRetention": body.get("idRetention", False),
            "dataSetType": "AUDIENCE",
            "managerAccountId": account,
            "createdAt": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        }
        records["datasets"][dataset["dataSetId"]] = dataset
        records["members"][dataset["dataSetId"]] = {}
        records["stats"][dataset["dataSetId"]] = {
            "uploadCount": 0,
            "acceptedCount": 0,
            "invalidRecordCount": 0,
            "ignoredDeleteCount": 0,
        }
        sandbox.state.save()
    return dataset, 201


@blueprint.get("/adm/audiences")
def list_audiences():
    """The manager account's audience datasets, oldest first, a page at a time."""
    account = _manager_account()
    try:
        limit = int(request.args.get("limit", DEFAULT_PAGE_SIZE))
        start = int(request.args.get("nextToken") or 0)
    except ValueError:
        raise ApiError(400, "BAD_REQUEST", "limit and nextToken must be integers") from None
    if not 1 <= limit <= MAX_PAGE_SIZE or start < 0:
        raise ApiError(400, "BAD_REQUEST", f"limit must be 1..{MAX_PAGE_SIZE} and nextToken valid")
    with current_app.config["SANDBOX"].state.lock:
        mine = [d for d in _records()["datasets"].values() if d["managerAccountId"] == account]
    page = mine[start : start + limit]
    more = start + limit < len(mine)
    return {"dataSets": page, "nextToken": str(start + limit) if more else None}


def _identity_problems(identity: Any, where: str) -> list[str]:
    """What is wrong with a `userIdentity` object; never echoes a value (it may be raw PII)."""
    if not isinstance(identity, dict):
        return [f"{where} must be an object"]
    problems = [
        f"{where}.{key} is not a known field" for key in set(identity) - {"hashedPiis", "externalIdentities"}
    ]
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


def _consent_problems(consent: Any) -> list[str]:
    if not isinstance(consent, dict):
        return ["userConsent must be an object"]
    problems = [f"userConsent.{key} is not a known field" for key in set(consent) - {"geo", "consent"}]
    geo = consent.get("geo", {})
    if not isinstance(geo, dict) or ("countryCode" in geo and not COUNTRY.fullmatch(str(geo["countryCode"]))):
        problems.append("userConsent.geo.countryCode must be an ISO 3166 alpha-2 code")
    signals = consent.get("consent", {})
    if not isinstance(signals, dict):
        return [*problems, "userConsent.consent must be an object"]
    amzn = signals.get("amzn", {})
    if not isinstance(amzn, dict):
        return [*problems, "userConsent.consent.amzn must be an object"]
    problems += [
        f"userConsent.consent.amzn.{key} must be one of {', '.join(sorted(CONSENT_VALUES))}"
        for key in ("amznAdStorage", "amznUserData")
        if key in amzn and amzn[key] not in CONSENT_VALUES
    ]
    return problems


def _member_problems(member: Any) -> list[str]:
    if not isinstance(member, dict):
        return ["member must be an object"]
    known = {"externalUserId", "action", "userIdentity", "userConsent"}
    problems = [f"{key} is not a known field" for key in set(member) - known]
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
    return {
        "index": index,
        "code": "INVALID_ARGUMENT",
        "details": "; ".join(problems),
        "errors": [
            {"errorCode": "INVALID_ARGUMENT", "errorMessage": problem, "errorType": "VALIDATION_ERROR"}
            for problem in problems
        ],
    }


def _delete_consented(member: dict[str, Any]) -> bool:
    # Amazon ignores a DELETE unless the member carries a GRANTED Amazon user-data consent signal.
    amzn = member.get("userConsent", {}).get("consent", {}).get("amzn", {})
    return amzn.get("amznUserData") == "GRANTED"


@blueprint.post("/adm/audiences/<data_set_id>/members")
def upload_members(data_set_id: str):
    """CREATE or DELETE members; invalid members are answered by index, the rest are applied."""
    account = _manager_account()
    if len(request.get_data()) > MAX_BODY_BYTES:
        raise ApiError(413, "PAYLOAD_TOO_LARGE", f"Request body exceeds {MAX_BODY_BYTES} bytes")
    body = json_body()
    members = body.get("members") if isinstance(body, dict) else None
    if not isinstance(members, list) or not members:
        raise ApiError(400, "BAD_REQUEST", "members must be a non-empty list")
    if len(members) > MAX_MEMBERS:
        raise ApiError(413, "PAYLOAD_TOO_LARGE", f"At most {MAX_MEMBERS} members per request")
    sandbox = current_app.config["SANDBOX"]
    with sandbox.state.lock:
        records = _records()
        _dataset(records, data_set_id, account)
        stored, stats = records["members"][data_set_id], records["stats"][data_set_id]
        errors = []
        for index, member in enumerate(members):
            problems = _member_problems(member)
            if problems:
                errors.append(_member_error(index, problems))
            elif member["action"] == "CREATE":
                stored[member["externalUserId"]] = member["userIdentity"]
            elif _delete_consented(member):
                stored.pop(member["externalUserId"], None)
            else:
                stats["ignoredDeleteCount"] += 1
        stats["uploadCount"] += 1
        stats["invalidRecordCount"] += len(errors)
        stats["acceptedCount"] += len(members) - len(errors)
        sandbox.state.save()
    return {"ingressId": str(uuid.uuid4()), "errors": errors}


def _identity_pairs(identity: dict[str, Any]) -> list[tuple[str, str]]:
    entries = [*identity.get("hashedPiis", []), *identity.get("externalIdentities", [])]
    return [(key, value) for entry in entries for key, value in entry.items()]


@blueprint.get("/adm/datasets/<data_set_id>/metrics")
def dataset_metrics(data_set_id: str):
    """Upload counters, and how many stored members carry an identity and resolve in the graph."""
    account = _manager_account()
    sandbox = current_app.config["SANDBOX"]
    with sandbox.state.lock:
        records = _records()
        _dataset(records, data_set_id, account)
        members = list(records["members"][data_set_id].values())
        stats = dict(records["stats"][data_set_id])
    pairs = [
        (i, key, value) for i, identity in enumerate(members) for key, value in _identity_pairs(identity)
    ]
    frame = pl.DataFrame(
        pairs, schema={"member": pl.Int64, "key": pl.String, "value": pl.String}, orient="row"
    )
    with_identity = frame["member"].n_unique()
    matchable = frame.filter(pl.col("key").is_in(list(MATCH_KEYS)))
    known = identity_graph.known(
        matchable["value"], seed=sandbox.config.seed, known_share=sandbox.config.known_share
    )
    resolved = matchable.filter(known)["member"].n_unique()
    return {
        "acceptedCount": stats["acceptedCount"],
        "invalidRecordCount": stats["invalidRecordCount"],
        "matchRecordPercentage": round(100 * resolved / with_identity, 2) if with_identity else 0.0,
        "recordsResolved": resolved,
        "recordsWithIdentity": with_identity,
        "uploadCount": stats["uploadCount"],
    }


@blueprint.post("/adm/identities/delete")
def delete_identities():
    """Remove the targeted users from every dataset of the manager account."""
    account = _manager_account()
    body = json_body()
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
        pairs.update(_identity_pairs(target["identity"]))
    sandbox = current_app.config["SANDBOX"]
    with sandbox.state.lock:
        records = _records()
        for data_set_id, dataset in records["datasets"].items():
            if dataset["managerAccountId"] != account:
                continue
            stored = records["members"][data_set_id]
            doomed = [
                user
                for user, identity in stored.items()
                if user in user_ids or pairs.intersection(_identity_pairs(identity))
            ]
            for user in doomed:
                del stored[user]
        sandbox.state.save()
    return {}
