"""The identity engine: normalization and hashing of identities, in polars, free of Dagster."""

from audience_pipeline.identity.countries import SPEC_COUNTRIES, normalize_country
from audience_pipeline.identity.engine import choose_fields, normalize_identities
from audience_pipeline.identity.fields import (
    CONSENT_FIELDS,
    HASHED_FIELDS,
    IDENTITY_FIELDS,
    MAID_FIELDS,
    PASSTHROUGH_FIELDS,
)
from audience_pipeline.identity.result import REJECT_SCHEMA, IdentityResult

__all__ = [
    "CONSENT_FIELDS",
    "HASHED_FIELDS",
    "IDENTITY_FIELDS",
    "MAID_FIELDS",
    "PASSTHROUGH_FIELDS",
    "REJECT_SCHEMA",
    "SPEC_COUNTRIES",
    "IdentityResult",
    "choose_fields",
    "normalize_country",
    "normalize_identities",
]
