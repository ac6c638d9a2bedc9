"""The cron parser (pgqueue/cron.py): a table of expressions and their next fire times, hostile
input, DST transitions of a real zone (Europe/Paris), and a brute-force cross-check of the
field-by-field search against scanning second by second."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta

import pytest

from pgqueue.cron import MAX_EXPRESSION_LENGTH, CronError, load_zone, parse_cron

PARIS = load_zone("Europe/Paris")
NEW_YORK = load_zone("America/New_York")


def utc(*parts: int) -> datetime:
    return datetime(*parts, tzinfo=UTC)


def paris(*parts: int, fold: int = 0) -> datetime:
    """A Paris wall time as its UTC instant (aware datetimes in a fold compare unequal across
    zones, PEP 495, so comparisons are made in UTC)."""
    return datetime(*parts, tzinfo=PARIS, fold=fold).astimezone(UTC)


# (expression, after, zone, the next fire times after it)
TABLE = [
    ("* * * * *", utc(2024, 1, 1, 0, 0, 30), UTC, [utc(2024, 1, 1, 0, 1), utc(2024, 1, 1, 0, 2)]),
    ("*/5 * * * *", utc(2024, 1, 1, 0, 3), UTC, [utc(2024, 1, 1, 0, 5), utc(2024, 1, 1, 0, 10)]),
    ("0 * * * *", utc(2024, 1, 1, 0, 0), UTC, [utc(2024, 1, 1, 1), utc(2024, 1, 1, 2)]),  # strictly after
    ("15,45 9-10 * * *", utc(2024, 1, 1, 9, 20), UTC,
     [utc(2024, 1, 1, 9, 45), utc(2024, 1, 1, 10, 15), utc(2024, 1, 1, 10, 45), utc(2024, 1, 2, 9, 15)]),
    ("0 9 * * MON-FRI", utc(2024, 1, 5, 10), UTC, [utc(2024, 1, 8, 9), utc(2024, 1, 9, 9)]),  # Fri -> Mon
    ("0 9 * * mon,wed,FRI", utc(2024, 1, 1, 10), UTC, [utc(2024, 1, 3, 9), utc(2024, 1, 5, 9), utc(2024, 1, 8, 9)]),
    ("0 0 * * 7", utc(2024, 1, 1), UTC, [utc(2024, 1, 7), utc(2024, 1, 14)]),  # 7 is Sunday, like 0
    ("0 0 * * 5-7", utc(2024, 1, 1), UTC, [utc(2024, 1, 5), utc(2024, 1, 6), utc(2024, 1, 7), utc(2024, 1, 12)]),
    ("0 0 1 JAN,jul *", utc(2024, 2, 1), UTC, [utc(2024, 7, 1), utc(2025, 1, 1)]),
    ("0 0 31 * *", utc(2024, 1, 31, 1), UTC, [utc(2024, 3, 31), utc(2024, 5, 31)]),  # months without a 31st
    ("0 0 29 2 *", utc(2024, 3, 1), UTC, [utc(2028, 2, 29), utc(2032, 2, 29)]),
    ("0 0 29 2 *", utc(2097, 1, 1), UTC, [utc(2104, 2, 29)]),  # 2100 is no leap year
    # Vixie: both day fields restricted -> either matches (the 13th, or any Friday)
    ("0 0 13 * FRI", utc(2024, 9, 1), UTC, [utc(2024, 9, 6), utc(2024, 9, 13), utc(2024, 9, 20), utc(2024, 9, 27)]),
    # ... but a field starting with * (even */2) makes it AND: odd days that are Mondays
    ("0 0 */2 * MON", utc(2024, 1, 1), UTC, [utc(2024, 1, 15), utc(2024, 1, 29), utc(2024, 2, 5)]),
    ("0 0 * * */3", utc(2024, 1, 1), UTC, [utc(2024, 1, 3), utc(2024, 1, 6), utc(2024, 1, 7)]),  # Sun, Wed, Sat
    ("10-20/5 * * * *", utc(2024, 1, 1, 0, 11), UTC, [utc(2024, 1, 1, 0, 15), utc(2024, 1, 1, 0, 20), utc(2024, 1, 1, 1, 10)]),
    ("50/5 * * * *", utc(2024, 1, 1, 0, 0), UTC, [utc(2024, 1, 1, 0, 50), utc(2024, 1, 1, 0, 55), utc(2024, 1, 1, 1, 50)]),
    ("@hourly", utc(2024, 1, 1, 0, 30), UTC, [utc(2024, 1, 1, 1)]),
    ("@daily", utc(2024, 1, 1, 0, 30), UTC, [utc(2024, 1, 2)]),
    ("@midnight", utc(2024, 1, 1, 0, 30), UTC, [utc(2024, 1, 2)]),
    ("@weekly", utc(2024, 1, 1), UTC, [utc(2024, 1, 7)]),
    ("@monthly", utc(2024, 1, 15), UTC, [utc(2024, 2, 1)]),
    ("@yearly", utc(2024, 1, 15), UTC, [utc(2025, 1, 1)]),
    ("@ANNUALLY", utc(2024, 1, 15), UTC, [utc(2025, 1, 1)]),
    ("  0   12 * *\tSUN  ", utc(2024, 1, 1), UTC, [utc(2024, 1, 7, 12)]),
    # six fields: seconds first
    ("*/20 * * * * *", utc(2024, 1, 1, 0, 0, 1), UTC, [utc(2024, 1, 1, 0, 0, 20), utc(2024, 1, 1, 0, 0, 40), utc(2024, 1, 1, 0, 1)]),
    ("30 0 12 * * *", utc(2024, 1, 1, 12, 0, 30), UTC, [utc(2024, 1, 2, 12, 0, 30)]),
    ("* * * * * *", datetime(2024, 1, 1, 0, 0, 0, 500_000, tzinfo=UTC), UTC, [utc(2024, 1, 1, 0, 0, 1), utc(2024, 1, 1, 0, 0, 2)]),
    # a zone: 09:00 in Paris is 08:00 UTC in winter, 07:00 UTC in summer
    ("0 9 * * *", utc(2024, 1, 1), PARIS, [utc(2024, 1, 1, 8), utc(2024, 1, 2, 8)]),
    ("0 9 * * *", utc(2024, 7, 1), PARIS, [utc(2024, 7, 1, 7), utc(2024, 7, 2, 7)]),
    ("0 0 1 1 *", utc(9998, 6, 1), UTC, [utc(9999, 1, 1)]),
    ("0 0 1 1 *", utc(9999, 6, 1), UTC, []),  # nothing after 9999
    ("0 0 30 2 *", utc(2024, 1, 1), UTC, []),  # February 30th never comes
    ("0 0 31 4,6,9,11 *", utc(2024, 1, 1), UTC, []),
]


@pytest.mark.parametrize(("expression", "after", "zone", "expected"), TABLE,
                         ids=[f"{row[0]!r}@{row[1]:%Y-%m-%dT%H:%M:%S}" for row in TABLE])
def test_next_fire_times(expression: str, after: datetime, zone, expected: list[datetime]) -> None:
    assert parse_cron(expression).next_times(after, zone, len(expected) or 1) == expected


# Hostile or broken input: the error says what and where (1-based position, field).
BAD = [
    ("", "empty", None, None),
    ("* * * *", "expected 5 fields", None, None),
    ("* * * * * * *", "got 7", 13, None),
    ("60 * * * *", "60 is out of range 0-59", 1, "minute"),
    ("* 24 * * *", "24 is out of range 0-23", 3, "hour"),
    ("* * 0 * *", "0 is out of range 1-31", 5, "day-of-month"),
    ("* * 32 * *", "32 is out of range 1-31", 5, "day-of-month"),
    ("* * * 13 *", "13 is out of range 1-12", 7, "month"),
    ("* * * * 8", "8 is out of range 0-7", 9, "day-of-week"),
    ("99999999999999999999 * * * *", "out of range", 1, "minute"),
    ("*/0 * * * *", "step 0 must be from 1 to 60", 3, "minute"),
    ("*/61 * * * *", "step 61 must be from 1 to 60", 3, "minute"),
    ("*/ * * * *", "is not a number", 3, "minute"),
    ("*/x * * * *", "step 'x' is not a number", 3, "minute"),
    ("5-1 * * * *", "goes backwards", 1, "minute"),
    ("* * * * FRI-MON", "goes backwards", 9, "day-of-week"),
    ("1-2-3 * * * *", "unexpected character '-'", 4, "minute"),
    ("1,,2 * * * *", "empty list item", 3, "minute"),
    ("1, * * * *", "empty list item", 3, "minute"),
    ("* * * * MONDAY", "not a number or a name", 9, "day-of-week"),
    ("* * * FOO *", "not a number or a name", 7, "month"),
    ("JAN * * * *", "is not a number", 1, "minute"),  # names only where they belong
    ("* * L * *", "is not a number", 5, "day-of-month"),
    ("* * * * 5#3", "unexpected character '#'", 10, "day-of-week"),
    ("* * ? * *", "unexpected character '?'", 5, "day-of-month"),
    ("*5 * * * *", "stands alone", 1, "minute"),
    ("* * * * * \u00e9", "unexpected character", 11, None),
    ("* * * * *\n* * * * *", "unexpected character '\\n'", 10, None),
    ("@reboot", "not supported", 1, None),
    ("@every 5m", "unknown macro", 1, None),
    ("@daily *", "unknown macro", 1, None),
    ("x" * (MAX_EXPRESSION_LENGTH + 1), "longer than 200 characters", MAX_EXPRESSION_LENGTH + 1, None),
    (",".join(["1"] * 61) + " * * * *", "more than 60 list items", 121, "minute"),
]


@pytest.mark.parametrize(("expression", "message", "position", "field"), BAD, ids=[row[0][:30] for row in BAD])
def test_bad_expressions_say_where(expression: str, message: str, position: int | None, field: str | None) -> None:
    with pytest.raises(CronError) as caught:
        parse_cron(expression)
    assert message in str(caught.value)
    assert caught.value.position == position
    assert caught.value.field == field
    if position is not None:
        assert f"at position {position}" in str(caught.value)


def test_hostile_expressions_stay_small_and_fast() -> None:
    """The longest lists and ranges the limits allow parse into the fixed-size field sets, and a
    search that never finds anything gives up within its bounds."""
    widest = ",".join(f"{i}-59" for i in range(0, 33))  # 33 overlapping ranges, 184 characters
    assert len(widest) <= MAX_EXPRESSION_LENGTH - 10
    started = time.monotonic()
    cron = parse_cron(f"{widest} * * * *")
    assert len(cron._minutes) <= 60
    never = parse_cron("0 0 31 2 *")
    assert never.next_after(utc(2024, 1, 1)) is None
    assert never.previous_at_or_before(utc(2024, 1, 1)) is None
    rare = parse_cron("59 23 31 12 5")  # Dec 31st or a Friday in December: OR semantics
    assert rare.next_after(utc(2024, 1, 1)) == utc(2024, 12, 6, 23, 59)
    assert time.monotonic() - started < 5  # generous: a runaway search would take minutes


def test_zones() -> None:
    assert load_zone("UTC") is UTC
    assert str(load_zone("Europe/Paris")) == "Europe/Paris"
    for bad in ["Mars/Olympus", "", "../../etc/passwd", "Europe/Paris\x00", "x" * 100, "Europe//Paris", "/etc/localtime"]:
        with pytest.raises(ValueError, match="unknown time zone"):
            load_zone(bad)


# -- DST: Europe/Paris springs forward on 2024-03-31 (02:00 -> 03:00) and falls back on
# 2024-10-27 (03:00 -> 02:00). A fire time that does not exist is skipped once; one that exists
# twice fires once, at its first occurrence.


def test_spring_forward_skips_the_missing_time_once() -> None:
    daily = parse_cron("30 2 * * *")
    fires = daily.next_times(utc(2024, 3, 29), PARIS, 3)
    assert fires == [paris(2024, 3, 29, 2, 30), paris(2024, 3, 30, 2, 30),
                                                    paris(2024, 4, 1, 2, 30)]  # no 2024-03-31 02:30
    half_hourly = parse_cron("*/30 * * * *")
    local = [f.astimezone(PARIS).strftime("%H:%M%z") for f in half_hourly.next_times(utc(2024, 3, 31, 0, 15), PARIS, 4)]
    assert local == ["01:30+0100", "03:00+0200", "03:30+0200", "04:00+0200"]
    # every fire time is an instant of its own, an hour apart where the hour was skipped
    per_second = parse_cron("* * 2 * * *")  # every second of the 02:00 hour
    assert per_second.next_after(utc(2024, 3, 31, 0, 59, 59), PARIS) == paris(2024, 4, 1, 2, 0, 0)


def test_fall_back_runs_the_repeated_time_once() -> None:
    daily = parse_cron("30 2 * * *")
    fires = daily.next_times(utc(2024, 10, 26), PARIS, 3)
    assert fires == [paris(2024, 10, 26, 2, 30), paris(2024, 10, 27, 2, 30),
                                                    paris(2024, 10, 28, 2, 30)]
    assert fires[1] == utc(2024, 10, 27, 0, 30)  # the first 02:30 (CEST), not the second
    half_hourly = parse_cron("*/30 * * * *")
    fires = half_hourly.next_times(utc(2024, 10, 26, 23, 15), PARIS, 5)
    assert [f.astimezone(PARIS).strftime("%H:%M%z") for f in fires] == [
        "01:30+0200", "02:00+0200", "02:30+0200", "03:00+0100", "03:30+0100"]
    # asked from inside the repeated hour's second pass, it goes on after it
    assert half_hourly.next_after(paris(2024, 10, 27, 2, 10, fold=1), PARIS) == paris(2024, 10, 27, 3, 0)
    assert half_hourly.previous_at_or_before(paris(2024, 10, 27, 2, 10, fold=1), PARIS) == paris(2024, 10, 27, 2, 30)
    hourly = parse_cron("0 * * * *")
    assert [f.astimezone(PARIS).strftime("%H%z") for f in hourly.next_times(utc(2024, 10, 26, 23, 30), PARIS, 3)] == [
        "02+0200", "03+0100", "04+0100"]


def test_new_york_transitions_too() -> None:
    daily = parse_cron("30 2 * * *")  # 2024-03-10 02:30 does not exist in New York
    assert daily.next_after(utc(2024, 3, 10), NEW_YORK) == datetime(2024, 3, 11, 2, 30, tzinfo=NEW_YORK)
    repeated = parse_cron("30 1 * * *")  # 2024-11-03 01:30 happens twice there: the EDT one fires
    assert repeated.next_times(utc(2024, 11, 3), NEW_YORK, 2) == [utc(2024, 11, 3, 5, 30), utc(2024, 11, 4, 6, 30)]


def _brute_force(expression: str, start: datetime, end: datetime, zone) -> list[datetime]:
    """Every UTC second in [start, end) whose wall time in `zone` matches, each wall time once."""
    cron = parse_cron(expression)
    seen: set[datetime] = set()
    out = []
    moment = start
    while moment < end:
        wall = moment.astimezone(zone).replace(tzinfo=None)
        dom = wall.day in cron._days
        dow = wall.isoweekday() % 7 in cron._weekdays
        day = (dom and dow) if (cron._dom_star or cron._dow_star) else (dom or dow)
        if (wall.month in cron._months and day and wall.hour in cron._hours and wall.minute in cron._minutes
                and wall.second in cron._seconds and wall not in seen):
            seen.add(wall)
            out.append(moment)
        moment += timedelta(seconds=1 if cron.has_seconds else 60)
    return out


@pytest.mark.parametrize(("expression", "start", "days"), [
    ("*/7 1-3 * * *", utc(2024, 3, 30), 3),
    ("0,30 * 27,31 3,10 *", utc(2024, 3, 26), 6),
    ("15 2 * * SUN", utc(2024, 10, 20), 14),
    ("*/20 * 2 * * *", utc(2024, 10, 26, 23), 1),
    ("*/13 0-3 * * *", utc(2024, 10, 26, 22), 1),
])
def test_field_by_field_search_matches_scanning(expression: str, start: datetime, days: int) -> None:
    """Across both Paris transitions, the search gives exactly what checking every time gives
    (first occurrence only for a repeated wall time), forward and backward."""
    end = start + timedelta(days=days)
    expected = _brute_force(expression, start, end, PARIS)
    cron = parse_cron(expression)
    found = [f for f in _take_until(cron.iter_after(start - timedelta(seconds=1), PARIS), end)]
    assert found == expected
    for fire in expected[1:50]:
        assert cron.previous_at_or_before(fire, PARIS) == fire
        assert cron.previous_at_or_before(fire - timedelta(microseconds=1), PARIS) == expected[expected.index(fire) - 1]


def _take_until(fires, end: datetime) -> list[datetime]:
    out = []
    for fire in fires:
        if fire >= end:
            break
        out.append(fire)
    return out
