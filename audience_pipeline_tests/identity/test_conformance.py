"""Every row of Amazon's AMC uploader fixtures (9 countries) and every example of the spec."""

import json
from pathlib import Path

import polars as pl
import pytest

from audience_pipeline.identity import normalize_identities

from .conftest import sha

CONFORMANCE = sorted((Path(__file__).parent / "conformance").glob("*.jsonl"))


@pytest.mark.parametrize("path", CONFORMANCE, ids=lambda p: p.stem)
def test_conformance_file(path: Path):
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
    fields = sorted({field for row in rows for field in row["raw"]})
    frame = pl.DataFrame(
        [{f: row["raw"].get(f) for f in fields} for row in rows], schema=dict.fromkeys(fields, pl.String)
    )
    result = normalize_identities(frame, fields=fields, default_country=rows[0]["country"])
    mismatches = [
        (row["id"], field)
        for i, row in enumerate(rows)
        for field, expected in row["expected"].items()
        if result.frame[field][i] != expected
    ]
    checked = sum(len(row["expected"]) for row in rows)
    assert checked > 2000
    assert mismatches == []


SPEC_EXAMPLES = [
    ("email", "US", "  John.Doe@Example.COM ", "john.doe@example.com"),
    ("phone", "US", "(206) 555-0100", "12065550100"),
    ("phone", "GB", "020 7946 0958", "442079460958"),
    ("phone", "US", "+44 20 7946 0958", "442079460958"),
    ("first_name", "DE", "Jürgen", "juergen"),
    ("state", "US", "Texas", "tx"),
    ("zip", "US", "75236-9599", "75236"),
    ("zip", "US", "2134", "02134"),
    ("address", "US", "8 Bluestem Terrace", "8bluestemter"),
    ("address", "US", "123 Main Street, Apt #5", "123mainstaptnumber5"),
]


@pytest.mark.parametrize(("field", "country", "raw", "normalized"), SPEC_EXAMPLES)
def test_spec_example(one, field, country, raw, normalized):
    assert one(field, raw, country) == (sha(normalized), [])


def test_spec_example_invalid_email(one):
    assert one("email", "not-an-email", "US") == (None, ["invalid_email"])


def test_spec_reference_hash():
    assert sha("abc@example.com") == "9eceb13483d7f187ec014fd6d4854d1420cfc634328af85f51d0323ba8622e21"
