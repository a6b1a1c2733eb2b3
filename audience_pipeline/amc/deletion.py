"""AMC identity deletion (seed 003, `operation: delete`): a query's identity columns as hashed identities.

The query returns any of `first_name, last_name, email, phone, address, city, state, zip, country_code`
(matched ignoring case, other columns ignored). Each row becomes one `{"hashedIdentity": {...}}` of
`POST /userDeletionRequest`, holding the SHA-256 of every value the identity engine could normalize;
identical identities are sent once, and requests hold at most 1,000 of them.

Values never leave this module except as hashes: errors and metadata carry column names and counts.
"""

from dataclasses import dataclass
from typing import Any

import polars as pl

from audience_pipeline.identity import normalize_country, normalize_identities

IDENTITY_COLUMNS = (
    "first_name",
    "last_name",
    "email",
    "phone",
    "address",
    "city",
    "state",
    "zip",
    "country_code",
)
MAX_IDENTITIES_PER_REQUEST = 1000
# These name a place, not a person: an identity made of them alone would ask AMC to forget everyone
# living there, so such rows are counted and never sent.
PLACE_COLUMNS = frozenset({"city", "state", "zip", "country_code"})


@dataclass
class DeletionIdentities:
    """The identities of one deletion query, ready to send, and the counts to report about them."""

    identities: list[dict[str, Any]]
    """`{"hashedIdentity": {"EMAIL": sha256, ...}}` per distinct identity, with only its non-null hashes."""
    rows_in: int
    rows_without_identity: int
    """Rows whose every identity value was null or rejected: reported, not sent."""
    rows_place_only: int
    """Rows left with only place values (city, state, zip, country_code): reported, not sent."""
    duplicates: int
    """Rows whose identity equals an earlier row's: sent once."""
    rejects: dict[str, dict[str, int]]
    """Identity column → reject reason → count (never values)."""
    columns: tuple[str, ...]
    """The identity columns the query provided, by their canonical (lowercase) names."""
    ignored_columns: tuple[str, ...]
    """Query columns that are not identity columns."""
    case_insensitive_matches: dict[str, str]
    """Query column → identity column, where the names differ in case only."""

    def requests(self, size: int = MAX_IDENTITIES_PER_REQUEST) -> list[list[dict[str, Any]]]:
        """The identities in `targetIdentities` lists of at most `size` (AMC takes 1 to 1,000)."""
        if not 1 <= size <= MAX_IDENTITIES_PER_REQUEST:
            raise ValueError(f"size: {size} is not between 1 and {MAX_IDENTITIES_PER_REQUEST}")
        return [self.identities[start : start + size] for start in range(0, len(self.identities), size)]

    def metadata(self) -> dict[str, Any]:
        """Counts and column names for materialization metadata; never an identity value or hash."""
        return {
            "rows_in": self.rows_in,
            "identities": len(self.identities),
            "duplicates": self.duplicates,
            "rows_without_identity": self.rows_without_identity,
            "rows_place_only": self.rows_place_only,
            "requests": len(self.requests()),
            "rejects": self.rejects,
            "identity_columns": list(self.columns),
            "ignored_columns": list(self.ignored_columns),
            "case_insensitive_matches": self.case_insensitive_matches,
        }


def deletion_identities(frame: pl.DataFrame, country_code: str | None = None) -> DeletionIdentities:
    """Normalize and hash the identity columns of a deletion query's result, one identity per row.

    A row's country (for phones, states, ZIPs, addresses) comes from its `country_code` column, else
    from `country_code`. Raises ValueError when the query has no identity column or only place columns
    (city, state, zip, country_code), when two of its columns differ only in case and both name the
    same identity, or when `country_code` is unknown.
    """
    mapping, ignored = _identity_columns(frame.columns)
    default = normalize_country(country_code, "country_code") if country_code else None
    fields = tuple(mapping.values())
    result = normalize_identities(
        frame.select(pl.col(q).alias(f) for q, f in mapping.items()), fields, default
    )

    hashes = result.frame.select(pl.col(f).alias(f.upper()) for f in fields)
    person = [f.upper() for f in fields if f not in PLACE_COLUMNS]
    has_any = pl.any_horizontal(pl.all().is_not_null())
    has_person = pl.any_horizontal(pl.col(person).is_not_null())
    without, place_only = hashes.select(
        (~has_any).sum().alias("without"), (has_any & ~has_person).sum().alias("place_only")
    ).row(0)
    sendable = hashes.filter(has_person)
    distinct = sendable.unique(maintain_order=True)
    identities = [
        {"hashedIdentity": {kind: value for kind, value in row.items() if value is not None}}
        for row in distinct.iter_rows(named=True)
    ]
    return DeletionIdentities(
        identities=identities,
        rows_in=frame.height,
        rows_without_identity=without,
        rows_place_only=place_only,
        duplicates=sendable.height - distinct.height,
        rejects=result.reject_counts(),
        columns=fields,
        ignored_columns=ignored,
        case_insensitive_matches={q: f for q, f in mapping.items() if q != f},
    )


def _identity_columns(columns: list[str]) -> tuple[dict[str, str], tuple[str, ...]]:
    """Query column → identity column (exact names win over case-insensitive ones), and the rest."""
    mapping: dict[str, str] = {}
    for identity in IDENTITY_COLUMNS:
        if identity in columns:
            mapping[identity] = identity
            continue
        candidates = [column for column in columns if column.lower() == identity]
        if len(candidates) > 1:
            raise ValueError(
                f"columns {', '.join(candidates)} all match the identity column {identity} ignoring case: "
                "keep one"
            )
        if candidates:
            mapping[candidates[0]] = identity
    if not mapping:
        raise ValueError(
            "the deletion query returns no identity column: it must return at least one of "
            f"{', '.join(IDENTITY_COLUMNS)} (matched ignoring case)"
        )
    if set(mapping.values()) <= PLACE_COLUMNS:
        persons = [column for column in IDENTITY_COLUMNS if column not in PLACE_COLUMNS]
        raise ValueError(
            f"the deletion query returns only {', '.join(mapping.values())}, which name places, not people: "
            f"it must also return at least one of {', '.join(persons)}"
        )
    return mapping, tuple(column for column in columns if column not in mapping)
