import pyarrow as pa

from audience_pipeline.batches import frames


def _reader(sizes: list[int]) -> pa.RecordBatchReader:
    schema = pa.schema([("n", pa.int64())])
    start = 0
    batches = []
    for size in sizes:
        batches.append(pa.record_batch([pa.array(range(start, start + size))], schema=schema))
        start += size
    return pa.RecordBatchReader.from_batches(schema, batches)


def test_batches_are_gathered_to_the_target_size_in_order():
    got = list(frames(_reader([3, 3, 3, 3, 1]), rows=5))
    assert [f.height for f in got] == [6, 6, 1]
    assert [v for f in got for v in f["n"].to_list()] == list(range(13))


def test_empty_stream_gives_no_frames():
    assert list(frames(_reader([]), rows=5)) == []
