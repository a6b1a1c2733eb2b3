"""Schedules follow Treasure Data's cron (seed 003): the ticks are those Dagster's own scheduler computes
for the translated cron, in the schedule's time zone, across daylight saving time changes."""

import re
from datetime import datetime
from itertools import islice
from zoneinfo import ZoneInfo

import dagster as dg
import pytest
from dagster._utils.schedules import cron_string_iterator, is_valid_cron_string
from pydantic import ValidationError

from audience_pipeline.components.amc_deletions import IdentityDeletion
from audience_pipeline.components.audiences import SNAPSHOT_ASSET_KEY
from audience_pipeline.components.schedules import schedule_defs
from audience_pipeline.components.setting_errors import SettingError
from audience_pipeline.resources.duckdb_source import DuckDBSource
from audience_pipeline.resources.state_store import StateStore
from audience_pipeline.td_cron import check_timezone, dagster_cron

from .test_setting_errors import load_project


def ticks(td_cron: str, timezone: str, start: str, count: int) -> list[str]:
    """The first `count` times Dagster runs `td_cron` from `start` (local time in `timezone`)."""
    cron = dagster_cron(td_cron)
    assert cron is not None and is_valid_cron_string(cron)
    begin = datetime.fromisoformat(start).replace(tzinfo=ZoneInfo(timezone))
    return [
        tick.isoformat() for tick in islice(cron_string_iterator(begin.timestamp(), cron, timezone), count)
    ]


@pytest.mark.parametrize(
    ("td_cron", "timezone", "start", "expected"),
    [
        # "Run once an hour", here across New York's return to standard time: 01:00 comes twice.
        (
            "0 * * * *",
            "America/New_York",
            "2026-11-01T00:00",
            ["2026-11-01T00:00:00-04:00", "2026-11-01T01:00:00-04:00", "2026-11-01T01:00:00-05:00"],
        ),
        # "@hourly (:00)": the same.
        ("@hourly", "UTC", "2026-05-01T22:10", ["2026-05-01T23:00:00+00:00", "2026-05-02T00:00:00+00:00"]),
        # "Run once a day at midnight", at local midnight on both sides of Berlin's summer time.
        (
            "0 0 * * *",
            "Europe/Berlin",
            "2026-03-28T00:00",
            ["2026-03-28T00:00:00+01:00", "2026-03-29T00:00:00+01:00", "2026-03-30T00:00:00+02:00"],
        ),
        # "@daily (midnight) ... in the specified time zone".
        (
            "@daily",
            "Asia/Tokyo",
            "2026-05-01T00:01",
            ["2026-05-02T00:00:00+09:00", "2026-05-03T00:00:00+09:00"],
        ),
        # "Run once a month at midnight on the morning of the first day of the month".
        (
            "0 0 1 * *",
            "America/New_York",
            "2026-02-15T00:00",
            ["2026-03-01T00:00:00-05:00", "2026-04-01T00:00:00-04:00"],
        ),
        # "'0 0 1 * 1' ... runs every Monday": 1 July 2026 is a Wednesday and gets no run.
        (
            "0 0 1 * 1",
            "UTC",
            "2026-06-28T00:00",
            ["2026-06-29T00:00:00+00:00", "2026-07-06T00:00:00+00:00", "2026-07-13T00:00:00+00:00"],
        ),
        # "the first 10 days of each month".
        (
            "0 0 1-10 * *",
            "UTC",
            "2026-01-09T12:00",
            ["2026-01-10T00:00:00+00:00", "2026-02-01T00:00:00+00:00", "2026-02-02T00:00:00+00:00"],
        ),
        # "every 1st, 11th, and 21st day of each month".
        (
            "0 0 1,11,21 * *",
            "UTC",
            "2026-01-02T00:00",
            ["2026-01-11T00:00:00+00:00", "2026-01-21T00:00:00+00:00", "2026-02-01T00:00:00+00:00"],
        ),
        # "on the 1st of every month, every 2 hours starting at 00:30".
        (
            "30 */2 1 * *",
            "UTC",
            "2026-01-01T00:00",
            [f"2026-01-01T{hour:02}:30:00+00:00" for hour in range(0, 24, 2)] + ["2026-02-01T00:30:00+00:00"],
        ),
        # "every 5 days starting on the 5th": the multiples of 5, so no 30th in February; New York's
        # summer time starts on 8 March, between two runs.
        (
            "0 0 */5 * *",
            "America/New_York",
            "2026-01-26T00:00",
            [
                "2026-01-30T00:00:00-05:00",
                *(f"2026-02-{day:02}T00:00:00-05:00" for day in (5, 10, 15, 20, 25)),
                "2026-03-05T00:00:00-05:00",
                "2026-03-10T00:00:00-04:00",
            ],
        ),
        # The seed says "every 5th, 10th, 20th, and 25th day of each month"; by its own rule `*/10` is
        # the multiples of 10, which include the 30th, so the 30th runs too (in months that have one).
        (
            "0 0 5,*/10,25 * *",
            "UTC",
            "2026-02-01T00:00",
            [
                *(f"2026-02-{day:02}T00:00:00+00:00" for day in (5, 10, 20, 25)),
                *(f"2026-03-{day:02}T00:00:00+00:00" for day in (5, 10, 20, 25, 30)),
            ],
        ),
        # Named months and days of week.
        (
            "0 9 * jan,JUL mon-fri",
            "UTC",
            "2026-01-30T00:00",
            ["2026-01-30T09:00:00+00:00", "2026-07-01T09:00:00+00:00"],
        ),
    ],
)
def test_the_seeds_examples_run_when_treasure_data_says(td_cron, timezone, start, expected):
    assert ticks(td_cron, timezone, start, len(expected)) == expected


