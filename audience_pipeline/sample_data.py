"""Synthetic, deliberately messy first-party data for demos, tests and benchmarks.

``write_sample_data`` writes a DuckDB file with three tables:

* ``profiles``  - one row per user with every identity column the pipeline understands, dirty in the ways
  real CRM exports are (mixed case, stray spaces, local phone and postcode formats, alpha-3 or English
  country names, pre-hashed values, zeroed IDFAs, ...);
* ``events``    - behavioural events in the 90 days before ``REFERENCE_TIME``, for audience queries;
* ``purchases`` - orders in local currency, for an AMC FACT dataset.

Nobody in it is real: names are random pairings from small per-country vocabularies (kept with the places
and the address and phone formats in ``data/sample_vocabulary.json``), e-mail addresses live on
``example``-style domains, IPv6 addresses use the documentation prefix and every other value is random
digits or bytes. Columns are built vectorised with polars from the bytes of a seeded Mersenne
Twister, so a seed and a profile count always give the same table contents; nothing depends on the
hash or random-number algorithms of polars or DuckDB, which may change between releases.
"""

from __future__ import annotations

import json
import math
import os
import random
import re
import shutil
import tempfile
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime
from importlib import resources
from pathlib import Path
from typing import Any, NamedTuple

import duckdb
import polars as pl
import pyarrow as pa

__all__ = ["PROFILE_COLUMNS", "REFERENCE_TIME", "write_sample_data"]

# Fixed, so that "the last 90 days" are the same days whenever the generator runs.
REFERENCE_TIME = datetime(2025, 6, 30)
PROFILE_COLUMNS = (
    "user_id", "created_at", "customer_id", "email", "phone", "first_name", "last_name", "address", "city",
    "state", "zip", "country_code", "idfa", "gaid", "idfv", "android_id", "fire_adid", "microsoft_adid",
    "roku_adid", "roku_publisher_id", "mpid", "facebook_id", "google_id", "microsoft_id", "twitter_id",
    "yahoo_id", "other", *(f"other_{i}" for i in range(2, 11)), "live_ramp_id", "experian_id", "kantar_id",
    "merkle_id", "neustar_id", "real_id", "samba_tv_id", "amzn_ad_storage", "amzn_user_data", "tcf_string",
    "gpp_string", "ip_address",
)  # fmt: skip
_CHUNK = 125_000
_DUCKDB_MEMORY = "512MB"
_DAY = 86_400
_ZERO_UUID = "00000000-0000-0000-0000-000000000000"
# Markers for values that DuckDB replaces by their SHA-256 on insert: polars has no SHA-256 of its own.
_SHA_LOWER, _SHA_UPPER = "<<sha256>>", "<<SHA256>>"


class _Rng:
    """Vectorised draws from one seeded Mersenne Twister."""

    def __init__(self, key: str) -> None:
        self._random = random.Random(key)

    def raw(self, n: int, size: int) -> pl.Series:
        """`n` random byte strings of `size` bytes each."""
        buffer = pa.py_buffer(self._random.randbytes(size * n))
        return pl.from_arrow(pa.Array.from_buffers(pa.binary(size), n, [None, buffer])).cast(pl.Binary)

    def u(self, n: int) -> pl.Series:
        """Uniform floats in [0, 1)."""
        words = pa.Array.from_buffers(pa.uint32(), n, [None, pa.py_buffer(self._random.randbytes(4 * n))])
        return pl.from_arrow(words).cast(pl.Float64) * 2.0**-32

    def ints(self, n: int, low: int, high: int) -> pl.Series:
        """Integers in [low, high)."""
        return (self.u(n) * (high - low)).floor().cast(pl.Int64) + low

    def chance(self, n: int, p: float | pl.Series) -> pl.Series:
        return self.u(n) < p

    def choice(self, n: int, weights: Sequence[float]) -> pl.Series:
        """Indices into `weights`, drawn in proportion to them."""
        total = sum(weights)
        edges = [sum(weights[: i + 1]) / total for i in range(len(weights) - 1)]
        return pl.Series(edges, dtype=pl.Float64).search_sorted(self.u(n), side="right").cast(pl.Int64)

    def pick(self, n: int, values: Sequence[str], weights: Sequence[float] | None = None) -> pl.Series:
        index = self.choice(n, weights) if weights else self.ints(n, 0, len(values))
        return pl.Series(values, dtype=pl.String).gather(index)

    def digits(self, n: int, count: int) -> pl.Series:
        """Strings of `count` random decimal digits, leading zeros kept."""
        # Nine digits at a time: more would outrun the 32 random bits behind each draw.
        sizes = [min(9, count - done) for done in range(0, count, 9)]
        parts = [self.ints(n, 0, 10**k).cast(pl.String).str.zfill(k) for k in sizes]
        return pl.select(pl.concat_str(parts)).to_series()

    def hex(self, n: int, size: int) -> pl.Series:
        return self.raw(n, size).bin.encode("hex")

    def b64url(self, n: int, size: int) -> pl.Series:
        return self.raw(n, size).bin.encode("base64").str.replace_many({"+": "-", "/": "_", "=": ""})

    def uuid(self, n: int) -> pl.Series:
        """Random version-4 UUIDs, lowercase."""
        h = pl.col("h").str
        frame = pl.DataFrame({"h": self.hex(n, 16), "variant": self.pick(n, list("89ab"))})
        pieces = [h.slice(0, 8), "-", h.slice(8, 4), "-4", h.slice(13, 3), "-", pl.col("variant"),
                  h.slice(17, 3), "-", h.slice(20, 12)]  # fmt: skip
        return frame.select(
            pl.concat_str([pl.lit(p) if isinstance(p, str) else p for p in pieces])
        ).to_series()


