"""Masking secret values in job logs: the one rule, used by the runner and the server.

A job's secrets are on the sandbox's disk, and a task can print them (``cat``,
``set -x`` echoing a command line with a token). The runner masks every line of the
log before it leaves the sandbox's host; the server masks every chunk again before
storing it, in case a runner is old or buggy. Both build a ``Masker`` from the job's
secret values, so both hide exactly the same things. This module has no dependencies
on purpose: the runner must not pull in the server's database or crypto code to use it.

The rule (``needles``): each secret's whole value, and, for values of several lines
(SSH and PGP keys), each of its lines on its own, because logs arrive a line at a
time and a key printed whole is many lines. Surrounding whitespace is trimmed (a token
file ends in a newline; ``echo $TOKEN`` prints none). Candidates shorter than
``MIN_LENGTH`` bytes are left alone.

Three ways in: ``line(text)`` for text already split into lines (the sandbox gives
lines); ``feed(chunk)``/``flush()`` for a raw text stream whose chunk boundaries may
fall inside a secret; and ``chunk(data)`` for bytes masked one chunk at a time (the
server, whose chunks are stored by sequence number and may be retried, so it keeps no
state between them). ``feed`` returns only what is safe to show: it holds back the
longest tail of the text that could still become a secret with the next chunk (a tail
that is a prefix of some secret), so a value split across chunks is still caught.

Matching is one regular expression, an alternation with the longest needle first: at
any position a whole value wins over one of its lines.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

MASK = "********"

# Values and lines shorter than this are not masked. Masking short strings destroys
# logs and protects little: a 4-character "secret" such as "test" or "true" would be
# starred out of every line that mentions it, and anything that short falls to
# guessing anyway. 8 is what GitLab CI demands of masked variables, and it still
# masks every line of a PEM or OpenSSH key body (64-70 characters a line) and every
# real token; what stays visible are armour lines that are no secret (a PGP CRC line
# "=AbCd"), or the last few base64 characters of a key body.
MIN_LENGTH = 8


def needles(secrets: Iterable[str | bytes]) -> list[bytes]:
    """The byte strings to mask for these secret values, longest first (the rule)."""
    found: set[bytes] = set()
    for secret in secrets:
        value = secret.encode() if isinstance(secret, str) else secret
        for candidate in (value, *value.splitlines()):
            candidate = candidate.strip()
            if len(candidate) >= MIN_LENGTH:
                found.add(candidate)
    # Longest first: a value that contains another is masked whole.
    return sorted(found, key=lambda n: (-len(n), n))


class Masker:
    """Replaces secret values with ``MASK``; see the module docstring."""

    def __init__(self, secrets: Iterable[str | bytes], mask: str = MASK) -> None:
        self.needles = needles(secrets)
        # Log text is decoded with errors="replace"; a secret that is not UTF-8 is
        # matched as it would appear there.
        text = {n.decode(errors="replace") for n in self.needles}
        self._text = sorted(text, key=lambda n: (-len(n), n))
        self._pattern = (
            re.compile("|".join(re.escape(n) for n in self._text)) if self._text else None
        )
        self._bytes_pattern = (
            re.compile(b"|".join(re.escape(n) for n in self.needles)) if self.needles else None
        )
        self._mask = mask
        self._bytes_mask = mask.encode()
        self._held = ""

    def line(self, text: str) -> str:
        """``text`` with every secret (or secret line) in it masked."""
        if self._pattern is None:
            return text
        return self._pattern.sub(self._mask, text)

    def chunk(self, data: bytes) -> bytes:
        """``data`` with every secret in it masked; keeps no state between calls."""
        if self._bytes_pattern is None:
            return data
        return self._bytes_pattern.sub(self._bytes_mask, data)

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
        for needle in self._text:
            for size in range(min(len(needle) - 1, len(text)), longest, -1):
                if needle.startswith(text[len(text) - size :]):
                    longest = size
                    break
        return longest