def test_standard_cron_would_run_the_seeds_monday_example_on_the_first_too():
    # Why the cron is translated: Dagster's cron runs on either day when both are restricted.
    start = datetime(2026, 6, 28, tzinfo=ZoneInfo("UTC")).timestamp()
    standard = [tick.day for tick in islice(cron_string_iterator(start, "0 0 1 * 1", "UTC"), 2)]
    assert standard == [29, 1]
    assert dagster_cron("0 0 1 * 1") == "0 0 * * 1"


@pytest.mark.parametrize(
    ("td_cron", "followed"),
    [
        # 10 days a month run more often than about 4.35 Mondays, 4 days less often.
        ("0 0 1-10 * mon", "0 0 1-10 * *"),
        ("0 0 1-4 * mon", "0 0 * * 1"),
        # Only February counts: 5 days beat its 4 Mondays (5 in a leap year now and then); 4 do not.
        ("0 0 1-5 feb mon", "0 0 1-5 2 *"),
        ("0 0 1-4 feb mon", "0 0 * 2 1"),
        # Every day against Mondays: every day.
        ("0 0 1-31 * mon", "0 0 * * *"),
        # Two weekdays (about 104 days a year) against the 31st (7 days a year).
        ("0 0 31 * sat,sun", "0 0 * * 0,6"),
        # A tie (15,297 days in 400 years each): the day of week is followed.
        ("0 0 1-11,29-31 jan,feb,apr sun,tue,thu", "0 0 * 1,2,4 0,2,4"),
        ("0 0 1-12,29-31 jan,feb,apr sun,tue,thu", "0 0 1-12,29-31 1,2,4 *"),
    ],
)
def test_with_both_day_fields_restricted_the_one_running_more_often_is_followed(td_cron, followed):
    assert dagster_cron(td_cron) == followed


