"""The Amazon Ads Data Manager adapter of the delivery core (`membership.delivery`).

    snapshot (hashed identities + consent) ─► one member object per user (`userIdentity`, `userConsent`)
        ─ core: diff vs ledger, guard ─► removed ─► DELETE;  added / identity changed ─► CREATE
        ─► the dataset found by name or created ─► requests of ≤5,000 members and ≤10 MB
        ─► core: ledger commit of the accepted

- The snapshot's identities are already normalized and hashed by the identity engine.
- The seed's `country` target identity has no key in Amazon's `hashedPiis` (`ad, cty, em, fn, ln,
  ph, st, zip`): the member's country travels as `userConsent.geo.countryCode` (every member,
  whatever identities are chosen), and the dataset's `countryCode` is the component's country.
- A member's payload is the JSON object sent for it, minus `externalUserId` and `action`: hashes,
  partner IDs and consent signals only, so the ledger keeps it in plain text. A removal sends the
  payload the dataset was given, with `DELETE`. The fingerprint covers the whole payload, so a
  consent change is re-sent as a CREATE (an upsert by `externalUserId`) like an identity change.
- Consent: the component's `consent` stands for both Amazon signals; a row's `amzn_ad_storage` /
  `amzn_user_data` override them where present (a value Amazon does not know becomes `UNKNOWN`,
  never the default), and `tcf_string` / `gpp_string` travel as `tcf` / `gpp`.
- Amazon ignores a DELETE unless the member carries a GRANTED `amznUserData` signal. Such a DELETE is
  still sent (it is the truthful request; nothing else could remove the member) and its removal
  committed, since Amazon accepted the request and re-sending could never change the outcome.
- A member Amazon refuses is a reject with Amazon's reason; its change stays out of the ledger, so
  it is sent again on the next run. The accepted ones are committed.
- A member with no identity to send is not a member for this dataset: it is counted as skipped, and
  one the dataset already holds is deleted.
- An audience's dataset is found by its name (`dataset_name`), so a renamed audience gets a new
  dataset, and a ledger of its own that sends it every member.

No Dagster here, and nothing returned holds identity values: only counts and Amazon's reasons.
"""

import re
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Protocol

import numba
import numpy as np
import polars as pl
import pyarrow as pa
import requests
from numba import types
from numba.extending import intrinsic

from audience_pipeline.clients.adm import (
    MAX_REQUEST_BYTES,
    RECOMMENDED_MEMBERS_PER_REQUEST,
    AdmAudience,
    AdmClient,
    members_body,
)
from audience_pipeline.clients.ads_api import AmazonAdsApiError
from audience_pipeline.clients.concurrency import RequestPace
from audience_pipeline.identity.countries import alpha2
from audience_pipeline.membership.delivery import (
    ADDED,
    CHANGED,
    ITEM,
    KIND,
    REMOVED,
    USER_ID,
    Answer,
    Members,
)
from audience_pipeline.membership.diff import MembershipDiff
from audience_pipeline.membership.fingerprints import fingerprint
from audience_pipeline.membership.ledger import LedgerState

# The seed's target identities: each maps to (ADM key, snapshot columns, first non-null).
HASHED_PII: dict[str, tuple[str, tuple[str, ...]]] = {
    "phone_sha256": ("ph", ("phone",)),
    "email_lc_sha256": ("em", ("email",)),
    "firstName": ("fn", ("first_name",)),
    "lastName": ("ln", ("last_name",)),
    "street": ("ad", ("address",)),
    "city": ("cty", ("city",)),
    "state": ("st", ("state",)),
    "zip": ("zip", ("zip",)),
}
# A target identity of the seed that Amazon's member schema has no key for (see the module docstring).
COUNTRY = "country"
EXTERNAL_IDENTITIES: dict[str, tuple[str, tuple[str, ...]]] = {
    "experianId": ("experianId", ("experian_id",)),
    "kantarId": ("kantarId", ("kantar_id",)),
    "liveRampId": ("liveRampId", ("live_ramp_id",)),
    "maId": ("maId", ("idfa", "gaid")),
    "merkleId": ("merkleId", ("merkle_id",)),
    "neustarId": ("neustarId", ("neustar_id",)),
    "realId": ("realId", ("real_id",)),
    "sambaTvId": ("sambaTvId", ("samba_tv_id",)),
}
TARGET_IDENTITIES: tuple[str, ...] = (*HASHED_PII, COUNTRY, *EXTERNAL_IDENTITIES)
# The target identities that put something in `userIdentity`.
SENT_IDENTITIES: tuple[str, ...] = (*HASHED_PII, *EXTERNAL_IDENTITIES)
_SLICE_ROWS = 50_000
# Consent strings that travel with a member, by their key in `consent`.
_SIGNALS = {"tcf": "tcf_string", "gpp": "gpp_string"}
CONSENT_VALUES = ("GRANTED", "DENIED", "NOT_APPLICABLE", "UNKNOWN")
CREATE, DELETE = "CREATE", "DELETE"
_ENVELOPE_BYTES = len(members_body([]))
# Amazon's dataset name pattern with its minLength 5 folded in.
_DATASET_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_-]{4,99}")


