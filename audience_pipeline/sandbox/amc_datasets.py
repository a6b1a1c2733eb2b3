"""AMC dataset definitions: validation of `POST /dataSets` bodies and the DuckDB table behind each."""

import re
import uuid
from typing import Any

from audience_pipeline.sandbox.errors import ApiError

HASHED_PII = ("EMAIL", "PHONE", "FIRST_NAME", "LAST_NAME", "ADDRESS", "CITY", "STATE", "ZIP", "COUNTRY_CODE")
EXTERNAL_IDENTITIES = (
    "LIVERAMP",
    "EXPERIAN",
    "MAID",
    "IDFA",
    "KANTAR",
    "MERKLE",
    "NEUSTAR",
    "REALID",
    "SAMBATV",
)
CONSENT_TYPES = ("TCF", "GPP", "AMZN_AD_STORAGE", "AMZN_USER_DATA")
PERIODS = {"PT1H": "hour", "P1D": "day", "P1M": "month"}
SQL_TYPES = {
    "STRING": "VARCHAR",
    "DECIMAL": "DOUBLE",
    "INTEGER": "INTEGER",
    "LONG": "BIGINT",
    "TIMESTAMP": "TIMESTAMP",
    "DATE": "DATE",
}
_FLAGS = ("isMainEventTime", "isMainUserId", "isMainUserIdType", "isCountryCode", "requiresOneWayHashing")
# What AdvertiserDataUpload_prod_3p.json defines on a dataset and a column. Other keys are ignored,
# not refused: the definition leaves its objects open, and Amazon's own uploader sends more
# (`fileFormat`, `compressionFormat`, `updateStrategy` in the dataSet object).
DATASET_FIELDS = ("dataSetId", "description", "period", "countryCode", "customerEncryptionKeyArn", "columns")
COLUMN_FIELDS = (
    "name",
    "description",
    "columnType",
    "dataType",
    "nullable",
    "externalUserIdType",
    "consentType",
    *_FLAGS,
)
_IDENTITY_FLAGS = ("isMainUserId", "isMainUserIdType")
_DATASET_ID = re.compile(r"[a-z0-9_]+")
_COUNTRY = re.compile(r"[A-Z]{2}")


def _bad(details: str) -> ApiError:
    return ApiError(400, "BAD_REQUEST", details)


def validate_dataset(body: Any) -> dict[str, Any]:
    """The dataset of a `POST /dataSets` body as AMC keeps it (its documented fields, `nullable`
    always set), or a 400."""
    dataset = body.get("dataSet") if isinstance(body, dict) else None
    if not isinstance(dataset, dict):
        raise _bad('Request body must be {"dataSet": {...}}')
    dataset = {key: dataset[key] for key in DATASET_FIELDS if key in dataset}
    dataset_id = dataset.get("dataSetId")
    if not isinstance(dataset_id, str) or not _DATASET_ID.fullmatch(dataset_id):
        raise _bad("dataSetId must match ^[a-z0-9_]+$")
    for field in ("description", "customerEncryptionKeyArn"):
        if field in dataset and not isinstance(dataset[field], str):
            raise _bad(f"{field} must be a string")
    country = dataset.get("countryCode")
    if country is not None and not (isinstance(country, str) and _COUNTRY.fullmatch(country)):
        raise _bad("countryCode must match ^[A-Z]{2}$")
    columns = dataset.get("columns")
    if not isinstance(columns, list) or not 1 <= len(columns) <= 100:
        raise _bad("columns must hold 1 to 100 columns")
    normalized = [_validate_column(column, i) for i, column in enumerate(columns)]
    names = [column["name"].lower() for column in normalized]
    if len(set(names)) != len(names):
        raise _bad("Column names must be unique")
    for flag in ("isMainEventTime", *_IDENTITY_FLAGS):
        if sum(bool(column.get(flag)) for column in normalized) > 1:
            raise _bad(f"At most one column can be {flag}")
    if any(c["name"].lower() == "user_id" and not c.get("isMainUserId") for c in normalized):
        raise _bad("user_id is AMC's resolved user id: a column of that name must be isMainUserId")
    period = dataset.get("period")
    if period is not None:
        if not any(column.get("isMainEventTime") for column in normalized):
            raise _bad("period is only allowed for a FACT dataset (one with an isMainEventTime column)")
        if period not in PERIODS:
            raise _bad(f"period must be one of {', '.join(PERIODS)}")
    return {**dataset, "columns": normalized}