def test_times_that_daylight_saving_time_skips_or_repeats_run_once():
    # Dagster's scheduler, in New York: 02:30 does not exist on 8 March 2026 and runs at 03:00; 01:30
    # comes twice on 1 November 2026 and runs once.
    assert ticks("30 2 * * *", "America/New_York", "2026-03-07T12:00", 2) == [
        "2026-03-08T03:00:00-04:00",
        "2026-03-09T02:30:00-04:00",
    ]
    assert ticks("30 1 * * *", "America/New_York", "2026-10-31T12:00", 2) == [
        "2026-11-01T01:30:00-05:00",
        "2026-11-02T01:30:00-05:00",
    ]


@pytest.mark.parametrize(
    ("td_cron", "translated"),
    [
        # Periods are multiples in every field: months 3, 6, 9, 12 (standard cron: 1, 4, 7, 10).
        ("0 0 1 */3 *", "0 0 1 3,6,9,12 *"),
        ("*/15 * * * *", "0,15,30,45 * * * *"),
        ("0 12 * * */2", "0 12 * * 0,2,4,6"),
        ("@monthly", "0 0 1 * *"),
        ("0 0 * DEC Sun", "0 0 * 12 0"),
    ],
)
def test_periods_names_and_shorthands_become_explicit_values(td_cron, translated):
    assert dagster_cron(td_cron) == translated


@pytest.mark.parametrize("no_schedule", [None, "", "  "])
def test_an_empty_cron_is_no_schedule(no_schedule):
    assert dagster_cron(no_schedule) is None


