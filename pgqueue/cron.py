"""Cron expressions: our own small parser, and the fire times an expression names in a time zone.

    cron = parse_cron("*/5 9-17 * * MON-FRI")               # 5 fields, or 6 with seconds first
    cron.next_after(datetime.now(UTC), load_zone("Europe/Paris"))

Fields: [second] minute hour day-of-month month day-of-week, each a list of `*`, `N`, `A-B`,
with an optional `/step`; months and weekdays also by name (JAN-DEC, SUN-SAT; 0 and 7 are
Sunday); `@yearly` (`@annually`), `@monthly`, `@weekly`, `@daily` (`@midnight`), `@hourly`.
Day-of-month and day-of-week combine as in Vixie cron: when both are restricted a day matches
either; when either field starts with `*` (`*/2` too) a day must match both.

Fire times are wall-clock times of the zone: one that does not exist there (the hour skipped
when clocks spring forward) is skipped, one that exists twice (the hour repeated in autumn)
fires once, at its first occurrence. Next and previous times are found field by field (jump to
the next matching month, day, hour, ...), never by scanning minute after minute, and every
search is bounded: a time more than SEARCH_YEARS away counts as never.

Sizes are bounded so a hostile expression cannot make us allocate or loop without limit: at
most MAX_EXPRESSION_LENGTH characters and MAX_LIST_ITEMS items per field; every field is a
small set over its fixed range whatever the expression says. Errors name the position (1-based)
and the field: ``CronError("32 is out of range 1-31 at position 5 (day-of-month field)")``.
"""

from __future__ import annotations

import bisect
import re
import zoneinfo
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta, tzinfo

MAX_EXPRESSION_LENGTH = 200
MAX_LIST_ITEMS = 60  # a seconds field may list every second once
MAX_ZONE_NAME_LENGTH = 64
SEARCH_YEARS = 30  # covers every leap-day combination (8 years apart across 2100) with room to spare
MAX_SEARCH_STEPS = 200_000  # field jumps per search, DST retries included: a bound, never reached in practice

_SECOND = timedelta(seconds=1)
_MICROSECOND = timedelta(microseconds=1)
_MONTHS = ("JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP", "OCT", "NOV", "DEC")
_WEEKDAYS = ("SUN", "MON", "TUE", "WED", "THU", "FRI", "SAT")
MACROS = {
    "@yearly": "0 0 1 1 *",
    "@annually": "0 0 1 1 *",
    "@monthly": "0 0 1 * *",
    "@weekly": "0 0 * * 0",
    "@daily": "0 0 * * *",
    "@midnight": "0 0 * * *",
    "@hourly": "0 * * * *",
}
_ZONE_NAME = re.compile(r"^[A-Za-z0-9_+\-]+(/[A-Za-z0-9_+\-]+)*$")


class CronError(ValueError):
    """An expression that does not parse; ``position`` (1-based) and ``field`` say where."""

    def __init__(self, reason: str, position: int | None = None, field: str | None = None) -> None:
        self.reason = reason
        self.position = position
        self.field = field
        where = ""
        if position is not None:
            where = f" at position {position}" + (f" ({field} field)" if field else "")
        super().__init__(reason + where)


class _Field:
    __slots__ = ("high", "low", "name", "names")

    def __init__(self, name: str, low: int, high: int, names: tuple[str, ...] = (), name_base: int = 0) -> None:
        self.name = name
        self.low = low
        self.high = high
        self.names = {text: index + name_base for index, text in enumerate(names)}


_SECONDS = _Field("second", 0, 59)
_FIELDS = (
    _Field("minute", 0, 59),
    _Field("hour", 0, 23),
    _Field("day-of-month", 1, 31),
    _Field("month", 1, 12, _MONTHS, 1),
    _Field("day-of-week", 0, 7, _WEEKDAYS, 0),
)


def _parse_field(text: str, start: int, field: _Field) -> tuple[list[int], bool]:
    """The sorted values a field names, and whether it starts with `*` (Vixie's rule for days).
    ``start`` is the field's 0-based offset in the expression, for error positions."""
    values: set[int] = set()
    items = text.split(",")
    if len(items) > MAX_LIST_ITEMS:
        offset = sum(len(item) + 1 for item in items[:MAX_LIST_ITEMS])
        raise CronError(f"more than {MAX_LIST_ITEMS} list items", start + offset + 1, field.name)
    offset = start
    for item in items:
        values.update(_parse_item(item, offset, field))
        offset += len(item) + 1
    return sorted(values), text.startswith("*")


