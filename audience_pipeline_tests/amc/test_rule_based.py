"""Rule-based audience settings: seed 003's names, field-named validation, and the sandbox accepting them."""

from datetime import UTC, date, datetime, timedelta, timezone

import pytest
from pydantic import ValidationError

from audience_pipeline.amc.jobs import AmcJobError, ensure_audience
from audience_pipeline.amc.rule_based import (
    MINIMUM_AUDIENCE_SIZE,
    RuleBasedAudienceSettings,
    audience_size_check,
    datasets_named,
)
from audience_pipeline.clients.amc import AmcClient

from ..sandbox.conftest import INSTANCE, wait

# Seed 003's workflow example, setting for setting.
SEED = {
    "audience_name": "test_audience",
    "audience_description": "test audience description",
    "advertiser_id": 123,
    "sql": "SELECT user_id FROM dsp_impressions",
    "time_window_start": "2023-06-25T00:00:00",
    "time_window_end": "2023-07-25T00:00:00",
    "refresh_rate_days": 1,
    "time_window_relative": False,
}


@pytest.fixture
def amc(ads_client) -> AmcClient:
    return AmcClient(ads_client, INSTANCE, "ENTITY1SANDBOX", "ATVPDKIKX0DER")


def settings(**changes) -> RuleBasedAudienceSettings:
    return RuleBasedAudienceSettings(**{**SEED, **changes})


def problem_with(**changes) -> tuple[str, str]:
    """The (setting, message) of the one problem these settings have."""
    with pytest.raises(ValidationError) as raised:
        settings(**changes)
    (problem,) = raised.value.errors()
    return ".".join(map(str, problem["loc"])), problem["msg"]


def test_the_seed_example_becomes_the_create_call():
    assert settings().to_create_kwargs() == {
        "advertiser_id": "123",  # Rule-BasedAudiences_prod_3p.json types advertiserId as a string
        "query": "SELECT user_id FROM dsp_impressions",
        "time_window_start": "2023-06-25T00:00:00Z",
        "time_window_end": "2023-07-25T00:00:00Z",
        "refresh_rate_days": 1,
        "time_window_relative": False,
        "description": "test audience description",
    }


def test_defaults_follow_the_spec():
    given = {k: v for k, v in SEED.items() if k not in ("sql", "refresh_rate_days", "time_window_relative")}
    audience = RuleBasedAudienceSettings(**given, sql="SELECT user_id FROM x")
    assert audience.sql == "SELECT user_id FROM x"
    assert (audience.refresh_rate_days, audience.time_window_relative) == (21, False)


@pytest.mark.parametrize(
    ("given", "sent"),
    [
        ("2023-06-25T00:00:00", "2023-06-25T00:00:00Z"),
        ("2023-06-25T00:00:00Z", "2023-06-25T00:00:00Z"),
        ("2023-06-25", "2023-06-25T00:00:00Z"),
        ("2023-06-25T02:30:00+02:00", "2023-06-25T00:30:00Z"),
        (datetime(2023, 6, 25, 8), "2023-06-25T08:00:00Z"),
        (datetime(2023, 6, 25, 8, tzinfo=timezone(timedelta(hours=-4))), "2023-06-25T12:00:00Z"),
        (date(2023, 6, 25), "2023-06-25T00:00:00Z"),
    ],
)
def test_times_are_sent_as_utc_yyyy_mm_ddthh_mm_ssz(given, sent):
    assert settings(time_window_start=given).to_create_kwargs()["time_window_start"] == sent


@pytest.mark.parametrize(
    ("given", "relative"), [("TRUE", True), ("true", True), ("false", False), (True, True)]
)
def test_time_window_relative_takes_text_too(given, relative):
    assert settings(time_window_relative=given).time_window_relative is relative


@pytest.mark.parametrize(
    "sql",
    [
        "select user_id from tbl;",
        "SELECT DISTINCT user_id FROM dsp_impressions WHERE impressions > 0",
        "SELECT t.user_id FROM dsp_impressions AS t JOIN conversions c USING (user_id)",
        "SELECT other_id AS user_id FROM x",
        'SELECT "user_id" FROM x',
        "WITH buyers AS (SELECT user_id, count(*) AS n FROM c GROUP BY 1) SELECT user_id FROM buyers",
        "SELECT user_id FROM a UNION SELECT user_id FROM b UNION ALL SELECT id AS user_id FROM c",
        "SELECT user_id FROM a EXCEPT SELECT user_id FROM b",
    ],
)
def test_sql_whose_final_select_is_user_id_passes(sql):
    assert settings(sql=sql).sql == sql.strip()


