"""Synthetic, deliberately messy first-party data for demos, tests and benchmarks.

``write_sample_data`` writes a DuckDB file with three tables:

* ``profiles``  - one row per user with every identity column the pipeline understands, dirty in the ways
  real CRM exports are (mixed case, stray spaces, local phone and postcode formats, alpha-3 or English
  country names, pre-hashed values, zeroed IDFAs, ...);
* ``events``    - behavioural events in the 90 days before ``REFERENCE_TIME``, for audience queries;
* ``purchases`` - orders in local currency, for an AMC FACT dataset.

Nobody in it is real: names are random pairings from small per-country vocabularies, e-mail addresses
live on ``example``-style domains, IPv6 addresses use the documentation prefix and every other value is
random digits or bytes. Columns are built vectorised with polars from the bytes of a seeded Mersenne
Twister, so a seed and a profile count always give the same table contents; nothing depends on the
hash or random-number algorithms of polars or DuckDB, which may change between releases.
"""

from __future__ import annotations

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
from pathlib import Path
from typing import NamedTuple

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
    formats: Sequence[tuple[str, float]],
    vocab: Mapping[str, Sequence[str]] | None = None,
    **parts: pl.Series,
) -> pl.Series:
    """One of the weighted `formats` per row, with each `{token}` replaced.

    A token is one of `parts`, a pick from `vocab`, a builtin (`num`, `n`, `L`, `l`, `D`, `h`, `o`) or
    `dK` for K random digits. Each repeat of a non-part token within a format gets its own draw.
    """
    columns: dict[str, pl.Series] = dict(parts)
    branches = []
    for fmt, _ in formats:
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
    return _by_case(frame, rng.choice(n, [weight for _, weight in formats]), branches)


def _v(text: str) -> tuple[str, ...]:
    """Split "a|b" into ("a", "b")."""
    return tuple(text.split("|"))


def _weighted(text: str) -> tuple[tuple[str, float], ...]:
    """Split "a=3|b=1" into (("a", 3.0), ("b", 1.0))."""
    return tuple((item.rpartition("=")[0], float(item.rpartition("=")[2])) for item in text.split("|"))


def _rows(text: str) -> tuple[tuple[str | None, ...], ...]:
    """Split "a/b|c/" into (("a", "b"), ("c", None))."""
    return tuple(tuple(field or None for field in row.split("/")) for row in text.split("|"))


class _Phone(NamedTuple):
    share: float
    prefixes: tuple[str, ...]  # how the national significant number starts
    digits: int  # random digits after the prefix
    formats: tuple[tuple[str, float], ...]  # each "#" takes the next digit of the national number


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
    first_names: tuple[str, ...]
    last_names: tuple[str, ...]
    cities: tuple[tuple[str | None, ...], ...]  # name, other spelling, state code, postcode prefix
    states: Mapping[str, tuple[str | None, ...]]  # code -> (full local name, other name)
    # Shares of states written as full name, other name, lowercased code, junk, null; the rest as the code.
    state_mix: tuple[float, float, float, float, float]
    address_formats: tuple[tuple[str, float], ...]
    address_vocab: Mapping[str, tuple[str, ...]]
    zip_formats: tuple[tuple[str, float], ...]
    calling_code: str
    phones: tuple[_Phone, ...]
    domains: tuple[str, ...]
    zip_lose_zero: float = 0.0  # share of leading zeros lost to a spreadsheet
    zip_lowercase: float = 0.0


def _states(text: str) -> dict[str, tuple[str | None, ...]]:
    return {code: names for code, *names in _rows(text)}


