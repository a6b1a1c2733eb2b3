"""Cron as Treasure Data reads it, translated into the standard cron that Dagster's scheduler runs.

Treasure Data's scheduler (seed 003, "Custom cron... Details") differs from standard (Vixie) cron:

- `*/n` means the multiples of n within the field's range: `*/5` in the day of month is the 5th,
  10th, ..., 30th (standard cron: the 1st, 6th, ...), `*/3` in the month is Mar, Jun, Sep, Dec.
  In the minute, hour and day of week, whose range starts at 0, both readings agree.
- When the day of month and the day of week are both restricted (neither is `*`), the one that
  runs more often is followed and the other ignored (`0 0 1 * 1` runs every Monday); standard
  cron runs on the days either allows.
- `@hourly`, `@daily` and `@monthly` are the only shorthands; `""` is no schedule.

`dagster_cron` writes the days and times a Treasure Data cron runs as a standard cron string with
explicit values and at most one of the two day fields restricted, so it runs the same on both.
"""

import calendar
import zoneinfo
from dataclasses import dataclass

# Treasure Data's toolbelt documents `@monthly` alongside the two shorthands of the seed's drop-down.
_SHORTHANDS = {"@hourly": "0 * * * *", "@daily": "0 0 * * *", "@monthly": "0 0 1 * *"}

_FORM = "'0 3 * * *' (minute hour day-of-month month day-of-week), '@hourly', '@daily' or '@monthly'"

# A 400-year Gregorian cycle is a whole number of weeks (146,097 days), so counting the days either
# day field allows over one cycle compares how often each runs exactly, leap days included.
_CYCLE_YEARS = range(2000, 2400)


@dataclass(frozen=True)
class _Field:
    name: str
    low: int
    high: int
    names: tuple[str, ...] = ()
    hint: str = ""

    def value(self, text: str) -> int:
        """One value: a number within the field's range, or (month and day of week) its name."""
        if text.lower() in self.names:
            return self.low + self.names.index(text.lower())
        if not text.isdigit():
            raise ValueError(f"{self.name} {text!r} is not a number{self.hint}")
        number = int(text)
        if not self.low <= number <= self.high:
            raise ValueError(f"{self.name} {number} is outside {self.low}-{self.high}{self.hint}")
        return number

    def values(self, text: str) -> frozenset[int]:
        """The values one field allows, as Treasure Data reads it."""
        if text == "*":
            return frozenset(range(self.low, self.high + 1))
        allowed: set[int] = set()
        for part in text.split(","):
            allowed |= self._part(part)
        return frozenset(allowed)

    def _part(self, part: str) -> set[int]:
        if part == "*":
            raise ValueError(f"{self.name} {part!r} cannot be part of a list: '*' already allows every value")
        if part.startswith("*/"):
            step = part[2:]
            if not step.isdigit() or not 1 <= int(step) <= self.high:
                raise ValueError(f"{self.name} {part!r}: the period must be a number from 1 to {self.high}")
            return {v for v in range(self.low, self.high + 1) if v % int(step) == 0}
        if "/" in part or part.count("-") > 1 or part.startswith("-") or part.endswith("-"):
            # Standard cron's `a-b/n` has no documented meaning in Treasure Data's scheduler.
            raise ValueError(
                f"{self.name} {part!r} is not a value, a range 'a-b', a period '*/n' or a list of these"
            )
        if "-" in part:
            first, last = (self.value(end) for end in part.split("-"))
            if first > last:
                raise ValueError(f"{self.name} range {part!r} runs backwards")
            return set(range(first, last + 1))
        return {self.value(part)}


_MINUTE = _Field("minute", 0, 59)
_HOUR = _Field("hour", 0, 23)
_DAY_OF_MONTH = _Field("day of month", 1, 31)
_MONTH = _Field("month", 1, 12, tuple(m.lower() for m in calendar.month_abbr[1:]), " (or jan..dec)")
_DAY_OF_WEEK = _Field(
    "day of week", 0, 6, ("sun", "mon", "tue", "wed", "thu", "fri", "sat"), " (Sunday is 0; or sun..sat)"
)
_FIELDS = (_MINUTE, _HOUR, _DAY_OF_MONTH, _MONTH, _DAY_OF_WEEK)


