"""AMC user deletion: validate the identities of a request, and delete their rows from a dataset."""

import re
from typing import Any

import duckdb
import polars as pl

from audience_pipeline.sandbox.amc_datasets import (
    EXTERNAL_IDENTITIES,
    HASHED_PII,
    external_identity_columns,
    hashed_pii_columns,
    quote,
)
from audience_pipeline.sandbox.errors import ApiError

_SHA256 = re.compile(r"[0-9a-f]{64}")


def validate_targets(body: Any) -> list[dict[str, str]]:
    """The `targetIdentities` of a deletion request as `{kind: value}` maps, or a 400.

    Hashed identities keep their PII kinds (EMAIL, PHONE, ...); partner ids become `{type: value}`.
    """
    targets = body.get("targetIdentities") if isinstance(body, dict) else None
    if not isinstance(targets, list) or not 1 <= len(targets) <= 1000:
        raise ApiError(400, "BAD_REQUEST", "targetIdentities must hold 1 to 1000 identities")
    return [_target(target, i) for i, target in enumerate(targets)]


def _target(target: Any, index: int) -> dict[str, str]:
    where = f"targetIdentities[{index}]"
    if not isinstance(target, dict) or len(target) != 1:
        raise ApiError(400, "BAD_REQUEST", f"{where} needs exactly one of hashedIdentity, externalIdentity")
    if "hashedIdentity" in target:
        hashed = target["hashedIdentity"]
        if not isinstance(hashed, dict) or not hashed or not set(hashed) <= set(HASHED_PII):
            raise ApiError(
                400, "BAD_REQUEST", f"{where}.hashedIdentity keys must be of {', '.join(HASHED_PII)}"
            )
        if not all(isinstance(v, str) and _SHA256.fullmatch(v) for v in hashed.values()):
            raise ApiError(400, "BAD_REQUEST", f"{where}.hashedIdentity values must be SHA-256 lowercase hex")
        return dict(hashed)
    external = target.get("externalIdentity")
    if not isinstance(external, dict) or external.get("type") not in EXTERNAL_IDENTITIES:
        raise ApiError(
            400, "BAD_REQUEST", f"{where}.externalIdentity.type must be of {', '.join(EXTERNAL_IDENTITIES)}"
        )
    if not isinstance(external.get("value"), str) or not external["value"]:
        raise ApiError(400, "BAD_REQUEST", f"{where}.externalIdentity.value is required")
    return {external["type"]: external["value"]}


def delete_identities(
    cursor: duckdb.DuckDBPyConnection, dataset: dict[str, Any], table: str, targets: list[dict[str, str]]
) -> int:
    """Delete the rows of `table` that belong to any target; the number of rows deleted.

    A row belongs to a target when, for every kind the target gives that the dataset has a column of,
    one such column holds the target's value (a target sharing no kind with the dataset matches nothing).
    """
    kinds: dict[str, list[str]] = {}
    for column, kind in {**hashed_pii_columns(dataset), **external_identity_columns(dataset)}.items():
        kinds.setdefault(kind, []).append(column)
    if not kinds:
        return 0
    frame = pl.DataFrame(
        [{kind: target.get(kind) for kind in kinds} for target in targets],
        schema={kind: pl.String for kind in kinds},
    )
    shares = " OR ".join(f"t.{kind} IS NOT NULL" for kind in kinds)
    matches = " AND ".join(
        f"(t.{kind} IS NULL OR {' OR '.join(f'{table}.{quote(c)} = t.{kind}' for c in columns)})"
        for kind, columns in kinds.items()
    )
    cursor.register("amc_targets", frame)
    try:
        belongs = f"SELECT 1 FROM amc_targets AS t WHERE ({shares}) AND {matches}"
        return cursor.execute(f"DELETE FROM {table} WHERE EXISTS ({belongs})").fetchone()[0]
    finally:
        cursor.unregister("amc_targets")
