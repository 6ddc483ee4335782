"""Timer schedules as the host reads them: six-field NCRONTAB or a TimeSpan, in UTC."""

from __future__ import annotations

import re
from calendar import monthrange
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import MAXYEAR, UTC, date, datetime, timedelta
from datetime import time as dtime

# --- timer schedules ----------------------------------------------------------------------

_SETTING = re.compile(r"%([^%]+)%")
_NUMBER = re.compile(r"[0-9]+")
_TIMESPAN = re.compile(r"(?:([0-9]+)\.)?([0-9]+(?::[0-9]+){1,3})(?:\.([0-9]{1,7}))?")
"""``[d.]`` then two to four ``:``-separated numbers, then ``.fffffff``: checked further."""
_MONTH_NAMES = (
    "January", "February", "March", "April", "May", "June",
    "July", "August", "September", "October", "November", "December",
)  # fmt: skip
_DAY_NAMES = ("Sunday", "Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday")
_LONGEST_MONTH = (31, 29, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31)
_CALENDAR_CYCLE_YEARS = 400
"""The Gregorian calendar (weekdays included) repeats every 400 years."""
_FIELD_ORDER = "{second} {minute} {hour} {day} {month} {day-of-week}"


class ScheduleError(ValueError):
    """A timer schedule that is neither a six-field NCRONTAB expression nor a TimeSpan."""


@dataclass(frozen=True)
class _CronField:
    name: str
    low: int
    high: int
    names: tuple[str, ...] = ()

    def parse(self, text: str) -> tuple[int, ...]:
        """The sorted values of one field: ``*``, ``a``, ``a-b``, ``/step`` and ``,`` lists."""
        values: set[int] = set()
        for item in text.split(","):
            if not item:
                raise ScheduleError(f"empty item in the {self.name} field {text!r}")
            base, slash, step_text = item.partition("/")
            step = 1
            if slash:
                if not _NUMBER.fullmatch(step_text) or int(step_text) < 1:
                    raise ScheduleError(f"bad step {step_text!r} in the {self.name} field {text!r}")
                step = int(step_text)
            if base == "*":
                first, last = self.low, self.high
            elif "-" in base[1:]:
                start, _, end = base.partition("-")
                # NCrontab swaps a reversed range (5-1 is 1-5); it does not wrap around.
                first, last = sorted((self._value(start), self._value(end)))
            else:
                first = self._value(base)
                last = self.high if slash else first  # NCrontab: a/n is a, a+n, ... up to the max
            values.update(range(first, last + 1, step))
        return tuple(sorted(values))

    def _value(self, text: str) -> int:
        if _NUMBER.fullmatch(text):
            value = int(text)
            if not self.low <= value <= self.high:
                sunday = " (0 is Sunday)" if self.names == _DAY_NAMES else ""
                raise ScheduleError(
                    f"{self.name} {value} is out of range {self.low}-{self.high}{sunday}"
                )
            return value
        if text and self.names:
            # As NCrontab: any case-insensitive prefix of a name, first match wins (M = March).
            for index, name in enumerate(self.names):
                if name.lower().startswith(text.lower()):
                    return self.low + index
        expected = f"a number {self.low}-{self.high}"
        if self.names:
            expected += f" or a name ({self.names[0][:3]}, ...)"
        raise ScheduleError(f"bad {self.name} value {text!r}: expected {expected}")


_CRON_FIELDS = (
    _CronField("second", 0, 59),
    _CronField("minute", 0, 59),
    _CronField("hour", 0, 23),
    _CronField("day", 1, 31),
    _CronField("month", 1, 12, _MONTH_NAMES),
    _CronField("day-of-week", 0, 6, _DAY_NAMES),
)


@dataclass(frozen=True)
class CronSchedule:
    """A six-field NCRONTAB schedule; day and day-of-week must both match (as in NCrontab)."""

    text: str
    seconds: tuple[int, ...]
    minutes: tuple[int, ...]
    hours: tuple[int, ...]
    days: tuple[int, ...]
    months: tuple[int, ...]
    days_of_week: tuple[int, ...]
    """0 is Sunday, 6 Saturday."""

    def next_after(self, after: datetime) -> datetime:
        """The first occurrence strictly after ``after`` (whole seconds, UTC)."""
        start = _as_utc(after).replace(microsecond=0, tzinfo=None) + timedelta(seconds=1)
        last_year = min(start.year + _CALENDAR_CYCLE_YEARS, MAXYEAR)
        for year in range(start.year, last_year + 1):
            for month in self.months:
                if (year, month) < (start.year, start.month):
                    continue
                month_days = monthrange(year, month)[1]
                for day in self.days:
                    if day > month_days:
                        break
                    candidate = date(year, month, day)
                    if candidate < start.date():
                        continue
                    if (candidate.weekday() + 1) % 7 not in self.days_of_week:
                        continue
                    at = self._first_time(start.time() if candidate == start.date() else dtime())
                    if at is not None:
                        return datetime.combine(candidate, at, UTC)
        raise ScheduleError(f"{self.text!r} has no occurrence after {after.isoformat()}")

    def _first_time(self, earliest: dtime) -> dtime | None:
        for hour in self.hours:
            if hour < earliest.hour:
                continue
            for minute in self.minutes:
                if hour == earliest.hour and minute < earliest.minute:
                    continue
                for second in self.seconds:
                    same_minute = (hour, minute) == (earliest.hour, earliest.minute)
                    if same_minute and second < earliest.second:
                        continue
                    return dtime(hour, minute, second)
        return None