def _sparse(rng: _Rng, mask: pl.Series, make: Callable[[_Rng, int], pl.Series]) -> pl.Series:
    """Values from `make` where `mask` holds, null elsewhere; draws only as many values as needed."""
    out = pl.repeat(None, len(mask), dtype=pl.String, eager=True)
    rows = mask.arg_true()
    return out.scatter(rows, make(rng, len(rows))) if len(rows) else out


def _by_case(
    frame: pl.DataFrame, case: pl.Series, exprs: Sequence[pl.Expr], default: pl.Series | None = None
) -> pl.Series:
    """`exprs[case]` row by row; rows whose case has no expression keep `default` (else null).

    Each expression runs on its own rows only: most variants touch a few percent of a column, and
    evaluating every branch on every row (as ``pl.when`` does) made generation twice as slow.
    """
    out = pl.repeat(None, frame.height, dtype=pl.String, eager=True) if default is None else default.clone()
    for i, expr in enumerate(exprs):
        rows = (case == i).arg_true()
        if len(rows):
            out.scatter(rows, frame[rows].with_columns(expr.cast(pl.String).alias("_out"))["_out"])
    return out


_V = pl.col("v")
_UPPER, _LOWER = _V.str.to_uppercase(), _V.str.to_lowercase()
_PAD = pl.concat_str([pl.lit(" "), _V, pl.lit("  ")])
_NULL, _EMPTY = pl.lit(None, dtype=pl.String), pl.lit("")


def _variants(rng: _Rng, base: pl.Series, options: Sequence[tuple[float, pl.Expr]], **extra: pl.Series):
    """Replace a share of `base` (column "v") by each option's expression; shares are of all rows."""
    kept = 1.0 - sum(share for share, _ in options)
    case = rng.choice(len(base), [share for share, _ in options] + [kept])
    return _by_case(pl.DataFrame({"v": base, **extra}), case, [expr for _, expr in options], base)


_TOKEN = re.compile(r"\{(\w+)\}")
_BUILTINS: dict[str, Callable[[_Rng, int], pl.Series]] = {
    # House numbers are log-uniform: far more 12s than 8412s.
    "num": lambda rng, n: (rng.u(n) * math.log(10_000)).exp().floor().cast(pl.Int64).cast(pl.String),
    "n": lambda rng, n: rng.ints(n, 1, 31).cast(pl.String),
    "L": lambda rng, n: rng.pick(n, list("ABCDEFGH")),
    "l": lambda rng, n: rng.pick(n, list("abc")),
    "D": lambda rng, n: rng.digits(n, 1),
    "h": lambda rng, n: rng.hex(n, 2),
    "o": lambda rng, n: rng.ints(n, 1, 224).cast(pl.String),
}


def _fill(
    rng: _Rng,
    n: int,
    formats: Mapping[str, float],
    vocab: Mapping[str, Sequence[str]] | None = None,
    **parts: pl.Series,
) -> pl.Series:
    """One of `formats` per row, drawn by their weights, with each `{token}` replaced.

    A token is one of `parts`, a pick from `vocab`, a builtin (`num`, `n`, `L`, `l`, `D`, `h`, `o`) or
    `dK` for K random digits. Each repeat of a non-part token within a format gets its own draw.
    """
    columns: dict[str, pl.Series] = dict(parts)
    branches = []
    for fmt in formats:
        seen: Counter[str] = Counter()
        args = []
        for token in _TOKEN.findall(fmt):
            key = token if token in parts else f"{token}#{seen[token]}"
            seen[token] += 1
            if key not in columns:
                if vocab and token in vocab:
                    columns[key] = rng.pick(n, vocab[token])
                elif token in _BUILTINS:
                    columns[key] = _BUILTINS[token](rng, n)
                else:
                    columns[key] = rng.digits(n, int(token.removeprefix("d")))
            args.append(pl.col(key))
        branches.append(pl.format(_TOKEN.sub("{}", fmt), *args) if args else pl.lit(fmt))
    frame = pl.DataFrame(columns, height=n)
    if len(branches) == 1:
        return frame.select(branches[0].alias("v")).to_series()
    return _by_case(frame, rng.choice(n, list(formats.values())), branches)