class Named(Protocol):
    """An audience as far as a dataset name goes."""

    @property
    def destination_name(self) -> str: ...


def dataset_name(audience: Named) -> str:
    """The ADM audience dataset name of an audience: its destination name made valid for Amazon's
    `^[A-Za-z][A-Za-z0-9_-]{0,99}$` of 5 to 100 characters (other characters become `_`; too short or
    not starting with a letter gets an `audience_` prefix)."""
    name = re.sub(r"[^A-Za-z0-9_-]+", "_", audience.destination_name).strip("_")
    if not _DATASET_NAME.fullmatch(name[:100]):
        name = f"audience_{name}"
    return name[:100]


@dataclass(frozen=True)
class MemberRules:
    """What goes into each member: the chosen target identities, the consent the component asserts
    for every member, and the country of members whose own country is unknown (for `geo`)."""

    identities: tuple[str, ...]
    consent: str
    country_code: str


def _text(*parts: str | pl.Expr) -> pl.Expr:
    """Literal text and string expressions concatenated (null if any expression is null)."""
    return pl.concat_str([pl.lit(part) if isinstance(part, str) else part for part in parts])


def _value(snapshot: pl.DataFrame, names: tuple[str, ...]) -> pl.Series:
    """The first non-null of the columns, as text."""
    present = [snapshot.get_column(name).cast(pl.String) for name in names if name in snapshot.columns]
    if not present:
        return pl.repeat(None, snapshot.height, dtype=pl.String, eager=True)
    return pl.select(pl.coalesce(present)).to_series()


def _each_distinct(values: pl.Series, expr: pl.Expr, default: str) -> tuple[np.ndarray, list[str]]:
    """`expr` of each of `values` (`pl.col` of its name), computed once per distinct value: the texts,
    and the index of each value's text; `default` where the value or its `expr` is null."""
    distinct = values.unique().drop_nulls()
    texts = distinct.to_frame().select(expr.fill_null(default)).to_series().to_list()
    codes = values.cast(pl.Enum(distinct)).to_physical().fill_null(len(texts))
    return codes.to_numpy(), [*texts, default]


def _consent(snapshot: pl.DataFrame, column: str, default: str) -> tuple[np.ndarray, list[str]]:
    """Each member's signal in `column` (`_each_distinct`): a known value as given, another one
    `UNKNOWN`, none `default`."""
    if column not in snapshot.columns:
        return np.zeros(snapshot.height, np.uint8), [default]
    given = pl.col(column).str.strip_chars().str.to_uppercase()
    known = pl.when(given.is_in(CONSENT_VALUES)).then(given).otherwise(pl.lit("UNKNOWN"))
    signal = pl.when(given.is_null() | (given == "")).then(pl.lit(default)).otherwise(known)
    return _each_distinct(snapshot.get_column(column).cast(pl.String), signal, default)


def _country(snapshot: pl.DataFrame, default: str) -> tuple[np.ndarray, list[str]]:
    """Each member's alpha-2 country (`_each_distinct`), `default` where unknown."""
    if "country_code" not in snapshot.columns:
        return np.zeros(snapshot.height, np.uint8), [default]
    values = snapshot.get_column("country_code").cast(pl.String)
    return _each_distinct(values, alpha2(pl.col("country_code")), default)


