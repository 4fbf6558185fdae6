"""Byte counts as people read them: ``512 B``, ``1.5 KiB``, ``100.0 MiB``.

One way to write a size (or a rate, bytes per second) for every place that shows one:
the web pages, ``nixfarm push``, ``nixfarm cache gc``.
"""

from __future__ import annotations


def describe_size(count: float) -> str:
    """Bytes in the largest binary unit (up to GiB) that keeps the number below 1024."""
    value = float(count)
    for unit in ("B", "KiB", "MiB"):
        if value < 1024:
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} GiB"
