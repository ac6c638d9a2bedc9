"""A cron expression in words, for people: ``describe_cron("*/5 9-17 * * MON-FRI")`` is
"every 5 minutes, from 09:00 through 17:59, on Monday through Friday".

Only expressions ``pgqueue.cron.parse_cron`` accepts are described (it is called first, so a bad
one raises its CronError); the words follow the expression's own fields, so a list stays a list.
"""

from __future__ import annotations

from collections.abc import Callable

from pgqueue.cron import MACROS, parse_cron

_MONTHS = ("January", "February", "March", "April", "May", "June", "July", "August", "September", "October",
           "November", "December")
_MONTH_NAMES = tuple(name[:3].upper() for name in _MONTHS)
_DAYS = ("Sunday", "Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")
_DAY_NAMES = ("SUN", "MON", "TUE", "WED", "THU", "FRI", "SAT")


def _value(text: str, names: tuple[str, ...], base: int) -> int:
    upper = text.upper()
    return names.index(upper) + base if upper in names else int(text)


def _join(words: list[str]) -> str:
    return words[0] if len(words) == 1 else ", ".join(words[:-1]) + " and " + words[-1]


def _field_words(field: str, show: Callable[[int], str], names: tuple[str, ...] = (), base: int = 0) -> str:
    """One field's items in words: "5", "9 through 17", "every 2nd from 1 through 9"."""
    items = []
    for item in field.split(","):
        span, _, step = item.partition("/")
        if span == "*":
            items.append(f"every {step}" if step else "every")
            continue
        low_text, _, high_text = span.partition("-")
        low = show(_value(low_text, names, base))
        if high_text:
            text = f"{low} through {show(_value(high_text, names, base))}"
        else:
            text = f"{low} onwards" if step else low
        items.append(f"every {_ordinal(int(step))} from {text}" if step else text)
    return _join(items)


def _ordinal(n: int) -> str:
    suffix = "th" if 10 <= n % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(n % 10, "th")
    return f"{n}{suffix}"


def _single(field: str) -> bool:
    return field.isdigit()


def _time_words(second: str | None, minute: str, hour: str) -> str:
    sec = second or "0"
    if _single(minute) and _single(hour) and _single(sec):
        clock = f"{int(hour):02d}:{int(minute):02d}" + (f":{int(sec):02d}" if int(sec) else "")
        return f"at {clock}"
    if second is not None and not _single(second):
        if second == "*":
            seconds = "every second"
        elif second.startswith("*/"):
            seconds = f"every {second[2:]} seconds"
        else:
            seconds = f"at second {_field_words(second, str)}"
        if minute == "*" and hour == "*":
            return seconds
        return f"{seconds}, {_minute_hour_words(minute, hour)}"
    prefix = f"at second {int(sec)}, " if int(sec) else ""
    return prefix + _minute_hour_words(minute, hour, leading=True)


def _minute_hour_words(minute: str, hour: str, *, leading: bool = False) -> str:
    every_minute = minute == "*" or minute.startswith("*/")
    if minute == "*":
        minutes = "every minute" if leading else "of every minute"
    elif minute.startswith("*/"):
        minutes = f"every {minute[2:]} minutes"
    elif minute == "0" and hour != "*":
        minutes = "on the hour"
    else:
        minutes = f"at minute {_field_words(minute, str)}"
    if hour == "*":
        if minute == "0":
            return "every hour, on the hour"
        return minutes if every_minute else f"{minutes} of every hour"
    if hour.startswith("*/") and "," not in hour:
        return f"every {hour[2:]} hours, {minutes}" if not every_minute else f"{minutes}, every {hour[2:]} hours"
    if _single(hour):
        if every_minute:
            return f"{minutes}, from {int(hour):02d}:00 through {int(hour):02d}:59"
        return f"{minutes} past {int(hour):02d}:00"
    if "," not in hour and "/" not in hour and "-" in hour:
        low, high = hour.split("-")
        if every_minute:
            return f"{minutes}, from {int(low):02d}:00 through {int(high):02d}:59"
        return f"every hour {minutes}, from {int(low):02d}:00 through {int(high):02d}:00"
    return f"{minutes}, in hour {_field_words(hour, lambda h: f'{h:02d}')}"


def describe_cron(expression: str) -> str:
    """The expression in words (English), time zone not included."""
    parse_cron(expression)  # a bad expression raises here, with the position
    text = expression.strip(" \t")
    macro = MACROS.get(text.lower())
    fields = (macro or text).split()
    second = fields.pop(0) if len(fields) == 6 else None
    minute, hour, day, month, weekday = fields
    words = [_time_words(second, minute, hour)]
    if day == weekday == "*" and words[0].startswith("at ") and _single(hour):
        words[0] = "every day " + words[0]
    days = []
    if day != "*":
        days.append(f"on day {_field_words(day, str)} of the month")
    if weekday != "*":
        days.append(f"on {_field_words(weekday, lambda d: _DAYS[d], _DAY_NAMES)}")
    if len(days) == 2 and not day.startswith("*") and not weekday.startswith("*"):
        words.append(" or ".join(days))  # Vixie cron: both restricted, a day matches either
    elif days:
        words.append(" and ".join(days))
    if month != "*":
        words.append(f"in {_field_words(month, lambda m: _MONTHS[m - 1], _MONTH_NAMES, 1)}")
    return ", ".join(words)