def member_payloads(snapshot: pl.DataFrame, rules: MemberRules) -> pl.DataFrame:
    """`user_id` and `payload` of each snapshot member: the JSON text of the ADM member object it is
    sent as, without `externalUserId` and `action`; null for a member with no identity to send.

    Polars chooses the values (first non-null of a target identity's columns) and the consent and
    country texts (once per distinct value); a compiled routine (`_write`) then writes each payload
    in one pass, reading the values where polars holds them (Arrow string views) and JSON-escaping
    those that need it, as `json.dumps` does."""
    texts, columns = list(_LITERALS), []
    for name, mapping in (("hashedPiis", HASHED_PII), ("externalIdentities", EXTERNAL_IDENTITIES)):
        for identity, (key, names) in mapping.items():
            if identity in rules.identities:
                columns.append(_value(snapshot, names))
                texts += [f'"{name}":[{{"{key}":"', f'","{key}":"']  # a list's first value, the others
    groups = [0, sum(name in rules.identities for name in HASHED_PII), len(columns)]
    for key, column in _SIGNALS.items():
        columns.append(_value(snapshot, (column,)))
        texts += [f',"{key}":"'] * 2
    groups.append(len(columns))
    codes = []
    for field_codes, field_texts in (
        _country(snapshot, rules.country_code),
        _consent(snapshot, "amzn_ad_storage", rules.consent),
        _consent(snapshot, "amzn_user_data", rules.consent),
    ):
        codes.append(field_codes.astype(np.int64) + len(texts))
        texts += field_texts
    table = [text.encode() for text in texts]
    edges = np.cumsum([0, *map(len, table)], dtype=np.int64)
    # Padded: `_put` reads up to 7 bytes past a text.
    table = np.frombuffer(b"".join(table) + bytes(8), np.uint8)
    views = _StringViews([column.rename(str(index)) for index, column in enumerate(columns)])
    inputs = (
        views.chunks,
        views.buffers,
        views.first_chunks,
        np.stack(codes),
        np.array(groups),
        table,
        edges,
    )
    # The routine releases the GIL: each core writes the payloads of a share of the members (no
    # fewer than `_SLICE_ROWS`, below which a thread of its own does not pay).
    rows = max(-(-snapshot.height // pl.thread_pool_size()), _SLICE_ROWS)
    shares = [(start, min(start + rows, snapshot.height)) for start in range(0, snapshot.height, rows)]
    bytes_per_row = views.value_bytes / max(snapshot.height, 1) + len(table)
    with ThreadPoolExecutor(max_workers=pl.thread_pool_size()) as pool:
        arrays = pool.map(lambda share: _payload_views(*share, inputs, bytes_per_row), shares)
        payloads = pa.chunked_array([array for share in arrays for array in share], pa.string_view())
    return pl.DataFrame([snapshot.get_column(USER_ID).cast(pl.String), pl.Series("payload", payloads)])


class _StringViews:
    """Where string columns' values are, as the compiled routine reads them: each column's Arrow
    string-view chunks (no copy) in a table (`_START`, ...), their data buffers' addresses, and the
    first chunk of each column. Holds the arrays, so the memory stays while this lives."""

    def __init__(self, columns: list[pl.Series]):
        chunks, buffers, first_chunks, self.arrays = [], [], [], []
        for column in columns:
            first_chunks.append(len(chunks))
            # A frame of one column keeps its chunks (a frame of several would align them, copying).
            exported = pl.DataFrame([column]).to_arrow(compat_level=pl.CompatLevel.newest()).column(0)
            start = 0
            for array in exported.chunks:
                validity, views, *data = array.buffers()
                address = validity.address if validity is not None else 0
                chunks.append((start, start + len(array), views.address, address, array.offset, len(buffers)))
                buffers += [buffer.address for buffer in data]
                start += len(array)
                self.arrays.append(array)
        self.chunks = np.array(chunks, np.int64).reshape(-1, 6)
        self.buffers = np.array(buffers or [0], np.int64)
        self.first_chunks = np.array(first_chunks, np.int64)
        # At least the bytes of the values held outside the views (shared ones counted once per chunk).
        self.value_bytes = sum(buffer.size for array in self.arrays for buffer in array.buffers()[2:])


def _payload_views(start: int, end: int, inputs: tuple, bytes_per_row: float) -> list[pa.Array]:
    """The payloads of rows start..end (`_write`) as string views: one array, or more where the
    room guessed from `bytes_per_row` runs out (each next one gets at least twice the room)."""
    arrays, size = [], 0
    while start < end:
        size = min(max(int(bytes_per_row * (end - start)) + 64 * _ROOM, 2 * size), 2**31 - 1)
        data, views = np.empty(size, np.uint8), np.zeros((end - start, 4), np.int32)
        valid = np.zeros(end - start, np.bool_)
        stop = _write(start, end, *inputs, data, views, valid)
        if stop > start:
            rows, valid = stop - start, valid[: stop - start]
            validity = pa.py_buffer(np.packbits(valid, bitorder="little"))
            buffers = [validity, pa.py_buffer(views[:rows]), pa.py_buffer(data)]
            arrays.append(pa.Array.from_buffers(pa.string_view(), rows, buffers, int(rows - valid.sum())))
        start = stop
    return arrays


# ─── The compiled payload writer ───────────────────────────────────────────────────────────────────
# It reads Arrow string views by address, so it has two primitives of its own: a load and a store of
# a number at an address (unaligned).


@intrinsic
def _load(typingctx, address, kind):
    """The number of type `kind` (a numpy type) at `address`."""
    number = kind.dtype

    def codegen(context, builder, signature, args):
        pointer = builder.inttoptr(args[0], context.get_value_type(number).as_pointer())
        return builder.load(pointer, align=1)

    return number(address, kind), codegen


@intrinsic
def _store(typingctx, address, value):
    """`value` written at `address`."""

    def codegen(context, builder, signature, args):
        builder.store(args[1], builder.inttoptr(args[0], args[1].type.as_pointer()), align=1)
        return context.get_dummy_value()

    return types.void(address, value), codegen


_U64 = np.uint64
_ONES, _HIGHS = _U64(0x0101010101010101), _U64(0x8080808080808080)
# The short escapes of control characters; the others are \u00XX.
_SHORT = np.zeros(0x20, np.uint8)
_SHORT[[0x08, 0x09, 0x0A, 0x0C, 0x0D]] = np.frombuffer(b"btnfr", np.uint8)
_HEX = np.frombuffer(b"0123456789abcdef", np.uint8)
# Unicode White_Space beyond ASCII: what `str.strip_chars` strips, so a value of only these is blank.
_SPACES = np.array([0x85, 0xA0, 0x1680, *range(0x2000, 0x200B), 0x2028, 0x2029, 0x202F, 0x205F, 0x3000])
# The chunk table's columns (`_StringViews`).
_START, _END, _VIEWS, _VALIDITY, _OFFSET, _FIRST_BUFFER = range(6)
# The texts table: these literals, then two texts per value column (`member_payloads`), then the
# country and consent texts.
_LITERALS = (
    '{"userIdentity":{',
    ",",
    '"}]',
    '},"userConsent":{"geo":{"countryCode":"',
    '"},"consent":{"amzn":{"amznAdStorage":"',
    '","amznUserData":"',
    '"}',
    '"',
    "}}}",
)
_OPEN, _COMMA, _LIST_END, _GEO, _AD_STORAGE, _USER_DATA, _AMZN_END, _QUOTE, _CLOSE = range(len(_LITERALS))
_KEYS = len(_LITERALS)
# Room a payload may need past where its next value check looks (literals, keys, consent texts).
_ROOM = 1024
# Rows whose values are looked up column by column before their payloads are written.
_BLOCK = 256


@numba.njit
def _special(word):
    """Whether any byte of `word` is one JSON escapes: below 0x20, `"` or `\\`."""
    quote, backslash = word ^ _U64(0x2222222222222222), word ^ _U64(0x5C5C5C5C5C5C5C5C)
    control = (word - _U64(0x2020202020202020)) & ~word
    return ((control | ((quote - _ONES) & ~quote) | ((backslash - _ONES) & ~backslash)) & _HIGHS) != 0


@numba.njit
def _copy(destination, source, length):
    """`length` (at least 8) bytes copied, 8 at a time; whether any is one JSON escapes."""
    special = False
    for i in range(0, length - 8, 8):
        word = _load(source + i, _U64)
        special |= _special(word)
        _store(destination + i, word)
    word = _load(source + length - 8, _U64)  # the last 8, overlapping what came before
    _store(destination + length - 8, word)
    return special | _special(word)


@numba.njit
def _put(destination, source, length):
    """`length` bytes copied 8 at a time, reading and writing up to 7 more (the payload goes on
    over them); the address after them."""
    for i in range(0, length, 8):
        _store(destination + i, _load(source + i, _U64))
    return destination + length


@numba.njit
def _put_text(destination, texts, edges, k):
    """Text `k` of the table at `destination`; the address after it."""
    return _put(destination, texts + edges[k], edges[k + 1] - edges[k])


@numba.njit
def _escaped(destination, source, length):
    """The text JSON-escaped as `json.dumps` escapes it; the address after it."""
    for i in range(length):
        byte = _load(source + i, np.uint8)
        if byte >= 0x20 and byte != 0x22 and byte != 0x5C:
            _store(destination, byte)
            destination += 1
            continue
        _store(destination, np.uint8(0x5C))
        short = _SHORT[byte] if byte < 0x20 else byte
        if short:
            _store(destination + 1, np.uint8(short))
            destination += 2
        else:
            _store(destination + 1, np.uint32(0x30303075))  # u000
            _store(destination + 4, _HEX[byte >> 4])
            _store(destination + 5, _HEX[byte & 15])
            destination += 6
    return destination


@numba.njit
def _present(source, length):
    """Whether a text is not blank (all white space, as `str.strip_chars` strips it)."""
    i = 0
    while i < length:
        byte = _load(source + i, np.uint8)
        if byte < 0x80:
            if byte != 0x20 and not 0x09 <= byte <= 0x0D:
                return True
            i += 1
            continue
        if byte >= 0xF0:  # no white space beyond U+FFFF
            return True
        if byte < 0xE0:
            code, i = ((byte & 0x1F) << 6) | (_load(source + i + 1, np.uint8) & 0x3F), i + 2
        else:
            code = ((byte & 0x0F) << 12) | ((_load(source + i + 1, np.uint8) & 0x3F) << 6)
            code, i = code | (_load(source + i + 2, np.uint8) & 0x3F), i + 3
        if code not in _SPACES:
            return True
    return False


@numba.njit
def _gather(chunks, buffers, k, first, rows, values, lengths):
    """Address and length in bytes of a column's values in rows first..first+rows, looked up from its
    chunk `k` on (a length of -1: null); the chunk of the last row."""
    done = 0
    while done < rows:
        while first + done >= chunks[k, _END]:
            k += 1
        stop = min(rows, chunks[k, _END] - first)
        at = chunks[k, _OFFSET] + first - chunks[k, _START]  # row `first` in the chunk's buffers
        views, validity, buffer = chunks[k, _VIEWS], chunks[k, _VALIDITY], chunks[k, _FIRST_BUFFER]
        for i in range(done, stop):
            j = at + i
            lengths[i] = -1
            if validity != 0 and not (_load(validity + (j >> 3), np.uint8) >> (j & 7)) & 1:
                continue
            # A view: length, then the value itself up to 12 bytes, else its buffer and offset.
            view = views + 16 * j
            lengths[i], values[i] = _load(view, np.int32), view + 4
            if lengths[i] > 12:
                values[i] = buffers[buffer + _load(view + 8, np.int32)] + _load(view + 12, np.uint32)
        done = stop
    return k


@numba.njit
def _field(destination, source, length):
    """A value at `destination`, JSON-escaped where it needs it; the address after it."""
    if length <= 12:  # in its view, which has 12 bytes to read
        special = False
        for i in range(length):
            byte = _load(source + i, np.uint8)
            special |= (byte < 0x20) | (byte == 0x22) | (byte == 0x5C)
        _store(destination, _load(source, _U64))
        _store(destination + 8, _load(source + 8, np.uint32))
    else:
        special = _copy(destination, source, length)
    return _escaped(destination, source, length) if special else destination + length


@numba.njit
def _row(i, row, pos, end, values, lengths, codes, groups, texts, edges):
    """Writes the payload of `row` (`i` of the block) at `pos`: the address after it; `pos` where
    the member has no identity, 0 where it might not fit before `end`."""
    start = pos
    pos = _put_text(pos, texts, edges, _OPEN)
    for group in range(2):
        first = True
        for column in range(groups[group], groups[group + 1]):
            length = lengths[column, i]
            if length <= 0 or not _present(values[column, i], length):
                continue
            if pos + 6 * length + _ROOM > end:
                return 0
            if first and group == 1 and pos != start + edges[_OPEN + 1]:
                pos = _put_text(pos, texts, edges, _COMMA)
            pos = _put_text(pos, texts, edges, _KEYS + 2 * column + (0 if first else 1))
            pos, first = _field(pos, values[column, i], length), False
        if not first:
            pos = _put_text(pos, texts, edges, _LIST_END)
    if pos == start + edges[_OPEN + 1]:
        return start
    for k in range(3):
        code = codes[k, row]
        if pos + edges[code + 1] - edges[code] + _ROOM > end:
            return 0
        pos = _put_text(_put_text(pos, texts, edges, _GEO + k), texts, edges, code)
    pos = _put_text(pos, texts, edges, _AMZN_END)
    for column in range(groups[2], groups[3]):
        length = lengths[column, i]
        if length <= 0 or not _present(values[column, i], length):
            continue
        if pos + 6 * length + _ROOM > end:
            return 0
        pos = _put_text(pos, texts, edges, _KEYS + 2 * column)
        pos = _put_text(_field(pos, values[column, i], length), texts, edges, _QUOTE)
    return _put_text(pos, texts, edges, _CLOSE)


@numba.njit(nogil=True, cache=True)
def _write(start, end, chunks, buffers, first_chunks, codes, groups, texts, edges, data, views, valid):
    """Writes the payloads of rows start..end into `data`, each after the one before, and their string
    views (`views`, `valid`: zeroed, by row from `start`): the identity columns' values (`groups`:
    `hashedPiis` ones, `externalIdentities` ones, `tcf`/`gpp`) where `chunks` has them, with the
    texts of the table (`texts`, `edges`) around them. Returns the row it stopped at for want of room
    (`end` when done)."""
    base, cursor = np.int64(data.ctypes.data), first_chunks.copy()
    pos, limit, texts = base, base + data.size, np.int64(texts.ctypes.data)
    values = np.empty((first_chunks.size, _BLOCK), np.int64)
    lengths = np.empty((first_chunks.size, _BLOCK), np.int64)
    for block in range(start, end, _BLOCK):
        rows = min(_BLOCK, end - block)
        # Column by column first: each column's views are read in order.
        for column in range(first_chunks.size):
            cursor[column] = _gather(
                chunks, buffers, cursor[column], block, rows, values[column], lengths[column]
            )
        for i in range(rows):
            after = _row(i, block + i, pos, limit, values, lengths, codes, groups, texts, edges)
            if after == 0:
                return block + i
            if after != pos:
                # Length, first 4 bytes, buffer 0, offset (longer than the 12 bytes a view holds).
                view = views[block + i - start]
                view[0], view[1], view[3] = after - pos, _load(pos, np.int32), pos - base
                valid[block + i - start] = True
            pos = after
    return end


def adm_members(snapshot: pl.DataFrame, rules: MemberRules) -> Members:
    """Each snapshot member as the ADM member object it is sent as (`member_payloads`), with the
    fingerprint of its payload; members with no identity to send are counted as skipped."""
    built = member_payloads(snapshot, rules)
    sendable = built.filter(pl.col("payload").is_not_null())
    members = sendable.select(USER_ID, fingerprint(sendable, ["payload"]), "payload")
    return Members(members, built.height - sendable.height)


def _outgoing(frame: pl.DataFrame, kind: str, action: str) -> pl.DataFrame:
    head = _text('{"externalUserId":', _json_field_value(USER_ID), f',"action":"{action}",')
    member = pl.concat_str([head, pl.col("payload").str.slice(1)])
    return frame.select(USER_ID, pl.lit(kind).alias(KIND), member.alias("member"))


def _json_field_value(column: str) -> pl.Expr:
    """A string column as a JSON string literal (quoted and escaped)."""
    encoded = pl.struct(pl.col(column).alias("v")).struct.json_encode()
    return encoded.str.slice(5, encoded.str.len_chars() - 6)


def request_slices(members: pl.Series) -> list[tuple[int, int]]:
    """`(offset, length)` of each request over the members' JSON texts, in order: at most the 5,000
    members Amazon recommends and at most its 10 MB per request (a member alone over 10 MB still
    goes alone, for Amazon to refuse).

    The texts go into the body as they are (`members_body`), so a request's size is exact: the
    envelope, and each member's bytes and a comma, less one comma. One cumulative sum, then a search
    per request, not a step per member."""
    if members.is_empty():
        return []
    ends = (members.str.len_bytes().cast(pl.Int64) + 1).cum_sum()  # bytes up to each member's comma
    room = MAX_REQUEST_BYTES - _ENVELOPE_BYTES + 1  # the last member has no comma
    slices, start = [], 0
    while start < members.len():
        before = ends[start - 1] if start else 0
        fits = ends.search_sorted(before + room, side="right") - start
        length = max(1, min(RECOMMENDED_MEMBERS_PER_REQUEST, fits))
        slices.append((start, length))
        start += length
    return slices


class AdmAdapter:
    """Members of one audience to its dataset of one manager account (see the module docstring).

    `adm` is None in a dry run. The dataset is found or created on the first request (`dataset`),
    so a dry run or a stopped delivery creates none. Uploads go at `pace` (default: one at a time,
    unlimited): several at once, each attempt taking its request from the pace's rate limit.
    """

    noun = "members"
    request_errors = (AmazonAdsApiError, requests.RequestException)

    def __init__(
        self,
        name: str,
        country_code: str,
        description: str,
        adm: AdmClient | None = None,
        pace: RequestPace | None = None,
    ):
        self.name, self.country_code, self.description, self.adm = name, country_code, description, adm
        self.pace = pace or RequestPace()
        self._dataset: AdmAudience | None = None

    def dataset(self) -> AdmAudience:
        """The audience's dataset, found by name or created."""
        if self._dataset is None:
            self._dataset = self.adm.ensure_audience(
                self.name, self.country_code, description=self.description
            )
        return self._dataset

    def items(self, changes: MembershipDiff, state: LedgerState) -> pl.DataFrame:
        """Removals first (DELETE with the payload the dataset was given), then additions and identity
        changes (CREATE with the new payload)."""
        return pl.concat(
            [
                _outgoing(changes.removed, REMOVED, DELETE),
                _outgoing(changes.added, ADDED, CREATE),
                _outgoing(changes.changed, CHANGED, CREATE),
            ]
        )

    def requests(self, items: pl.DataFrame) -> int:
        """See `request_slices`."""
        return len(request_slices(items.get_column("member")))

    def send(self, items: pl.DataFrame) -> Iterator[Answer]:
        """One upload per request slice, as they complete; members Amazon refuses are rejects with its
        reason. The dataset is found first, once, before any upload starts."""
        data_set_id = self.dataset().data_set_id
        members = items.get_column("member")
        chunks = (items.slice(offset, length) for offset, length in request_slices(members))
        yield from self.pace.results(chunks, lambda chunk: self._upload(data_set_id, chunk))

    def _upload(self, data_set_id: str, chunk: pl.DataFrame) -> Answer:
        """One upload of `chunk`'s members, their JSON texts sent as they are."""
        retries = self.adm.api.thread_retries
        result = self.adm.upload_members(
            data_set_id, chunk.get_column("member").to_list(), rate_limit=self.pace.rate_limit
        )
        numbers = chunk.get_column(ITEM).to_list()
        refused = {error.index: error.reason for error in result.errors}
        return Answer(
            confirmed=[number for index, number in enumerate(numbers) if index not in refused],
            rejected={numbers[index]: reason for index, reason in refused.items()},
            retries=self.adm.api.thread_retries - retries,
        )

    def stored(self, confirmed: pl.DataFrame) -> pl.DataFrame:
        """As sent: hashes, partner IDs and consent are no raw PII."""
        return confirmed
