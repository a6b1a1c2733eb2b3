"""An audience snapshot: one row per member with normalized, hashed identities, and its counts.

Pure polars: the Dagster asset that persists snapshots lives in `components/audiences.py`.
"""

from dataclasses import dataclass

import polars as pl

from audience_pipeline.identity import CONSENT_FIELDS, HASHED_FIELDS, IDENTITY_FIELDS, normalize_identities

USER_ID = "user_id"


class MissingUserIdError(ValueError):
    """The query result has no `user_id` column."""


@dataclass(frozen=True)
class Snapshot:
    """The members of one audience as the query returned them, ready to persist.

    `frame` holds `user_id` (text, unique, never null), the identity columns the query returned,
    normalized (hashed PII, canonical device IDs, trimmed partner IDs), and any consent columns.
    """

    frame: pl.DataFrame
    rows: int
    rejects: dict[str, dict[str, int]]
    values_out: dict[str, int]
    dropped_columns: tuple[str, ...]

    @property
    def members(self) -> int:
        """Distinct members kept."""
        return self.frame.height

    @property
    def values_hashed(self) -> int:
        """Hashed PII values kept, over all hashed fields."""
        return sum(n for field, n in self.values_out.items() if field in HASHED_FIELDS)


def build_snapshot(result: pl.DataFrame, default_country: str | None = None) -> Snapshot:
    """Turn an audience query's result into a snapshot.

    A null or blank `user_id` rejects its row (`missing_user_id`); a `user_id` seen before keeps the
    first row the query returned and rejects the others (`duplicate_user_id`). Columns that are
    neither identities nor consent signals are dropped, because nothing downstream needs them and
    they may hold raw PII. Raises MissingUserIdError when the result has no `user_id` column.
    """
    if USER_ID not in result.columns:
        raise MissingUserIdError(
            f"the query returned no `{USER_ID}` column (it returned: {', '.join(result.columns) or 'none'})"
        )
    kept_columns = [USER_ID, *(c for c in result.columns if c in IDENTITY_FIELDS or c in CONSENT_FIELDS)]
    dropped = tuple(c for c in result.columns if c not in kept_columns)

    user_id = pl.col(USER_ID).cast(pl.String).str.strip_chars()
    frame = result.select(kept_columns).with_columns(pl.when(user_id != "").then(user_id).alias(USER_ID))
    present = frame.filter(pl.col(USER_ID).is_not_null())
    unique = present.unique(USER_ID, keep="first", maintain_order=True)

    identities = normalize_identities(unique, default_country=default_country)
    user_rejects = {
        reason: n
        for reason, n in (
            ("missing_user_id", frame.height - present.height),
            ("duplicate_user_id", present.height - unique.height),
        )
        if n
    }
    rejects = identities.reject_counts()
    if user_rejects:
        rejects = {USER_ID: user_rejects, **rejects}
    return Snapshot(
        frame=identities.frame.sort(USER_ID),
        rows=result.height,
        rejects=rejects,
        values_out=identities.values_out(),
        dropped_columns=dropped,
    )