def _weighted(text: str) -> dict[str, float]:
    """Split "a=3|b=1" into {"a": 3.0, "b": 1.0}."""
    return {item.rpartition("=")[0]: float(item.rpartition("=")[2]) for item in text.split("|")}


class _Phone(NamedTuple):
    share: float
    prefixes: Sequence[str]  # how the national significant number starts
    digits: int  # random digits after the prefix
    formats: Mapping[str, float]  # each "#" takes the next digit of the national number


@dataclass(frozen=True)
class _Country:
    code: str
    alpha3: str
    english: str
    local: str  # the local-language name, or the alias people actually type ("UK")
    local_share: float
    weight: float
    currency: str
    price_scale: float  # local price of one US dollar's worth
    ios_share: float
    first_names: Sequence[str]
    last_names: Sequence[str]
    cities: Sequence[Sequence[str | None]]  # name, other spelling, state code, postcode prefix
    states: Mapping[str, Sequence[str]]  # code -> (full local name, other name)
    # Shares of states written as full name, other name, lowercased code, junk, null; the rest as the code.
    state_mix: Sequence[float]
    address_formats: Mapping[str, float]
    address_vocab: Mapping[str, Sequence[str]]
    zip_formats: Mapping[str, float]
    calling_code: str
    phones: Sequence[_Phone]
    domains: Sequence[str]
    zip_lose_zero: float = 0.0  # share of leading zeros lost to a spreadsheet
    zip_lowercase: float = 0.0


def _country(
    entry: Mapping[str, Any], north_america: Mapping[str, Any], common_domains: list[str]
) -> _Country:
    """A country of the vocabulary file, with what it shares with other countries added."""
    fields = {**entry, "domains": common_domains + entry["domains"]}
    if fields.pop("north_american", False):
        fields["address_formats"] = north_america["address_formats"] | fields.get("address_formats", {})
        fields["address_vocab"] = north_america["address_vocab"] | fields["address_vocab"]
        # North American exchange codes never start with 0 or 1.
        prefixes = [area + first for area in fields.pop("area_codes") for first in "23456789"]
        phones = [_Phone(1, prefixes, 6, north_america["phone_formats"])]
    else:
        phones = [_Phone(**phone) for phone in fields.pop("phones")]
    return _Country(**fields, phones=phones)


_VOCABULARY = json.loads(
    (resources.files(__package__) / "data" / "sample_vocabulary.json").read_text(encoding="utf-8")
)
_COUNTRIES = tuple(
    _country(entry, _VOCABULARY["north_america"], _VOCABULARY["common_domains"])
    for entry in _VOCABULARY["countries"]
)
_CONSENT_LAW_COUNTRIES: list[str] = _VOCABULARY["consent_law_countries"]


def _pattern(nsn: pl.Expr, fmt: str) -> pl.Expr:
    """Lay the digits of `nsn` into `fmt`, each "#" taking the next one."""
    pieces, pos = [], 0
    for literal, hashes in re.findall(r"([^#]*)(#*)", fmt):
        if literal:
            pieces.append(pl.lit(literal))
        if hashes:
            pieces.append(nsn.str.slice(pos, len(hashes)))
            pos += len(hashes)
    return pl.concat_str(pieces)


def _phones(rng: _Rng, c: _Country, n: int) -> tuple[pl.Series, pl.Series]:
    """Formatted phone numbers, and the E.164 digits that a client would have hashed."""
    kind = rng.choice(n, [phone.share for phone in c.phones])
    columns, numbers, layouts = {}, [], []
    layout = pl.repeat(0, n, dtype=pl.Int64, eager=True)
    for i, phone in enumerate(c.phones):
        nsn = pl.select(pl.concat_str([rng.pick(n, phone.prefixes), rng.digits(n, phone.digits)]))
        columns[f"nsn{i}"] = nsn.to_series()
        chosen = rng.choice(n, list(phone.formats.values())) + len(layouts)
        layout = pl.select(pl.when(kind == i).then(chosen).otherwise(layout)).to_series()
        numbers.append(pl.col(f"nsn{i}"))
        layouts += [_pattern(pl.col(f"nsn{i}"), fmt) for fmt in phone.formats]
    frame = pl.DataFrame(columns)
    return _by_case(frame, layout, layouts), c.calling_code + _by_case(frame, kind, numbers)


