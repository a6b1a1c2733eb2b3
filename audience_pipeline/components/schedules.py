"""Cron settings: the schedules a component's YAML may declare."""

# The check `dg.ScheduleDefinition` applies: a schedule that passes here is one Dagster accepts.
from dagster._utils.schedules import is_valid_cron_string


def check_cron(value: str | None) -> str | None:
    """A schedule setting: a cron string, or None for no schedule; a ValueError for the validator."""
    if value is not None and not is_valid_cron_string(value):
        raise ValueError(f"{value!r} is not a cron schedule such as '0 3 * * *'")
    return value