_NO_STATES: dict[str, tuple[str | None, ...]] = {}
_DOMAINS = _v("example.com|example.com|example.net|example.org|mail.example|inbox.example")
_UNITS = tuple(
    [f"Apt #{i}" for i in range(1, 25)]
    + [f"Apt {i}{x}" for i in range(1, 13) for x in "ABC"]
    + [f"Apt. {i}" for i in range(1, 13)]
    + [f"Unit {i}" for i in range(1, 25)]
    + [f"Suite {i}00" for i in range(1, 10)]
    + [f"#{i}" for i in range(1, 25)]
)
_NA_VOCAB = {
    "sfx": _v("Street|St|St.|ST|Avenue|Ave|Ave.|Road|Rd|Boulevard|Blvd|Drive|Dr|Lane|Ln|Court|Ct|Way|Pl"),
    "dir": _v("N|S|E|W|N.|S.|North|South|NE|NW|SE|SW"),
    "unit": _UNITS,
}
_NA_ADDRESSES = (
    "{num} {street} {sfx}=52|{num} {dir} {street} {sfx}=12|{num} {street} {sfx} {unit}=10|"
    "{num} {street} {sfx}, {unit}=10|{num}-{L} {street} {sfx}=3|{num} {street} {sfx} {dir}=3|"
    "{num}  {street} {sfx}=2|{num} {dir} {street} {sfx}, {unit}=5|PO Box {num}=3"
)
_NANP_PHONES = _weighted(
    "(###) ###-####=30|###-###-####=18|###.###.####=8|##########=10|1-###-###-####=5|1 ### ### ####=2|"
    "+1 (###) ###-####=10|+1 ###-###-####=5|+1##########=10|+1.###.###.####=2"
)
_CONTINENTAL_STATE_MIX = (0.50, 0.12, 0.03, 0.02, 0.21)


def _nanp_prefixes(area_codes: str) -> tuple[str, ...]:
    # North American exchange codes never start with 0 or 1.
    return tuple(area + first for area in _v(area_codes) for first in "23456789")


