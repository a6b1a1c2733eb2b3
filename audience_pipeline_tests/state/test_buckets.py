"""Data split by a hash prefix of its key: the same rows at every level, spills that leave nothing
readable behind, bucketed files that read a bucket at a time."""

import tempfile

import polars as pl
import pytest

from audience_pipeline.state import ParquetStore, buckets
from audience_pipeline.state.buckets import (
    BucketedFile,
    BucketedWriter,
    Spill,
    bits_for,
    bucket_of,
    grown_bits,
    split,
)

ROWS = pl.DataFrame(
    {"user_id": [f"user-{i}" for i in range(200)], "email": [f"e{i}@x.com" for i in range(200)]}
)


def every_bucket(data, level: int) -> list[pl.DataFrame]:
    return [data.read(bucket, level) for bucket in range(1 << level)]


def test_a_bucket_holds_exactly_the_two_buckets_below_it():
    for bits in range(4):
        parts = split(ROWS, "user_id", bits + 1)
        for bucket, rows in split(ROWS, "user_id", bits).items():
            below = [parts.get(2 * bucket, ROWS.clear()), parts.get(2 * bucket + 1, ROWS.clear())]
            assert sorted(rows["user_id"]) == sorted(pl.concat(below)["user_id"])


def test_levels_follow_the_size_and_grow_only_past_twice_it(monkeypatch):
    monkeypatch.setattr(buckets, "BUCKET_ROWS", 10)
    assert [bits_for(n) for n in (0, 10, 11, 40, 41)] == [0, 0, 1, 2, 3]
    assert (grown_bits(2, 80), grown_bits(2, 81), grown_bits(3, 5)) == (2, 4, 3)


@pytest.mark.parametrize("memory_bytes", [buckets.SPILL_MEMORY_BYTES, 0])
def test_a_spill_gives_back_its_rows_by_bucket_at_any_level(monkeypatch, tmp_path, memory_bytes):
    monkeypatch.setattr(buckets, "SPILL_MEMORY_BYTES", memory_bytes)
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    with Spill(ROWS.schema, 3) as spill:
        for batch in ROWS.iter_slices(30):
            spill.add(batch)
        assert spill.rows == 200 and sum(spill.rows_at(1)) == 200
        for level in range(6):
            found = every_bucket(spill, level)
            assert pl.concat(found).sort("user_id").equals(ROWS.sort("user_id"))
            for bucket, rows in enumerate(found):
                assert rows.select(bucket_of("user_id", level).alias("b"))["b"].unique().to_list() in (
                    [],
                    [bucket],
                )
        if memory_bytes == 0:
            # On disk, nothing of the rows can be read without the key held in memory.
            disk = b"".join(path.read_bytes() for path in tmp_path.rglob("*.chunks"))
            assert disk and b"user-1" not in disk and b"@x.com" not in disk
    assert list(tmp_path.iterdir()) == []


def test_rows_come_back_in_the_order_they_were_set_aside(monkeypatch):
    monkeypatch.setattr(buckets, "SPILL_MEMORY_BYTES", 0)
    repeated = pl.DataFrame({"user_id": ["a"] * 5, "n": list(range(5))})
    with Spill(repeated.schema, 2) as spill:
        for row in repeated.iter_slices(1):
            spill.add(row)
        assert pl.concat(every_bucket(spill, 2))["n"].to_list() == [0, 1, 2, 3, 4]


def test_a_bucketed_file_reads_a_bucket_at_a_time_at_any_level(tmp_path):
    store = ParquetStore(str(tmp_path))
    with store.replacing("data.parquet") as staged:
        writer = BucketedWriter(staged.path, ROWS.schema)
        for bucket, rows in sorted(split(ROWS, "user_id", 2).items()):
            writer.write(bucket, rows)
        writer.close(2, {"note": "kept"})

    with store.open("data.parquet") as stored:
        data = BucketedFile(stored)
        assert (data.bits, stored.metadata["note"]) == (2, "kept")
        for level in (0, 2, 4):
            assert pl.concat(every_bucket(data, level)).sort("user_id").equals(ROWS.sort("user_id"))
        assert BucketedFile(stored, columns=["user_id"]).read(1, 2).columns == ["user_id"]


def test_any_other_parquet_file_is_one_bucket(tmp_path):
    store = ParquetStore(str(tmp_path))
    store.write("plain.parquet", ROWS)
    with store.open("plain.parquet") as stored:
        data = BucketedFile(stored)
        assert data.bits == 0 and data.read(0, 0).equals(ROWS)
        assert sum(part.height for part in every_bucket(data, 3)) == 200


def test_buckets_must_come_in_order(tmp_path):
    writer = BucketedWriter(str(tmp_path / "x.parquet"), ROWS.schema)
    writer.write(2, ROWS.head(1))
    with pytest.raises(ValueError, match="bucket 1 written after bucket 2"):
        writer.write(1, ROWS.head(1))
