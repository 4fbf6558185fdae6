"""Durations as people write them, and the ones refused because they are ambiguous."""

from __future__ import annotations

from datetime import timedelta

import pytest

from nixfarm.durations import describe, parse_duration
from nixfarm.errors import InvalidInput


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("30d", timedelta(days=30)),
        ("2w", timedelta(weeks=2)),
        ("12h", timedelta(hours=12)),
        ("90min", timedelta(minutes=90)),
        ("45s", timedelta(seconds=45)),
        ("1.5d", timedelta(hours=36)),
        ("1h30min", timedelta(minutes=90)),
        ("1h 30min", timedelta(minutes=90)),
        (" 3 days ", timedelta(days=3)),
        ("2 Weeks", timedelta(weeks=2)),
        ("10 minutes", timedelta(minutes=10)),
    ],
)
def test_units_people_write(text: str, expected: timedelta) -> None:
    assert parse_duration(text) == expected


def test_one_m_is_refused_as_ambiguous() -> None:
    with pytest.raises(InvalidInput) as refused:
        parse_duration("1m", field="older_than")
    assert refused.value.field == "older_than"
    assert refused.value.message == (
        "'1m' is ambiguous: 'm' could mean minutes or months; write 1min for minutes, "
        "or days (30d) for a month"
    )


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("3mo", "months and years have no fixed length; write days instead"),
        ("1y", "months and years have no fixed length"),
        ("30", "'30' has no unit: write e.g. 30d or 30h"),
        ("30x", "unknown unit 'x'; use s, min, h, d or w"),
        ("-1d", "is not a duration"),
        ("d", "is not a duration"),
        ("", "expected a duration such as 30d, 2w, 12h, 90min or 45s, got nothing"),
        ("1e400d", "unknown unit 'e'"),
        ("99999999999999999w", "too long a duration"),
    ],
)
def test_refused_in_one_sentence(text: str, says: str) -> None:
    with pytest.raises(InvalidInput) as refused:
        parse_duration(text)
    assert says in refused.value.message
    assert "\n" not in refused.value.message


def test_describe_round_trips() -> None:
    for text in ("2w", "1d 2h 3min 4s", "45s"):
        assert describe(parse_duration(text)) == text
    assert describe(timedelta(0)) == "0s"


def test_describe_its_largest_parts() -> None:
    ran = timedelta(hours=1, minutes=2, seconds=59)
    assert describe(ran, parts=2) == "1h 2min"  # dropped, not rounded up
    assert describe(ran, parts=1) == "1h"
    assert describe(timedelta(seconds=42), parts=2) == "42s"
    assert describe(timedelta(seconds=-5), parts=1) == "0s"  # a clock a little behind
