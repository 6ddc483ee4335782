"""Timer schedules as the host reads them: six-field NCRONTAB (seconds first), in UTC.

croniter computes the occurrences (``second_at_beginning``: NCRONTAB's field order;
``day_or=False``: a day and a day of week both have to match, as in NCrontab). croniter
also reads forms the host refuses, so an expression is first checked against NCRONTAB's
grammar: exactly six fields of ``*``, numbers, ``a-b``, ``/n`` steps and ``,`` lists, with
three-letter names in the month and day-of-week fields; no five- or seven-field forms, no
``L``/``W``/``#``/``?``/``H``, day of week 0-6 (croniter also takes 7 for Sunday), and no
reversed range (NCrontab reads ``5-1`` as ``1-5``, croniter wraps around).
TimeSpan schedules (``hh:mm:ss``) and ``%SETTING%`` references, which the app does not
use, are refused.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime

from croniter import CroniterBadCronError, CroniterBadDateError, croniter

FIELD_ORDER = "{second} {minute} {hour} {day} {month} {day-of-week}"
_FIELDS = ("second", "minute", "hour", "day", "month", "day-of-week")
_ITEM = re.compile(r"(\*|([0-9]+|[A-Za-z]{3})(?:-([0-9]+|[A-Za-z]{3}))?)(?:/[0-9]+)?")
_NAMES = {
    "month": ("jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec"),
    "day-of-week": ("sun", "mon", "tue", "wed", "thu", "fri", "sat"),
}
_FIRST = {"month": 1, "day-of-week": 0}


class ScheduleError(ValueError):
    """A timer schedule that is not a six-field NCRONTAB expression this host can run."""


@dataclass(frozen=True)
class Schedule:
    """A six-field NCRONTAB schedule, evaluated in UTC."""

    text: str

    def next_after(self, after: datetime) -> datetime:
        """The first occurrence strictly after the aware ``after``, in UTC (whole seconds)."""
        if after.tzinfo is None or after.utcoffset() is None:
            raise ValueError(f"{after.isoformat()} has no time zone; pass an aware datetime")
        start = after.astimezone(UTC)
        try:
            found: datetime = croniter(
                self.text, start, second_at_beginning=True, day_or=False
            ).get_next(datetime)
        except CroniterBadDateError:
            raise ScheduleError(f"{self.text!r} has no occurrence after {stamp(start)}") from None
        return found.astimezone(UTC)


def parse_schedule(text: str) -> Schedule:
    """Check ``text`` as the host would read it and return its schedule.

    An expression that never occurs (``0 0 0 30 2 *``) is refused here, as the host
    refuses it at start-up.
    """
    fields = text.split()
    if not fields:
        raise ScheduleError("the schedule is empty")
    if len(fields) != len(_FIELDS):
        hint = f" (the seconds come first: '0 {text}'?)" if len(fields) == 5 else ""
        timespan = " (TimeSpan schedules are not supported here)" if ":" in text else ""
        raise ScheduleError(
            f"{text!r} has {len(fields)} field(s), NCRONTAB has 6: {FIELD_ORDER}{hint}{timespan}"
        )
    for name, field in zip(_FIELDS, fields, strict=True):
        for item in field.split(","):
            _check_item(text, name, item)
    schedule = Schedule(" ".join(fields))
    try:
        croniter(schedule.text, second_at_beginning=True, day_or=False)
        schedule.next_after(datetime.now(UTC))
    except CroniterBadCronError as exc:
        raise ScheduleError(f"{text!r}: {exc}") from None
    except ScheduleError:
        raise ScheduleError(f"{text!r} never occurs") from None
    return schedule


def _check_item(text: str, name: str, item: str) -> None:
    """Refuse what croniter would read but NCrontab would not, or would read otherwise."""
    match = _ITEM.fullmatch(item)
    if match is None:
        raise ScheduleError(f"{text!r}: bad {name} field item {item!r}")
    first, last = (_number(text, name, value) for value in match.group(2, 3))
    if name == "day-of-week" and 7 in (first, last):
        raise ScheduleError(f"{text!r}: day-of-week 7 is out of range 0-6 (0 is Sunday)")
    if first is not None and last is not None and first > last:
        # NCrontab reads 5-1 as 1-5; croniter wraps around (5, 6, ..., 0, 1).
        raise ScheduleError(f"{text!r}: reversed {name} range {item!r}")


def _number(text: str, name: str, value: str | None) -> int | None:
    if value is None or value.isdigit():
        return None if value is None else int(value)
    names = _NAMES.get(name, ())
    if value.lower() not in names:
        expected = f"a number or a name ({names[0]}, ...)" if names else "a number"
        raise ScheduleError(f"{text!r}: bad {name} value {value!r}: expected {expected}")
    return _FIRST[name] + names.index(value.lower())


def utc_now() -> datetime:
    """The current time in UTC: the host's clock unless WEBSITE_TIME_ZONE is set."""
    return datetime.now(UTC)


def stamp(moment: datetime) -> str:
    """``moment`` in UTC as ``2026-11-26T23:15:00Z``."""
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
