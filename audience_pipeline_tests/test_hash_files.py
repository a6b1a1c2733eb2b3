"""`hash_file`: every row and column kept in order, identities hashed, rejects reported without values."""

import hashlib
import json

import polars as pl
import pytest

from audience_pipeline.cli.hash_files import HashFileError, hash_file


def sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


CSV = (
    "id,email,phone,zip,country_code,note\n"
    "1, John.Doe@Example.COM ,(206) 555-0100,02134,usa,first\n"
    "2,not-an-email,020 7946 0958,SW1A 1AA,UK,second\n"
    "3,,12,,,third\n"
)


def test_csv_to_csv_keeps_rows_columns_and_leading_zeros(tmp_path):
    source = tmp_path / "in.csv"
    source.write_text(CSV)
    target, rejects = tmp_path / "out.csv", tmp_path / "rejects.csv"
    summary = hash_file(source, target, country="US", rejects_path=rejects)

    out = pl.read_csv(target, infer_schema=False)
    assert out.columns == ["id", "email", "phone", "zip", "country_code", "note"]
    assert out["id"].to_list() == ["1", "2", "3"]
    assert out["note"].to_list() == ["first", "second", "third"]
    assert out["email"].to_list() == [sha("john.doe@example.com"), None, None]
    assert out["phone"].to_list() == [sha("12065550100"), sha("442079460958"), None]
    assert out["zip"].to_list() == [sha("02134"), sha("SW1A1AA"), None]
    assert out["country_code"].to_list() == ["US", "GB", None]

    assert pl.read_csv(rejects).rows() == [(2, "email", "invalid_email"), (3, "phone", "invalid_phone")]
    assert summary.rows == 3
    assert summary.fields == ("email", "phone", "zip")
    assert summary.rejects == {("email", "invalid_email"): 1, ("phone", "invalid_phone"): 1}
    for path in (target, rejects):
        text = path.read_text()
        assert "Example.COM" not in text and "555-0100" not in text and "not-an-email" not in text


def test_parquet_and_jsonl_inputs_keep_their_types(tmp_path):
    frame = pl.DataFrame({"user": [1, 2], "email": ["a@b.co", "C@D.co"], "zip": [2134, 75236]})
    frame.write_parquet(tmp_path / "in.parquet")
    (tmp_path / "in.jsonl").write_text("\n".join(json.dumps(r) for r in frame.to_dicts()) + "\n")
    for name in ("in.parquet", "in.jsonl"):
        target = tmp_path / f"{name}.out.parquet"
        hash_file(tmp_path / name, target, country="US")
        out = pl.read_parquet(target)
        assert out["user"].to_list() == [1, 2]
        assert out["email"].to_list() == [sha("a@b.co"), sha("c@d.co")]
        assert out["zip"].to_list() == [sha("02134"), sha("75236")]


def test_country_code_is_hashed_when_asked_for(tmp_path):
    source = tmp_path / "in.csv"
    source.write_text("email,country_code\na@b.co,Germany\n")
    hash_file(source, tmp_path / "out.csv", fields=["email", "country_code"])
    assert pl.read_csv(tmp_path / "out.csv").row(0) == (sha("a@b.co"), sha("de"))


def test_header_only_input_gives_header_only_output(tmp_path):
    source = tmp_path / "in.csv"
    source.write_text("email,phone\n")
    summary = hash_file(source, tmp_path / "out.csv", country="US", rejects_path=tmp_path / "r.csv")
    assert summary.rows == 0
    assert (tmp_path / "out.csv").read_text().splitlines() == ["email,phone"]
    assert (tmp_path / "r.csv").read_text().splitlines() == ["row,field,reason"]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"fields": ["email", "shoe_size"]}, "--fields: shoe_size"),
        ({"fields": ["first_name"]}, "--fields: first_name not among the input columns"),
        ({"country": "Atlantis"}, "--country: unknown country 'Atlantis'"),
    ],
)
def test_setting_errors_name_the_setting(tmp_path, kwargs, message):
    source = tmp_path / "in.csv"
    source.write_text(CSV)
    with pytest.raises(HashFileError, match=message):
        hash_file(source, tmp_path / "out.csv", **kwargs)
    assert not (tmp_path / "out.csv").exists()


