"""Frames split by a hash prefix of their member key, so that an audience is worked through a bucket at a
time and memory does not grow with its size.

A member's bucket at level `bits` is the top `bits` bits of the xxh3-64 hash of its key (the user id, or
the mobile ad id of a DSP member): 2**bits buckets, a member always in the same one, and bucket j at level
b holding exactly buckets 2j and 2j+1 at level b+1. A dataset's level follows its size (`bits_for`: about
`BUCKET_ROWS` rows a bucket), so two datasets may be stored at different levels; `Bucketed.read` reads
either at any level, which is how a snapshot and a ledger are compared bucket by bucket.

Bucketed data comes as:

- bucketed Parquet files (`BucketedWriter`, `BucketedFile`): each bucket's rows are consecutive row groups,
  in bucket order, and the file's metadata records the level and each bucket's row groups. Any other
  Parquet file reads as one bucket at level 0, so files written before buckets existed still read.
- a `Spill`: rows set aside on local disk while a stage works through a larger whole (an audience
  query's result, a plan's changes, the confirmed changes of a delivery). It may hold raw identities, so
  it is encrypted with a key that exists only in the process's memory: nothing readable is left on disk,
  even by a crash.
"""

import io
import json
import os
import shutil
import struct
import tempfile
from abc import ABC, abstractmethod
from collections import Counter
from collections.abc import Iterator, Mapping
from itertools import accumulate

import polars as pl
import polars_hash  # noqa: F401  (registers the `nchash` namespace)
import pyarrow.parquet as pq
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from audience_pipeline.state.store import COMPRESSION_LEVEL, StoredFile

# About 250k members a bucket: the identity engine needs ~2 KB a row while it works, a ledger row holds
# ~0.5 KB, so a bucket and its work fit in a few hundred MiB whatever the audience's size.
BUCKET_ROWS = 250_000
# A spill keeps up to this much in memory before it moves to disk: small audiences never touch the disk.
SPILL_MEMORY_BYTES = 64 << 20
BITS_KEY, ROW_GROUPS_KEY = "bucket_bits", "bucket_row_groups"
_BUCKET = "__bucket"
_NONCE_BYTES = 12


def bits_for(rows: int) -> int:
    """The level at which `rows` rows make buckets of at most `BUCKET_ROWS` (on average)."""
    bits = 0
    while rows > BUCKET_ROWS << bits:
        bits += 1
    return bits


def grown_bits(bits: int, rows: int) -> int:
    """The level for `rows` rows of data kept at level `bits`: the same until its buckets hold twice
    `BUCKET_ROWS` on average, then `bits_for(rows)`; so data whose size hovers around a boundary is not
    split anew back and forth (data that shrinks keeps its level)."""
    return bits if rows <= (2 * BUCKET_ROWS) << bits else bits_for(rows)


