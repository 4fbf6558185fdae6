"""Nix's base32 ("nix32"), the encoding of store path hashes and of ``sha256:`` hashes.

It is not RFC 4648 base32. The alphabet drops ``e o u t`` (so that hashes never spell
words) and the bit order is reversed: Nix reads the byte string as one little-endian
integer and writes it most-significant 5-bit digit first. Character ``k`` of an
``n``-character string therefore holds bits ``5*(n-1-k) .. 5*(n-1-k)+4`` of that
integer. There is no padding: ``L`` bytes encode to ``ceil(8*L/5)`` characters, and a
decoder must reject strings whose value does not fit in ``floor(5*n/8)`` bytes (Nix
does the same, so every byte string has exactly one spelling).

Working on Python integers instead of Nix's bit-twiddling loop gives the same result
and is fast enough for digests, the only thing this is used for.
"""

from __future__ import annotations

from nixfarm.errors import InvalidInput

ALPHABET = "0123456789abcdfghijklmnpqrsvwxyz"
_VALUES = {char: value for value, char in enumerate(ALPHABET)}


def encoded_length(size: int) -> int:
    """Characters needed for ``size`` bytes."""
    return (size * 8 + 4) // 5


def encode(data: bytes) -> str:
    """Encode bytes the way Nix prints hashes and store path hash parts."""
    length = encoded_length(len(data))
    value = int.from_bytes(data, "little")
    chars = []
    for _ in range(length):
        chars.append(ALPHABET[value & 0x1F])
        value >>= 5
    return "".join(reversed(chars))


def decode(text: str) -> bytes:
    """Decode a nix32 string; raise InvalidInput on foreign characters or bad length."""
    size = len(text) * 5 // 8
    if encoded_length(size) != len(text):
        raise InvalidInput(f"{len(text)} characters is not a valid nix32 length.", "nix32")
    value = 0
    for char in text:
        digit = _VALUES.get(char)
        if digit is None:
            raise InvalidInput(f"{char!r} is not a nix32 character.", "nix32")
        value = (value << 5) | digit
    if value >> (size * 8):
        raise InvalidInput("The nix32 string has bits set beyond its byte length.", "nix32")
    return value.to_bytes(size, "little")