def _validate_column(column: Any, index: int) -> dict[str, Any]:
    where = f"columns[{index}]"
    if not isinstance(column, dict):
        raise _bad(f"{where} must be an object")
    column = {key: column[key] for key in COLUMN_FIELDS if key in column}
    name = column.get("name")
    if not isinstance(name, str) or not name.strip():
        raise _bad(f"{where}.name is required")
    if "description" in column and not isinstance(column["description"], str):
        raise _bad(f"{where}.description must be a string")
    if column.get("columnType") not in ("DIMENSION", "METRIC"):
        raise _bad(f"{where}.columnType must be DIMENSION or METRIC")
    if column.get("dataType") not in SQL_TYPES:
        raise _bad(f"{where}.dataType must be one of {', '.join(SQL_TYPES)}")
    for flag in (*_FLAGS, "nullable"):
        if flag in column and not isinstance(column[flag], bool):
            raise _bad(f"{where}.{flag} must be a boolean")
    if column.get("isMainEventTime") and column["dataType"] not in ("TIMESTAMP", "DATE"):
        raise _bad(f"{where}: the main event time column must be a TIMESTAMP or DATE")
    if any(column.get(flag) for flag in _IDENTITY_FLAGS) and column["columnType"] == "METRIC":
        raise _bad(f"{where}: isMainUserId and isMainUserIdType columns cannot be METRIC")
    id_type = column.get("externalUserIdType")
    if id_type is not None:
        valid = (
            isinstance(id_type, dict)
            and len(id_type) == 1
            and (
                id_type.get("hashedPii") in HASHED_PII
                or id_type.get("externalIdentity") in EXTERNAL_IDENTITIES
            )
        )
        if not valid:
            raise _bad(
                f'{where}.externalUserIdType must be {{"hashedPii": {"|".join(HASHED_PII)}}} or '
                f'{{"externalIdentity": {"|".join(EXTERNAL_IDENTITIES)}}}'
            )
    if "consentType" in column and column["consentType"] not in CONSENT_TYPES:
        raise _bad(f"{where}.consentType must be one of {', '.join(CONSENT_TYPES)}")
    return {**column, "nullable": column.get("nullable", True)}


def stored_columns(dataset: dict[str, Any]) -> list[dict[str, Any]]:
    """The columns whose values AMC stores: not `user_id`/`user_type` (isMainUserId, isMainUserIdType),
    which name where AMC puts the user it resolves from the identity columns."""
    return [c for c in dataset["columns"] if not any(c.get(flag) for flag in _IDENTITY_FLAGS)]


def is_fact(dataset: dict[str, Any]) -> bool:
    """FACT datasets have a main event time column (and are partitioned by `period`)."""
    return event_time_column(dataset) is not None


def event_time_column(dataset: dict[str, Any]) -> str | None:
    """The name of the dataset's main event time column, if it has one."""
    return next((c["name"] for c in dataset["columns"] if c.get("isMainEventTime")), None)


def hashed_pii_columns(dataset: dict[str, Any]) -> dict[str, str]:
    """Column name → hashed PII kind (EMAIL, PHONE, ...) for the dataset's hashed identity columns."""
    return {
        column["name"]: column["externalUserIdType"]["hashedPii"]
        for column in dataset["columns"]
        if "hashedPii" in (column.get("externalUserIdType") or {})
    }


def external_identity_columns(dataset: dict[str, Any]) -> dict[str, str]:
    """Column name → partner identity type (MAID, LIVERAMP, ...)."""
    return {
        column["name"]: column["externalUserIdType"]["externalIdentity"]
        for column in dataset["columns"]
        if "externalIdentity" in (column.get("externalUserIdType") or {})
    }


def quote(name: str) -> str:
    """A SQL identifier, quoted (column names are the advertiser's own)."""
    return '"' + name.replace('"', '""') + '"'


def new_table_name() -> str:
    """A fresh DuckDB table name for a dataset: never derived from names the caller chose."""
    return f"amc_dataset_{uuid.uuid4().hex}"


def create_table_sql(table: str, dataset: dict[str, Any]) -> str:
    """`CREATE TABLE` for a dataset's rows, plus the pseudo Amazon `user_id` every row gets."""
    columns = [f"{quote(c['name'])} {SQL_TYPES[c['dataType']]}" for c in stored_columns(dataset)]
    return f"CREATE TABLE {table} ({', '.join(columns)}, user_id VARCHAR)"
