"""Schedule settings: Treasure Data's cron, time zone and delay, as the Dagster definitions that run them.

A component's YAML gives a cron as Treasure Data reads it (`audience_pipeline.td_cron`), an IANA time
zone and a delay in seconds. Without a delay, that is a Dagster schedule on the translated cron in
that time zone. Dagster starts a schedule's runs at its ticks and cannot start them later, so with a
delay (Treasure Data's "Delay execution") a sensor of the same name requests each tick's runs once the
delay has passed, reading the ticks from Dagster's own cron iterator.
"""

import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any

import dagster as dg

# Not exported by `dagster`: the tick iterators of Dagster's scheduler, so a delayed schedule ticks
# exactly when the schedule without a delay would.
from dagster._utils.schedules import cron_string_iterator, reverse_cron_string_iterator

from audience_pipeline.td_cron import dagster_cron

# A delayed run starts within this many seconds after its tick plus the delay.
_DELAY_CHECK_SECONDS = 30


def check_cron(value: str | None) -> str | None:
    """A schedule setting's validator: the cron as written; a ValueError when Treasure Data would not
    accept it. None and `""` are no schedule."""
    dagster_cron(value)
    return value


def schedule_defs(
    name: str,
    cron: str | None,
    timezone: str,
    delay_seconds: int,
    runs: str,
    target: Any,
    partition_keys: Sequence[str] = (),
    clock: Callable[[], float] = time.time,
) -> dg.Definitions:
    """`name`, running `target` on Treasure Data's `cron` in `timezone`, each run started `delay_seconds`
    after its tick: a schedule, or a sensor with a delay; nothing without a cron.

    A tick requests one run, or one run per partition key; the tick (in UTC) is in each run key, so a
    tick never runs twice. `runs` says what runs, for the description; `clock` gives the time a delayed
    schedule compares its ticks with.
    """
    translated = dagster_cron(cron)
    if translated is None:
        return dg.Definitions()
    description = f"{runs} on `{cron}` ({timezone})"
    if translated != cron:
        description += f", which Dagster runs as `{translated}`"

    def run_requests(tick: datetime) -> list[dg.RunRequest]:
        stamp = f"{tick.astimezone(UTC):%Y%m%dT%H%MZ}"
        if not partition_keys:
            return [dg.RunRequest(run_key=stamp)]
        return [dg.RunRequest(run_key=f"{key}:{stamp}", partition_key=key) for key in partition_keys]

    if not delay_seconds:

        @dg.schedule(
            name=name,
            cron_schedule=translated,
            execution_timezone=timezone,
            target=target,
            # A schedule in the settings is a wish to run on it, as in Treasure Data's scheduler.
            default_status=dg.DefaultScheduleStatus.RUNNING,
            description=f"{description}.",
        )
        def cron_schedule(context: dg.ScheduleEvaluationContext) -> list[dg.RunRequest]:
            """The runs of the tick."""
            return run_requests(context.scheduled_execution_time)

        return dg.Definitions(schedules=[cron_schedule])

    @dg.sensor(
        name=name,
        target=target,
        minimum_interval_seconds=_DELAY_CHECK_SECONDS,
        default_status=dg.DefaultSensorStatus.RUNNING,
        description=f"{description}, each run started {delay_seconds} s after its tick.",
    )
    def delayed_schedule(context: dg.SensorEvaluationContext) -> dg.SensorResult:
        """Requests the runs of the latest tick whose delay has passed, once.

        The cursor is the last tick requested (a timestamp). The first evaluation only records the
        latest tick already due, as a schedule that starts does not run past ticks. After the daemon
        fell behind only the latest due tick runs, as Dagster's scheduler does for a schedule without
        partitions."""
        due = clock() - delay_seconds
        latest = next(reverse_cron_string_iterator(due, translated, timezone))
        if context.cursor is None:
            return dg.SensorResult(
                skip_reason=f"started; {_next_run(due, translated, timezone, delay_seconds)}",
                cursor=str(latest.timestamp()),
            )
        if latest.timestamp() <= float(context.cursor):
            return dg.SensorResult(skip_reason=_next_run(due, translated, timezone, delay_seconds))
        return dg.SensorResult(run_requests=run_requests(latest), cursor=str(latest.timestamp()))

    return dg.Definitions(sensors=[delayed_schedule])


def _next_run(due: float, cron: str, timezone: str, delay_seconds: int) -> str:
    """When the first tick after `due` runs, worded for a sensor's skip reason."""
    tick = next(tick for tick in cron_string_iterator(due, cron, timezone) if tick.timestamp() > due)
    return f"the {tick:%Y-%m-%d %H:%M %Z} tick runs {delay_seconds} s later"
