"""Whatever text arrives, the engine answers with a hash, a canonical ID or a reject.

Never a crash, never sha256("").
"""

import polars as pl
from hypothesis import given, settings
from hypothesis import strategies as st

from audience_pipeline.identity import HASHED_FIELDS, IDENTITY_FIELDS, normalize_identities

from .conftest import sha

EMPTY_HASH = sha("")
FIELDS = [*(f for f in HASHED_FIELDS if f != "country_code"), "idfa", "live_ramp_id"]
COUNTRIES = st.sampled_from(
    [None, "US", "CA", "GB", "DE", "FR", "IT", "ES", "JP", "IN", "BR", "uk", "DEU", "Narnia", ""]
)


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.fixed_dictionaries(
            {**{f: st.one_of(st.none(), st.text(max_size=40)) for f in FIELDS}, "country_code": COUNTRIES}
        ),
        min_size=1,
        max_size=25,
    ),
    st.sampled_from([None, "US", "GB", "JP"]),
)
def test_never_crashes_never_emits_the_empty_hash(rows, default_country):
    frame = pl.DataFrame(rows, schema={**dict.fromkeys(FIELDS, pl.String), "country_code": pl.String})
    result = normalize_identities(frame, fields=FIELDS, default_country=default_country)
    assert result.frame.height == frame.height
    for field in FIELDS:
        values = result.frame[field].drop_nulls().to_list()
        assert EMPTY_HASH not in values
        if field in HASHED_FIELDS:
            assert all(len(v) == 64 and v == v.lower() for v in values)
    # Every value that came in and did not come out is accounted for by a reject.
    for field in FIELDS:
        given_values = frame[field].str.strip_chars().replace("", None).is_not_null().sum()
        kept = result.frame[field].is_not_null().sum()
        rejected = result.rejects.filter(pl.col("field") == field).height
        assert given_values == kept + rejected


@settings(max_examples=100, deadline=None)
@given(st.lists(st.text(max_size=30), min_size=1, max_size=10))
def test_rejects_never_carry_input_text(values):
    frame = pl.DataFrame({"email": values})
    result = normalize_identities(frame)
    assert result.rejects.columns == ["row", "field", "reason"]
    assert set(result.rejects["reason"].to_list()) <= {"invalid_email"}


def test_identity_fields_are_unique():
    assert len(set(IDENTITY_FIELDS)) == len(IDENTITY_FIELDS)