@pytest.mark.parametrize(
    ("td_cron", "message"),
    [
        ("every hour", "'every hour' is not a cron schedule such as '0 3 * * *'"),
        ("@weekly", "'@weekly' is not a cron schedule such as"),
        ("0 0 1 * 7", "'0 0 1 * 7': day of week 7 is outside 0-6 (Sunday is 0; or sun..sat)"),
        ("0 0 * 13 *", "'0 0 * 13 *': month 13 is outside 1-12"),
        ("0 0 * * mon-sun", "day of week range 'mon-sun' runs backwards"),
        ("0 0 *,5 * *", "day of month '*' cannot be part of a list"),
        ("0 0 */0 * *", "day of month '*/0': the period must be a number from 1 to 31"),
        ("0 0 1-10/2 * *", "day of month '1-10/2' is not a value, a range 'a-b', a period '*/n'"),
        ("0 0 5/2 * *", "day of month '5/2' is not a value, a range 'a-b', a period '*/n'"),
        ("0 0 31 2,4 *", "'0 0 31 2,4 *' never runs: no month it allows has a day 31"),
    ],
)
def test_a_cron_treasure_data_would_refuse_says_what_is_wrong(td_cron, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        dagster_cron(td_cron)


@pytest.mark.parametrize("timezone", ["PST", "EST", "utc", "America/Gotham"])
def test_a_time_zone_must_be_an_iana_name(timezone):
    with pytest.raises(ValueError, match="is not an IANA time zone name such as 'America/New_York'"):
        check_timezone(timezone)


AUDIENCES = (
    "type: audience_pipeline.components.audiences.AudiencesComponent\n"
    "attributes:\n"
    "  audiences: [{id: 7, name: a, sql: SELECT 1 AS user_id}, {id: 8, name: b, sql: SELECT 1 AS user_id}]\n"
)
AMC = (
    "type: audience_pipeline.components.amc.AmazonMarketingCloudComponent\n"
    "attributes:\n"
    "  instance_id: amcsandbox01\n"
    "  deletions:\n"
    "    - name: opted_out\n"
    "      query: SELECT email FROM profiles\n"
)


def by_name(definitions: dg.Definitions) -> dict[str, object]:
    """The project's schedules and sensors by name, as the YAML declared them."""
    return {d.name: d for d in [*(definitions.schedules or []), *(definitions.sensors or [])]}


def test_the_yaml_settings_make_a_schedule_on_the_translated_cron_in_the_time_zone(tmp_path, monkeypatch):
    definitions = load_project(
        tmp_path,
        monkeypatch,
        audiences=AUDIENCES + '  refresh_schedule: "0 0 1 * mon"\n  refresh_timezone: Asia/Tokyo\n',
    )
    definitions = dg.Definitions.merge(
        definitions,
        dg.Definitions(
            resources={
                "source": DuckDBSource(database=str(tmp_path / "source.duckdb")),
                "state_store": StateStore(root=str(tmp_path / "state")),
            }
        ),
    )

    refresh = definitions.resolve_schedule_def("audience_snapshots_schedule")
    assert (refresh.cron_schedule, refresh.execution_timezone) == ("0 0 * * 1", "Asia/Tokyo")
    assert refresh.default_status == dg.DefaultScheduleStatus.RUNNING
    # Monday 6 July 2026, midnight in Tokyo: one run per audience, the tick in UTC in the run key.
    tick = datetime(2026, 7, 6, tzinfo=ZoneInfo("Asia/Tokyo"))
    with dg.build_schedule_context(
        scheduled_execution_time=tick, repository_def=definitions.get_repository_def()
    ) as context:
        requests = refresh.evaluate_tick(context).run_requests
    assert [(r.partition_key, r.run_key) for r in requests] == [
        ("7", "7:20260705T1500Z"),
        ("8", "8:20260705T1500Z"),
    ]


def test_an_amc_target_schedule_runs_on_the_translated_cron_in_its_time_zone(tmp_path, monkeypatch):
    definitions = load_project(
        tmp_path,
        monkeypatch,
        audiences=AUDIENCES,
        amc=AMC + '      schedule: "0 6 */5 * *"\n      schedule_timezone: America/New_York\n',
    )

    deletion = by_name(definitions)["amc_deletion_opted_out_schedule"]
    assert (deletion.cron_schedule, deletion.execution_timezone) == (
        "0 6 5,10,15,20,25,30 * *",
        "America/New_York",
    )
    assert deletion.default_status == dg.DefaultScheduleStatus.RUNNING
    assert deletion.description == (
        "Runs amc/deletion/opted_out on `0 6 */5 * *` (America/New_York), which Dagster runs as "
        "`0 6 5,10,15,20,25,30 * *`."
    )


def test_an_empty_schedule_in_the_yaml_makes_no_schedule(tmp_path, monkeypatch):
    definitions = load_project(
        tmp_path,
        monkeypatch,
        audiences=AUDIENCES + '  refresh_schedule: ""\n',
        amc=AMC + '      schedule: ""\n',
    )
    # The sensors that remain follow AMC's jobs and the source, not a clock.
    assert list(by_name(definitions)) == [
        "amc_amcsandbox01_job_status",
        "audience_snapshots_on_source_change",
    ]


def test_bad_schedule_settings_in_the_yaml_are_named(tmp_path, monkeypatch):
    with pytest.raises(SettingError) as error:
        load_project(
            tmp_path,
            monkeypatch,
            audiences=AUDIENCES + '  refresh_schedule: "0 0 * * 7"\n  refresh_timezone: PST\n',
        )

    assert str(error.value) == (
        "settings_project_defs/audiences/defs.yaml: "
        "refresh_schedule: '0 0 * * 7': day of week 7 is outside 0-6 (Sunday is 0; or sun..sat); "
        "refresh_timezone: 'PST' is not an IANA time zone name such as 'America/New_York', 'Asia/Tokyo' "
        "or 'UTC'"
    )


def test_a_negative_delay_in_the_yaml_is_named(tmp_path, monkeypatch):
    with pytest.raises(SettingError) as error:
        load_project(
            tmp_path,
            monkeypatch,
            audiences=AUDIENCES + '  refresh_schedule: "@daily"\n  refresh_delay_seconds: -60\n',
        )

    assert str(error.value) == (
        "settings_project_defs/audiences/defs.yaml: "
        "refresh_delay_seconds: Input should be greater than or equal to 0"
    )


def test_bad_amc_target_schedule_settings_are_named():
    with pytest.raises(ValidationError) as error:
        IdentityDeletion(
            name="opted_out",
            query="SELECT email FROM profiles",
            schedule="0 0 31 feb *",
            schedule_timezone="Europe/Atlantis",
            schedule_delay_seconds=-1,
        )

    problems = {problem["loc"][0]: problem["msg"] for problem in error.value.errors()}
    assert problems == {
        "schedule": "Value error, '0 0 31 feb *' never runs: no month it allows has a day 31",
        "schedule_timezone": "Value error, 'Europe/Atlantis' is not an IANA time zone name such as "
        "'America/New_York', 'Asia/Tokyo' or 'UTC'",
        "schedule_delay_seconds": "Input should be greater than or equal to 0",
    }


def test_a_delay_makes_a_sensor_of_the_same_name(tmp_path, monkeypatch):
    definitions = load_project(
        tmp_path,
        monkeypatch,
        audiences=AUDIENCES + '  refresh_schedule: "@hourly"\n  refresh_delay_seconds: 600\n',
    )

    sensor = by_name(definitions)["audience_snapshots_schedule"]
    assert isinstance(sensor, dg.SensorDefinition)
    assert sensor.default_status == dg.DefaultSensorStatus.RUNNING
    assert sensor.description.endswith("each run started 600 s after its tick.")


class Clock:
    def __init__(self, when: str, timezone: str):
        self.now = datetime.fromisoformat(when).replace(tzinfo=ZoneInfo(timezone)).timestamp()

    def __call__(self) -> float:
        return self.now


def test_a_delayed_schedule_runs_each_tick_once_its_delay_has_passed():
    # Treasure Data's "Delay execution": daily at 02:00 in New York, started 90 minutes later, across
    # the night summer time starts (8 March 2026, when 02:00 does not exist and Dagster ticks at 03:00).
    clock = Clock("2026-03-06T12:00", "America/New_York")
    job = dg.define_asset_job("refresh", selection=[SNAPSHOT_ASSET_KEY])
    [sensor] = schedule_defs(
        "refresh_schedule", "0 2 * * *", "America/New_York", 5400, "Refreshes", job, ["7"], clock
    ).sensors

    def evaluate(cursor):
        with dg.build_sensor_context(cursor=cursor) as context:
            return sensor(context)

    started = evaluate(None)
    assert not started.run_requests
    assert started.skip_reason.skip_message == "started; the 2026-03-07 02:00 EST tick runs 5400 s later"

    clock.now += 15.5 * 3600 - 1  # 03:29:59 on 7 March
    early = evaluate(started.cursor)
    assert not early.run_requests and early.cursor is None
    clock.now += 1
    due = evaluate(started.cursor)
    assert [r.run_key for r in due.run_requests] == ["7:20260307T0700Z"]
    assert not evaluate(due.cursor).run_requests

    # 8 March: 02:00 EST does not exist; Dagster ticks at 03:00 EDT (07:00Z), run at 04:30 EDT.
    clock.now = datetime.fromisoformat("2026-03-08T04:29:00-04:00").timestamp()
    assert not evaluate(due.cursor).run_requests
    clock.now += 60
    assert [r.run_key for r in evaluate(due.cursor).run_requests] == ["7:20260308T0700Z"]


def test_a_delayed_schedule_that_fell_behind_runs_only_the_latest_tick():
    # As Dagster's scheduler does for a schedule without partitions.
    clock = Clock("2026-05-01T00:30", "UTC")
    [sensor] = schedule_defs(
        "refresh_schedule", "@hourly", "UTC", 60, "Refreshes", [dg.AssetKey("x")], (), clock
    ).sensors
    with dg.build_sensor_context() as context:
        cursor = sensor(context).cursor

    clock.now += 10 * 3600  # ten ticks pass while nothing evaluates
    with dg.build_sensor_context(cursor=cursor) as context:
        result = sensor(context)

    assert [r.run_key for r in result.run_requests] == ["20260501T1000Z"]