def _fold(expr: pl.Expr) -> pl.Expr:
    """Lowercase ASCII letters and digits only, as people put their names into e-mail addresses."""
    lowered = expr.str.to_lowercase().str.replace_many({"ß": "ss", "ø": "o", "æ": "ae", "œ": "oe", "ı": "i"})
    return lowered.str.normalize("NFKD").str.replace_all(r"[^a-z0-9]", "")


def _email(rng: _Rng, c: _Country, first: pl.Series, last: pl.Series) -> pl.Series:
    n = len(first)
    # Names in kana or kanji fold to nothing, so such people chose a mailbox name of their own.
    folded = pl.DataFrame({"first": first, "last": last}).select(
        pl.when(_fold(pl.col(name)) == "").then(pl.lit(alias)).otherwise(_fold(pl.col(name))).alias(name)
        for name, alias in (("first", "user"), ("last", "mail"))
    )
    given, family = folded.get_columns()
    local = _fill(
        rng,
        n,
        _weighted(
            "{f}.{l}{d3}=25|{f}{l}{d4}=20|{i}{l}{d4}=15|{f}_{l}{d2}=10|{f}.{l}=8|{f}{d5}=8|{l}.{f}{d2}=7|"
            "{i}.{l}{d5}=7"
        ),
        f=given,
        l=family,
        i=given.str.slice(0, 1),
    )
    domain = rng.pick(n, c.domains)
    tagged = pl.format("{}+{}@{}", "local", "tag", "domain")
    return _variants(
        rng,
        pl.select(pl.format("{}@{}", local, domain)).to_series(),
        [
            (0.08, _NULL),
            (0.015, _EMPTY),
            (0.03, pl.format(_SHA_LOWER + "{}", _V)),
            (0.01, pl.format(_SHA_UPPER + "{}", _V)),
            (0.005, pl.lit("not-an-email")),
            (0.007, _V.str.replace("@", "", literal=True)),
            (0.006, _V.str.replace("@", "@mail@", literal=True)),
            (0.004, _V.str.replace(r"\.[a-z.]+$", "")),
            (0.04, tagged),
            (0.01, pl.concat_str([pl.lit(" "), tagged.str.to_uppercase(), pl.lit(" ")])),
            (0.03, _UPPER),
            (0.04, _V.str.to_titlecase()),
            (0.04, _PAD),
        ],
        local=local,
        tag=rng.pick(n, ["news", "shop", "promo", "amazon", "2024", "spam", "x"]),
        domain=domain,
    )