def test_unreadable_inputs_and_bad_names(tmp_path):
    broken = tmp_path / "in.parquet"
    broken.write_bytes(b"secret@example.com is not parquet")
    with pytest.raises(HashFileError, match="INPUT: cannot read in.parquet") as error:
        hash_file(broken, tmp_path / "out.csv")
    assert "secret@example.com" not in str(error.value)
    with pytest.raises(HashFileError, match="does not exist"):
        hash_file(tmp_path / "missing.csv", tmp_path / "out.csv")
    with pytest.raises(HashFileError, match="INPUT: in.xlsx must end in"):
        (tmp_path / "in.xlsx").write_text("x")
        hash_file(tmp_path / "in.xlsx", tmp_path / "out.csv")
    (tmp_path / "in.csv").write_text(CSV)
    with pytest.raises(HashFileError, match="OUTPUT: out.json must end in .parquet or .csv"):
        hash_file(tmp_path / "in.csv", tmp_path / "out.json")


def test_large_file_streams_in_batches_with_file_wide_row_numbers(tmp_path, monkeypatch):
    monkeypatch.setattr("audience_pipeline.cli.hash_files.BATCH_ROWS", 1000)
    emails = [f"user{i}@example.com" if i % 1000 != 999 else "broken" for i in range(5000)]
    pl.DataFrame({"email": emails}).write_parquet(tmp_path / "in.parquet")
    summary = hash_file(
        tmp_path / "in.parquet", tmp_path / "out.parquet", rejects_path=tmp_path / "r.parquet"
    )
    out = pl.read_parquet(tmp_path / "out.parquet")
    assert out.height == 5000
    assert out["email"][0] == sha("user0@example.com")
    assert out["email"][4998] == sha("user4998@example.com")
    assert pl.read_parquet(tmp_path / "r.parquet")["row"].to_list() == [1000, 2000, 3000, 4000, 5000]
    assert summary.values_out == {"email": 4995}


def test_hash_command_prints_a_reject_summary_and_exits_zero(tmp_path):
    from click.testing import CliRunner

    from audience_pipeline.cli import main

    source = tmp_path / "in.csv"
    source.write_text(CSV)
    result = CliRunner().invoke(
        main,
        [
            "hash",
            str(source),
            str(tmp_path / "out.parquet"),
            "--country",
            "US",
            "--rejects",
            str(tmp_path / "r.csv"),
        ],
    )
    assert result.exit_code == 0, result.output
    assert "3 rows, fields email, phone, zip" in result.stderr
    assert "email          invalid_email" in result.stderr
    assert result.stdout == ""
    assert pl.read_parquet(tmp_path / "out.parquet").height == 3


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--fields", "email,colour"], "--fields: colour"),
        (["--country", "ZZ"], "--country: unknown country 'ZZ'"),
    ],
)
def test_hash_command_fails_clearly(tmp_path, args, message):
    from click.testing import CliRunner

    from audience_pipeline.cli import main

    source = tmp_path / "in.csv"
    source.write_text(CSV)
    result = CliRunner().invoke(main, ["hash", str(source), str(tmp_path / "out.csv"), *args])
    assert result.exit_code != 0
    assert message in result.stderr


@pytest.mark.parametrize(
    ("rows_before", "bad_line", "reason"),
    [
        (1, b"\xff\xfesecret@example.com,2\n", "line 3: Invalid unicode (byte sequence mismatch) detected"),
        # Past DuckDB's sniffing sample (within it, DuckDB counts a too-long line as line 1).
        (
            25_000,
            b"secret@example.com," + b"9" * 2_100_000 + b"\n",
            "line 25002: Maximum line size of 2000000 bytes exceeded",
        ),
    ],
)
def test_an_unreadable_csv_says_duckdbs_reason_and_line_but_not_the_line(
    tmp_path, rows_before, bad_line, reason
):
    source = tmp_path / "in.csv"
    rows = b"".join(f"user{i}@example.org,{i}\n".encode() for i in range(rows_before))
    source.write_bytes(b"email,phone\n" + rows + bad_line + b"last@example.org,3\n")

    with pytest.raises(HashFileError) as error:
        hash_file(source, tmp_path / "out.csv")

    message = str(error.value)
    assert message.startswith(f"INPUT: cannot read in.csv: {reason}"), message
    assert "\n" not in message and "example" not in message and "999" not in message
    assert not (tmp_path / "out.csv").exists()
