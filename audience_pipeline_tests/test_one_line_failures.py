"""Runs that fail for a reason the user can fix say it in one line, without a chain of our stack traces:
a destination setting, the audience's source query, sign-in, the state store, the ledger key."""

import duckdb
import pytest
from cryptography.fernet import Fernet

from audience_pipeline.resources.state_store import StateStore

from . import test_adm_delivery as adm
from . import test_firehose_delivery as firehose
from .sandbox.test_aws_firehose import STREAM

env = firehose.env


def one_line_failure(result) -> str:
    """The message of the run's one failed step, checked to be one line with no cause or context."""
    assert not result.success
    [event] = result.get_step_failure_events()
    error = event.step_failure_data.error
    assert error.cause is None and error.context is None
    message = error.message.split(": ", 1)[1].strip()  # after the exception's type
    assert "\n" not in message
    return message


@pytest.fixture
def pipeline(tmp_path, sandbox, env) -> firehose.Pipeline:
    return firehose.Pipeline(tmp_path, sandbox)


def test_a_destination_that_does_not_exist_names_the_setting(pipeline):
    pipeline.firehose.delete_delivery_stream(DeliveryStreamName=STREAM)

    message = one_line_failure(pipeline.run(raise_on_error=False))

    setting = "Firehose setting `delivery_stream_name`"
    assert message.startswith(f"{setting}: Firehose stream {STREAM!r} in us-east-1 does not exist")
    assert message.endswith("nothing was sent")


def test_a_failing_audience_query_names_the_audience_and_the_setting(pipeline):
    with duckdb.connect(str(pipeline.source_path)) as conn:
        conn.execute("DROP TABLE profiles")

    message = one_line_failure(pipeline.run(raise_on_error=False))

    assert message.startswith("audience '7' (seven): its `sql` failed: Catalog Error: Table with name")
    assert "does not exist! Did you mean" in message


def test_a_refused_sign_in_quotes_login_with_amazon(tmp_path, sandbox_env, monkeypatch):
    monkeypatch.setenv("AMAZON_ADS_REFRESH_TOKEN", "revoked-by-the-user")
    pipeline = adm.Pipeline(tmp_path, sandbox_env)

    message = one_line_failure(pipeline.run(raise_on_error=False))

    assert "The refresh token is invalid or has been revoked" in message
    assert "revoked-by-the-user" not in message


def test_a_state_store_that_cannot_be_written_names_its_root(pipeline):
    pipeline.state.write_text("a file where the state folder should be")

    message = one_line_failure(pipeline.run(raise_on_error=False))

    assert str(pipeline.state) in message


def test_a_malformed_ledger_key_names_the_variable_and_how_to_make_one(pipeline, monkeypatch):
    # (An unset one is refused by Dagster before the run starts, naming the variable.)
    monkeypatch.setenv("AUDIENCE_PIPELINE_LEDGER_KEY", "not-a-fernet-key")

    message = one_line_failure(pipeline.run(raise_on_error=False))

    assert message.startswith("AUDIENCE_PIPELINE_LEDGER_KEY is not a Fernet key")
    assert "not-a-fernet-key" not in message


def test_another_ledger_key_than_the_ledgers_is_named(pipeline, monkeypatch):
    pipeline.run()
    monkeypatch.setenv("AUDIENCE_PIPELINE_LEDGER_KEY", Fernet.generate_key().decode())
    # Removals are sent with the identities the ledger keeps.
    firehose.write_source(pipeline.source_path, firehose.PROFILES[:2])

    message = one_line_failure(pipeline.run(raise_on_error=False, allow_mass_removal=True))

    assert "the ledger was encrypted with another key than AUDIENCE_PIPELINE_LEDGER_KEY holds" in message
    assert StateStore(root=str(pipeline.state)).store.read("snapshots/7.parquet") is not None
