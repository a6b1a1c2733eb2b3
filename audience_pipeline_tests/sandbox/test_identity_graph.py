"""The synthetic Amazon identity graph: deterministic, seeded, and about `known_share` of any sample."""

import hashlib
import uuid

import polars as pl
import pytest

from audience_pipeline.sandbox.identity_graph import is_known, known, known_count

HASHES = [hashlib.sha256(f"user{i}@example.com".encode()).hexdigest() for i in range(10_000)]
MAIDS = [str(uuid.UUID(int=i * 7919 + 1)) for i in range(10_000)]


def test_the_same_value_is_always_known_or_not():
    assert [is_known(h, seed=1, known_share=0.5) for h in HASHES[:50]] == [
        is_known(h, seed=1, known_share=0.5) for h in HASHES[:50]
    ]


@pytest.mark.parametrize("values", [HASHES, MAIDS], ids=["hashes", "maids"])
@pytest.mark.parametrize("share", [0.2, 0.6, 0.9])
def test_about_known_share_of_a_sample_is_known(values, share):
    assert known_count(values, seed=0, known_share=share) / len(values) == pytest.approx(share, abs=0.02)


def test_share_zero_knows_nobody_and_one_knows_everybody():
    assert known_count(HASHES[:100], seed=0, known_share=0.0) == 0
    assert known_count(HASHES[:100], seed=0, known_share=1.0) == 100


def test_the_seed_changes_who_is_known():
    by_seed = [[is_known(h, seed=seed, known_share=0.5) for h in HASHES[:200]] for seed in (0, 1)]
    assert by_seed[0] != by_seed[1]


def test_values_are_compared_case_insensitively():
    assert is_known(MAIDS[3].upper(), seed=2, known_share=0.5) == is_known(MAIDS[3], seed=2, known_share=0.5)


def test_vectorized_form_agrees_with_the_scalar_one_and_null_is_unknown():
    values = pl.Series("v", [*HASHES[:300], *MAIDS[:300], None], dtype=pl.String)
    mask = known(values, seed=5, known_share=0.6)
    assert mask.to_list() == [*(is_known(v, seed=5, known_share=0.6) for v in values[:-1]), False]
    assert known_count([], seed=5, known_share=0.6) == 0