def dagster_cron(td_cron: str | None) -> str | None:
    """The standard cron string that runs when Treasure Data's cron `td_cron` runs; None for no schedule
    (None or blank). A ValueError says what in `td_cron` Treasure Data would not accept."""
    text = (td_cron or "").strip()
    if not text:
        return None
    if text.startswith("@"):
        if text.lower() not in _SHORTHANDS:
            raise ValueError(f"{td_cron!r} is not a cron schedule such as {_FORM}")
        return _SHORTHANDS[text.lower()]
    parts = text.split()
    if len(parts) != len(_FIELDS):
        raise ValueError(f"{td_cron!r} is not a cron schedule such as {_FORM}")
    try:
        minutes, hours, days, months, weekdays = (f.values(p) for f, p in zip(_FIELDS, parts, strict=True))
    except ValueError as error:
        raise ValueError(f"{td_cron!r}: {error}") from None
    days_text, weekdays_text = _day_fields(days, parts[2] != "*", months, weekdays, parts[4] != "*")
    if days_text != "*" and _days_of_month_per_cycle(days, months) == 0:
        raise ValueError(f"{td_cron!r} never runs: no month it allows has a day {days_text}")
    return " ".join(
        [
            _written(minutes, _MINUTE),
            _written(hours, _HOUR),
            days_text,
            _written(months, _MONTH),
            weekdays_text,
        ]
    )


def _day_fields(
    days: frozenset[int],
    days_restricted: bool,
    months: frozenset[int],
    weekdays: frozenset[int],
    weekdays_restricted: bool,
) -> tuple[str, str]:
    """The day-of-month and day-of-week fields, at most one of them restricted.

    With both restricted, Treasure Data follows the one that runs more often: the one allowing more
    days over a 400-year Gregorian cycle, within the months the schedule allows. The seed does not say
    which wins a tie (both allow every day, or contrived settings); we follow the day of week, which
    runs as often.
    """
    if days_restricted and weekdays_restricted:
        if _days_of_month_per_cycle(days, months) > _weekdays_per_cycle(weekdays, months):
            return _written(days, _DAY_OF_MONTH), "*"
        return "*", _written(weekdays, _DAY_OF_WEEK)
    return _written(days, _DAY_OF_MONTH), _written(weekdays, _DAY_OF_WEEK)


def _days_of_month_per_cycle(days: frozenset[int], months: frozenset[int]) -> int:
    """Dates in 400 years whose day of month is in `days` and month in `months`."""
    return sum(
        sum(1 for day in days if day <= calendar.monthrange(year, month)[1])
        for year in _CYCLE_YEARS
        for month in months
    )


def _weekdays_per_cycle(weekdays: frozenset[int], months: frozenset[int]) -> int:
    """Dates in 400 years whose day of week (Sunday=0) is in `weekdays` and month in `months`."""
    count = 0
    for year in _CYCLE_YEARS:
        for month in months:
            monday_first, length = calendar.monthrange(year, month)
            first = (monday_first + 1) % 7  # Sunday=0, as cron counts
            whole_weeks, rest = divmod(length, 7)
            count += whole_weeks * len(weekdays) + sum((first + i) % 7 in weekdays for i in range(rest))
    return count


def _written(values: frozenset[int], field: _Field) -> str:
    """A field in standard cron: `*` for every value, else its values with runs of three or more as ranges."""
    if len(values) == field.high - field.low + 1:
        return "*"
    ordered = sorted(values)
    runs: list[list[int]] = []
    for value in ordered:
        if runs and value == runs[-1][-1] + 1:
            runs[-1].append(value)
        else:
            runs.append([value])
    return ",".join(f"{run[0]}-{run[-1]}" if len(run) >= 3 else ",".join(map(str, run)) for run in runs)


def check_timezone(name: str) -> str:
    """A schedule's time zone: an IANA name such as 'Asia/Tokyo' or 'UTC'; a ValueError otherwise.

    Treasure Data takes only such names and warns that abbreviations (PST, CST) do not work; the
    tz database's few abbreviation-like names (EST, MST) are fixed offsets without daylight saving time,
    not the zones people mean by them, so they are refused too."""
    example = "an IANA time zone name such as 'America/New_York', 'Asia/Tokyo' or 'UTC'"
    if name != "UTC" and "/" not in name:
        raise ValueError(f"{name!r} is not {example}")
    try:
        zoneinfo.ZoneInfo(name)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        raise ValueError(f"{name!r} is not {example}") from None
    return name