def _country_block(rng: _Rng, c: _Country, n: int) -> pl.DataFrame:
    """The identity columns that depend on the country, for `n` people living in `c`."""
    first, last = rng.pick(n, c.first_names), rng.pick(n, c.last_names)
    email = _email(rng, c, first, last)

    phone, e164 = _phones(rng, c, n)
    phone = _variants(
        rng,
        phone,
        [
            (0.17, _NULL),
            (0.01, _EMPTY),
            (0.03, pl.format(_SHA_LOWER + "{}", "e164")),
            (0.005, pl.format(_SHA_UPPER + "{}", "e164")),
            (0.015, _V.str.slice(0, 5)),
            (0.008, pl.lit("n/a")),
            (0.004, pl.lit("0000000000")),
            (0.004, pl.lit("123")),
            (0.01, pl.format("{} ext. 12", _V)),
            (0.02, _PAD),
        ],
        e164=e164,
    )

    name_mess = [(0.06, _NULL), (0.005, _EMPTY), (0.05, _UPPER), (0.04, _LOWER), (0.03, _PAD)]
    double_barrelled = _variants(
        rng, last, [(0.03, pl.format("{}-{}", _V, "other"))], other=rng.pick(n, c.last_names)
    )

    address = _fill(rng, n, c.address_formats, c.address_vocab)
    address = _variants(rng, address, [(0.06, _NULL), (0.04, _UPPER), (0.02, _LOWER), (0.03, _PAD)])

    # Bigger cities first in each list, and more people in them.
    city_index = rng.choice(n, [1 / (i + 1) for i in range(len(c.cities))])
    names, others, state_codes, prefixes = (
        pl.Series(column, dtype=pl.String).gather(city_index) for column in zip(*c.cities, strict=True)
    )
    city = _variants(
        rng,
        names,
        [
            (0.03, _NULL),
            (0.07, pl.col("other")),
            (0.05, _V.str.normalize("NFKD").str.replace_all(r"\p{Mn}", "")),
            (0.04, _UPPER),
            (0.01, _LOWER),
            (0.02, _PAD),
        ],
        other=others,
    )
    if c.states:
        full, other = (
            state_codes.replace_strict(
                {code: spellings[i] for code, spellings in c.states.items()}, return_dtype=pl.String
            )
            for i in (0, 1)
        )
        exprs = (pl.col("full"), pl.col("other"), _LOWER, pl.col("junk"), _NULL, _PAD)
        state = _variants(
            rng,
            state_codes,
            list(zip((*c.state_mix, 0.02), exprs, strict=True)),
            full=full,
            other=other,
            junk=rng.pick(n, ["Unknown", "N/A", "XX", "--", "Other", "0"]),
        )
    else:
        state = pl.repeat(None, n, dtype=pl.String, eager=True)

    postal = _variants(
        rng,
        _fill(rng, n, c.zip_formats, p=prefixes),
        [
            (0.05, _NULL),
            (0.01, pl.col("junk")),
            (c.zip_lowercase, _LOWER),
            (c.zip_lose_zero, _V.str.strip_chars_start("0")),
            (0.01, _PAD),
        ],
        junk=rng.pick(n, ["00000", "N/A", "12", "ABCDE", "-", "none", "?"]),
    )

    country_code = _variants(
        rng,
        pl.repeat(c.code, n, dtype=pl.String, eager=True),
        [
            (0.03, _NULL),
            (0.05, _LOWER),
            (0.06, pl.lit(c.alpha3)),
            (0.06, pl.lit(c.english)),
            (0.01, pl.lit(c.english.upper())),
            (c.local_share, pl.lit(c.local)),
            (0.01, _PAD),
        ],
    )
    return pl.DataFrame(
        {
            "email": email,
            "phone": phone,
            "first_name": _variants(rng, first, name_mess),
            "last_name": _variants(rng, double_barrelled, name_mess),
            "address": address,
            "city": city,
            "state": state,
            "zip": postal,
            "country_code": country_code,
            "_country": pl.repeat(c.code, n, dtype=pl.String, eager=True),
        }
    )


def _maids(rng: _Rng, mask: pl.Series, zero_share: float = 0.0) -> pl.Series:
    """UUID ad IDs where `mask` holds: some zeroed (tracking opted out), some uppercase, a few mangled."""
    ids = _variants(
        rng,
        _sparse(rng, mask, _Rng.uuid),
        [
            (zero_share, pl.lit(_ZERO_UUID)),
            (0.12, _UPPER),
            (0.004, _V.str.replace_all("-", "")),
            (0.004, pl.concat_str([pl.lit("{"), _V, pl.lit("}")])),
            (0.004, _V.str.slice(0, 30)),
        ],
    )
    # A missing ID must stay missing rather than become a zeroed one.
    return pl.select(pl.when(mask).then(ids)).to_series()


def _formatted(fmt: str, **makers: Callable[[_Rng, int], pl.Series]) -> Callable[[_Rng, int], pl.Series]:
    """A value maker for weighted formats ("a{x}=1|b{x}=1") whose parts come from `makers`."""
    return lambda rng, n: _fill(
        rng, n, _weighted(fmt), **{name: make(rng, n) for name, make in makers.items()}
    )


def _digits(count: int) -> Callable[[_Rng, int], pl.Series]:
    return lambda rng, n: rng.digits(n, count)


def _hex(size: int) -> Callable[[_Rng, int], pl.Series]:
    return lambda rng, n: rng.hex(n, size)


def _b64(size: int) -> Callable[[_Rng, int], pl.Series]:
    return lambda rng, n: rng.b64url(n, size)


# Mostly missing columns: the share of profiles with a value, and how to make one.
_SPARSE_IDS: dict[str, tuple[float, Callable[[_Rng, int], pl.Series]]] = {
    "customer_id": (0.85, _formatted("C{d}=80|CUST-{d}=20", d=_digits(9))),
    "mpid": (0.25, _formatted("{x}{d}=1|-{x}{d}=1", x=lambda rng, n: rng.ints(n, 1, 9).cast(pl.String),
                              d=_digits(18))),
    "facebook_id": (0.08, _formatted("1000{d}=1", d=_digits(11))),
    "google_id": (0.10, _formatted("1{d}=1", d=_digits(20))),
    "microsoft_id": (0.03, lambda rng, n: rng.hex(n, 8).str.to_uppercase()),
    "twitter_id": (0.03, _formatted("1{d}=1", d=_digits(18))),
    "yahoo_id": (0.03, _b64(15)),
    "other": (0.10, _formatted("LOY{d}=1", d=_digits(10))),
    "other_2": (0.05, _formatted("crm_{x}=1", x=_hex(6))),
    **{f"other_{i}": (0.04 / i, _formatted(f"o{i}_{{x}}=1", x=_hex(5))) for i in range(3, 11)},
    "live_ramp_id": (0.06, _formatted("XY1000{x}=70|XY1001{x}=30", x=_b64(45))),
    "experian_id": (0.04, _digits(18)),
    "kantar_id": (0.02, _Rng.uuid),
    "merkle_id": (0.03, _formatted("MK{x}=1", x=lambda rng, n: rng.hex(n, 8).str.to_uppercase())),
    "neustar_id": (0.03, _formatted("E1:{x}=1", x=_b64(48))),
    "real_id": (0.02, _hex(16)),
    "samba_tv_id": (0.02, _Rng.uuid),
}  # fmt: skip


