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

Four ways in: ``line(text)`` for text already split into lines; ``lines(out)`` for
the sandbox's lines, of which over-long ones arrive cut in pieces (``piece``): a value
printed across a cut is held back and masked whole, whatever the cut;
``feed(chunk)``/``flush()`` for a raw text stream whose chunk boundaries may fall
inside a secret; and ``chunk(data)`` for bytes masked one chunk at a time (the
server, whose chunks are stored by sequence number and may be retried, so it keeps no
state between them). ``feed`` returns only what is safe to show: it holds back the
longest tail of the text that could still become a secret with the next chunk (a tail
that is a prefix of some secret), so a value split across chunks is still caught.

Matching is one regular expression, an alternation with the longest needle first: at
any position a whole value wins over one of its lines.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable

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
        keep = self.partial_tail(text)
        self._held = text[len(text) - keep :] if keep else ""
        return text[: len(text) - keep]

    def flush(self) -> str:
        """The held-back end of the stream (it was not a secret after all)."""
        held, self._held = self._held, ""
        return held

    def lines(self, out: Callable[[str], None]) -> LineMasker:
        """A line callback for a sandbox that masks before passing lines to ``out``."""
        return LineMasker(self, out)

    def partial_tail(self, text: str) -> int:
        """Length of the longest tail of ``text`` that begins some secret."""
        longest = 0
        for needle in self._text:
            for size in range(min(len(needle) - 1, len(text)), longest, -1):
                if needle.startswith(text[len(text) - size :]):
                    longest = size
                    break
        return longest



class LineMasker:
    """Lines of one stream, masked; pieces of a cut line are masked as one line.

    The sandbox cuts lines longer than it will pass whole (``processes.MAX_LINE``) and
    hands over the pieces with ``piece``, the end of the line with a call: the longest
    tail of a piece that could begin a secret is held back and prepended to what comes
    next, so a value printed across the cut is still masked (``Masker.feed``'s rule).
    Each piece is passed on as a line of its own, as before.
    """

    def __init__(self, masker: Masker, out: Callable[[str], None]) -> None:
        self._masker = masker
        self._out = out
        self._held = ""

    def __call__(self, line: str) -> None:
        held, self._held = self._held, ""
        self._out(self._masker.line(held + line))

    def piece(self, text: str) -> None:
        """A piece of a line that was cut; the rest follows (``piece`` or a call)."""
        text = self._masker.line(self._held + text)
        keep = self._masker.partial_tail(text)
        self._held = text[len(text) - keep :] if keep else ""
        if len(text) > keep:
            self._out(text[: len(text) - keep])