@pytest.mark.parametrize(
    ("sql", "message"),
    [
        ("SELECT * FROM x", "must return user_id only (case-sensitive); it returns *"),
        ("SELECT user_id, other FROM x", "it returns user_id, other"),
        ("SELECT USER_ID FROM x", "it returns USER_ID"),
        ("SELECT user_id FROM a UNION SELECT email FROM b", "it returns email"),
        ("SELECT user_id::VARCHAR FROM x", "add AS user_id"),
        ("SELECT user_id FROM a; SELECT user_id FROM b", "single SELECT statement, got 2"),
        ("DELETE FROM x", "not a single SELECT statement"),
        ("SELEC user_id FROM x", "syntax error"),
        ("   ", "at least 1 character"),
    ],
)
def test_sql_that_does_not_select_user_id_alone_is_refused(sql, message):
    setting, problem = problem_with(sql=sql)
    assert setting == "sql" and message in problem


@pytest.mark.parametrize(
    ("changes", "setting", "message"),
    [
        ({"audience_name": "  "}, "audience_name", "at least 1 character"),
        ({"audience_name": None}, "audience_name", "valid string"),
        ({"advertiser_id": "12a"}, "advertiser_id", "digits"),
        ({"advertiser_id": -5}, "advertiser_id", "digits"),
        ({"advertiser_id": True}, "advertiser_id", "not a boolean"),
        ({"refresh_rate_days": 22}, "refresh_rate_days", "less than or equal to 21"),
        ({"refresh_rate_days": -1}, "refresh_rate_days", "greater than or equal to 0"),
        ({"time_window_start": "next tuesday"}, "time_window_start", "is not a time"),
        ({"time_window_end": 20230725}, "time_window_end", "must be a time"),
        ({"time_window_relative": "maybe"}, "time_window_relative", "valid boolean"),
        ({"refresh_rate": 7}, "refresh_rate", "Extra inputs are not permitted"),
    ],
)
def test_each_bad_setting_is_named(changes, setting, message):
    named, problem = problem_with(**changes)
    assert named == setting and message in problem


@pytest.mark.parametrize("start", ["2023-07-25T00:00:00Z", "2023-08-01"])
def test_the_window_must_start_before_it_ends(start):
    _, message = problem_with(time_window_start=start)
    assert "time_window_start" in message and "must be before time_window_end" in message


def test_advertiser_ids_stay_exact():
    assert settings(advertiser_id=2**60 + 1).advertiser_id == 2**60 + 1
    assert settings(advertiser_id=" 1152921504606846977 ").advertiser_id == "1152921504606846977"


@pytest.mark.parametrize(
    ("audience", "passed", "description"),
    [
        (
            {"status": "SUCCEEDED", "audienceCount": 2500},
            True,
            "2,500 users; Amazon DSP needs at least 2,000",
        ),
        (
            {"status": "SUCCEEDED", "audienceCount": MINIMUM_AUDIENCE_SIZE},
            True,
            "2,000 users; Amazon DSP needs at least 2,000",
        ),
        (
            {"status": "SUCCEEDED", "audienceCount": 1999},
            False,
            "1,999 users; Amazon DSP needs at least 2,000",
        ),
        (
            {"status": "FAILED", "statusReason": "below the minimum"},
            False,
            "AMC reported no audience count (status FAILED); AMC says: below the minimum",
        ),
    ],
)
def test_audience_size_check(audience, passed, description):
    assert audience_size_check(audience) == (passed, description)