def bucket_of(key: str, bits: int) -> pl.Expr:
    """Each row's bucket at level `bits` by its `key` column (text); a null key counts as bucket 0."""
    if bits == 0:
        return pl.lit(0, pl.UInt64)
    return (pl.col(key).nchash.xxh3_64() // (1 << (64 - bits))).fill_null(0)


def split(frame: pl.DataFrame, key: str, bits: int) -> dict[int, pl.DataFrame]:
    """`frame`'s rows by bucket at level `bits` (buckets without rows left out), in their order."""
    if bits == 0:
        return {0: frame} if frame.height else {}
    parts = frame.with_columns(bucket_of(key, bits).alias(_BUCKET)).partition_by(
        _BUCKET, as_dict=True, include_key=False, maintain_order=True
    )
    return {int(bucket): part for (bucket,), part in parts.items()}


class Bucketed(ABC):
    """Data held in the 2**`bits` buckets of its `key` column, read a bucket at a time at any level.

    The bucket read last is kept, so two readers of the same bucket in turn read it once. Read at a
    finer level than its own, a bucket comes from its coarser bucket, which is split once and kept
    until another coarse bucket is read; read at a coarser level, it is its finer buckets together.
    """

    def __init__(self, bits: int, key: str = "user_id"):
        self.bits, self.key = bits, key
        self._last: tuple[int, pl.DataFrame] | None = None
        self._split: tuple[int, int, dict[int, pl.DataFrame], pl.DataFrame] | None = None

    @abstractmethod
    def bucket(self, bucket: int) -> pl.DataFrame:
        """The rows of `bucket` at the data's own level."""

    def read(self, bucket: int, level: int) -> pl.DataFrame:
        """The rows of `bucket` at level `level`."""
        if level == self.bits:
            if self._last is None or self._last[0] != bucket:
                self._last = None  # the previous bucket goes before the next one is read
                self._last = (bucket, self.bucket(bucket))
            return self._last[1]
        if level < self.bits:
            width = 1 << (self.bits - level)
            return pl.concat([self.bucket(b) for b in range(bucket * width, (bucket + 1) * width)])
        coarse = bucket >> (level - self.bits)
        if self._split is None or self._split[:2] != (coarse, level):
            self._split = None  # the previous coarse bucket goes before the next one is read
            frame = self.bucket(coarse)
            self._split = (coarse, level, split(frame, self.key, level), frame.clear())
        _, _, parts, empty = self._split
        return parts.get(bucket, empty)


class BucketedWriter:
    """A bucketed Parquet file written at `path` a bucket at a time, in bucket order (see the module
    docstring); every frame written must have `schema`."""

    def __init__(self, path: str, schema: pl.Schema):
        self.schema, self.rows = schema, 0
        self._writer = pq.ParquetWriter(
            path, schema.to_frame().to_arrow().schema, compression="zstd", compression_level=COMPRESSION_LEVEL
        )
        self._row_groups: list[int] = []

    def write(self, bucket: int, frame: pl.DataFrame) -> None:
        """Add `frame` as (part of) `bucket`, which must not come before a bucket already written."""
        if bucket < len(self._row_groups) - 1:
            raise ValueError(f"bucket {bucket} written after bucket {len(self._row_groups) - 1}")
        self._row_groups += [0] * (bucket + 1 - len(self._row_groups))
        if frame.height:
            self._writer.write_table(frame.to_arrow(), row_group_size=frame.height)
            self._row_groups[bucket] += 1
            self.rows += frame.height

    def close(self, bits: int, metadata: Mapping[str, str] | None = None) -> None:
        """Finish the file as one of 2**`bits` buckets, with `metadata`."""
        if len(self._row_groups) > 1 << bits:
            raise ValueError(f"buckets up to {len(self._row_groups) - 1} written to a file of level {bits}")
        row_groups = self._row_groups + [0] * ((1 << bits) - len(self._row_groups))
        self._writer.add_key_value_metadata(
            {**(metadata or {}), BITS_KEY: str(bits), ROW_GROUPS_KEY: json.dumps(row_groups)}
        )
        self._writer.close()


class BucketedFile(Bucketed):
    """A stored bucketed Parquet file (`BucketedWriter`) read a bucket at a time, its `columns` (default:
    all; `key` must be among them); any other Parquet file is one bucket at level 0."""

    def __init__(self, stored: StoredFile, key: str = "user_id", columns: list[str] | None = None):
        super().__init__(int(stored.metadata.get(BITS_KEY, 0)), key)
        self.stored, self.columns = stored, columns
        counts = json.loads(stored.metadata.get(ROW_GROUPS_KEY, "null")) or [stored.row_groups]
        self._starts = list(accumulate(counts, initial=0))

    def bucket(self, bucket: int) -> pl.DataFrame:
        """The rows of `bucket` at the file's level."""
        return self.stored.read(range(self._starts[bucket], self._starts[bucket + 1]), self.columns)


class Spill(Bucketed):
    """Rows of `schema` set aside a bucket at a time (level `bits` of `key`) and read back by bucket.

    Each batch is sealed as it comes: Arrow IPC, uncompressed (of the formats polars writes to memory
    the fastest both ways, and several times faster than Parquet for the small, wide chunks a query's
    rows split into; disk is traded for it), encrypted with AES-GCM (see the module docstring). Sealed
    chunks are held in memory up to `SPILL_MEMORY_BYTES`, then in a temporary folder; use it as a
    context manager, so the folder goes when the stage is done. (A frame itself is never held: a few
    rows taken from a large frame share its buffers, and would keep the large frame alive.)
    """

    def __init__(self, schema: pl.Schema, bits: int, key: str = "user_id"):
        super().__init__(bits, key)
        self.schema, self.rows = schema, 0
        self._counts: Counter[int] = Counter()
        self._memory: dict[int, list[bytes]] = {}
        self._memory_bytes = 0
        self._folder: str | None = None
        self._cipher = AESGCM(AESGCM.generate_key(bit_length=256))

    def __enter__(self) -> "Spill":
        return self

    def __exit__(self, *exc: object) -> None:
        self._memory = {}
        if self._folder is not None:
            shutil.rmtree(self._folder, ignore_errors=True)

    def add(self, frame: pl.DataFrame) -> None:
        """Set aside the rows of `frame`, each in its bucket."""
        for bucket, part in split(frame, self.key, self.bits).items():
            self.append(bucket, part)

    def append(self, bucket: int, frame: pl.DataFrame) -> None:
        """Set aside `frame`, whose rows all belong to `bucket`."""
        if not frame.height:
            return
        self.rows += frame.height
        self._counts[bucket] += frame.height
        chunk = self._seal(frame)
        if self._folder is None:
            self._memory.setdefault(bucket, []).append(chunk)
            self._memory_bytes += len(chunk)
            if self._memory_bytes > SPILL_MEMORY_BYTES:
                self._folder = tempfile.mkdtemp(prefix="audience_pipeline-spill-")
                for held, chunks in self._memory.items():
                    self._write(held, chunks)
                self._memory = {}
        else:
            self._write(bucket, [chunk])

    def rows_at(self, level: int) -> list[int]:
        """How many rows each bucket at `level` (at most the spill's own) holds."""
        counts = [0] * (1 << level)
        for bucket, n in self._counts.items():
            counts[bucket >> (self.bits - level)] += n
        return counts

    def bucket(self, bucket: int) -> pl.DataFrame:
        """The rows set aside in `bucket`, in the order they came."""
        chunks = self._memory.get(bucket, []) if self._folder is None else self._read(bucket)
        frames = [pl.read_ipc(io.BytesIO(self._open(chunk))) for chunk in chunks]
        return pl.concat(frames) if frames else self.schema.to_frame()

    def _seal(self, frame: pl.DataFrame) -> bytes:
        plain = io.BytesIO()
        frame.write_ipc(plain, compression="uncompressed")
        nonce = os.urandom(_NONCE_BYTES)
        return nonce + self._cipher.encrypt(nonce, plain.getbuffer(), None)

    def _open(self, chunk: bytes) -> bytes:
        return self._cipher.decrypt(chunk[:_NONCE_BYTES], chunk[_NONCE_BYTES:], None)

    def _path(self, bucket: int) -> str:
        return os.path.join(self._folder, f"{bucket}.chunks")

    def _write(self, bucket: int, chunks: list[bytes]) -> None:
        # Each chunk behind its length.
        with open(self._path(bucket), "ab") as file:
            for chunk in chunks:
                file.write(struct.pack("<Q", len(chunk)))
                file.write(chunk)

    def _read(self, bucket: int) -> Iterator[bytes]:
        try:
            file = open(self._path(bucket), "rb")  # noqa: SIM115 (closed below)
        except FileNotFoundError:
            return
        with file:
            while header := file.read(8):
                yield file.read(struct.unpack("<Q", header)[0])