def _profiles(rng: _Rng, first_row: int, n: int, id_width: int) -> pl.DataFrame:
    """`n` profiles numbered from `first_row` + 1, with their true country kept in `_country`."""
    country_index = rng.choice(n, [c.weight for c in _COUNTRIES])
    blocks = []
    for i, c in enumerate(_COUNTRIES):
        rows = (country_index == i).arg_true()
        if len(rows):
            blocks.append(_country_block(rng, c, len(rows)).with_columns(_row=rows))
    people = pl.concat(blocks).sort("_row")
    country = people["_country"]
    number = (people["_row"].cast(pl.Int64) + first_row + 1).cast(pl.String).str.zfill(id_width)
    columns = {
        "user_id": "u" + number,
        "created_at": pl.select(
            pl.lit(REFERENCE_TIME) - pl.duration(seconds=rng.ints(n, _DAY, 5 * 365 * _DAY))
        ).to_series(),
    }

    # One main phone platform per person, so IDFA/IDFV and GAID/Android ID never mix; 12% only use the web.
    ios_share = country.replace_strict({c.code: c.ios_share for c in _COUNTRIES}, return_dtype=pl.Float64)
    device = rng.u(n)
    ios, android = device < ios_share, (device >= ios_share) & (device < 0.88)
    roku = rng.chance(n, 0.04)
    columns |= {
        "idfa": _maids(rng, ios & rng.chance(n, 0.55), zero_share=0.25),
        "gaid": _maids(rng, android & rng.chance(n, 0.75), zero_share=0.05),
        "idfv": _maids(rng, ios & rng.chance(n, 0.7)),
        "android_id": _sparse(rng, android & rng.chance(n, 0.3), _hex(8)),
        "fire_adid": _maids(rng, rng.chance(n, 0.03)),
        "microsoft_adid": _maids(rng, rng.chance(n, 0.02)),
        "roku_adid": _maids(rng, roku),
        "roku_publisher_id": _maids(rng, roku & rng.chance(n, 0.6)),
    }
    for name, (share, make) in _SPARSE_IDS.items():
        columns[name] = _sparse(rng, rng.chance(n, share), make)

    # Consent is recorded far more often where the law asks for it.
    in_eu = country.is_in(_CONSENT_LAW_COUNTRIES)
    recorded = rng.chance(n, in_eu.cast(pl.Float64) * 0.25 + 0.55)
    ad_storage = pl.select(pl.when(recorded).then(rng.pick(n, ["GRANTED", "DENIED"], [3, 1]))).to_series()
    user_data = _variants(
        rng, ad_storage, [(0.1, pl.col("other"))], other=rng.pick(n, ["GRANTED", "DENIED", "DENIED"])
    )
    tcf = _sparse(
        rng, in_eu & rng.chance(n, 0.65), _formatted("CQ{b}=60|CP{b}=25|CQ{b}.YAAAAAAAAAAA=15", b=_b64(33))
    )
    us_gpp = _sparse(rng, (country == "US") & rng.chance(n, 0.35), _formatted("DBABLA~{b}=1", b=_b64(9)))
    gpp = pl.select(
        pl.when(tcf.is_not_null() & rng.chance(n, 0.2)).then(pl.format("DBABMA~{}", tcf)).otherwise(us_gpp)
    ).to_series()
    ip = _sparse(
        rng, rng.chance(n, 0.75), _formatted("{o}.{o}.{o}.{o}=90|2001:db8:{h}:{h}:{h}:{h}:{h}:{h}=10")
    )
    columns |= {
        "amzn_ad_storage": ad_storage,
        "amzn_user_data": user_data,
        "tcf_string": tcf,
        "gpp_string": gpp,
        "ip_address": ip,
    }
    return people.with_columns(**columns)


# Category -> SKU prefix and typical unit price in US dollars.
_CATEGORIES: dict[str, dict[str, Any]] = _VOCABULARY["categories"]
_EVENT_TYPES: dict[str, float] = _VOCABULARY["event_types"]