def test_the_create_call_is_accepted_and_the_audience_reaches_the_minimum(amc):
    audience_settings = settings(
        advertiser_id="1152921504606846977",
        sql="SELECT user_id FROM amazon_attributed_events_by_conversion_time_for_audiences;",
        time_window_start=datetime(2025, 1, 1, tzinfo=UTC),
        time_window_end="2025-03-31",
        time_window_relative="TRUE",
    )
    execution_id = amc.create_audience(
        audience_settings.audience_name, **audience_settings.to_create_kwargs()
    )
    audience = wait(lambda: amc.get_audience(execution_id))
    assert audience["status"] == "SUCCEEDED", audience
    assert audience["advertiserId"] == "1152921504606846977"
    assert (audience["timeWindowStart"], audience["timeWindowEnd"]) == (
        "2025-01-01T00:00:00Z",
        "2025-03-31T00:00:00Z",
    )
    assert (audience["refreshRateDays"], audience["timeWindowRelative"]) == (1, True)
    assert audience["audienceDescription"] == "test audience description"
    assert audience_size_check(audience) == (True, "2,500 users; Amazon DSP needs at least 2,000")


def test_a_small_audience_fails_the_size_check_with_amcs_reason(amc):
    audience_settings = settings(
        sql="SELECT user_id FROM conversions_for_audiences",
        time_window_start="2025-01-01",
        time_window_end="2025-03-31",
        audience_description=None,
    )
    execution_id = amc.create_audience(
        audience_settings.audience_name, **audience_settings.to_create_kwargs()
    )
    audience = wait(lambda: amc.get_audience(execution_id))
    passed, description = audience_size_check(audience)
    assert not passed and "below the 2,000-user minimum" in description


def test_ensure_audience_makes_only_the_calls_amc_allows(amc):
    """AMC updates and deletes only FAILED audiences and keeps a succeeded one as it is."""
    failing = settings(sql="SELECT user_id FROM conversions_for_audiences", time_window_end="2025-03-31")
    name = failing.audience_name
    created = ensure_audience(amc, name, failing.to_create_kwargs())
    assert (created.action, created.name) == ("created", name)
    assert wait(lambda: amc.get_audience(created.execution_id))["status"] == "FAILED"

    good = failing.model_copy(update={"sql": "SELECT user_id FROM dsp_impressions_for_audiences"})
    updated = ensure_audience(amc, name, good.to_create_kwargs())
    assert (updated.action, updated.execution_id) == ("updated", created.execution_id)
    assert wait(lambda: amc.get_audience(created.execution_id))["status"] == "SUCCEEDED"
    assert ensure_audience(amc, name, good.to_create_kwargs()).action == "reused"

    other = good.model_copy(update={"time_window_start": "2025-02-01T00:00:00Z"})
    versioned = ensure_audience(amc, name, other.to_create_kwargs())
    assert (versioned.action, versioned.name, versioned.previous_id) == (
        "new_version",
        f"{name}_v2",
        created.execution_id,
    )
    assert amc.get_audience(created.execution_id)["status"] == "SUCCEEDED", "the first version stays"
    with pytest.raises(AmcJobError, match="run again once it has finished"):
        ensure_audience(amc, name, good.to_create_kwargs())
    wait(lambda: amc.get_audience(versioned.execution_id))
    again = ensure_audience(amc, name, other.to_create_kwargs())
    assert (again.action, again.execution_id) == ("reused", versioned.execution_id)
    third = ensure_audience(amc, name, good.to_create_kwargs())
    assert (third.action, third.name) == ("new_version", f"{name}_v3")


def test_a_failed_audience_with_another_refresh_rate_is_replaced(amc):
    # The PUT takes no refreshRateDays: a FAILED audience is deleted (allowed) and submitted again.
    failing = settings(sql="SELECT user_id FROM conversions_for_audiences", time_window_end="2025-03-31")
    first = ensure_audience(amc, failing.audience_name, failing.to_create_kwargs())
    wait(lambda: amc.get_audience(first.execution_id))
    other = failing.model_copy(update={"refresh_rate_days": 7})
    replaced = ensure_audience(amc, failing.audience_name, other.to_create_kwargs())
    assert replaced.action == "replaced" and replaced.execution_id != first.execution_id
    assert [a["audienceExecutionId"] for a in amc.list_audiences()] == [replaced.execution_id]


def test_an_audience_reads_the_datasets_its_sql_names_as_whole_words():
    sql = "SELECT user_id FROM purchases p JOIN purchases_2024 q USING (user_id)"
    uploads = ["customers", "purchase", "purchases", "purchases_2024"]
    assert datasets_named(sql, uploads) == ["purchases", "purchases_2024"]