@dataclass(frozen=True)
class IntervalSchedule:
    """A TimeSpan schedule (``hh:mm:ss``): every ``interval``, counted from the last start."""

    text: str
    interval: timedelta

    def next_after(self, after: datetime) -> datetime:
        """``after`` plus the interval, as the host's ConstantSchedule."""
        return _as_utc(after) + self.interval


Schedule = CronSchedule | IntervalSchedule


def _as_utc(moment: datetime) -> datetime:
    if moment.tzinfo is None or moment.utcoffset() is None:
        raise ValueError(f"{moment.isoformat()} has no time zone; pass an aware datetime")
    return moment.astimezone(UTC)


def parse_schedule(text: str) -> Schedule:
    """Parse a timer schedule as the host does: NCRONTAB with seconds, else a TimeSpan.

    NCRONTAB has six fields ``{second} {minute} {hour} {day} {month} {day-of-week}``, each
    ``*``, a number, ``a-b``, ``*/n``, ``a-b/n``, ``a/n`` or a comma list of those; months and
    days of week also take (prefixes of) English names. The host does not accept the
    five-field form. A TimeSpan is ``[d.]hh:mm[:ss[.fffffff]]``, ``d:hh:mm:ss``, ``dd:hh:mm``
    (dd 24 or more) or a number of days.
    """
    tokens = [token for token in text.split(" ") if token]
    if not tokens:
        raise ScheduleError("the schedule is empty")
    if len(tokens) == 1:
        if _TIMESPAN.fullmatch(tokens[0]) or _NUMBER.fullmatch(tokens[0]):
            return _parse_interval(text, tokens[0])
        raise ScheduleError(
            f"{text!r} is neither an NCRONTAB expression ({_FIELD_ORDER}) nor a TimeSpan (hh:mm:ss)"
        )
    if len(tokens) != len(_CRON_FIELDS):
        hint = f" (the seconds come first: '0 {text}'?)" if len(tokens) == 5 else ""
        raise ScheduleError(
            f"{text!r} has {len(tokens)} fields, NCRONTAB has 6: {_FIELD_ORDER}{hint}"
        )
    try:
        seconds, minutes, hours, days, months, days_of_week = (
            spec.parse(token) for spec, token in zip(_CRON_FIELDS, tokens, strict=True)
        )
    except ScheduleError as exc:
        raise ScheduleError(f"{text!r}: {exc}") from None
    if not any(day <= _LONGEST_MONTH[month - 1] for month in months for day in days):
        listed = ",".join(map(str, days))
        raise ScheduleError(f"{text!r} never occurs: none of its months has a day {listed}")
    return CronSchedule(text, seconds, minutes, hours, days, months, days_of_week)


def _parse_interval(text: str, token: str) -> IntervalSchedule:
    """A .NET TimeSpan: ``d``, ``[d.]hh:mm[:ss[.f]]``, ``d:hh:mm:ss[.f]`` or ``dd:hh:mm``.

    The last when the first number is 24 or more: the Azure docs' ``24:00:00`` is 24 days.
    """
    match = _TIMESPAN.fullmatch(token)
    if match is None:  # a whole number is a number of days
        return _interval(text, timedelta(days=int(token)))
    day_prefix, clock, fraction = match.groups()
    numbers = [int(part) for part in clock.split(":")]
    days = int(day_prefix or 0)
    if day_prefix is None and len(numbers) == 4:  # d:hh:mm:ss
        days, numbers = numbers[0], numbers[1:]
    elif day_prefix is None and len(numbers) == 3 and numbers[0] >= 24 and fraction is None:
        days, numbers = numbers[0], [*numbers[1:], 0]  # dd:hh:mm
    if len(numbers) != 3 and (len(numbers) == 4 or fraction is not None):
        raise ScheduleError(f"bad TimeSpan {text!r}: expected [d.]hh:mm:ss")
    hours, minutes, seconds = [*numbers, 0][:3]
    if hours > 23 or minutes > 59 or seconds > 59:
        raise ScheduleError(f"bad TimeSpan {text!r}: hh is 0-23, mm and ss 0-59")
    interval = timedelta(
        days=days,
        hours=hours,
        minutes=minutes,
        seconds=seconds,
        microseconds=round(int((fraction or "0").ljust(7, "0")) / 10),
    )
    return _interval(text, interval)


def _interval(text: str, interval: timedelta) -> IntervalSchedule:
    if interval <= timedelta(0):
        raise ScheduleError(f"the TimeSpan {text!r} must be longer than zero")
    return IntervalSchedule(text, interval)


def next_occurrence(schedule: str | Schedule, after: datetime) -> datetime:
    """The first occurrence of ``schedule`` strictly after the aware ``after``, in UTC."""
    parsed = parse_schedule(schedule) if isinstance(schedule, str) else schedule
    return parsed.next_after(after)


def resolve_settings(text: str, settings: Mapping[str, str]) -> str:
    """Replace ``%NAME%`` with the app setting ``NAME``, as the host resolves a schedule."""

    def setting(match: re.Match[str]) -> str:
        name = match.group(1)
        if name not in settings:
            raise ScheduleError(f"app setting {name} (in {text!r}) is not set")
        return settings[name]

    return _SETTING.sub(setting, text)


def utc_now() -> datetime:
    """The current time in UTC: the host's clock unless WEBSITE_TIME_ZONE is set."""
    return datetime.now(UTC)


def _stamp(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