def _per_user(rng: _Rng, people: pl.DataFrame, mean: float) -> pl.DataFrame:
    """`user_id` and `_country` repeated a skewed number of times per user: many zeros, a long tail."""
    shape = (1 - rng.u(people.height)).log() * (1 - rng.u(people.height)).log()
    counts = (shape * mean).floor().clip(0, 400).cast(pl.Int64)
    return people.select(pl.col("user_id", "_country").repeat_by(counts)).explode("user_id", "_country")


def _price(rng: _Rng, category: pl.Series) -> pl.Series:
    base = category.replace_strict(
        {name: category["usd_price"] for name, category in _CATEGORIES.items()}, return_dtype=pl.Float64
    )
    return base * (0.3 + 2.2 * rng.u(len(category)) ** 2)


def _events(rng: _Rng, people: pl.DataFrame, first_id: int) -> pl.DataFrame:
    events = _per_user(rng, people, 5.3)  # rounding down leaves about five per user
    m = events.height
    kind = rng.pick(m, list(_EVENT_TYPES), list(_EVENT_TYPES.values()))
    category = rng.pick(m, list(_CATEGORIES))
    commerce = kind.is_in(["add_to_cart", "purchase"])
    has_category = commerce | (kind == "product_view") | ((kind == "page_view") & rng.chance(m, 0.5))
    return events.select(
        event_id=pl.int_range(first_id, first_id + m, dtype=pl.Int64),
        user_id="user_id",
        event_type=kind,
        event_time=pl.lit(REFERENCE_TIME) - pl.duration(seconds=rng.ints(m, 1, 90 * _DAY)),
        product_category=pl.when(has_category).then(category),
        value=pl.when(commerce).then(_price(rng, category).round(2)),  # US dollars
    )


def _purchases(rng: _Rng, people: pl.DataFrame, first_id: int) -> pl.DataFrame:
    purchases = _per_user(rng, people, 1.45)  # about one per user after rounding down
    m = purchases.height
    category = rng.pick(m, list(_CATEGORIES))
    country = purchases["_country"]
    scale = country.replace_strict({c.code: c.price_scale for c in _COUNTRIES}, return_dtype=pl.Float64)
    price = _price(rng, category) * scale
    sku = category.replace_strict(
        {name: category["sku_prefix"] for name, category in _CATEGORIES.items()}, return_dtype=pl.String
    )
    return purchases.select(
        purchase_id=pl.int_range(first_id, first_id + m, dtype=pl.Int64),
        user_id="user_id",
        purchase_time=pl.lit(REFERENCE_TIME) - pl.duration(seconds=rng.ints(m, 1, 365 * _DAY)),
        product_sku=pl.format("{}-{}", sku, rng.ints(m, 10_000, 12_000)),
        product_category=category,
        quantity=rng.pick(m, ["1", "2", "3", "4", "5", "10"], [70, 18, 7, 3, 1.5, 0.5]).cast(pl.Int32),
        # Nobody prices in fractions of a yen or a rupee.
        unit_price=pl.when(country.is_in(["JP", "IN"])).then(price.round(0)).otherwise(price.round(2)),
        currency=country.replace_strict({c.code: c.currency for c in _COUNTRIES}, return_dtype=pl.String),
        store_country=country,
    )


def _unhash(column: str) -> str:
    """SQL replacing a hashing marker and its input by the SHA-256 hex digest of that input."""
    start = len(_SHA_LOWER) + 1
    digest = f"sha256(substr({column}, {start}))"
    return (
        f"CASE WHEN starts_with({column}, '{_SHA_LOWER}') THEN {digest} "
        f"WHEN starts_with({column}, '{_SHA_UPPER}') THEN upper({digest}) ELSE {column} END AS {column}"
    )


_DDL = f"""
CREATE TABLE profiles (
    user_id VARCHAR, created_at TIMESTAMP, {", ".join(f"{c} VARCHAR" for c in PROFILE_COLUMNS[2:])}
);
CREATE TABLE events (
    event_id BIGINT, user_id VARCHAR, event_type VARCHAR, event_time TIMESTAMP, product_category VARCHAR,
    value DOUBLE
);
CREATE TABLE purchases (
    purchase_id BIGINT, user_id VARCHAR, purchase_time TIMESTAMP, product_sku VARCHAR,
    product_category VARCHAR, quantity INTEGER, unit_price DECIMAL(10, 2), currency VARCHAR,
    store_country VARCHAR
);
"""
_PROFILE_SELECT = ", ".join(_unhash(c) if c in ("email", "phone") else c for c in PROFILE_COLUMNS)