def _parse_item(item: str, start: int, field: _Field) -> range:
    """One list item: `*`, `N`, `A-B`, each with an optional `/step` (`N/step` runs to the field's end)."""
    if not item:
        raise CronError("empty list item", start + 1, field.name)
    base, slash, step_text = item.partition("/")
    if base == "*":
        low, high = field.low, field.high
    else:
        first, dash, last = base.partition("-")
        low = _parse_value(first, start, field)
        if dash:
            high = _parse_value(last, start + len(first) + 1, field)
            if high < low:
                raise CronError(f"range {first}-{last} goes backwards (wrap-around ranges are not supported)",
                                start + 1, field.name)
        else:
            high = field.high if slash else low
    step = 1
    if slash:
        position = start + len(base) + 1
        if not step_text.isascii() or not step_text.isdigit():
            raise CronError(f"step {step_text!r} is not a number", position + 1, field.name)
        if len(step_text) > 3 or not 1 <= int(step_text) <= field.high - field.low + 1:
            raise CronError(f"step {step_text} must be from 1 to {field.high - field.low + 1}", position + 1,
                            field.name)
        step = int(step_text)
    return range(low, high + 1, step)


def _parse_value(text: str, start: int, field: _Field) -> int:
    position = start + 1
    if not text:
        raise CronError("a number is missing", position, field.name)
    if text.isascii() and text.isdigit():
        value = int(text) if len(text) <= 3 else None
        if value is None or not field.low <= value <= field.high:
            raise CronError(f"{text[:10]} is out of range {field.low}-{field.high}", position, field.name)
        return value
    if text.upper() in field.names:
        return field.names[text.upper()]
    for offset, char in enumerate(text):
        if not (char.isascii() and char.isalnum()) and char != "*":
            raise CronError(f"unexpected character {char!r}", position + offset, field.name)
    if field.names:
        raise CronError(f"{text[:10]!r} is not a number or a name ({', '.join(field.names)})", position, field.name)
    if "*" in text:
        raise CronError("`*` stands alone (or as `*/step`)", position + text.index("*"), field.name)
    raise CronError(f"{text[:10]!r} is not a number", position, field.name)


