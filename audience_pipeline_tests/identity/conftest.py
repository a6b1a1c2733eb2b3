import hashlib

import polars as pl
import pytest

from audience_pipeline.identity import normalize_identities


def sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


@pytest.fixture
def one():
    """Normalize a single value of one field and return (output, reject reasons)."""

    def run(field: str, value, country: str | None = None, **columns):
        frame = pl.DataFrame({field: [value], **{k: [v] for k, v in columns.items()}})
        result = normalize_identities(frame, fields=[field], default_country=country)
        return result.frame[field][0], result.rejects["reason"].to_list()

    return run