def _insert(
    conn: duckdb.DuckDBPyConnection, people: pl.DataFrame, events: pl.DataFrame, purchases: pl.DataFrame
) -> None:
    for table, frame, select in (
        ("profiles", people, _PROFILE_SELECT),
        ("events", events, "*"),
        ("purchases", purchases, "*"),
    ):
        conn.register("chunk", frame)
        conn.execute(f"INSERT INTO {table} SELECT {select} FROM chunk")
        conn.unregister("chunk")


def write_sample_data(out_dir: str | Path, profiles: int, seed: int = 0) -> Path:
    """Write ``out_dir/sample.duckdb`` with synthetic ``profiles``, ``events`` and ``purchases`` tables.

    ``profiles`` has one row per user (ids ``u00000001`` onwards) in nine countries, with every identity
    column of the pipeline filled the way messy first-party data is; ``events`` has about five events per
    user in the 90 days before ``REFERENCE_TIME`` and ``purchases`` about one order per user in the year
    before it. The same ``seed`` and ``profiles`` always give the same table contents. An existing file is
    replaced atomically, so no reader ever sees half a database. Returns the path of the file.
    """
    if profiles < 0:
        raise ValueError(f"profiles must not be negative, got {profiles}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    target = out / "sample.duckdb"
    id_width = max(8, len(str(profiles)))
    # DuckDB will not open an empty placeholder file, so the unique temporary name is a directory's.
    workdir = Path(tempfile.mkdtemp(prefix=".sample-data-", dir=out))
    try:
        staged = workdir / "sample.duckdb"
        # DuckDB compresses and writes one chunk while polars builds the next.
        with duckdb.connect(str(staged)) as conn, ThreadPoolExecutor(max_workers=1) as writer:
            # DuckDB's default (80% of RAM) let its buffers grow with the file: 7 GB at 10M profiles;
            # with this, 1.3 GB, and no slower. Its progress bars would only interleave on stdout.
            conn.execute(f"SET memory_limit = '{_DUCKDB_MEMORY}'")
            conn.execute("SET enable_progress_bar = false")
            conn.execute(_DDL)
            pending: Future[None] | None = None
            next_event = next_purchase = 1
            for chunk, start in enumerate(range(0, profiles, _CHUNK)):
                rng = _Rng(f"audience-pipeline-sample:{seed}:{chunk}")
                people = _profiles(rng, start, min(_CHUNK, profiles - start), id_width)
                events = _events(rng, people, next_event)
                purchases = _purchases(rng, people, next_purchase)
                next_event += events.height
                next_purchase += purchases.height
                if pending:
                    pending.result()
                pending = writer.submit(_insert, conn, people, events, purchases)
            if pending:
                pending.result()
        # A write-ahead log left behind by the old file would be replayed onto the new one.
        Path(f"{target}.wal").unlink(missing_ok=True)
        os.replace(staged, target)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    return target


def apply_round_two(path: str | Path, seed: int = 0) -> dict[str, int]:
    """Change the sample source at ``path`` the way a day of activity would, always the same way.

    Chosen by user number (never by DuckDB's hash, which may change between releases), about: one
    user in 40 signs up for the newsletter and opens the app (joins audiences), one in 40 has their
    newsletter sign-ups and app opens removed (leaves), and one in 50 changes e-mail and phone
    (identity change). Returns how many rows each change touched.
    """
    number = "CAST(substr(user_id, 2) AS BIGINT)"
    latest = f"TIMESTAMP '{REFERENCE_TIME:%Y-%m-%d %H:%M:%S}' - INTERVAL 1 HOUR"
    with duckdb.connect(str(path)) as conn:
        joined = conn.execute(
            f"""
            INSERT INTO events
            SELECT (SELECT max(event_id) FROM events) + row_number() OVER (ORDER BY user_id, t.event_type),
                   user_id, t.event_type, {latest}, NULL, NULL
            FROM profiles, (VALUES ('newsletter_signup'), ('app_open')) t(event_type)
            WHERE ({number} + $seed) % 40 = 0
            """,
            {"seed": seed},
        ).fetchone()[0]
        left = conn.execute(
            f"""
            DELETE FROM events
            WHERE event_type IN ('newsletter_signup', 'app_open') AND ({number} + $seed) % 40 = 1
            """,
            {"seed": seed},
        ).fetchone()[0]
        changed = conn.execute(
            f"""
            UPDATE profiles
            SET email = 'moved.' || user_id || '@example.org', phone = '+1 206 555 ' || right(user_id, 4)
            WHERE ({number} + $seed) % 50 = 2
            """,
            {"seed": seed},
        ).fetchone()[0]
    return {"events_added": joined, "events_removed": left, "profiles_changed": changed}