class CronExpression:
    """A parsed expression; ``next_after`` / ``previous_at_or_before`` / ``iter_after`` give fire times."""

    __slots__ = ("_days", "_dom_star", "_dow_star", "_hours", "_minutes", "_month_set", "_months", "_seconds",
                 "_weekdays", "expression", "has_seconds")

    def __init__(self, expression: str, fields: list[list[int]], stars: list[bool], has_seconds: bool) -> None:
        self.expression = expression
        self.has_seconds = has_seconds
        self._seconds, self._minutes, self._hours, self._days, self._months, weekdays = fields
        self._weekdays = frozenset(day % 7 for day in weekdays)  # 7 is Sunday too
        self._month_set = frozenset(self._months)
        self._dom_star, self._dow_star = stars[3], stars[5]

    def __repr__(self) -> str:
        return f"CronExpression({self.expression!r})"

    # -- matching wall-clock times -------------------------------------------------------------

    def _day_matches(self, day: date) -> bool:
        dom = day.day in self._days
        dow = day.isoweekday() % 7 in self._weekdays
        return (dom and dow) if (self._dom_star or self._dow_star) else (dom or dow)

    def _next_wall(self, t: datetime, limit: datetime, budget: list[int]) -> datetime | None:
        """The first matching wall-clock time at or after ``t`` (naive, whole seconds), or None past ``limit``."""
        while budget[0] > 0:
            budget[0] -= 1
            if t > limit:
                return None
            if t.month not in self._month_set:
                later = bisect.bisect_right(self._months, t.month)
                if later < len(self._months):
                    t = datetime(t.year, self._months[later], 1)
                elif t.year < 9999:
                    t = datetime(t.year + 1, self._months[0], 1)
                else:
                    return None
                continue
            if not self._day_matches(t.date()):
                if t.date() == date.max:
                    return None
                t = _start_of_next_day(t)
                continue
            if t.hour not in self._hours:
                later = bisect.bisect_right(self._hours, t.hour)
                if later < len(self._hours):
                    t = t.replace(hour=self._hours[later], minute=0, second=0)
                elif t.date() == date.max:
                    return None
                else:
                    t = _start_of_next_day(t)
                continue
            if t.minute not in self._minutes:
                later = bisect.bisect_right(self._minutes, t.minute)
                if later < len(self._minutes):
                    t = t.replace(minute=self._minutes[later], second=0)
                else:
                    t = t.replace(minute=0, second=0) + timedelta(hours=1)
                continue
            if t.second not in self._seconds:
                later = bisect.bisect_right(self._seconds, t.second)
                if later < len(self._seconds):
                    t = t.replace(second=self._seconds[later])
                else:
                    t = t.replace(second=0) + timedelta(minutes=1)
                continue
            return t
        return None

    def _previous_wall(self, t: datetime, limit: datetime, budget: list[int]) -> datetime | None:
        """The last matching wall-clock time at or before ``t`` (naive, whole seconds), or None before ``limit``."""
        while budget[0] > 0:
            budget[0] -= 1
            if t < limit:
                return None
            if t.month not in self._month_set:
                earlier = bisect.bisect_left(self._months, t.month) - 1
                if earlier >= 0:
                    t = _end_of_month(t.year, self._months[earlier])
                elif t.year > 1:
                    t = _end_of_month(t.year - 1, self._months[-1])
                else:
                    return None
                continue
            if not self._day_matches(t.date()):
                if t.date() == date.min:
                    return None
                t = datetime.combine(t.date() - timedelta(days=1), datetime.max.time()).replace(microsecond=0)
                continue
            if t.hour not in self._hours:
                earlier = bisect.bisect_left(self._hours, t.hour) - 1
                if earlier >= 0:
                    t = t.replace(hour=self._hours[earlier], minute=59, second=59)
                else:
                    if t.date() == date.min:
                        return None
                    t = t.replace(hour=0, minute=0, second=0) - _SECOND
                continue
            if t.minute not in self._minutes:
                earlier = bisect.bisect_left(self._minutes, t.minute) - 1
                if earlier >= 0:
                    t = t.replace(minute=self._minutes[earlier], second=59)
                else:
                    t = t.replace(minute=0, second=0) - _SECOND
                continue
            if t.second not in self._seconds:
                earlier = bisect.bisect_left(self._seconds, t.second) - 1
                t = t.replace(second=self._seconds[earlier]) if earlier >= 0 else t.replace(second=0) - _SECOND
                continue
            return t
        return None

    # -- fire times (aware datetimes in UTC) ---------------------------------------------------

    def next_after(self, moment: datetime, zone: tzinfo = UTC) -> datetime | None:
        """The first fire time strictly after ``moment`` (an aware datetime), in UTC; None if none
        within SEARCH_YEARS."""
        moment = moment.astimezone(UTC)
        # From the wall time of `moment` on; in the repeated autumn hour the wall times just after it
        # may be first occurrences earlier than `moment`: the loop below steps over those.
        try:
            wall = moment.astimezone(zone).replace(tzinfo=None, microsecond=0) + _SECOND
            limit = datetime(min(wall.year + SEARCH_YEARS, 9999), 12, 31, 23, 59, 59)
        except (OverflowError, ValueError):
            return None
        budget = [MAX_SEARCH_STEPS]
        while True:
            try:
                found = self._next_wall(wall, limit, budget)
            except OverflowError:  # past 9999-12-31
                return None
            if found is None:
                return None
            instant = _instant(found, zone)
            if instant is not None and instant > moment:
                return instant
            if found >= datetime.max.replace(microsecond=0):
                return None
            wall = found + _SECOND  # a time skipped by DST, or the repeated hour's second pass

    def previous_at_or_before(self, moment: datetime, zone: tzinfo = UTC) -> datetime | None:
        """The last fire time at or before ``moment``, in UTC; None if none within SEARCH_YEARS."""
        moment = moment.astimezone(UTC)
        # The latest wall time whose first occurrence can lie before `moment`: inside the repeated
        # autumn hour, `moment` may be the second occurrence, whose wall time is an hour behind.
        offset = moment.astimezone(zone).replace(fold=0).utcoffset() or timedelta(0)
        try:
            wall = (moment + offset).replace(tzinfo=None, microsecond=0)
            limit = datetime(max(wall.year - SEARCH_YEARS, 1), 1, 1)
        except (OverflowError, ValueError):
            return None
        budget = [MAX_SEARCH_STEPS]
        while True:
            try:
                found = self._previous_wall(wall, limit, budget)
            except OverflowError:  # before 0001-01-01
                return None
            if found is None:
                return None
            instant = _instant(found, zone)
            if instant is not None and instant <= moment:
                return instant
            if found <= datetime.min:
                return None
            wall = found - _SECOND

    def next_at_or_after(self, moment: datetime, zone: tzinfo = UTC) -> datetime | None:
        return self.next_after(moment - _MICROSECOND, zone)

    def iter_after(self, moment: datetime, zone: tzinfo = UTC) -> Iterator[datetime]:
        """Fire times after ``moment``, in order (take as many as you need)."""
        current: datetime | None = moment
        while current is not None:
            current = self.next_after(current, zone)
            if current is not None:
                yield current

    def next_times(self, moment: datetime, zone: tzinfo = UTC, count: int = 3) -> list[datetime]:
        out: list[datetime] = []
        for fire in self.iter_after(moment, zone):
            if len(out) >= count:
                break
            out.append(fire)
        return out


