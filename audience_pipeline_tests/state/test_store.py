"""The Parquet state store: atomic replacement, revisions and safe keys, locally and on S3."""

import os

import boto3
import polars as pl
import pytest

from audience_pipeline.sandbox.server import DUMMY_AWS_KEYS
from audience_pipeline.state import ParquetStore, RevisionConflict, StoreError

KEY = "ledgers/firehose/my_stream/1001.parquet"
OLD = pl.DataFrame({"user_id": ["u1"], "payload": ["old"]})
NEW = pl.DataFrame({"user_id": ["u1", "u2"], "payload": ["new", "new"]})


@pytest.fixture
def local(tmp_path) -> ParquetStore:
    return ParquetStore(str(tmp_path / "state"))


@pytest.fixture
def s3(sandbox, monkeypatch) -> ParquetStore:
    for name, value in DUMMY_AWS_KEYS.items():
        monkeypatch.setenv(name, value)
    boto3.client("s3", endpoint_url=sandbox.aws_url).create_bucket(Bucket="state")
    return ParquetStore("s3://state/pipeline", endpoint_url=sandbox.aws_url, region="us-east-1")


@pytest.fixture(params=["local", "s3"])
def store(request) -> ParquetStore:
    return request.getfixturevalue(request.param)


def test_frames_round_trip_and_absent_keys_read_as_none(store):
    assert store.read(KEY) is None
    store.write(KEY, OLD)
    store.write(KEY, NEW, metadata={"ledger_version": "7"})

    stored = store.read_stored(KEY)
    assert stored.frame.equals(NEW)
    assert stored.metadata == {"ledger_version": "7"}
    assert store.read(KEY).equals(NEW)

    store.delete(KEY)
    store.delete(KEY)
    assert store.read(KEY) is None


def test_conditional_writes_replace_only_the_revision_read(store):
    with pytest.raises(RevisionConflict):
        store.write_if(KEY, OLD, "some-revision")
    first = store.write_if(KEY, OLD, None)
    with pytest.raises(RevisionConflict):
        store.write_if(KEY, NEW, None)

    assert store.read_stored(KEY).revision == first
    second = store.write_if(KEY, NEW, first)
    with pytest.raises(RevisionConflict, match=KEY):
        store.write_if(KEY, OLD, first)

    assert second != first
    assert store.read_stored(KEY).revision == second
    assert store.read(KEY).equals(NEW)


def test_uris_name_the_root(local, s3, tmp_path):
    assert local.uri(KEY) == str(tmp_path / "state" / KEY)
    assert s3.uri(KEY) == f"s3://state/pipeline/{KEY}"


def test_s3_objects_land_under_the_prefix(s3, sandbox):
    s3.write(KEY, OLD)
    listed = boto3.client("s3", endpoint_url=sandbox.aws_url).list_objects_v2(Bucket="state")
    assert [item["Key"] for item in listed["Contents"]] == [f"pipeline/{KEY}"]


def test_a_failing_write_leaves_the_old_file_intact_and_no_temporary_file(local, monkeypatch):
    local.write(KEY, OLD)

    def crash_halfway(frame, file, **options):
        with open(file, "wb") as partial:
            partial.write(b"PAR1 half a file")
        raise OSError("disk full")

    monkeypatch.setattr(pl.DataFrame, "write_parquet", crash_halfway)
    with pytest.raises(StoreError, match="disk full"):
        local.write(KEY, NEW)
    monkeypatch.undo()

    assert local.read(KEY).equals(OLD)
    assert os.listdir(os.path.dirname(local.uri(KEY))) == ["1001.parquet"]


def test_errors_name_the_root_and_never_the_data(sandbox, monkeypatch):
    for name, value in DUMMY_AWS_KEYS.items():
        monkeypatch.setenv(name, value)
    store = ParquetStore("s3://no-such-bucket/prefix", endpoint_url=sandbox.aws_url)
    secret = pl.DataFrame({"email": ["phileas@travelers.com"]})
    with pytest.raises(StoreError, match="s3://no-such-bucket/prefix") as raised:
        store.write("x.parquet", secret)
    assert "phileas" not in str(raised.value)
    assert raised.value.__cause__ is None


@pytest.mark.parametrize(
    "key",
    ["", "../escape.parquet", "a/../../escape.parquet", "/etc/passwd", "a//b.parquet", "./a", "a\\..\\b"],
)
def test_keys_that_could_escape_the_root_are_refused(local, key):
    with pytest.raises(ValueError, match="relative path"):
        local.write(key, OLD)


def test_a_root_without_a_bucket_is_refused():
    with pytest.raises(ValueError, match="no bucket"):
        ParquetStore("s3:///prefix")
