"""The vectorized phone path must give exactly what `phonenumbers` gives, for every shape and region."""

import random

import phonenumbers
import polars as pl
from hypothesis import given, settings
from hypothesis import strategies as st

from audience_pipeline.identity import normalize_identities

from .conftest import sha

REGIONS = [
    "US", "CA", "GB", "DE", "FR", "IT", "ES", "JP", "IN",
    "BR", "MX", "AR", "AU", "NL", "BE", "CH", "AT", "SE", "NO", "PL", "RU", "CN", "KR", "ZA", "NG",
    "EG", "IE", "NZ", "SG", "HK", "PH", "ID", "TR", "PT", "GR", "IL", "AE", "SA", "CO", "CL",
]  # fmt: skip


def reference(raw: str, region: str | None) -> str | None:
    """The spec's rule written directly on phonenumbers, one value at a time."""
    value = raw.strip()
    if value.startswith("00"):
        value = "+" + value[2:]
    try:
        number = phonenumbers.parse(value, region)
    except phonenumbers.NumberParseException:
        return None
    if not phonenumbers.is_possible_number(number):
        return None
    return sha(phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)[1:])


def engine(values: list[str], regions: list[str | None]) -> list[str | None]:
    frame = pl.DataFrame(
        {"phone": values, "country_code": regions}, schema={"phone": pl.String, "country_code": pl.String}
    )
    return normalize_identities(frame, fields=["phone"]).frame["phone"].to_list()


def _corpus(seed: int, size: int) -> tuple[list[str], list[str | None]]:
    rng = random.Random(seed)
    values, regions = [], []
    for _ in range(size):
        region = rng.choice(REGIONS)
        cc = str(phonenumbers.country_code_for_region(region))
        body = "".join(rng.choice("0123456789") for _ in range(rng.randint(1, 15)))
        prefix = rng.choice(
            ["", "", "0", "00", "+", f"+{cc}", f"+{cc} 0", cc, f"0{cc}", f"00{cc}", "1", "011", "+0"]
        )
        digits = prefix + body
        # Scatter formatting through the digits the way people type them.
        text = "".join(ch + (rng.choice(" -.") if rng.random() < 0.2 else "") for ch in digits)
        if rng.random() < 0.1:
            text = f"({text[:3]}) {text[3:]}"
        if rng.random() < 0.1:
            text += rng.choice(
                [" ext. 12", " x 7", " EXT 123", "x5", " ext 1234567", "  X. 3", " ext.", " x"]
            )
        values.append(text)
        regions.append(region if rng.random() < 0.95 else None)
    return values, regions


def test_random_corpus_matches_phonenumbers():
    values, regions = _corpus(seed=7, size=30_000)
    expected = [reference(v, r) for v, r in zip(values, regions, strict=True)]
    got = engine(values, regions)
    mismatches = [(v, r) for v, r, e, g in zip(values, regions, expected, got, strict=True) if e != g]
    assert mismatches == []
    # The corpus must exercise both outcomes, or the comparison proves little.
    assert 0.2 < sum(e is not None for e in expected) / len(expected) < 0.9


def test_real_example_numbers_of_every_region_match_phonenumbers():
    values, regions = [], []
    for region in sorted(phonenumbers.SUPPORTED_REGIONS):
        for kind in (phonenumbers.PhoneNumberType.FIXED_LINE, phonenumbers.PhoneNumberType.MOBILE):
            example = phonenumbers.example_number_for_type(region, kind)
            if example is None:
                continue
            for fmt in (
                phonenumbers.PhoneNumberFormat.NATIONAL,
                phonenumbers.PhoneNumberFormat.INTERNATIONAL,
            ):
                values.append(phonenumbers.format_number(example, fmt))
                regions.append(region)
    expected = [reference(v, r) for v, r in zip(values, regions, strict=True)]
    assert engine(values, regions) == expected
    assert sum(e is not None for e in expected) > 0.9 * len(expected)


@settings(max_examples=300, deadline=None)
@given(
    st.lists(
        st.tuples(st.text(alphabet="0123456789 +-().x/etX", max_size=24), st.sampled_from([*REGIONS, None])),
        min_size=1,
        max_size=20,
    )
)
def test_any_phone_like_text_matches_phonenumbers(pairs):
    values = [v for v, _ in pairs]
    regions = [r for _, r in pairs]
    expected = [reference(v, r) if v.strip() else None for v, r in pairs]
    assert engine(values, regions) == expected


def test_text_before_the_number_and_overlong_input_match_phonenumbers():
    rng = random.Random(11)
    values, regions = _corpus(seed=11, size=3_000)
    prefixes = [
        "tel:",
        "Tel. ",
        "phone: ",
        "T: ",
        "Mob.",
        "tel:;phone-context=",
        "tel:+1;",
        "½ ",
        "٣ ",
        "ph(",
        "x ",
    ]
    values = [rng.choice(prefixes) + v for v in values]
    # phonenumbers reads no input longer than 250 characters, even where only spaces make it long.
    values += [
        "tel:" + " " * 250 + "2065550100",
        "2065550100 " + " " * 240 + "ext. 12",
        "(206) 555-0100 ext. 12",
    ]
    regions += ["US", "US", "US"]
    expected = [reference(v, r) for v, r in zip(values, regions, strict=True)]
    assert engine(values, regions) == expected
    assert sum(e is not None for e in expected) > 0.2 * len(expected)


def test_country_calling_codes_are_prefix_free():
    # The `+` path finds a number's code with one lookup of its first three digits.
    codes = [str(code) for code in phonenumbers.COUNTRY_CODE_TO_REGION_CODE]
    assert max(map(len, codes)) <= 3
    assert not [(a, b) for a in codes for b in codes if a != b and b.startswith(a)]
