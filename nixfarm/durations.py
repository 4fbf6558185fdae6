"""Durations as people write them: ``30d``, ``2w``, ``12h``, ``90min``, ``45s``, ``1h30min``.

One parser for every place nixfarm reads a duration from text (``cache gc
--older-than``, a token's ``--expires-in``), and one way to write one (``describe``:
the web pages' run times and "last seen" ages too). A number alone is refused (seconds? days?),
and so is ``m``: ``1m`` is a minute to some and a month to others, and guessing wrong
deletes a cache. Months and years have no fixed length: they are refused too, with the
number of days to write instead. Whitespace between parts is allowed (``1h 30min``).
"""

from __future__ import annotations

import re
from datetime import timedelta

from nixfarm.errors import InvalidInput

_UNITS: dict[str, float] = {
    "s": 1, "sec": 1, "secs": 1, "second": 1, "seconds": 1,
    "min": 60, "mins": 60, "minute": 60, "minutes": 60,
    "h": 3600, "hr": 3600, "hrs": 3600, "hour": 3600, "hours": 3600,
    "d": 86400, "day": 86400, "days": 86400,
    "w": 604800, "wk": 604800, "week": 604800, "weeks": 604800,
}  # fmt: skip
_WITHOUT_LENGTH = {"mo", "month", "months", "y", "yr", "year", "years"}
_PART = re.compile(r"\s*(\d+(?:\.\d+)?)\s*([A-Za-z]*)\s*")
EXAMPLES = "30d, 2w, 12h, 90min or 45s"


def parse_duration(text: str, *, field: str = "duration") -> timedelta:
    """The duration ``text`` says; ``InvalidInput`` (naming ``field``) in one sentence."""
    position, seconds, parts = 0, 0.0, 0
    stripped = text.strip()
    while position < len(stripped):
        match = _PART.match(stripped, position)
        if match is None or match.end() == position:
            raise InvalidInput(
                f"{text!r} is not a duration: write a number and a unit, e.g. {EXAMPLES}",
                field=field,
            )
        number, unit = float(match.group(1)), match.group(2).lower()
        if unit == "m":
            raise InvalidInput(
                f"{text!r} is ambiguous: 'm' could mean minutes or months; write "
                f"{match.group(1)}min for minutes, or days (30d) for a month",
                field=field,
            )
        if unit in _WITHOUT_LENGTH:
            raise InvalidInput(
                f"{text!r}: months and years have no fixed length; write days instead (30d, 365d)",
                field=field,
            )
        if not unit:
            raise InvalidInput(
                f"{text!r} has no unit: write e.g. {match.group(1)}d or {match.group(1)}h "
                f"({EXAMPLES})",
                field=field,
            )
        if unit not in _UNITS:
            raise InvalidInput(
                f"{text!r}: unknown unit {match.group(2)!r}; use s, min, h, d or w "
                f"(e.g. {EXAMPLES})",
                field=field,
            )
        seconds += number * _UNITS[unit]
        parts += 1
        position = match.end()
    if parts == 0:
        raise InvalidInput(f"expected a duration such as {EXAMPLES}, got nothing", field=field)
    try:
        return timedelta(seconds=seconds)
    except OverflowError:
        raise InvalidInput(f"{text!r} is too long a duration", field=field) from None


def describe(duration: timedelta, parts: int | None = None) -> str:
    """A duration the way it is written here: ``1d 2h 3min 4s``; with ``parts``, only
    that many of its largest units (``1d 2h``), the rest dropped, not rounded."""
    seconds = max(round(duration.total_seconds()), 0)
    out = []
    for unit, size in (("w", 604800), ("d", 86400), ("h", 3600), ("min", 60), ("s", 1)):
        count, seconds = divmod(seconds, size)
        if count:
            out.append(f"{count}{unit}")
    return " ".join(out[:parts]) or "0s"