_COUNTRIES = (
    _Country(
        code="US", alpha3="USA", english="United States", local="United States of America",
        local_share=0.02, weight=40, currency="USD", price_scale=1.0, ios_share=0.5,
        first_names=_v(
            "James|Mary|Robert|Patricia|Michael|Jennifer|David|Linda|William|Elizabeth|José|María|Zoë|"
            "Chloé|Renée|DeShawn|Mary-Kate|Aaliyah|Tyler|Brianna|Hiroshi|Priya|Dmitri"
        ),
        last_names=_v(
            "Smith|Johnson|Williams|Brown|Jones|García|Miller|Davis|Rodríguez|Martínez|Hernández|O'Brien|"
            "O'Connor|McDonald|Nguyen|Kim|Patel|Lee|Anderson|Thompson|De La Cruz|Walker"
        ),
        cities=_rows(
            "New York/NYC/NY/100|Los Angeles/LA/CA/900|Chicago/Chicago/IL/606|Houston/Houston/TX/770|"
            "Dallas/Dallas/TX/752|Phoenix/Phoenix/AZ/850|Philadelphia/Philly/PA/191|"
            "San Antonio/San Antonio/TX/782|San Diego/San Diego/CA/921|Seattle/Seattle/WA/981|"
            "Boston/Boston/MA/021|Newark/Newark/NJ/071|Hartford/Hartford/CT/061|"
            "Washington/Washington DC/DC/200|Miami/Miami/FL/331|Atlanta/Atlanta/GA/303|Denver/Denver/CO/802|"
            "Portland/Portland/OR/972|Coeur d'Alene/Coeur dAlene/ID/838"
        ),
        states=_states(
            "NY/New York/N.Y.|CA/California/Calif.|IL/Illinois/Ill.|TX/Texas/Tex.|AZ/Arizona/Ariz.|"
            "PA/Pennsylvania/Penn.|WA/Washington/Wash.|MA/Massachusetts/Mass.|NJ/New Jersey/N.J.|"
            "CT/Connecticut/Conn.|DC/District of Columbia/Washington DC|FL/Florida/Fla.|GA/Georgia/Ga.|"
            "CO/Colorado/Colo.|OR/Oregon/Ore.|ID/Idaho/Ida."
        ),
        state_mix=(0.30, 0.04, 0.05, 0.03, 0.13),
        address_formats=_weighted(_NA_ADDRESSES),
        address_vocab=_NA_VOCAB | {"street": _v(
            "Main|Oak|Maple|Cedar|Pine|Elm|Washington|Lake|Hill|Park|Sunset|Lincoln|Jackson|Highland|Church|"
            "Martin Luther King Jr|Mill|River|Spring|Willow|1st|2nd|3rd|42nd"
        )},
        zip_formats=_weighted("{p}{d2}=88|{p}{d2}-{d4}=9|{p}{d2}{d4}=2|{p}{d2}-=1"),
        zip_lose_zero=0.35,
        calling_code="1",
        phones=(_Phone(1, _nanp_prefixes("206|212|213|312|305|404|415|512|617|702|713|718|917|303"), 6,
                       _NANP_PHONES),),
        domains=_DOMAINS + _v("example.us|mail.example.com"),
    ),
    _Country(
        code="CA", alpha3="CAN", english="Canada", local="Canada", local_share=0.0,
        weight=6, currency="CAD", price_scale=1.35, ios_share=0.5,
        first_names=_v(
            "Liam|Olivia|Noah|Emma|Étienne|Chloé|Gabrielle|Mathéo|Zoë|Jean-François|Marie-Ève|Amélie|"
            "Benjamin|Charlotte|Raj|Mei"
        ),
        last_names=_v(
            "Tremblay|Gagnon|Roy|Côté|Bouchard|Gauthier|Smith|Brown|Wilson|MacDonald|Leblanc|Bélanger|"
            "O'Neill|Singh|Chen|Lévesque"
        ),
        cities=_rows(
            "Toronto/Toronto/ON/M5V|Montréal/Montreal/QC/H2X|Vancouver/Vancouver/BC/V6B|"
            "Calgary/Calgary/AB/T2P|Ottawa/Ottawa/ON/K1A|Québec/Quebec City/QC/G1R|Edmonton/Edmonton/AB/T5J|"
            "Winnipeg/Winnipeg/MB/R3C|Halifax/Halifax/NS/B3H"
        ),
        states=_states(
            "ON/Ontario/Ont.|QC/Québec/Quebec|BC/British Columbia/Colombie-Britannique|AB/Alberta/Alta.|"
            "MB/Manitoba/Man.|NS/Nova Scotia/Nouvelle-Écosse"
        ),
        state_mix=(0.30, 0.10, 0.03, 0.02, 0.10),
        address_formats=_weighted(
            _NA_ADDRESSES + "|{num}, rue {street}=8|{num} rue {street}, app. {n}=3|{n}-{num} {street} {sfx}=8"
        ),
        address_vocab=_NA_VOCAB | {"street": _v(
            "Yonge|King|Queen|Bloor|Dundas|Sainte-Catherine|Saint-Denis|Sherbrooke|Granville|Robson|Portage|"
            "Jasper|Wellington"
        )},
        zip_formats=_weighted("{p} {D}{L}{D}=80|{p}{D}{L}{D}=15|{p}-{D}{L}{D}=5"),
        zip_lowercase=0.08,
        calling_code="1",
        phones=(_Phone(1, _nanp_prefixes("416|514|604|403|613|418|780|204|902|647"), 6, _NANP_PHONES),),
        domains=_DOMAINS + _v("example.ca"),
    ),
    _Country(
        code="GB", alpha3="GBR", english="United Kingdom", local="UK", local_share=0.2,
        weight=10, currency="GBP", price_scale=0.8, ios_share=0.5,
        first_names=_v(
            "Oliver|Amelia|George|Isla|Harry|Ava|Jack|Sophie|Siân|Zoë|Øyvind|Aoife|Rhys|Freya|Mohammed|Niamh"
        ),
        last_names=_v(
            "Smith|Jones|Taylor|Brown|Williams|Wilson|Evans|O'Brien|O'Sullivan|Davies|Hughes|Fitzgerald-Hughes|"
            "Patel|Khan|MacLeod|Ó Briain"
        ),
        cities=_rows(
            "London/London//SW1A|London/LONDON//EC2A|London/London//W1D|Manchester/Manchester//M1|"
            "Birmingham/B'ham//B1|Leeds/Leeds//LS1|Glasgow/Glasgow//G1|Edinburgh/Edinburgh//EH1|"
            "Bristol/Bristol//BS1|Cardiff/Caerdydd//CF10|Belfast/Belfast//BT1"
        ),
        states=_NO_STATES,
        state_mix=(0, 0, 0, 0, 0),
        address_formats=_weighted(
            "{num} {street} {sfx}=68|Flat {n}, {num} {street} {sfx}=12|Flat {n}{L} {num} {street} {sfx}=4|"
            "{num}{L} {street} {sfx}=5|{house}, {street} {sfx}=8|{num} {street} {sfx},=3"
        ),
        address_vocab={
            "street": _v("High|Station|Church|Victoria|Green|Manor|Park|Queen's|King's|Mill|St John's"),
            "sfx": _v("Road|Rd|Rd.|Street|St|Lane|Close|Avenue|Ave|Gardens|Crescent|Way|Drive"),
            "house": _v("Rose Cottage|The Old Rectory|Ivy House|The Barn|Orchard View|Mill House"),
        },
        zip_formats=_weighted("{p} {D}{L}{L}=85|{p}{D}{L}{L}=15"),
        zip_lowercase=0.08,
        calling_code="44",
        phones=(
            _Phone(55, _v("71|72|73|74|75|77|78|79"), 8, _weighted(
                "0#### ######=45|0##########=20|0#### ### ###=8|+44 #### ######=12|+44##########=7|"
                "0044 #### ######=4|+44 (0)#### ######=4"
            )),
            _Phone(25, _v("203|207|208"), 7, _weighted(
                "0## #### ####=50|(0##) #### ####=10|0##########=12|+44 ## #### ####=14|0044 ## #### ####=6|"
                "+44 (0)## #### ####=8"
            )),
            _Phone(20, tuple(a + d for a in _v("121|161|131|113|117|141") for d in "2345"), 6, _weighted(
                "0### ### ####=60|0##########=15|+44 ### ### ####=15|0044 ### ### ####=5|"
                "+44 (0)### ### ####=5"
            )),
        ),
        domains=_DOMAINS + _v("example.co.uk|example.co.uk|example.uk"),
    ),
    _Country(
        code="DE", alpha3="DEU", english="Germany", local="Deutschland", local_share=0.04,
        weight=10, currency="EUR", price_scale=0.92, ios_share=0.35,
        first_names=_v(
            "Jürgen|Lukas|Leonie|Jörg|Björn|Bjørn|Günter|Anna|Lena|Maximilian|Sören|Hans-Peter|Karl-Heinz|"
            "Anneliese|Mia|Felix|Özlem|Ayşe"
        ),
        last_names=_v(
            "Müller|Schmidt|Schneider|Fischer|Weiß|Weber|Schäfer|Meyer|Wagner|Becker|Hoffmann|Schröder|Köhler|"
            "Groß|von Berg|Müller-Lüdenscheidt|Yılmaz|Kowalski"
        ),
        cities=_rows(
            "Berlin/Berlin/BE/10|Hamburg/Hamburg/HH/20|München/Munich/BY/80|Köln/Cologne/NW/50|"
            "Frankfurt am Main/Frankfurt/HE/60|Stuttgart/Stuttgart/BW/70|Düsseldorf/Duesseldorf/NW/40|"
            "Leipzig/Leipzig/SN/04|Nürnberg/Nuremberg/BY/90|Dresden/Dresden/SN/01"
        ),
        states=_states(
            "BE/Berlin/Land Berlin|HH/Hamburg/Freie und Hansestadt Hamburg|BY/Bayern/Bavaria|"
            "NW/Nordrhein-Westfalen/North Rhine-Westphalia|HE/Hessen/Hesse|"
            "BW/Baden-Württemberg/Baden-Wuerttemberg|SN/Sachsen/Saxony"
        ),
        state_mix=_CONTINENTAL_STATE_MIX,
        address_formats=_weighted(
            "{stem}straße {num}=38|{stem}str. {num}=15|{stem}strasse {num}=8|{stem}straße {num}{l}=8|"
            "{stem}weg {num}=8|Am {place} {num}=6|{stem}straße {num}, {n}. OG=5|{stem}allee {num}=5|"
            "{stem}platz {num}=4|{stem}-Straße {num}=3"
        ),
        address_vocab={
            "stem": _v("Haupt|Bahnhof|Schiller|Goethe|Garten|Berliner|Kirch|Linden|Schul|Dorf|Mozart|Rosen"),
            "place": _v("Markt|Anger|Mühlbach|Schloßpark|Stadtgarten"),
        },
        zip_formats=_weighted("{p}{d3}=1"),
        zip_lose_zero=0.2,
        calling_code="49",
        phones=(
            _Phone(55, _v("151|152|157|160|162|170|171|172|173|174|175|176|177|178|179"), 8, _weighted(
                "0### ########=45|0###-########=10|0###/########=10|0###########=10|+49 ### ########=15|"
                "+49 (0)### ########=4|0049 ### ########=6"
            )),
            _Phone(45, _v("30|40|89|69"), 8, _weighted(
                "0## ########=40|0##/########=15|(0##) ########=10|0##-########=5|+49 ## ########=15|"
                "+49 (0)## ########=5|0049 ## ########=5"
            )),
        ),
        domains=_DOMAINS + _v("example.de|example.de|beispiel.example"),
    ),
    _Country(
        code="FR", alpha3="FRA", english="France", local="République française", local_share=0.01,
        weight=8, currency="EUR", price_scale=0.92, ios_share=0.35,
        first_names=_v(
            "Jean|Marie|Léa|Chloé|Hélène|François|Étienne|Noémie|Zoé|Jérôme|Anaïs|Jean-Pierre|Marie-Claire|"
            "Loïc|Gaëlle|Inès"
        ),
        last_names=_v(
            "Martin|Bernard|Dubois|Thomas|Robert|Petit|Durand|Lefèvre|Lefebvre|Moreau|Girard|d'Almeida|"
            "Le Goff|Bérenger|N'Diaye|Rousseau"
        ),
        cities=_rows(
            "Paris/Paris/IF/75|Marseille/Marseilles/PR/13|Lyon/Lyons/RA/69|Toulouse/Toulouse/MP/31|"
            "Nice/Nice/PR/06|Nantes/Nantes/PL/44|Strasbourg/Strasbourg/AA/67|Bordeaux/Bordeaux/AQ/33|"
            "Lille/Lille/NP/59|Saint-Étienne/St-Etienne/RA/42"
        ),
        states=_states(
            "IF/Île-de-France/Ile-de-France|PR/Provence-Alpes-Côte d'Azur/Provence-Alpes-Cote d'Azur|"
            "RA/Rhône-Alpes/Rhone-Alpes|MP/Midi-Pyrénées/Midi-Pyrenees|"
            "PL/Pays de la Loire/Pays-de-la-Loire|AA/Alsace/ALSACE|"
            "AQ/Aquitaine/AQUITAINE|NP/Nord-Pas-de-Calais/Nord Pas de Calais"
        ),
        state_mix=_CONTINENTAL_STATE_MIX,
        address_formats=_weighted(
            "{num} {type} {name}=58|{num}, {type} {name}=15|{num} bis {type} {name}=6|"
            "Appt {n}, {num} {type} {name}=8|{num} {type} {name}, Bât. {L}=5|{num} ter {type} {name}=2|"
            "{num}{type} {name}=1|{num} {type} {name} =5"
        ),
        address_vocab={
            "type": _v("rue|rue|Rue|avenue|av.|Avenue|boulevard|bd|place|allée|chemin|impasse|quai"),
            "name": _v(
                "de la Paix|Victor Hugo|Jean Jaurès|de la République|des Lilas|Pasteur|du Général Leclerc|"
                "Saint-Michel|des Écoles|de l'Église|Émile Zola|du Moulin"
            ),
        },
        zip_formats=_weighted("{p}{d3}=1"),
        zip_lose_zero=0.25,
        calling_code="33",
        phones=(
            _Phone(1, _v("1|2|3|4|5|6|6|6|7|7|9"), 8, _weighted(
                "0# ## ## ## ##=55|0#########=12|0#.##.##.##.##=8|0#-##-##-##-##=3|+33 # ## ## ## ##=12|"
                "+33#########=4|+33 (0)# ## ## ## ##=3|0033 # ## ## ## ##=3"
            )),
        ),
        domains=_DOMAINS + _v("example.fr|example.fr|exemple.example"),
    ),
    _Country(
        code="IT", alpha3="ITA", english="Italy", local="Italia", local_share=0.05,
        weight=6, currency="EUR", price_scale=0.92, ios_share=0.3,
        first_names=_v(
            "Giuseppe|Maria|Giovanni|Francesca|Luca|Chiara|Niccolò|Nicolò|Sofia|Giulia|Andrea|Alessandro|"
            "Lucia|Gianluca|Maria Grazia"
        ),
        last_names=_v(
            "Rossi|Russo|Ferrari|Esposito|Bianchi|Romano|Colombo|Ricci|Marino|Greco|D'Angelo|Dell'Acqua|"
            "De Luca|Galli|Fabbri|Cocco"
        ),
        cities=_rows(
            "Roma/Rome/RM/00|Milano/Milan/MI/20|Napoli/Naples/NA/80|Torino/Turin/TO/10|Palermo/Palermo/PA/90|"
            "Genova/Genoa/GE/16|Bologna/Bologna/BO/40|Firenze/Florence/FI/50|Forlì/Forli/FC/47"
        ),
        states=_states(
            "RM/Roma/Rome|MI/Milano/Milan|NA/Napoli/Naples|TO/Torino/Turin|PA/Palermo/PALERMO|"
            "GE/Genova/Genoa|BO/Bologna/BOLOGNA|FI/Firenze/Florence|"
            "FC/Forlì-Cesena/Forli-Cesena"
        ),
        state_mix=_CONTINENTAL_STATE_MIX,
        address_formats=_weighted(
            "{type} {name} {num}=55|{type} {name}, {num}=28|{type} {name} {num}/{L}=5|"
            "{type} {name} {num}, int. {n}=5|{type} {name} n. {num}=4|{type} {name}, {num} scala {L}=3"
        ),
        address_vocab={
            "type": _v("Via|Via|Via|V.|Viale|V.le|Piazza|P.zza|Corso|C.so|Vicolo|Largo"),
            "name": _v(
                "Roma|Garibaldi|Giuseppe Mazzini|Dante Alighieri|Cavour|Vittorio Emanuele II|XX Settembre|"
                "dei Mille|della Repubblica|San Francesco|Nazionale|Sant'Antonio"
            ),
        },
        zip_formats=_weighted("{p}{d3}=1"),
        zip_lose_zero=0.25,
        calling_code="39",
        phones=(
            _Phone(60, _v("320|328|329|333|338|339|340|347|348|349|360|366|380|388|392"), 7, _weighted(
                "### ### ####=45|##########=20|###-#######=8|+39 ### ### ####=15|+39##########=7|"
                "0039 ### #######=5"
            )),
            # Italian landlines keep their leading 0 after the country code.
            _Phone(40, _v("06|02"), 8, _weighted(
                "## #### ####=45|##########=15|##/########=10|+39 ## #### ####=20|0039 ## ########=10"
            )),
        ),
        domains=_DOMAINS + _v("example.it|esempio.example"),
    ),
    _Country(
        code="ES", alpha3="ESP", english="Spain", local="España", local_share=0.05,
        weight=6, currency="EUR", price_scale=0.92, ios_share=0.3,
        first_names=_v(
            "José|María|Antonio|Lucía|Carmen|Javier|Sofía|Martín|Ángel|Inés|José Luis|María José|Nuria|Íñigo|"
            "Jordi|Begoña"
        ),
        last_names=_v(
            "García|Fernández|González|Rodríguez|López|Martínez|Sánchez|Pérez|Gómez|Martín|Jiménez|Ruiz|Núñez|"
            "Muñoz|Ibáñez|Gómez-Ruiz|de la Fuente"
        ),
        cities=_rows(
            "Madrid/Madrid/M/28|Barcelona/Barcelona/B/08|Valencia/València/V/46|Sevilla/Seville/SE/41|"
            "Zaragoza/Saragossa/Z/50|Málaga/Malaga/MA/29|Bilbao/Bilbo/BI/48|A Coruña/La Coruña/C/15|"
            "Palma/Palma de Mallorca/PM/07"
        ),
        states=_states(
            "M/Madrid/MADRID|B/Barcelona/BARCELONA|V/Valencia/València|SE/Sevilla/SEVILLA|"
            "Z/Zaragoza/ZARAGOZA|MA/Málaga/Malaga|BI/Vizcaya/Bizkaia|C/A Coruña/La Coruña|"
            "PM/Baleares/Balears"
        ),
        state_mix=_CONTINENTAL_STATE_MIX,
        address_formats=_weighted(
            "{type} {name} {num}=38|{type} {name}, {num}=25|{type} {name}, {num}, {n}º {L}=15|"
            "{type} {name} {num} {n}º{L}=10|{type} {name}, s/n=3|{type} {name} nº {num}=9"
        ),
        address_vocab={
            "type": _v("Calle|Calle|C/|c/|Avda.|Avenida|Plaza|Pl.|Paseo|Pº|Carrer|Camino|Ronda"),
            "name": _v(
                "Mayor|de Alcalá|Gran Vía|de la Constitución|Real|del Sol|San Juan|de España|Nueva|de Gràcia|"
                "Colón|Doctor Fleming"
            ),
        },
        zip_formats=_weighted("{p}{d3}=1"),
        zip_lose_zero=0.25,
        calling_code="34",
        phones=(
            _Phone(65, _v("60|61|62|63|64|65|66|67|68|69|71|72|73|74"), 7, _weighted(
                "### ### ###=50|#########=18|### ## ## ##=10|+34 ### ### ###=14|+34#########=4|"
                "0034 #########=4"
            )),
            _Phone(35, _v("91|93|95|96|94|98"), 7, _weighted(
                "## ### ## ##=50|#########=20|### ### ###=10|+34 ## ### ## ##=12|0034 ## ### ## ##=8"
            )),
        ),
        domains=_DOMAINS + _v("example.es|ejemplo.example"),
    ),
    _Country(
        code="JP", alpha3="JPN", english="Japan", local="日本", local_share=0.03,
        weight=7, currency="JPY", price_scale=150.0, ios_share=0.65,
        first_names=_v("Haruto|Yui|Sota|Aoi|Yuto|Hina|Ren|Sakura|Yūki|Ryō|Shōta|Kenji|Emi|太郎|花子|陽翔|さくら"),
        last_names=_v(
            "Sato|Suzuki|Takahashi|Tanaka|Watanabe|Ito|Yamamoto|Nakamura|Kobayashi|Katō|Ōno|Saitō|佐藤|鈴木|"
            "高橋|田中"
        ),
        cities=_rows(
            "Tokyo/東京//100|Osaka/大阪//530|Yokohama/横浜//220|Nagoya/名古屋//450|Sapporo/札幌//060|"
            "Fukuoka/福岡//810|Kyoto/京都//600|Kobe/神戸//650"
        ),
        states=_NO_STATES,
        state_mix=(0, 0, 0, 0, 0),
        address_formats=_weighted(
            "{n}-{n}-{n} {district}=45|{district} {n}-{n}-{n}=20|{district} {n}-chōme {n}-{n}=10|"
            "{kanji}{n}丁目{n}-{n}=15|{n}-{n}-{n} {district}, Room {num}=10"
        ),
        address_vocab={
            "district": _v("Shibuya|Shinjuku|Minato-ku|Chiyoda|Nakano|Umeda|Namba|Sakae|Chūō-ku|Kita-ku"),
            "kanji": _v("渋谷区神南|新宿区西新宿|港区六本木|千代田区丸の内|中央区銀座|北区梅田"),
        },
        zip_formats=_weighted("{p}-{d4}=80|{p}{d4}=15|〒{p}-{d4}=5"),
        calling_code="81",
        phones=(
            _Phone(60, _v("90|80|70"), 8, _weighted(
                "0##-####-####=55|0##########=15|0## #### ####=8|+81 ##-####-####=10|+81 ## #### ####=6|"
                "+81##########=6"
            )),
            _Phone(40, _v("3|6"), 8, _weighted(
                "0#-####-####=60|0#########=15|(0#) ####-####=5|+81 #-####-####=10|+81-#-####-####=5|"
                "+81#########=5"
            )),
        ),
        domains=_DOMAINS + _v("example.jp|example.co.jp|example.ne.jp"),
    ),
    _Country(
        code="IN", alpha3="IND", english="India", local="Bharat", local_share=0.02,
        weight=7, currency="INR", price_scale=83.0, ios_share=0.1,
        first_names=_v(
            "Aarav|Vivaan|Aditya|Ananya|Diya|Priya|Rahul|Rohan|Sneha|Arjun|Saanvi|Lakshmi|Venkatesh|"
            "Sai Kiran|Fatima|Gurpreet"
        ),
        last_names=_v(
            "Sharma|Verma|Patel|Reddy|Iyer|Nair|Singh|Kumar|Gupta|Das|Chatterjee|Menon|Rao|Khan|D'Souza|"
            "Banerjee"
        ),
        cities=_rows(
            "Mumbai/Bombay/MH/400|Delhi/New Delhi/DL/110|Bengaluru/Bangalore/KA/560|"
            "Hyderabad/Hyderabad/TG/500|Chennai/Madras/TN/600|Kolkata/Calcutta/WB/700|Pune/Poona/MH/411|"
            "Ahmedabad/Amdavad/GJ/380|Jaipur/Jaipur/RJ/302"
        ),
        states=_states(
            "MH/Maharashtra/Maharastra|DL/Delhi/NCT of Delhi|KA/Karnataka/KAR|TG/Telangana/TS|"
            "TN/Tamil Nadu/Tamilnadu|WB/West Bengal/W. Bengal|GJ/Gujarat/Gujrat|RJ/Rajasthan/Rajasthan"
        ),
        state_mix=(0.55, 0.08, 0.02, 0.02, 0.13),
        address_formats=_weighted(
            "{num}, {name} {type}=40|Flat {n}{L}, {bldg} Apartments, {name} {type}=20|"
            "{num}/{n}, {name} {type}=15|H.No. {n}-{n}-{num}, {name} {type}=10|"
            "{num} {name} {type}, Near {landmark}=15"
        ),
        address_vocab={
            "name": _v("MG|Nehru|Gandhi|Linking|Station|Park|Temple|Brigade|Residency|Lake"),
            "type": _v("Road|Rd|Marg|Street|Nagar|Main Road|Cross Road|Layout"),
            "bldg": _v("Green Park|Sai Krupa|Shanti Niketan|Lakeview|Sunrise"),
            "landmark": _v("City Mall|Railway Station|Bus Stand|Post Office|Hanuman Temple"),
        },
        zip_formats=_weighted("{p}{d3}=85|{p} {d3}=15"),
        calling_code="91",
        phones=(
            _Phone(85, _v("6|7|8|9|9|9"), 9, _weighted(
                "0##### #####=15|##### #####=25|##########=25|0##########=5|+91 ##### #####=15|"
                "+91-##########=8|+91##########=5|0091 ##########=2"
            )),
            _Phone(15, _v("11"), 8, _weighted("0## #### ####=60|0##-########=20|+91 ## #### ####=20")),
        ),
        domains=_DOMAINS + _v("example.in|example.co.in"),
    ),
)  # fmt: skip
_EU_GB = ["GB", "DE", "FR", "IT", "ES"]


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
        chosen = rng.choice(n, [weight for _, weight in phone.formats]) + len(layouts)
        layout = pl.select(pl.when(kind == i).then(chosen).otherwise(layout)).to_series()
        numbers.append(pl.col(f"nsn{i}"))
        layouts += [_pattern(pl.col(f"nsn{i}"), fmt) for fmt, _ in phone.formats]
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
        tag=rng.pick(n, _v("news|shop|promo|amazon|2024|spam|x")),
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
            junk=rng.pick(n, _v("Unknown|N/A|XX|--|Other|0")),
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
        junk=rng.pick(n, _v("00000|N/A|12|ABCDE|-|none|?")),
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
    in_eu = country.is_in(_EU_GB)
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


