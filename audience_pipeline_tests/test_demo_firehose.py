from audience_pipeline_tests.conftest import DemoRun


def test_the_demo_delivers_two_rounds_to_firehose_and_reports_the_changes(demo_run: DemoRun):
    firehose = demo_run.report["firehose"]
    first, second = firehose["rounds"]
    assert first["added"] > 0 and first["removed"] == first["identity_changed"] == 0
    assert second["added"] > 0 and second["removed"] > 0 and second["identity_changed"] > 0
    # Every identity change sends a removal and an addition.
    changes = second["added"] + second["removed"] + 2 * second["identity_changed"]
    assert second["messages_delivered"] == changes
    for name in ("messages_delivered", "added", "removed", "identity_changed"):
        assert firehose[name] == first[name] + second[name]
    ledgers = list((demo_run.workdir / "state" / "ledgers").rglob("*.parquet"))
    assert ledgers and all(b"@example" not in path.read_bytes() for path in ledgers)
