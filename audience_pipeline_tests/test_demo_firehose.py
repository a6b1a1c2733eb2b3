import json

from click.testing import CliRunner

from audience_pipeline.cli import main


def test_the_demo_delivers_two_rounds_to_firehose_and_reports_the_changes(tmp_path):
    result = CliRunner().invoke(main, ["demo", "--json", "--profiles", "1500", "--workdir", str(tmp_path)])

    assert result.exit_code == 0, result.output
    firehose = json.loads(result.stdout)["firehose"]
    first, second = firehose["rounds"]
    assert first["added"] > 0 and first["removed"] == first["identity_changed"] == 0
    assert second["added"] > 0 and second["removed"] > 0 and second["identity_changed"] > 0
    # Every identity change sends a removal and an addition.
    changes = second["added"] + second["removed"] + 2 * second["identity_changed"]
    assert second["messages_delivered"] == changes
    for name in ("messages_delivered", "added", "removed", "identity_changed"):
        assert firehose[name] == first[name] + second[name]
    ledgers = list((tmp_path / "state" / "ledgers").rglob("*.parquet"))
    assert ledgers and all(b"@example" not in path.read_bytes() for path in ledgers)
