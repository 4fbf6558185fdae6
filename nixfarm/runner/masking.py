"""Masking secret values in job logs.

A job's secrets are on the sandbox's disk, and a task can print them (``cat``,
``set -x`` echoing a command line with a token). Every line of the log passes
through a ``Masker`` before it leaves the runner.

What is masked: each secret's whole value, and, for values of several lines (SSH and
PGP keys), each of its lines on its own, because logs arrive a line at a time and a
key printed whole is many lines. Values and lines shorter than ``MIN_LENGTH`` are
left alone: masking every "a" would destroy the log and protect nothing.

Two ways in: ``line(text)`` for text already split into lines (the sandbox gives
lines), and ``feed(chunk)``/``flush()`` for a raw stream whose chunk boundaries may
fall inside a secret. ``feed`` returns only what is safe to show: it holds back the
longest tail of the text that could still become a secret with the next chunk (a
tail that is a prefix of some secret), so a value split across chunks is still caught.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

MASK = "********"
MIN_LENGTH = 4


class Masker:
    """Replaces secret values with ``MASK``; see the module docstring."""

    def __init__(self, secrets: Iterable[str | bytes], mask: str = MASK) -> None:
        needles: set[str] = set()
        for secret in secrets:
            value = secret.decode(errors="replace") if isinstance(secret, bytes) else secret
            for candidate in (value, value.strip(), *value.splitlines()):
                candidate = candidate.strip("\r")
                if len(candidate.strip()) >= MIN_LENGTH:
                    needles.add(candidate)
        # Longest first: a value that contains another is masked whole.
        self._needles = sorted(needles, key=len, reverse=True)
        self._pattern = (
            re.compile("|".join(re.escape(n) for n in self._needles)) if self._needles else None
        )
        self._mask = mask
        self._held = ""

    def line(self, text: str) -> str:
        """``text`` with every secret (or secret line) in it masked."""
        if self._pattern is None:
            return text
        return self._pattern.sub(self._mask, text)

    def feed(self, chunk: str) -> str:
        """Mask a chunk of a stream; returns the text that is safe to emit now."""
        if self._pattern is None:
            return chunk
        text = self.line(self._held + chunk)
        keep = self._partial_tail(text)
        self._held = text[len(text) - keep :] if keep else ""
        return text[: len(text) - keep]

    def flush(self) -> str:
        """The held-back end of the stream (it was not a secret after all)."""
        held, self._held = self._held, ""
        return held

    def _partial_tail(self, text: str) -> int:
        """Length of the longest tail of ``text`` that begins some secret."""
        longest = 0
        for needle in self._needles:
            for size in range(min(len(needle) - 1, len(text)), longest, -1):
                if needle.startswith(text[len(text) - size :]):
                    longest = size
                    break
        return longest