def _start_of_next_day(t: datetime) -> datetime:
    return datetime.combine(t.date() + timedelta(days=1), datetime.min.time())


def _end_of_month(year: int, month: int) -> datetime:
    first_of_next = date(year + 1, 1, 1) if month == 12 else date(year, month + 1, 1)
    return datetime.combine(first_of_next - timedelta(days=1), datetime.max.time()).replace(microsecond=0)


def _instant(wall: datetime, zone: tzinfo) -> datetime | None:
    """The UTC instant of a wall-clock time in ``zone``: its first occurrence when it happens twice,
    None when it never happens (skipped when the clocks sprang forward)."""
    try:
        instant = wall.replace(tzinfo=zone, fold=0).astimezone(UTC)
        if instant.astimezone(zone).replace(tzinfo=None) != wall:
            return None
    except OverflowError:
        return None
    return instant


def parse_cron(expression: str) -> CronExpression:
    """Parse 5 fields (minute hour day-of-month month day-of-week), 6 with a leading seconds
    field, or a macro such as ``@daily``. Raises CronError naming where it went wrong."""
    if not isinstance(expression, str):
        raise CronError("a cron expression must be a string")
    if len(expression) > MAX_EXPRESSION_LENGTH:
        raise CronError(f"longer than {MAX_EXPRESSION_LENGTH} characters", MAX_EXPRESSION_LENGTH + 1)
    for index, char in enumerate(expression):
        if not char.isascii() or (not char.isprintable() and char != "\t"):
            raise CronError(f"unexpected character {char!r}", index + 1)
    text = expression.strip(" \t")
    lead = len(expression) - len(expression.lstrip(" \t"))
    if not text:
        raise CronError("the expression is empty")
    if text.startswith("@"):
        macro = MACROS.get(text.lower())
        if macro is None:
            if text.lower() == "@reboot":
                raise CronError("@reboot is not supported (a schedule fires at times, not at start-up)", lead + 1)
            raise CronError(f"unknown macro {text[:20]!r}; expected one of {', '.join(MACROS)}", lead + 1)
        return _parse_fields(macro, expression, [(m.start(), m.group()) for m in re.finditer(r"[^ \t]+", macro)],
                             at_macro=lead)
    parts = [(m.start(), m.group()) for m in re.finditer(r"[^ \t]+", expression)]
    return _parse_fields(expression, expression, parts)


def _parse_fields(text: str, original: str, parts: list[tuple[int, str]], at_macro: int | None = None) -> CronExpression:
    if len(parts) not in (5, 6):
        position = parts[6][0] + 1 if len(parts) > 6 else None
        raise CronError(f"expected 5 fields (minute hour day-of-month month day-of-week) or 6 (seconds first), "
                        f"got {len(parts)}", position)
    has_seconds = len(parts) == 6
    layout = (_SECONDS, *_FIELDS) if has_seconds else _FIELDS
    fields: list[list[int]] = [] if has_seconds else [[0]]
    stars: list[bool] = [] if has_seconds else [False]
    for (start, part), field in zip(parts, layout, strict=True):
        try:
            values, star = _parse_field(part, start, field)
        except CronError as exc:
            if at_macro is not None:  # a macro's expansion never fails; kept for safety
                raise CronError(exc.reason, at_macro + 1) from None
            raise
        fields.append(values)
        stars.append(star)
    return CronExpression(original, fields, stars, has_seconds)


def load_zone(name: str) -> tzinfo:
    """An IANA time zone by name (``Europe/Paris``, ``UTC``); ValueError for an unknown one."""
    if not isinstance(name, str) or not name or len(name) > MAX_ZONE_NAME_LENGTH or not _ZONE_NAME.match(name):
        raise ValueError(f"unknown time zone {str(name)[:MAX_ZONE_NAME_LENGTH]!r}: expected an IANA name such as "
                         "Europe/Paris or UTC")
    if name.upper() == "UTC":
        return UTC
    try:
        return zoneinfo.ZoneInfo(name)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError, OSError):
        raise ValueError(f"unknown time zone {name!r}: expected an IANA name such as Europe/Paris or UTC") from None