_CATEGORIES = {  # category -> (SKU prefix, typical unit price in US dollars)
    "electronics": ("ELEC", 120.0), "books": ("BOOK", 15.0), "home_kitchen": ("HOME", 35.0),
    "beauty": ("BEAU", 20.0), "toys": ("TOYS", 25.0), "grocery": ("GROC", 8.0), "apparel": ("APRL", 30.0),
    "sports_outdoors": ("SPRT", 45.0), "pet_supplies": ("PETS", 22.0), "garden": ("GRDN", 30.0),
    "automotive": ("AUTO", 40.0), "health": ("HLTH", 18.0),
}  # fmt: skip
_EVENT_TYPES = {
    "page_view": 45, "product_view": 25, "add_to_cart": 10, "purchase": 4, "app_open": 14,
    "newsletter_signup": 2,
}  # fmt: skip


def _per_user(rng: _Rng, people: pl.DataFrame, mean: float) -> pl.DataFrame:
    """`user_id` and `_country` repeated a skewed number of times per user: many zeros, a long tail."""
    shape = (1 - rng.u(people.height)).log() * (1 - rng.u(people.height)).log()
    counts = (shape * mean).floor().clip(0, 400).cast(pl.Int64)
    return people.select(pl.col("user_id", "_country").repeat_by(counts)).explode("user_id", "_country")


def _price(rng: _Rng, category: pl.Series) -> pl.Series:
    base = category.replace_strict(
        {k: price for k, (_, price) in _CATEGORIES.items()}, return_dtype=pl.Float64
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
        {k: prefix for k, (prefix, _) in _CATEGORIES.items()}, return_dtype=pl.String
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
