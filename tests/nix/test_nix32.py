from __future__ import annotations

import hashlib
import os

import pytest

from nixfarm.errors import InvalidInput
from nixfarm.nix import nix32
from tests.nix.conftest import nix


def test_matches_nix_hash_for_every_digest_size() -> None:
    digests = {
        "md5": [os.urandom(16) for _ in range(5)],
        "sha1": [os.urandom(20) for _ in range(5)],
        "sha256": [hashlib.sha256(b"").digest(), bytes(32), b"\xff" * 32]
        + [os.urandom(32) for _ in range(5)],
        "sha512": [os.urandom(64) for _ in range(3)],
    }
    for algo, values in digests.items():
        expected = nix("nix-hash", "--type", algo, "--to-base32", *(d.hex() for d in values))
        assert [nix32.encode(d) for d in values] == expected.split()
        assert [nix32.decode(text) for text in expected.split()] == values


def test_known_vector() -> None:
    empty = hashlib.sha256(b"").digest()
    assert nix32.encode(empty) == "0mdqa9w1p6cmli6976v4wi0sw9r4p5prkj7lzfd1877wk11c9c73"
    assert nix32.encode(b"") == ""
    assert nix32.decode("") == b""


def test_round_trips_odd_lengths() -> None:
    for size in range(1, 40):
        data = os.urandom(size)
        text = nix32.encode(data)
        assert len(text) == nix32.encoded_length(size)
        assert nix32.decode(text) == data


@pytest.mark.parametrize("letter", ["e", "o", "u", "t", "A", "-", " "])
def test_rejects_letters_outside_the_alphabet(letter: str) -> None:
    text = "0" * 51 + letter
    with pytest.raises(InvalidInput, match="not a nix32 character"):
        nix32.decode(text)


def test_rejects_impossible_length() -> None:
    with pytest.raises(InvalidInput, match="length"):
        nix32.decode("0" * 51)  # 51 characters cannot come from any byte count


def test_rejects_bits_beyond_the_byte_length() -> None:
    # 52 characters hold 260 bits and a sha256 has 256: the first digit carries only
    # bit 255, which is why every sha256 in nix32 starts with 0 or 1.
    assert nix32.decode("1" + "0" * 51) == bytes(31) + b"\x80"
    with pytest.raises(InvalidInput, match="beyond"):
        nix32.decode("2" + "0" * 51)
